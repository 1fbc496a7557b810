"""The decoders and losses of the UM-MAE pre-training models and of its SimMIM baselines.

Follows ``implus/UM-MAE@cb7776b``: the pyramid MAE decoder and loss of ``models_mae_pvt.py:358-407`` /
``models_mae_swin.py:499-548`` (:class:`PyramidMAEDecoder`) and the SimMIM decoder and L1 loss of
``models_simmim_{pvt,swin}.py`` (:class:`SimMIMHead`).

Attribute names are the official state-dict keys (``decoder_embed``, ``mask_token``,
``decoder_pos_embed``, ``decoder_blocks.{i}``, ``decoder_norm``, ``decoder_pred``), set directly on
the model by :meth:`PyramidMAEDecoder.build_decoder` so the tree is flat like the official one.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmim import layers as L
from jaxmim import sharding
from jaxmim.methods.ummae import masking as U
from jaxmim.methods.ummae.common import norm_pix_target
from jaxmim.models.pos_embed import get_2d_sincos_pos_embed
from jaxmim.models.vit import Block, dense, xavier_uniform

__all__ = ['pixel_shuffle', 'PyramidMAEDecoder', 'SimMIMHead']


def pixel_shuffle(x: jax.Array, r: int) -> jax.Array:
    """``torch.nn.PixelShuffle(r)`` in NHWC: ``(B, h, w, C*r*r)`` -> ``(B, h*r, w*r, C)``, any dtype;
    input channel ``c*r*r + i*r + j`` goes to pixel ``(h*r + i, w*r + j)`` (``4c + 2i + j`` for the
    decoders' ``nn.PixelShuffle(2)``, ``models_mae_pvt.py:358-386``)."""
    b, h, w, crr = x.shape
    c = crr // (r * r)
    return x.reshape(b, h, w, c, r, r).transpose(0, 1, 4, 2, 5, 3).reshape(b, h * r, w * r, c)


class PyramidMAEDecoder:
    """Mixin: the UM-MAE pyramid decoder and norm-pix MSE loss.

    Decoder (``models_mae_pvt.py:358-386``): ``decoder_embed`` Linear(C_enc -> 4*Dd) on the encoder's
    ``(M/4) x (M/4)`` tokens, torch PixelShuffle(2) -> one token per compact unit (= per visible unit)
    in block-raster order, plus ``decoder_pos_embed`` (fixed sin-cos, M x M, Dd); then the masked
    units in raster order as ``mask_token + decoder_pos_embed``; ``decoder_blocks`` (timm Block,
    LN eps 1e-6), ``decoder_norm``, ``decoder_pred`` (Dd -> stride^2 * C).

    Visible position embeddings: the official code adds ``decoder_pos_embed[~mask]`` (visible units
    in raster order) to tokens in block-raster order, so 76% of them get another unit's position
    (``models_mae_pvt.py:358-386``, ``models_mae_swin.py:499-548``). ``official_decoder_pos=True``
    reproduces that; False (default) adds the embedding of block k's own visible unit.
    """

    def build_decoder(self, enc_dim: int, decoder_embed_dim: int, decoder_depth: int, decoder_num_heads: int,
                      decoder_mlp_ratio: float, norm_eps: float, rngs: nnx.Rngs) -> None:
        """Creates the decoder variables on ``self`` (official key names); needs ``self.grid``,
        ``self.stride``, ``self.in_chans``."""
        self.decoder_embed_dim = decoder_embed_dim
        self.decoder_embed = dense(enc_dim, 4 * decoder_embed_dim, rngs, xavier_uniform, axes=('embed', 'embed'))
        self.mask_token = nnx.Param(L.trunc_normal_02(rngs.params(), (1, 1, decoder_embed_dim)),
                                    **sharding.axes(None, None, 'embed'))
        self.decoder_pos_embed = L.Buffer(jnp.asarray(get_2d_sincos_pos_embed(decoder_embed_dim, self.grid))[None],
                                          **sharding.axes(None, 'tokens', 'embed'))
        self.decoder_blocks = nnx.List([
            Block(decoder_embed_dim, decoder_num_heads, decoder_mlp_ratio, qkv_bias=True, norm_eps=norm_eps,
                  kernel_init=xavier_uniform, rngs=rngs) for _ in range(decoder_depth)])
        self.decoder_norm = L.layer_norm(decoder_embed_dim, norm_eps, rngs)
        self.decoder_pred = dense(decoder_embed_dim, self.stride ** 2 * self.in_chans, rngs, xavier_uniform,
                                  axes=('embed', 'pixels'))

    def forward_decoder(self, latent: jax.Array, mask: jax.Array, choice: jax.Array
                        ) -> tuple[jax.Array, jax.Array]:
        """Decodes the encoder map.

        Args:
          latent: ``(B, M/4, M/4, C_enc)`` encoder output (after ``norm``).
          mask: ``(B, L)`` bool primary mask.
          choice: ``(B, M/2, M/2)`` kept position per block (:func:`jaxmim.methods.ummae.masking.block_choice`).

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
        x = sharding.constrain(x, 'batch', None, None)
        for blk in self.decoder_blocks:      # the encoder's remat policy (``self.remat``), when it has one
            x = L.call_block(blk, x, train=False, rng=None, remat=getattr(self, 'remat', 'none'))
        x = sharding.constrain(x, 'batch', None, None)
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
