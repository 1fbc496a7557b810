"""UM-MAE pre-training on the Swin variant and the repository's SimMIM baseline on it.

Follows ``implus/UM-MAE@cb7776b`` ``models_mae_swin.py:283-583`` (``MaskedAutoencoderSwin``,
``mae_swin_tiny_256``, ``mae_swin_large_256``) and ``models_simmim_swin.py:27-218`` (``SimMIMSwin``,
``simmim_swin_tiny_256``). The blocks (log-spaced MLP position bias fed by the absolute token
coordinates ``pos_hw``) and the fine-tuning classifier ``Swin`` are the backbone's,
:mod:`jaxmim.models.ummae_swin`; attribute names are the official state-dict keys. Layout: images
``(B, H, W, C)``, tokens as maps ``(B, h, w, C)``, ``pos_hw`` as ``(Bp, h, w, 2)``.
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
from jaxmim.models.ummae_swin import DATA_256, SWIN_LARGE, SWIN_TINY, PatchEmbed, pos_grid, run_blocks, swin_blocks
from jaxmim.models.vit import dense, xavier_uniform
from jaxmim.registry import Backbone, register_model

__all__ = ['MaskedAutoencoderSwin', 'SimMIMSwin']


@register_model('mae_swin_tiny_256', **SWIN_TINY, img_size=256, stride=16, window_size=8, classifier='swin_tiny_256',
                data_defaults=DATA_256)
@register_model('mae_swin_large_256', **SWIN_LARGE, img_size=256, stride=16, window_size=8, posmlp_dim=64,
                decoder_depth=8, classifier='swin_large_256', data_defaults=DATA_256)
@register_model('mae_swin_large_256_dec512d2b', **SWIN_LARGE, img_size=256, stride=16, window_size=8, posmlp_dim=32,
                decoder_depth=2, data_defaults=DATA_256)
class MaskedAutoencoderSwin(nnx.Module, MaskingInputs, PyramidMAEDecoder, UMMAEHooks, Backbone):
    """UM-MAE pre-training of the Swin variant (``models_mae_swin.py:283-583``).

    Args (official names and defaults, plus masking settings): img_size, patch_size, in_chans,
    stride (mask unit, 16 px), embed_dim, depths, num_heads, mlp_ratio (encoder and decoder),
    window_size (8: the encoder runs on the half-resolution compact map), posmlp_dim,
    decoder_embed_dim, decoder_depth, decoder_num_heads, norm_eps (eps of ``patch_embed.norm``,
    ``downsample.norm``, ``norm``, ``decoder_blocks``, ``decoder_norm``: the factory's ``norm_layer``,
    1e-6), norm_pix_loss, vis_mask_ratio (``vis_mask_token`` exists only when > 0), mask_ratio (0.75),
    sampling ('uniform' | 'uniform_block'), official_decoder_pos (the official visible pos-embed
    order, ``models_mae_swin.py:499-548``), block_norm_eps (eps of every encoder block's ``norm1`` /
    ``norm2``: 1e-5, ``models_mae_swin.py:326-343`` never passes ``norm_layer`` to ``SwinBlock``),
    attn_implementation (:data:`jaxmim.ops.ATTN_IMPLEMENTATIONS`, encoder and decoder), remat (per
    encoder and decoder block, :data:`jaxmim.layers.REMAT_POLICIES`; same numbers), rngs.

    Forward (``forward_encoder``, ``models_mae_swin.py:437-497``): patch embed + norm; Secondary
    Masking, the secondary-masked units becoming ``patch_embed.norm(vis_mask_token)``; compaction of
    the tokens and of the absolute coordinates ``pos_hw`` (per sample); blocks on the
    half-resolution map (stage i at ``(img/patch) / 2^(i+1)``); ``norm``; decoder and loss of
    :class:`jaxmim.methods.ummae.decoder.PyramidMAEDecoder`.

    Call: ``model(images, *, mask, noise, train=False, rng=None)``.

    Raises:
      ValueError: bad sizes, a sampling that is not uniform, bad input shapes.
    """

    def __init__(self, img_size: int = 256, patch_size: int = 4, in_chans: int = 3, stride: int = 16,
                 embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 mlp_ratio: float = 4.0, window_size: int = 8, posmlp_dim: int = 32, decoder_embed_dim: int = 512,
                 decoder_depth: int = 2, decoder_num_heads: int = 16, norm_eps: float = 1e-6,
                 norm_pix_loss: bool = False, vis_mask_ratio: float = 0.0, mask_ratio: float = 0.75,
                 sampling: str = 'uniform', official_decoder_pos: bool = False, block_norm_eps: float = 1e-5,
                 attn_implementation: str | None = None, remat: str = 'none', *, rngs: nnx.Rngs):
        self.grid, self.k = check_um_pretrain_args('MaskedAutoencoderSwin', img_size, patch_size, stride,
                                                   len(depths), mask_ratio, sampling, vis_mask_ratio)
        self.remat = L.check_remat(remat)
        self.img_size, self.patch_size, self.in_chans, self.stride = img_size, patch_size, in_chans, stride
        self.embed_dim = embed_dim
        self.mask_ratio, self.sampling, self.vis_mask_ratio = mask_ratio, sampling, vis_mask_ratio
        self.norm_pix_loss, self.official_decoder_pos = norm_pix_loss, official_decoder_pos
        self.noise_len = self.grid * self.grid
        self.n_visible = U.num_visible(self.noise_len, mask_ratio)
        if vis_mask_ratio > 0:
            self.vis_mask_token = nnx.Param(L.trunc_normal_02(rngs.params(), (1, 1, embed_dim)),
                                            **sharding.axes(None, None, 'embed'))
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, norm_eps, 'mae', rngs=rngs)
        self.grid_size = img_size // patch_size
        self.blocks = swin_blocks(embed_dim, depths, num_heads, window_size, mlp_ratio, posmlp_dim,
                                  [0.0] * sum(depths), block_norm_eps, norm_eps, self.grid_size // 2, rngs,
                                  pos_extent=self.grid_size)
        enc_dim = embed_dim * 2 ** (len(depths) - 1)
        self.norm = L.layer_norm(enc_dim, norm_eps, rngs)
        self.build_decoder(enc_dim, decoder_embed_dim, decoder_depth, decoder_num_heads, mlp_ratio, norm_eps, rngs)
        ops.set_attn_implementation(self, attn_implementation)

    def forward_encoder(self, images: jax.Array, mask: jax.Array, noise: jax.Array
                        ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Returns the encoder map ``(B, M/4, M/4, 8E)``, block choices ``(B, M/2, M/2)`` and the
        secondary mask ``(B, L)`` bool."""
        x = sharding.constrain(self.patch_embed(images), 'batch', None, None, None)
        b, g = x.shape[0], x.shape[1]
        choice = U.block_choice(mask, self.grid)
        x = U.compact(x, choice, self.k)
        if self.vis_mask_ratio > 0:
            still = U.secondary_visible_pyramid(mask, noise, self.n_visible, self.vis_mask_ratio)
            secondary = jnp.logical_and(~mask, ~still)
            sec_c = U.compact(U.upsample_units(secondary.reshape(b, self.grid, self.grid), self.k)[..., None],
                              choice, self.k)
            token = self.patch_embed.norm(self.vis_mask_token[...]).astype(x.dtype)
            x = jnp.where(sec_c, token, x)
        else:
            secondary = jnp.zeros_like(mask)
        pos = jnp.broadcast_to(jnp.asarray(pos_grid(g), x.dtype), (b, g, g, 2))
        pos = U.compact(pos, choice, self.k)
        x = run_blocks(self.blocks, x, pos, False, None, self.remat)
        return self.norm(x), choice, secondary

    def __call__(self, images: jax.Array, *, mask: jax.Array, noise: jax.Array, train: bool = False,
                 rng: jax.Array | None = None) -> dict[str, Any]:
        del train, rng
        mask = self._check_mask(images, mask, noise)
        latent, choice, secondary = self.forward_encoder(images, mask, noise)
        pred_seq, order = self.forward_decoder(latent, mask, choice)
        return self.mae_outputs(images, pred_seq, order, mask, secondary)

    def no_weight_decay(self) -> tuple[str, ...]:
        """``()``: mask tokens and posmlp conv kernels are decayed (timm 0.3.2 ``add_weight_decay``,
        ``main_pretrain.py:198-199``)."""
        return ()


@register_model('simmim_swin_tiny_256', **SWIN_TINY, img_size=256, stride=16, window_size=16,
                classifier='swin_tiny_256', data_defaults=DATA_256)
class SimMIMSwin(nnx.Module, MaskingInputs, SimMIMHead, UMMAEHooks, Backbone):
    """UM-MAE's SimMIM baseline on the Swin variant (``models_simmim_swin.py:27-218``).

    Full resolution (window 16): the normalised patch embedding of masked tokens is replaced by
    ``mask_token`` (``x * (1 - w) + mask_token * w``), blocks with the integer grid ``pos_hw`` shared
    by the batch, ``norm``, ``decoder_pred`` Linear -> PixelShuffle(2), L1 on masked units.

    Args: as :class:`MaskedAutoencoderSwin` without decoder / Secondary Masking arguments;
    ``sampling`` defaults to ``'random'`` (Makefile line 54: no ``--mask_regular``); ``norm_eps``
    (1e-6 in the factory) is the eps of ``patch_embed.norm``, ``downsample.norm`` and ``norm``,
    ``block_norm_eps`` (1e-5: ``models_simmim_swin.py:60-77`` never passes ``norm_layer`` to
    ``SwinBlock``) that of every block's ``norm1`` / ``norm2``; attn_implementation and remat as there.

    Call: ``model(images, *, mask, train=False, rng=None)``.

    Raises:
      ValueError: bad sizes or input shapes.
    """

    def __init__(self, img_size: int = 256, patch_size: int = 4, in_chans: int = 3, stride: int = 16,
                 embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 mlp_ratio: float = 4.0, window_size: int = 8, posmlp_dim: int = 32, norm_eps: float = 1e-6,
                 norm_pix_loss: bool = False, mask_ratio: float = 0.75, sampling: str = 'random',
                 block_norm_eps: float = 1e-5, attn_implementation: str | None = None, remat: str = 'none', *,
                 rngs: nnx.Rngs):
        U.check_sampling(mask_ratio, sampling)
        self.remat = L.check_remat(remat)
        self.grid, self.k = check_pyramid_strides(img_size, patch_size, stride, len(depths))
        self.img_size, self.patch_size, self.in_chans, self.stride = img_size, patch_size, in_chans, stride
        self.mask_ratio, self.sampling, self.norm_pix_loss = mask_ratio, sampling, norm_pix_loss
        self.noise_len = 0
        self.mask_token = nnx.Param(L.trunc_normal_02(rngs.params(), (1, 1, embed_dim)),
                                    **sharding.axes(None, None, 'embed'))
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, norm_eps, 'mae', rngs=rngs)
        self.grid_size = img_size // patch_size
        self.blocks = swin_blocks(embed_dim, depths, num_heads, window_size, mlp_ratio, posmlp_dim,
                                  [0.0] * sum(depths), block_norm_eps, norm_eps, self.grid_size, rngs)
        enc_dim = embed_dim * 2 ** (len(depths) - 1)
        self.norm = L.layer_norm(enc_dim, norm_eps, rngs)
        self.decoder_pred = dense(enc_dim, 4 * stride ** 2 * in_chans, rngs, xavier_uniform, axes=('embed', 'pixels'))
        ops.set_attn_implementation(self, attn_implementation)

    def __call__(self, images: jax.Array, *, mask: jax.Array, train: bool = False,
                 rng: jax.Array | None = None) -> dict[str, Any]:
        """``images`` ``(B, img_size, img_size, in_chans)``, ``mask`` ``(B, L)`` (L = (img_size/stride)^2 units,
        raster order, 1 = masked) -> ``{'loss'`` scalar, ``'pred'`` ``(B, L, stride^2 * in_chans)``, ``'mask'`` and
        ``'secondary_mask'`` (zeros) ``(B, L)``}, all float32.

        Raises:
          ValueError: ``images`` or ``mask`` of another shape.
        """
        del train, rng
        mask = self._check_mask(images, mask)
        x = sharding.constrain(self.patch_embed(images), 'batch', None, None, None)
        b = x.shape[0]
        w = U.upsample_units(mask.reshape(b, self.grid, self.grid), self.k)[..., None].astype(x.dtype)
        x = x * (1.0 - w) + self.mask_token[...].astype(x.dtype) * w
        x = run_blocks(self.blocks, x, jnp.asarray(pos_grid(self.grid_size), x.dtype), False, None, self.remat)
        return self.simmim_outputs(images, self.norm(x), mask)

    def no_weight_decay(self) -> tuple[str, ...]:
        """``()`` (``mask_token`` and posmlp kernels decayed)."""
        return ()
