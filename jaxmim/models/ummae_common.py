"""Pieces shared by the UM-MAE pre-training models (PVT, Swin, ViT) and their SimMIM baselines.

Follows ``implus/UM-MAE@cb7776b``: the pyramid MAE decoder and loss of ``models_mae_pvt.py:358-407`` /
``models_mae_swin.py:499-548``, the SimMIM decoder and L1 loss of ``models_simmim_{pvt,swin}.py``,
the initialisation of ``_init_weights`` (``models_mae_pvt.py:224-260``) and the masking inputs of
``mask_transform.py`` + Secondary Masking (``jaxmim.masking_ummae``). Spec: ``ummae.md`` §2-§9, §17.

Attribute names are the official state-dict keys (``decoder_embed``, ``mask_token``,
``decoder_pos_embed``, ``decoder_blocks.{i}``, ``decoder_norm``, ``decoder_pred``), set directly on
the model by :meth:`PyramidMAEDecoder.build_decoder` so the tree is flat like the official one.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmim import layers as L
from jaxmim import masking_ummae as U
from jaxmim.models.vit import Block, dense, get_2d_sincos_pos_embed, vit_layer_id, xavier_uniform

__all__ = ['conv_fan_out_init', 'conv', 'check_pyramid_strides', 'pixel_shuffle', 'norm_pix_target',
           'MaskingInputs', 'PyramidMAEDecoder', 'SimMIMHead', 'UMMAEHooks']


def conv_fan_out_init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    """UM-MAE's Conv2d init ``normal(0, sqrt(2 / fan_out))``, ``fan_out = kh * kw * C_out`` (groups 1),
    for a Flax kernel ``(kh, kw, C_in, C_out)``. Source: ``models_mae_pvt.py:254-258``."""
    fan_out = shape[0] * shape[1] * shape[-1]
    return jax.random.normal(key, shape, dtype) * math.sqrt(2.0 / fan_out)


def conv(din: int, dout: int, kernel: int, rngs: nnx.Rngs, kernel_init=conv_fan_out_init) -> nnx.Conv:
    """``nn.Conv2d(din, dout, kernel, stride=kernel)`` (no padding) in NHWC with UM-MAE's init (bias 0)."""
    return nnx.Conv(din, dout, (kernel, kernel), strides=kernel, padding='VALID', kernel_init=kernel_init,
                    bias_init=jax.nn.initializers.zeros, rngs=rngs)


def check_pyramid_strides(img_size: int, patch_size: int, stride: int, num_stages: int) -> tuple[int, int]:
    """Checks the pyramid geometry and returns ``(M, k)``: ``M = img_size / stride`` mask units per side,
    ``k = stride / patch_size`` tokens per unit side, which must equal ``2^(stages - 2)`` so that the
    encoder's output grid, after the decoders' PixelShuffle(2), is one token per (compact) unit.

    Raises:
      ValueError: naming the sizes that do not fit.
    """
    if img_size % stride or stride % patch_size:
        raise ValueError(f'stride {stride} must divide img_size {img_size} and be a multiple of patch_size '
                         f'{patch_size}')
    k = stride // patch_size
    if k != 2 ** (num_stages - 2):
        raise ValueError(f'stride/patch_size = {k} tokens per mask unit must equal 2^(stages-2) = '
                         f'{2 ** (num_stages - 2)} so the decoder\'s PixelShuffle(2) lands on the unit grid')
    return img_size // stride, k


def check_um_pretrain_args(model: str, img_size: int, patch_size: int, stride: int, num_stages: int,
                           mask_ratio: float, sampling: str, vis_mask_ratio: float) -> tuple[int, int]:
    """The checks every UM-MAE pyramid pre-training model makes on its arguments; returns
    ``(M, k)`` of :func:`check_pyramid_strides`.

    Raises:
      ValueError: ``sampling='random'`` (random masks cannot be compacted), a sampling / ratio
        pair :func:`jaxmim.masking_ummae.check_sampling` refuses, ``vis_mask_ratio`` outside
        [0, 1), strides that do not fit, or an odd unit grid; each naming ``model`` and the field.
    """
    if sampling == 'random':
        raise ValueError(f"{model} needs one visible unit per 2x2 block: sampling must be 'uniform' or "
                         "'uniform_block', not 'random'")
    U.check_sampling(mask_ratio, sampling)
    if not 0.0 <= vis_mask_ratio < 1.0:
        raise ValueError(f'vis_mask_ratio must be in [0, 1), got {vis_mask_ratio}')
    grid, k = check_pyramid_strides(img_size, patch_size, stride, num_stages)
    if grid % 2:
        raise ValueError(f'the unit grid {grid} must be even for Uniform Sampling')
    return grid, k


def pixel_shuffle(x: jax.Array, r: int) -> jax.Array:
    """``torch.nn.PixelShuffle(r)`` in NHWC: ``(B, h, w, C*r*r)`` -> ``(B, h*r, w*r, C)``; input
    channel ``c*r*r + i*r + j`` goes to pixel ``(h*r + i, w*r + j)`` (spec §9: ``4c + 2i + j``)."""
    b, h, w, crr = x.shape
    c = crr // (r * r)
    return x.reshape(b, h, w, c, r, r).transpose(0, 1, 4, 2, 5, 3).reshape(b, h * r, w * r, c)


def norm_pix_target(t: jax.Array) -> jax.Array:
    """``(t - mean) / sqrt(var + 1e-6)`` over the last axis, unbiased variance (torch ``var``).
    Source: ``models_mae_pvt.py:398-401``."""
    mean = t.mean(axis=-1, keepdims=True)
    var = t.var(axis=-1, keepdims=True, ddof=1)
    return (t - mean) / (var + 1.0e-6) ** 0.5


class MaskingInputs:
    """Mixin: the masking inputs of a UM-MAE model (``jaxmim.methods`` protocol).

    Needs ``self.grid`` (mask units per side M), ``self.mask_ratio``, ``self.sampling`` and
    ``self.noise_len`` (0: no noise input). Masks are ``(B, M*M)`` bool, 1 = masked.
    """

    @property
    def input_keys(self) -> tuple[str, ...]:
        """``('mask', 'noise')``, or ``('mask',)`` for models without Secondary Masking noise."""
        return ('mask', 'noise') if self.noise_len else ('mask',)

    def sample_inputs(self, key: jax.Array, batch_size: int) -> dict[str, jax.Array]:
        """Masks (:func:`jaxmim.masking_ummae.make_mask`) and U[0, 1) noise ``(B, noise_len)`` drawn on device."""
        k_mask, k_noise = jax.random.split(key)
        out = {'mask': U.make_mask(k_mask, batch_size, self.grid, self.mask_ratio, self.sampling)}
        if self.noise_len:
            out['noise'] = jax.random.uniform(k_noise, (batch_size, self.noise_len), jnp.float32)
        return out

    def host_inputs(self, rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
        """The same arrays made by the input pipeline (the official masks come from the data loader)."""
        out = {'mask': U.make_mask_numpy(rng, batch_size, self.grid, self.mask_ratio, self.sampling)}
        if self.noise_len:
            out['noise'] = rng.random((batch_size, self.noise_len), dtype=np.float32)
        return out

    def _check_mask(self, images: jax.Array, mask: jax.Array, noise: jax.Array | None = None) -> jax.Array:
        b = images.shape[0]
        if images.ndim != 4 or images.shape[1:] != (self.img_size, self.img_size, self.in_chans):
            raise ValueError(f'expected images (B, {self.img_size}, {self.img_size}, {self.in_chans}) NHWC, '
                             f'got {images.shape}')
        if mask.shape != (b, self.grid * self.grid):
            raise ValueError(f'mask must be (B, L) = {(b, self.grid * self.grid)} (units of {self.stride} px, '
                             f'raster order, 1 = masked), got {mask.shape}')
        if self.noise_len and (noise is None or noise.shape != (b, self.noise_len)):
            raise ValueError(f'noise must be (B, {self.noise_len}) float, got '
                             f'{None if noise is None else noise.shape}')
        return mask.astype(bool)


class PyramidMAEDecoder:
    """Mixin: the UM-MAE pyramid decoder and norm-pix MSE loss.

    Decoder (``models_mae_pvt.py:358-386``): ``decoder_embed`` Linear(C_enc -> 4*Dd) on the encoder's
    ``(M/4) x (M/4)`` tokens, torch PixelShuffle(2) -> one token per compact unit (= per visible unit)
    in block-raster order, plus ``decoder_pos_embed`` (fixed sin-cos, M x M, Dd); then the masked
    units in raster order as ``mask_token + decoder_pos_embed``; ``decoder_blocks`` (timm Block,
    LN eps 1e-6), ``decoder_norm``, ``decoder_pred`` (Dd -> stride^2 * C).

    Visible position embeddings: the official code adds ``decoder_pos_embed[~mask]`` (visible units
    in raster order) to tokens in block-raster order, so 76% of them get another unit's position
    (spec §6, §17 #1). ``official_decoder_pos=True`` reproduces that; False (default) adds the
    embedding of block k's own visible unit.
    """

    def build_decoder(self, enc_dim: int, decoder_embed_dim: int, decoder_depth: int, decoder_num_heads: int,
                      decoder_mlp_ratio: float, norm_eps: float, rngs: nnx.Rngs) -> None:
        """Creates the decoder variables on ``self`` (official key names); needs ``self.grid``,
        ``self.stride``, ``self.in_chans``."""
        self.decoder_embed_dim = decoder_embed_dim
        self.decoder_embed = dense(enc_dim, 4 * decoder_embed_dim, rngs, xavier_uniform)
        self.mask_token = nnx.Param(L.trunc_normal_02(rngs.params(), (1, 1, decoder_embed_dim)))
        self.decoder_pos_embed = L.Buffer(jnp.asarray(get_2d_sincos_pos_embed(decoder_embed_dim, self.grid))[None])
        self.decoder_blocks = nnx.List([
            Block(decoder_embed_dim, decoder_num_heads, decoder_mlp_ratio, qkv_bias=True, norm_eps=norm_eps,
                  kernel_init=xavier_uniform, rngs=rngs) for _ in range(decoder_depth)])
        self.decoder_norm = L.layer_norm(decoder_embed_dim, norm_eps, rngs)
        self.decoder_pred = dense(decoder_embed_dim, self.stride ** 2 * self.in_chans, rngs, xavier_uniform)

    def forward_decoder(self, latent: jax.Array, mask: jax.Array, choice: jax.Array
                        ) -> tuple[jax.Array, jax.Array]:
        """Decodes the encoder map.

        Args:
          latent: ``(B, M/4, M/4, C_enc)`` encoder output (after ``norm``).
          mask: ``(B, L)`` bool primary mask.
          choice: ``(B, M/2, M/2)`` kept position per block (:func:`jaxmim.masking_ummae.block_choice`).

        Returns:
          ``pred_seq`` ``(B, L, stride^2*C)`` in the official order [visible tokens in block-raster
          order, masked units in raster order], and ``order`` int32 ``(B, L)``: the raster unit of
          each sequence position.
        """
        b = latent.shape[0]
        x = pixel_shuffle(self.decoder_embed(latent), 2)                   # (B, M/2, M/2, Dd)
        x_vis = x.reshape(b, -1, x.shape[-1])                              # block-raster order
        n_vis = x_vis.shape[1]
        vis_raster, masked_raster = U.unit_orders(mask, n_vis)
        block_units = U.block_visible_units(choice, self.grid)
        pos = jnp.broadcast_to(self.decoder_pos_embed[...], (b,) + self.decoder_pos_embed.shape[1:]).astype(x.dtype)
        take = lambda idx: jnp.take_along_axis(pos, idx[:, :, None], axis=1)   # noqa: E731
        pos_vis = take(vis_raster if self.official_decoder_pos else block_units)
        pos_mask = take(masked_raster)
        x = jnp.concatenate([x_vis + pos_vis, self.mask_token[...].astype(x.dtype) + pos_mask], axis=1)
        for blk in self.decoder_blocks:
            x = blk(x)
        pred = self.decoder_pred(self.decoder_norm(x))
        return pred, jnp.concatenate([block_units, masked_raster], axis=1)

    def mae_outputs(self, images: jax.Array, pred_seq: jax.Array, order: jax.Array, mask: jax.Array,
                    secondary: jax.Array) -> dict[str, Any]:
        """Loss and outputs from the decoder sequence.

        Loss (``forward_loss``, ``models_mae_pvt.py:388-407``): MSE between ``pred_seq[:, n_vis:]`` and
        the masked units of ``patchify(images, stride)`` (norm-pix targets when ``norm_pix_loss``),
        plain mean: visible and secondary-masked units are not in it.

        Returns:
          ``{'loss', 'pred' (B, L, D) raster, 'pred_seq', 'mask' (B, L) f32, 'secondary_mask' (B, L) f32}``.
        """
        pred_seq = pred_seq.astype(jnp.float32)
        n_vis = U.num_visible(order.shape[1], self.mask_ratio)
        target = L.patchify(images.astype(jnp.float32), self.stride)
        target = jnp.take_along_axis(target, order[:, n_vis:, None], axis=1)
        if self.norm_pix_loss:
            target = norm_pix_target(target)
        loss = ((pred_seq[:, n_vis:] - target) ** 2).mean()
        inv = jnp.argsort(order, axis=1)
        pred = jnp.take_along_axis(pred_seq, inv[:, :, None], axis=1)
        return {'loss': loss, 'pred': pred, 'pred_seq': pred_seq, 'mask': mask.astype(jnp.float32),
                'secondary_mask': secondary.astype(jnp.float32)}


class SimMIMHead:
    """Mixin: the UM-MAE SimMIM baselines' decoder and L1 loss (``models_simmim_pvt.py``
    ``forward_decoder`` / ``forward_loss``): ``decoder_pred`` Linear(C_enc -> 4 * stride^2 * C) on the
    ``(M/2) x (M/2)`` encoder tokens, PixelShuffle(2) -> one prediction per unit (raster), L1 on the
    masked units (raw targets, or norm-pix when ``norm_pix_loss``), plain mean."""

    def simmim_outputs(self, images: jax.Array, latent: jax.Array, mask: jax.Array) -> dict[str, Any]:
        """``latent`` ``(B, M/2, M/2, C_enc)``; returns ``{'loss', 'pred' (B, L, D), 'mask', 'secondary_mask'}``."""
        b = latent.shape[0]
        pred = pixel_shuffle(self.decoder_pred(latent), 2).astype(jnp.float32)
        pred = pred.reshape(b, -1, pred.shape[-1])
        target = L.patchify(images.astype(jnp.float32), self.stride)
        if self.norm_pix_loss:
            target = norm_pix_target(target)
        w = mask.astype(jnp.float32)[:, :, None]
        loss = (jnp.abs(pred - target) * w).sum() / (w.sum() * pred.shape[-1])
        return {'loss': loss, 'pred': pred, 'mask': mask.astype(jnp.float32),
                'secondary_mask': jnp.zeros_like(mask, jnp.float32)}


class UMMAEHooks:
    """Backbone hooks of the UM-MAE pre-training models and classifiers (flat ``blocks`` list).

    Layer ids follow ``util/lr_decay.py`` ``get_layer_id_for_vit`` with ``num_layers =
    len(blocks) + 1``: ``cls_token`` / ``pos_embed`` / ``patch_embed.*`` -> 0, ``blocks.i.*`` -> i + 1
    (a stage's ``downsample`` belongs to its block), everything else -> ``len(blocks) + 1``.
    """

    def layer_id(self, name: str) -> int:
        """See the class docstring."""
        return vit_layer_id(name, len(self.blocks))

    @property
    def num_layer_ids(self) -> int:
        """``len(blocks) + 2``."""
        return len(self.blocks) + 2
