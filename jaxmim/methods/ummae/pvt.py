"""UM-MAE pre-training on the PVT-S variant and the repository's SimMIM baseline on it.

Follows ``implus/UM-MAE@cb7776b`` ``models_mae_pvt.py:149-417`` (``MaskedAutoencoderPVT``,
``mae_pvt_small_256``) and ``models_simmim_pvt.py:27-217`` (``SimMIMPVT``, ``simmim_pvt_small_256``).
The blocks and the fine-tuning classifier (``pvt_small_256``, each model's ``classifier``) are the
backbone's, :mod:`jaxmim.models.pvt`; attribute names are the official state-dict keys.
Layout: images ``(B, H, W, C)``; tokens kept as maps ``(B, h, w, C)``.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmim import layers as L
from jaxmim import ops, sharding
from jaxmim.methods.ummae import masking as U
from jaxmim.methods.ummae.common import MaskingInputs, check_pyramid_strides, check_um_pretrain_args
from jaxmim.methods.ummae.decoder import PyramidMAEDecoder, SimMIMHead
from jaxmim.models.flat_blocks import UMMAEHooks
from jaxmim.models.pos_embed import get_2d_sincos_pos_embed
from jaxmim.models.pvt import (DATA_256, DATA_DEMO, PVT_DEMO, PVT_SMALL, PatchEmbed, check_stage_lists, pvt_blocks,
                               run_blocks)
from jaxmim.models.vit import dense, xavier_uniform
from jaxmim.registry import Backbone, register_model

__all__ = ['MaskedAutoencoderPVT', 'SimMIMPVT']


@register_model('mae_pvt_small_256', **PVT_SMALL, img_size=256, stride=16, sr_ratios=(4, 2, 1, 1),
                classifier='pvt_small_256', data_defaults=DATA_256)
@register_model('mae_pvt_demo_32', **PVT_DEMO, stride=8, sr_ratios=(2, 1, 1), decoder_embed_dim=128,
                decoder_depth=2, decoder_num_heads=4, classifier='pvt_demo_32', data_defaults=DATA_DEMO)
class MaskedAutoencoderPVT(nnx.Module, MaskingInputs, PyramidMAEDecoder, UMMAEHooks, Backbone):
    """UM-MAE pre-training of the PVT variant (``models_mae_pvt.py:149-417``).

    Args (official names and defaults, plus the masking settings the official passes elsewhere):
      img_size, patch_size, in_chans: input side, patch side (px), channels.
      stride: mask-unit side in pixels (16); ``stride / patch_size`` tokens per unit side.
      embed_dims, depths, num_heads, mlp_ratios, sr_ratios: encoder; pre-training sr (4, 2, 1, 1)
        because the encoder runs on the half-resolution compact image (``models_mae_pvt.py:324-345``).
      decoder_embed_dim, decoder_depth, decoder_num_heads, decoder_mlp_ratio: decoder (512, 2, 16, 4).
      norm_eps: LayerNorm epsilon of ``norm``, ``decoder_blocks`` and ``decoder_norm`` (the factory's
        ``norm_layer``: 1e-6).
      block_norm_eps: LayerNorm epsilon of every encoder block's ``norm1`` / ``norm2`` (1e-5:
        ``models_mae_pvt.py:185-196`` never passes ``norm_layer`` to ``PVTBlock``; ``attn.norm`` 1e-5).
      norm_pix_loss: per-unit normalised targets (``--norm_pix_loss``).
      vis_mask_ratio: Secondary Masking ratio; ``vis_mask_token`` exists only when > 0 (as official).
      mask_ratio: 0.75 (``--mask_ratio``); sampling: ``'uniform'`` or ``'uniform_block'``
        (:data:`jaxmim.methods.ummae.masking.SAMPLINGS`; random masks cannot be compacted).
      official_decoder_pos: reproduce the official visible pos-embed order (``models_mae_pvt.py:358-386``).
      attn_implementation: :data:`jaxmim.ops.ATTN_IMPLEMENTATIONS` (encoder and decoder).
      remat: per encoder and decoder block, :data:`jaxmim.layers.REMAT_POLICIES` (same numbers).
      rngs: NNX RNG streams.

    Variables: ``vis_mask_token`` (1,1,C0), ``patch_embed.proj``, ``pos_embed`` (1, G*G, C0) fixed
    sin-cos Buffer (G = img/patch), ``blocks.{i}``, ``norm``, and the decoder of
    :class:`jaxmim.methods.ummae.decoder.PyramidMAEDecoder`.

    Forward (``forward_encoder``, ``models_mae_pvt.py:292-356``): patch embed; Secondary Masking
    (:func:`jaxmim.methods.ummae.masking.secondary_visible_pyramid`); compaction of the visible units
    (secondary-masked ones as the raw ``vis_mask_token``) and of the masked sin-cos table, added
    after compaction; blocks on the half-resolution map; ``norm``; decoder and loss.

    Call: ``model(images, *, mask, noise, train=False, rng=None)`` with ``mask`` ``(B, L)`` (1 =
    masked, one visible unit per 2x2 block) and ``noise`` ``(B, L)`` float; returns the dict of
    :meth:`~jaxmim.methods.ummae.decoder.PyramidMAEDecoder.mae_outputs`.

    Raises:
      ValueError: bad sizes, a sampling that is not uniform, bad input shapes.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 4, in_chans: int = 3, stride: int = 16,
                 embed_dims: Sequence[int] = (64, 128, 320, 512), depths: Sequence[int] = (3, 4, 6, 3),
                 num_heads: Sequence[int] = (1, 2, 5, 8), mlp_ratios: Sequence[float] = (8, 8, 4, 4),
                 sr_ratios: Sequence[int] = (4, 2, 1, 1), decoder_embed_dim: int = 512, decoder_depth: int = 2,
                 decoder_num_heads: int = 16, decoder_mlp_ratio: float = 4.0, norm_eps: float = 1e-6,
                 norm_pix_loss: bool = False, vis_mask_ratio: float = 0.0, mask_ratio: float = 0.75,
                 sampling: str = 'uniform', official_decoder_pos: bool = False, block_norm_eps: float = 1e-5,
                 attn_implementation: str | None = None, remat: str = 'none', *, rngs: nnx.Rngs):
        check_stage_lists(embed_dims, depths, num_heads, mlp_ratios, sr_ratios)
        self.remat = L.check_remat(remat)
        self.grid, self.k = check_um_pretrain_args('MaskedAutoencoderPVT', img_size, patch_size, stride,
                                                   len(depths), mask_ratio, sampling, vis_mask_ratio)
        self.img_size, self.patch_size, self.in_chans, self.stride = img_size, patch_size, in_chans, stride
        self.embed_dims = tuple(embed_dims)
        self.mask_ratio, self.sampling, self.vis_mask_ratio = mask_ratio, sampling, vis_mask_ratio
        self.norm_pix_loss, self.official_decoder_pos = norm_pix_loss, official_decoder_pos
        self.noise_len = self.grid * self.grid
        self.n_visible = U.num_visible(self.noise_len, mask_ratio)
        if vis_mask_ratio > 0:
            self.vis_mask_token = nnx.Param(L.trunc_normal_02(rngs.params(), (1, 1, embed_dims[0])),
                                            **sharding.axes(None, None, 'embed'))
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dims[0], 'mae', rngs=rngs)
        g = img_size // patch_size
        self.pos_embed = L.Buffer(jnp.asarray(get_2d_sincos_pos_embed(embed_dims[0], g))[None],
                                  **sharding.axes(None, 'tokens', 'embed'))
        self.blocks = pvt_blocks(embed_dims, depths, num_heads, mlp_ratios, sr_ratios, True,
                                 [0.0] * sum(depths), block_norm_eps, g // 2, rngs)
        self.norm = L.layer_norm(embed_dims[-1], norm_eps, rngs)
        self.build_decoder(embed_dims[-1], decoder_embed_dim, decoder_depth, decoder_num_heads, decoder_mlp_ratio,
                           norm_eps, rngs)
        ops.set_attn_implementation(self, attn_implementation)

    def forward_encoder(self, images: jax.Array, mask: jax.Array, noise: jax.Array
                        ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Returns the encoder map ``(B, M/4, M/4, C_last)``, the block choices ``(B, M/2, M/2)`` and the
        secondary mask ``(B, L)`` bool (True = visible unit replaced by ``vis_mask_token``)."""
        x = sharding.constrain(self.patch_embed(images), 'batch', None, None, None)   # (B, G, G, C0)
        b, g, _, c = x.shape
        choice = U.block_choice(mask, self.grid)
        x = U.compact(x, choice, self.k)                                   # (B, G/2, G/2, C0)
        if self.vis_mask_ratio > 0:
            still = U.secondary_visible_pyramid(mask, noise, self.n_visible, self.vis_mask_ratio)
            secondary = jnp.logical_and(~mask, ~still)
            sec_c = U.compact(U.upsample_units(secondary.reshape(b, self.grid, self.grid), self.k)[..., None],
                              choice, self.k)
            x = jnp.where(sec_c, self.vis_mask_token[...].astype(x.dtype), x)
        else:
            secondary = jnp.zeros_like(mask)
        pos = jnp.broadcast_to(self.pos_embed[...].reshape(1, g, g, c), (b, g, g, c)).astype(x.dtype)
        x = x + U.compact(pos, choice, self.k)
        x = run_blocks(self.blocks, x, False, None, self.remat)
        return self.norm(x), choice, secondary

    def __call__(self, images: jax.Array, *, mask: jax.Array, noise: jax.Array, train: bool = False,
                 rng: jax.Array | None = None) -> dict[str, Any]:
        del train, rng    # no dropout / drop path in pre-training
        mask = self._check_mask(images, mask, noise)
        latent, choice, secondary = self.forward_encoder(images, mask, noise)
        pred_seq, order = self.forward_decoder(latent, mask, choice)
        return self.mae_outputs(images, pred_seq, order, mask, secondary)

    def no_weight_decay(self) -> tuple[str, ...]:
        """``()``: timm 0.3.2 ``add_weight_decay`` without a skip list (``main_pretrain.py:198-199``):
        ``mask_token`` and ``vis_mask_token`` are decayed."""
        return ()


@register_model('simmim_pvt_small_256', **PVT_SMALL, img_size=256, stride=16, sr_ratios=(8, 4, 2, 1),
                classifier='pvt_small_256', data_defaults=DATA_256)
@register_model('simmim_pvt_demo_32', **PVT_DEMO, stride=8, sr_ratios=(4, 2, 1), classifier='pvt_demo_32',
                data_defaults=DATA_DEMO)
class SimMIMPVT(nnx.Module, MaskingInputs, SimMIMHead, UMMAEHooks, Backbone):
    """UM-MAE's SimMIM baseline on the PVT variant (``models_simmim_pvt.py:27-217``).

    Full-resolution encoder (sr 8/4/2/1): masked tokens (the unit mask upsampled to tokens) become
    ``mask_token`` (``x * (1 - w) + mask_token * w``), then the fixed sin-cos ``pos_embed`` is added
    to every token; blocks; ``norm``; ``decoder_pred`` Linear -> PixelShuffle(2) -> one prediction per
    unit; L1 on masked units (:class:`jaxmim.methods.ummae.decoder.SimMIMHead`).

    Args: as :class:`MaskedAutoencoderPVT` without decoder / Secondary Masking arguments;
    ``sampling`` defaults to ``'random'`` (the Makefile runs the baseline without ``--mask_regular``);
    ``norm_eps`` (1e-6 in the factory) is the eps of ``norm`` only, ``block_norm_eps`` (1e-5:
    ``models_simmim_pvt.py:59-70`` never passes ``norm_layer`` to ``PVTBlock``) that of every block's
    ``norm1`` / ``norm2``; ``attn_implementation`` and ``remat`` as there.

    Call: ``model(images, *, mask, train=False, rng=None)`` -> ``{'loss', 'pred' (B, L, stride^2*C)
    raster, 'mask', 'secondary_mask' (zeros)}``.

    Raises:
      ValueError: bad sizes or input shapes.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 4, in_chans: int = 3, stride: int = 16,
                 embed_dims: Sequence[int] = (64, 128, 320, 512), depths: Sequence[int] = (3, 4, 6, 3),
                 num_heads: Sequence[int] = (1, 2, 5, 8), mlp_ratios: Sequence[float] = (8, 8, 4, 4),
                 sr_ratios: Sequence[int] = (8, 4, 2, 1), norm_eps: float = 1e-6, norm_pix_loss: bool = False,
                 mask_ratio: float = 0.75, sampling: str = 'random', block_norm_eps: float = 1e-5,
                 attn_implementation: str | None = None, remat: str = 'none', *, rngs: nnx.Rngs):
        check_stage_lists(embed_dims, depths, num_heads, mlp_ratios, sr_ratios)
        self.remat = L.check_remat(remat)
        U.check_sampling(mask_ratio, sampling)
        self.grid, self.k = check_pyramid_strides(img_size, patch_size, stride, len(depths))
        self.img_size, self.patch_size, self.in_chans, self.stride = img_size, patch_size, in_chans, stride
        self.mask_ratio, self.sampling, self.norm_pix_loss = mask_ratio, sampling, norm_pix_loss
        self.noise_len = 0
        self.mask_token = nnx.Param(L.trunc_normal_02(rngs.params(), (1, 1, embed_dims[0])),
                                    **sharding.axes(None, None, 'embed'))
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dims[0], 'mae', rngs=rngs)
        g = img_size // patch_size
        self.pos_embed = L.Buffer(jnp.asarray(get_2d_sincos_pos_embed(embed_dims[0], g))[None],
                                  **sharding.axes(None, 'tokens', 'embed'))
        self.blocks = pvt_blocks(embed_dims, depths, num_heads, mlp_ratios, sr_ratios, True,
                                 [0.0] * sum(depths), block_norm_eps, g, rngs)
        self.norm = L.layer_norm(embed_dims[-1], norm_eps, rngs)
        self.decoder_pred = dense(embed_dims[-1], 4 * stride ** 2 * in_chans, rngs, xavier_uniform,
                                  axes=('embed', 'pixels'))
        ops.set_attn_implementation(self, attn_implementation)

    def __call__(self, images: jax.Array, *, mask: jax.Array, train: bool = False,
                 rng: jax.Array | None = None) -> dict[str, Any]:
        del train, rng
        mask = self._check_mask(images, mask)
        x = sharding.constrain(self.patch_embed(images), 'batch', None, None, None)
        b, g, _, c = x.shape
        w = U.upsample_units(mask.reshape(b, self.grid, self.grid), self.k)[..., None].astype(x.dtype)
        x = x * (1.0 - w) + self.mask_token[...].astype(x.dtype) * w
        x = x + self.pos_embed[...].reshape(1, g, g, c).astype(x.dtype)
        x = self.norm(run_blocks(self.blocks, x, False, None, self.remat))
        return self.simmim_outputs(images, x, mask)

    def no_weight_decay(self) -> tuple[str, ...]:
        """``()`` (``mask_token`` decayed, as timm 0.3.2 ``add_weight_decay`` does)."""
        return ()
