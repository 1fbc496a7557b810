"""ViT MAE of the UM-MAE repository: masks from the data loader, optional Secondary Masking.

Follows ``implus/UM-MAE@cb7776b models_mae.py`` (``MaskedAutoencoderViT`` with ``vis_mask_ratio``,
factory ``mae_vit_base_patch16_dec512d2b``, :253-258). Differences from ``facebookresearch/mae``
(:mod:`jaxmim.methods.mae.vit`): the mask is an input (Uniform Sampling or RS,
``mask_transform.py``), visible tokens are gathered in raster order, the decoder concatenates
``[cls, visible + pos, mask_token + pos]`` without unshuffling, and with ``vis_mask_ratio > 0`` a
random ``num_secondary`` of the visible tokens become ``vis_mask_token + pos_embed``. The
building blocks and key names are MAE's (``jaxmim.models.vit``), plus ``vis_mask_token``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmim import layers as L
from jaxmim import ops, sharding
from jaxmim.methods.ummae import masking as U
from jaxmim.methods.ummae.common import MaskingInputs, norm_pix_target
from jaxmim.models.pos_embed import get_2d_sincos_pos_embed
from jaxmim.models.vit import Block, PatchEmbed, dense, vit_layer_id, xavier_uniform
from jaxmim.registry import Backbone, register_model

__all__ = ['MaskedAutoencoderViTUM']


@register_model('mae_vit_base_patch16_dec512d2b', classifier='vit_base_patch16_224', patch_size=16, embed_dim=768,
                depth=12, num_heads=12, decoder_depth=2)
@register_model('mae_vit_demo_patch4_32_dec128d2b_um', classifier='vit_demo_patch4_32',
                data_defaults=dict(image_size=32, eval_crop_ratio=1.0), img_size=32, patch_size=4, embed_dim=128,
                depth=6, num_heads=4, decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4)
class MaskedAutoencoderViTUM(nnx.Module, MaskingInputs, Backbone):
    """UM-MAE's ``MaskedAutoencoderViT`` (``models_mae.py:21-212``).

    Args (official names and defaults): img_size, patch_size, in_chans, embed_dim, depth,
    num_heads, decoder_embed_dim, decoder_depth, decoder_num_heads, mlp_ratio, norm_eps (1e-6),
    norm_pix_loss, mask_ratio (0.75), vis_mask_ratio (0: no ``vis_mask_token``); plus sampling
    (``'random'`` = RS, the repo default without ``--mask_regular``; ``'uniform'`` /
    ``'uniform_block'``) and ``official_decoder_pos`` (accepted for the method block, no effect:
    this decoder has no order mismatch), attn_implementation (:data:`jaxmim.ops.ATTN_IMPLEMENTATIONS`),
    remat (per encoder and decoder block, :data:`jaxmim.layers.REMAT_POLICIES`; same numbers).
    rngs: NNX streams.

    Variables: the MAE keys (``cls_token``, ``pos_embed`` / ``decoder_pos_embed`` sin-cos Buffers
    with a class row, ``patch_embed.proj``, ``blocks.{i}``, ``norm``, ``decoder_embed``, ``mask_token``,
    ``decoder_blocks.{i}``, ``decoder_norm``, ``decoder_pred``) and ``vis_mask_token`` (1, 1, D).

    Call: ``model(images, *, mask, noise, train=False, rng=None)``; ``mask`` ``(B, L)`` (1 = masked,
    exactly ``int(mask_ratio * L)`` per sample), ``noise`` ``(B, n_visible)``. Returns ``loss``
    (MSE on the primary-masked patches), ``pred`` ``(B, L, p*p*C)`` raster, ``pred_seq`` (official
    order: visible raster then masked raster), ``mask``, ``secondary_mask`` ``(B, L)``.

    Raises:
      ValueError: bad ratios or input shapes.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 1024,
                 depth: int = 24, num_heads: int = 16, decoder_embed_dim: int = 512, decoder_depth: int = 8,
                 decoder_num_heads: int = 16, mlp_ratio: float = 4.0, norm_eps: float = 1e-6,
                 norm_pix_loss: bool = False, mask_ratio: float = 0.75, vis_mask_ratio: float = 0.0,
                 sampling: str = 'random', official_decoder_pos: bool = False,
                 attn_implementation: str | None = None, remat: str = 'none', *, rngs: nnx.Rngs):
        U.check_sampling(mask_ratio, sampling)
        self.remat = L.check_remat(remat)
        if not 0.0 <= vis_mask_ratio < 1.0:
            raise ValueError(f'vis_mask_ratio must be in [0, 1), got {vis_mask_ratio}')
        self.img_size, self.patch_size, self.in_chans, self.stride = img_size, patch_size, in_chans, patch_size
        self.depth, self.norm_pix_loss = depth, norm_pix_loss
        self.mask_ratio, self.vis_mask_ratio, self.sampling = mask_ratio, vis_mask_ratio, sampling
        self.official_decoder_pos = official_decoder_pos
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, 'mae', rngs=rngs)
        self.grid = self.patch_embed.grid_size
        if sampling != 'random' and self.grid % 2:
            raise ValueError(f'Uniform Sampling needs an even patch grid, got {self.grid}')
        self.num_patches = self.grid ** 2
        self.n_visible = U.num_visible(self.num_patches, mask_ratio)
        self.noise_len = self.n_visible
        if vis_mask_ratio > 0:
            self.vis_mask_token = nnx.Param(L.trunc_normal_02(rngs.params(), (1, 1, embed_dim)),
                                            **sharding.axes(None, None, 'embed'))
        self.cls_token = nnx.Param(L.trunc_normal_02(rngs.params(), (1, 1, embed_dim)),
                                   **sharding.axes(None, None, 'embed'))
        self.pos_embed = L.Buffer(jnp.asarray(get_2d_sincos_pos_embed(embed_dim, self.grid, True))[None],
                                  **sharding.axes(None, 'tokens', 'embed'))
        self.blocks = nnx.List([Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_eps=norm_eps,
                                      kernel_init=xavier_uniform, rngs=rngs) for _ in range(depth)])
        self.norm = L.layer_norm(embed_dim, norm_eps, rngs)
        self.decoder_embed = dense(embed_dim, decoder_embed_dim, rngs, xavier_uniform, axes=('embed', 'embed'))
        self.mask_token = nnx.Param(L.trunc_normal_02(rngs.params(), (1, 1, decoder_embed_dim)),
                                    **sharding.axes(None, None, 'embed'))
        self.decoder_pos_embed = L.Buffer(
            jnp.asarray(get_2d_sincos_pos_embed(decoder_embed_dim, self.grid, True))[None],
            **sharding.axes(None, 'tokens', 'embed'))
        self.decoder_blocks = nnx.List([Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True,
                                              norm_eps=norm_eps, kernel_init=xavier_uniform, rngs=rngs)
                                        for _ in range(decoder_depth)])
        self.decoder_norm = L.layer_norm(decoder_embed_dim, norm_eps, rngs)
        self.decoder_pred = dense(decoder_embed_dim, patch_size ** 2 * in_chans, rngs, xavier_uniform,
                                  axes=('embed', 'pixels'))
        ops.set_attn_implementation(self, attn_implementation)

    def __call__(self, images: jax.Array, *, mask: jax.Array, noise: jax.Array, train: bool = False,
                 rng: jax.Array | None = None) -> dict[str, Any]:
        del train, rng
        mask = self._check_mask(images, mask, noise)
        b = images.shape[0]
        vis_idx, masked_idx = U.unit_orders(mask, self.n_visible)
        take = lambda t, idx: jnp.take_along_axis(t, idx[:, :, None], axis=1)   # noqa: E731
        # encoder (models_mae.py:132-166)
        pos = self.pos_embed[...][:, 1:, :]
        x = sharding.constrain(self.patch_embed(images), 'batch', None, None)
        x = x + pos.astype(x.dtype)
        x = take(x, vis_idx)
        secondary = jnp.zeros((b, self.n_visible), bool)
        if self.vis_mask_ratio > 0:
            secondary = U.secondary_mask_vit(noise, self.vis_mask_ratio)
            tok = take(jnp.broadcast_to(self.vis_mask_token[...] + pos, (b,) + pos.shape[1:]), vis_idx)
            w = secondary[..., None].astype(x.dtype)
            x = x * (1.0 - w) + tok.astype(x.dtype) * w
        cls = (self.cls_token[...] + self.pos_embed[...][:, :1, :]).astype(x.dtype)
        x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, x.shape[-1])), x], axis=1)
        for blk in self.blocks:
            x = L.call_block(blk, x, train=False, rng=None, remat=self.remat)
        x = sharding.constrain(self.norm(x), 'batch', None, None)
        # decoder (models_mae.py:169-196)
        x = self.decoder_embed(x)
        dpos = jnp.broadcast_to(self.decoder_pos_embed[...][:, 1:, :],
                                (b, self.num_patches, x.shape[-1])).astype(x.dtype)
        x_ = jnp.concatenate([x[:, 1:] + take(dpos, vis_idx),
                              self.mask_token[...].astype(x.dtype) + take(dpos, masked_idx)], axis=1)
        x = jnp.concatenate([x[:, :1] + self.decoder_pos_embed[...][:, :1, :].astype(x.dtype), x_], axis=1)
        for blk in self.decoder_blocks:
            x = L.call_block(blk, x, train=False, rng=None, remat=self.remat)
        x = sharding.constrain(x, 'batch', None, None)
        pred_seq = self.decoder_pred(self.decoder_norm(x))[:, 1:].astype(jnp.float32)
        # loss (models_mae.py:198-212) on the primary-masked patches only
        target = take(L.patchify(images.astype(jnp.float32), self.patch_size), masked_idx)
        if self.norm_pix_loss:
            target = norm_pix_target(target)
        loss = ((pred_seq[:, self.n_visible:] - target) ** 2).mean()
        order = jnp.concatenate([vis_idx, masked_idx], axis=1)
        pred = take(pred_seq, jnp.argsort(order, axis=1))
        sec_raster = jnp.zeros((b, self.num_patches), jnp.float32).at[jnp.arange(b)[:, None], vis_idx].set(
            secondary.astype(jnp.float32))
        return {'loss': loss, 'pred': pred, 'pred_seq': pred_seq, 'mask': mask.astype(jnp.float32),
                'secondary_mask': sec_raster}

    def no_weight_decay(self) -> tuple[str, ...]:
        """``()``: timm 0.3.2 ``add_weight_decay`` with no skip list; ``cls_token``, ``mask_token`` and
        ``vis_mask_token`` are decayed."""
        return ()

    def layer_id(self, name: str) -> int:
        """ViT ids (:func:`jaxmim.models.vit.vit_layer_id`); decoder and tokens -> depth + 1."""
        return vit_layer_id(name, self.depth)

    @property
    def num_layer_ids(self) -> int:
        """``depth + 2``."""
        return self.depth + 2
