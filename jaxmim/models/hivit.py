"""HiViT (Zhang et al., "HiViT: A Simpler and More Efficient Design of Hierarchical Vision
Transformer", ICLR 2023) in Flax NNX.

Follows ``zhangxiaosong18/hivit@2718339 self_supervised/models/models_hivit.py`` (``HiViT``,
``BlockWithRPE``, ``PatchEmbed``, ``PatchMerge``) and its supervised copy
``supervised/models/hivit.py``; the mmpretrain variants follow
``open-mmlab/mmpretrain@ee7f2e8 mmpretrain/models/backbones/hivit.py``. Bare ``file:line``
references below point into ``zhangxiaosong18/hivit@2718339 self_supervised/models/``.

Data flow (``models_hivit.py:139-279``; ``C`` = ``embed_dim``, the main-stage width,
``S = len(depths)`` stages):

1. ``patch_embed``: conv ``k = s = patch_size / inner_patches`` (4x4 px for the official
   16 / 4) to ``C / 2^(S-1)`` channels over the whole image, then the map is regrouped per
   ``patch_size`` x ``patch_size``-px **unit** (:func:`jaxmim.models.windows.units_from_map`):
   ``(B, Hp*Wp, i, i, c)`` with ``i = inner_patches``, units in raster order, inner tokens in
   (row, col) order; then LayerNorm (``patch_norm``).
2. Stages ``0 .. S-2``: ``2 * depths[s]`` MLP-only blocks (no ``norm1`` / ``attn``, MLP ratio
   ``stem_mlp_ratio``) acting on every 4x4-px token separately, then :class:`PatchMerge` inside
   each unit (Swin channel order), halving the inner grid and doubling the channels.
3. Squeeze the 1x1 inner grid: ``(B, N, C)``; add the absolute position embedding
   ``absolute_pos_embed`` (1, N, C) (``ape``); dropout.
4. Main stage: ``depths[-1]`` pre-norm transformer blocks with **global** attention over the N
   units, optionally with a relative position bias over the unit grid (``rpe``; Swin's index
   formula with the window = the whole ``Hp x Wp`` grid).
5. Classifier: mean over units -> ``fc_norm`` -> ``head``.

Nothing before the main stage mixes units, so MAE masking is a gather of units right after the
patch embedding (``forward_features(..., ids_keep=...)``; ``models_hivit.py:233-272``).

All blocks live in ONE flat ``blocks`` list with the official indices (MLP blocks, merges and
main blocks interleaved, e.g. base: 0-3 MLP, 4 merge, 5-8 MLP, 9 merge, 10-29 attention), so
official state_dict keys map 1:1 (the list is built at ``models_hivit.py:190-209``).

Numerics: LayerNorm eps 1e-6 (official, ``models_hivit.py:286``; mmpretrain classification
1e-5, ``mmpretrain/models/utils/norm.py:120``), biased variance; exact erf GELU; ``q`` scaled
before ``q @ kᵀ`` (``models_hivit.py:35-36``); logits + bias and softmax in float32
(:func:`jaxmim.ops.attention`); the self-supervised copy's clamp of the logits to the float32 range
(``models_hivit.py:46``; the other copies have none) is the identity on finite logits and omitted.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmim import layers as L
from jaxmim import ops, sharding
from jaxmim.models.pos_embed import (bicubic_resize, get_2d_sincos_pos_embed, resample_abs_pos_embed,
                                     torch_bicubic_resize)
from jaxmim.models.vit import Mlp, dense
from jaxmim.models.stacking import check_scan, run_blocks
from jaxmim.models.windows import (map_from_units, masked_relative_position_index, relative_position_index,
                                   relative_position_index_hw, units_from_map)
from jaxmim.registry import Backbone, check_feature_images, check_out_indices, register_model

__all__ = ['merge_inner', 'HiViTAttention', 'BlockWithRPE', 'PatchMerge', 'PatchEmbed', 'HiViT', 'hivit_layer_id',
           'RPE_INITS']

RPE_INITS = ('trunc_normal', 'zeros')
"""Accepted ``rpe_init`` values: ``'trunc_normal'`` (std .02; supervised copy and mmpretrain) and
``'zeros'`` (self-supervised copy, which never initialises its tables,
``models_hivit.py:20-22``: MAE fine-tuning starts them at exactly 0)."""


# ----------------------------------------------------------------------------------------
# Modules (official names).
# ----------------------------------------------------------------------------------------

class HiViTAttention(nnx.Module):
    """Global multi-head self-attention with an optional relative position bias
    (``models_hivit.py:10-53`` ``Attention``).

    ``qkv`` Dense(C, 3C) (output channel ``s*C + h*hd + d`` = q/k/v s of head h), ``q *= scale``,
    logits ``q @ kᵀ`` ``(B, nH, N, N)`` plus ``bias[b?, h, p, q] = table[rpe_index[b?, p, q], h]``
    in float32, softmax over keys, dropout, ``@ v`` (:func:`jaxmim.ops.attention`), ``proj``.

    Args:
      dim: channels C.
      num_heads: heads (C divisible).
      qkv_bias: bias in ``qkv``.
      qk_scale: overrides ``head_dim ** -0.5``.
      attn_drop, proj_drop: dropout rates.
      rpe_grid: side G of the unit grid; when given the block owns
        ``relative_position_bias_table`` ((2G-1)^2, num_heads).
      rpe_init: ``'trunc_normal'`` (N(0, .02)) or ``'zeros'`` (:data:`RPE_INITS`).
      attn_implementation: :data:`jaxmim.ops.ATTN_IMPLEMENTATIONS`.
      rngs: NNX RNG streams.

    Call: ``attn(x, rpe_index=None, *, train, rng, rpe_size=None)``: ``x`` (B, N, C); ``rpe_index``
    None, an ``(N, N)`` or a per-sample ``(B, N, N)`` integer index into the table; ``rpe_size``
    ``(2hp-1, 2wp-1)``: index a copy of the table resized bicubically to that offset grid
    (:func:`jaxmim.models.pos_embed.bicubic_resize`; the identity at the built grid), for inputs of
    another size (:meth:`HiViT.features`).

    Raises:
      ValueError: C not divisible by ``num_heads``, unknown ``rpe_init`` / ``attn_implementation``, or
        (call) an index without a table.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, qk_scale: float | None = None,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, *, rpe_grid: int | None = None,
                 rpe_init: str = 'trunc_normal', attn_implementation: str | None = None, rngs: nnx.Rngs):
        if num_heads <= 0 or dim % num_heads:
            raise ValueError(f'num_heads {num_heads} must be positive and divide dim {dim}')
        if rpe_init not in RPE_INITS:
            raise ValueError(f'rpe_init must be one of {RPE_INITS}, got {rpe_init!r}')
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.qkv = dense(dim, 3 * dim, rngs, use_bias=qkv_bias, axes=('embed', 'heads'))
        self.proj = dense(dim, dim, rngs, axes=('heads', 'embed'))
        self.attn_drop, self.proj_drop = attn_drop, proj_drop
        self.attn_implementation = ops.check_attn_implementation(attn_implementation)
        if rpe_grid:
            shape = ((2 * rpe_grid - 1) ** 2, num_heads)
            init = jnp.zeros(shape, jnp.float32) if rpe_init == 'zeros' else L.trunc_normal_02(rngs.params(), shape)
            self.relative_position_bias_table = nnx.Param(init, **sharding.axes('relpos', None))
        else:
            self.relative_position_bias_table = None

    def __call__(self, x: jax.Array, rpe_index: jax.Array | np.ndarray | None = None, *, train: bool = False,
                 rng: jax.Array | None = None, rpe_size: tuple[int, int] | None = None) -> jax.Array:
        b, n, c = x.shape
        nh = self.num_heads
        k_attn, k_proj = L.split_key(rng, 2)
        qkv = self.qkv(x).reshape(b, n, 3, nh, c // nh)
        bias = None
        if rpe_index is not None:
            if self.relative_position_bias_table is None:
                raise ValueError('a relative position index was given to an attention without a bias table')
            table = self.relative_position_bias_table[...]
            side = math.isqrt(table.shape[0])
            if rpe_size is not None and tuple(rpe_size) != (side, side):
                table = bicubic_resize(table.reshape(side, side, nh), rpe_size).reshape(-1, nh)
            bias = jnp.moveaxis(table[rpe_index], -1, -3)                   # (B?, nH, N, N)
        out = ops.attention(qkv[:, :, 0] * jnp.asarray(self.scale, qkv.dtype), qkv[:, :, 1], qkv[:, :, 2],
                            scale=1.0, bias=bias, implementation=self.attn_implementation,
                            dropout_rate=self.attn_drop if train else 0.0, dropout_rng=k_attn).reshape(b, n, c)
        return L.dropout(self.proj(out), self.proj_drop, train, k_proj)


class BlockWithRPE(nnx.Module):
    """HiViT block (``models_hivit.py:56-82``).

    ``num_heads > 0``: ``x + dp(attn(norm1(x)))`` then ``x + dp(mlp(norm2(x)))`` on ``(B, N, C)``.
    ``num_heads == 0`` (early stages): no ``norm1`` / ``attn``; only ``x + dp(mlp(norm2(x)))``,
    per token on any ``(..., C)`` array (``(B, N, h, w, C)``). One drop-path rate for both
    branches. MLP hidden ``int(dim * mlp_ratio)``, exact GELU.

    Args:
      dim, num_heads, mlp_ratio, qkv_bias, qk_scale: as the official block.
      drop, attn_drop, drop_path: dropout / attention dropout / stochastic depth rates.
      norm_eps: LayerNorm epsilon.
      rpe_grid, rpe_init: see :class:`HiViTAttention` (attention blocks only).
      rngs: NNX RNG streams.
    """

    def __init__(self, dim: int, num_heads: int = 0, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: float | None = None, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0, norm_eps: float = 1e-6, *, rpe_grid: int | None = None,
                 rpe_init: str = 'trunc_normal', rngs: nnx.Rngs):
        with_attn = num_heads > 0
        self.norm1 = L.layer_norm(dim, norm_eps, rngs) if with_attn else None
        self.attn = (HiViTAttention(dim, num_heads, qkv_bias, qk_scale, attn_drop, drop, rpe_grid=rpe_grid,
                                    rpe_init=rpe_init, rngs=rngs) if with_attn else None)
        self.drop_path = drop_path
        self.norm2 = L.layer_norm(dim, norm_eps, rngs)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop, rngs=rngs)

    def __call__(self, x: jax.Array, rpe_index=None, *, train: bool = False,
                 rng: jax.Array | None = None, rpe_size: tuple[int, int] | None = None) -> jax.Array:
        k_attn, k_dp1, k_mlp, k_dp2 = L.split_key(rng, 4)
        if self.attn is not None:
            x = x + L.drop_path(self.attn(self.norm1(x), rpe_index, train=train, rng=k_attn, rpe_size=rpe_size),
                                self.drop_path, train, k_dp1)
        return x + L.drop_path(self.mlp(self.norm2(x), train=train, rng=k_mlp), self.drop_path, train, k_dp2)


def merge_inner(x: jax.Array) -> jax.Array:
    """Swin's 2x2 neighbourhood concatenation on the two axes before the channels.

    ``(..., h, w, C)`` -> ``(..., h/2, w/2, 4C)`` with channel blocks
    ``[x(0,0), x(1,0), x(0,1), x(1,1)]`` in (row, col) offsets: x1 is the odd **row** (Swin
    ``PatchMerging`` order; ``models_hivit.py:129-134``).
    """
    return jnp.concatenate([x[..., 0::2, 0::2, :], x[..., 1::2, 0::2, :],
                            x[..., 0::2, 1::2, :], x[..., 1::2, 1::2, :]], axis=-1)


class PatchMerge(nnx.Module):
    """Patch merging inside each unit (``models_hivit.py:121-136``): ``(B, N, h, w, C)`` ->
    :func:`merge_inner` ``(B, N, h/2, w/2, 4C)`` -> LayerNorm(4C) -> ``reduction`` Dense(4C -> 2C,
    no bias)."""

    def __init__(self, dim: int, norm_eps: float = 1e-6, *, rngs: nnx.Rngs):
        self.norm = L.layer_norm(4 * dim, norm_eps, rngs)
        self.reduction = dense(4 * dim, 2 * dim, rngs, use_bias=False, axes=('embed', 'embed'))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.reduction(self.norm(merge_inner(x)))


class PatchEmbed(nnx.Module):
    """Conv stem regrouped per unit (``models_hivit.py:85-118``).

    ``(B, H, W, C_in)`` -> conv k = s = ``patch_size // inner_patches`` (PyTorch default init) ->
    ``(B, H/k, W/k, D)`` -> :func:`~jaxmim.models.windows.units_from_map` ``(B, (H/p)*(W/p), i, i, D)``
    -> LayerNorm (when ``patch_norm``).

    Raises:
      ValueError: sizes that do not divide, or (call) images not ``(B, img_size, img_size, in_chans)``.
    """

    def __init__(self, img_size: int, patch_size: int, inner_patches: int, in_chans: int, embed_dim: int,
                 patch_norm: bool = True, norm_eps: float = 1e-6, *, rngs: nnx.Rngs):
        if patch_size % inner_patches:
            raise ValueError(f'inner_patches {inner_patches} must divide patch_size {patch_size}')
        if img_size % patch_size:
            raise ValueError(f'patch_size {patch_size} must divide img_size {img_size}')
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.inner_patches = inner_patches
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size ** 2
        k = patch_size // inner_patches
        self.proj = nnx.Conv(in_chans, embed_dim, (k, k), strides=k, padding='VALID',
                             kernel_init=L.torch_default_kernel_init,
                             bias_init=L.torch_default_bias_init(in_chans * k * k), rngs=rngs,
                             kernel_metadata=sharding.axes(None, None, 'conv_in', 'conv_out'),
                             bias_metadata=sharding.axes('bias'))
        self.norm = L.layer_norm(embed_dim, norm_eps, rngs) if patch_norm else None

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[1:] != (self.img_size, self.img_size, self.in_chans):
            raise ValueError(f'expected images (B, {self.img_size}, {self.img_size}, {self.in_chans}) in NHWC '
                             f'layout, got shape {x.shape}')
        x = units_from_map(self.proj(L.images_to(x, self.proj)), self.inner_patches)
        return self.norm(x) if self.norm is not None else x


def hivit_layer_id(name: str, main_block: Sequence[int]) -> int:
    """Layer id of parameter ``name`` for layer-wise lr decay, HiViT's MAE fine-tuning rule
    (``self_supervised/util/lr_decay.py:69-84`` ``get_layer_id``).

    ``main_block`` lists the indices of the non-PatchMerge blocks; ``max_layer = len + 1``.
    ``absolute_pos_embed`` / ``patch_embed.*`` -> 0; ``blocks.i.*`` -> (position of i in
    ``main_block``) + 1, a PatchMerge taking the id of the block before it; anything else
    (``fc_norm``, ``head``, MAE's ``norm`` / decoder) -> ``max_layer``.
    """
    max_layer = len(main_block) + 1
    if name in ('cls_token', 'pos_embed', 'absolute_pos_embed') or name.startswith('patch_embed.'):
        return 0
    if name.startswith('blocks.'):
        i = int(name.split('.')[1])
        while i >= 0:
            if i in main_block:
                return list(main_block).index(i) + 1
            i -= 1
        return 0
    return max_layer


_IMAGENET_DATA = dict(image_size=224, eval_crop_ratio=224 / 256)
_DEMO_DATA = dict(image_size=32, eval_crop_ratio=1.0)
_MMP = dict(norm_eps=1e-5, fc_norm=False, head_init_std=0.01, rpe=True)


# Registered variants. Official (zhangxiaosong18/hivit supervised/configs/hivit_*_224.yaml):
# APE + RPE on, LN eps 1e-6, tables trunc_normal .02, drop path of the supervised recipe.
# mmpretrain (configs/_base_/models/hivit/*.py, arch_zoo): LN eps 1e-5, no fc_norm (GAP neck +
# LinearClsHead), rpe True; its 'base' is [2, 2, 24] and 'large' [2, 2, 40]
# (open-mmlab/mmpretrain@ee7f2e8 mmpretrain/models/backbones/hivit.py:385-402).
@register_model('hivit_tiny', data_defaults=_IMAGENET_DATA, embed_dim=384, depths=(1, 1, 10), num_heads=6,
                drop_path_rate=0.05)
@register_model('hivit_small', data_defaults=_IMAGENET_DATA, embed_dim=384, depths=(2, 2, 20), num_heads=6,
                drop_path_rate=0.3)
@register_model('hivit_base', data_defaults=_IMAGENET_DATA, embed_dim=512, depths=(2, 2, 20), num_heads=8,
                drop_path_rate=0.5)
@register_model('hivit_tiny_mmpretrain', data_defaults=_IMAGENET_DATA, embed_dim=384, depths=(1, 1, 10),
                num_heads=6, drop_path_rate=0.05, **_MMP)
@register_model('hivit_small_mmpretrain', data_defaults=_IMAGENET_DATA, embed_dim=384, depths=(2, 2, 20),
                num_heads=6, drop_path_rate=0.3, **_MMP)
@register_model('hivit_base_mmpretrain', data_defaults=_IMAGENET_DATA, embed_dim=512, depths=(2, 2, 24),
                num_heads=8, drop_path_rate=0.5, **_MMP)
@register_model('hivit_large_mmpretrain', data_defaults=_IMAGENET_DATA, embed_dim=768, depths=(2, 2, 40),
                num_heads=12, drop_path_rate=0.5, **_MMP)
@register_model('hivit_demo_patch4_32', data_defaults=_DEMO_DATA, img_size=32, patch_size=4, embed_dim=128,
                depths=(1, 1, 6), num_heads=4, num_classes=10, drop_path_rate=0.1, rpe_init='zeros',
                head_init_std=2e-5)
class HiViT(nnx.Module, Backbone):
    """HiViT classifier (official ``HiViT``, ``models_hivit.py:139-279``).

    Args (official names and defaults of ``HiViT.__init__`` unless noted):
      img_size: square input side in pixels (224).
      patch_size: unit side in pixels (16): the main-stage token.
      inner_patches: inner tokens per unit side (4); must equal ``2 ** (len(depths) - 1)``.
      in_chans: input channels.
      num_classes: classes of ``head``; 0 gives no head (pooled features).
      embed_dim: main-stage width C; stage s has ``C / 2^(S-1-s)`` channels.
      depths: per stage; early stage s builds ``2 * depths[s]`` MLP blocks, the last stage
        ``depths[-1]`` attention blocks.
      num_heads: heads of the main stage.
      stem_mlp_ratio, mlp_ratio: MLP ratios of the early / main blocks (3, 4).
      qkv_bias, qk_scale: attention options.
      drop_rate, attn_drop_rate: dropout rates (0 in every recipe).
      drop_path_rate: stochastic depth, ``linspace(0, rate, sum(depths) + sum(depths[:-1]))``
        over all blocks in order, merges excluded (``models_hivit.py:187``, ``:201``).
      norm_eps: LayerNorm epsilon (1e-6 official; 1e-5 mmpretrain). Official default
        ``nn.LayerNorm`` is 1e-5 but every factory / builder passes 1e-6.
      ape: absolute position embedding ``absolute_pos_embed`` (1, N, C).
      rpe: relative position bias tables in the main blocks.
      rpe_init: table init, :data:`RPE_INITS` (jaxmim argument; default the supervised copy's).
      patch_norm: LayerNorm after the patch embedding.
      fc_norm: LayerNorm after pooling (jaxmim argument: False for mmpretrain's classifier,
        which has none).
      ape_init: ``'trunc_normal'`` (N(0, .02), the classifiers) or ``'sincos'`` (MAE's 2-D
        sin-cos table, column half first; still a trainable ``nnx.Param``).
      head_init_std: std of the normal init of ``head.kernel`` (0.02 timm; MAE fine-tuning
        re-initialises it with 2e-5, ``main_finetune.py:249``).
      attn_implementation: of every attention, :data:`jaxmim.ops.ATTN_IMPLEMENTATIONS` (jaxmim argument).
      remat: per block, :data:`jaxmim.layers.REMAT_POLICIES` (jaxmim argument; same numbers).
      scan_blocks: run the main stage's blocks as one ``jax.lax.scan`` (jaxmim argument; same
        parameters and numbers, :func:`jaxmim.models.stacking.run_blocks`).
      rngs: NNX RNG streams.

    Init (``_init_weights``, ``models_hivit.py:214-223``): Dense kernels N(0, .02) and biases 0,
    LayerNorm 1/0, conv PyTorch default, APE N(0, .02).

    Call: ``model(images, *, train=False, rng=None)`` with images ``(B, img_size, img_size,
    in_chans)`` float NHWC; returns logits ``(B, num_classes)`` (features ``(B, C)`` without a head).

    Raises:
      ValueError: inconsistent sizes, bad ``rpe_init`` / ``ape_init`` / ``attn_implementation``, bad images.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, inner_patches: int = 4, in_chans: int = 3,
                 num_classes: int = 1000, embed_dim: int = 512, depths: Sequence[int] = (2, 2, 20),
                 num_heads: int = 8, stem_mlp_ratio: float = 3.0, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: float | None = None, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, norm_eps: float = 1e-6, ape: bool = True, rpe: bool = True,
                 rpe_init: str = 'trunc_normal', patch_norm: bool = True, fc_norm: bool = True,
                 ape_init: str = 'trunc_normal', head_init_std: float = 0.02,
                 attn_implementation: str | None = None, remat: str = 'none', scan_blocks: bool = False, *,
                 rngs: nnx.Rngs):
        depths = tuple(int(d) for d in depths)
        num_stages = len(depths)
        if num_stages < 1 or any(d < 0 for d in depths):
            raise ValueError(f'depths must be a non-empty sequence of non-negative ints, got {depths}')
        if inner_patches != 2 ** (num_stages - 1):
            raise ValueError(f'inner_patches must be 2 ** (len(depths) - 1) = {2 ** (num_stages - 1)} so that '
                             f'the early stages merge each unit to one token, got {inner_patches}')
        if embed_dim % 2 ** (num_stages - 1):
            raise ValueError(f'embed_dim {embed_dim} must be divisible by 2 ** (len(depths) - 1)')
        if ape_init not in ('trunc_normal', 'sincos'):
            raise ValueError(f"ape_init must be 'trunc_normal' or 'sincos', got {ape_init!r}")
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.inner_patches = inner_patches
        self.num_classes, self.embed_dim, self.num_features = num_classes, embed_dim, embed_dim
        self.depths, self.num_heads, self.drop_rate = depths, num_heads, drop_rate
        self.ape, self.rpe, self.remat = ape, rpe, L.check_remat(remat)
        self.scan_blocks = check_scan(scan_blocks)
        self.num_main_blocks = depths[-1]

        dim = embed_dim // 2 ** (num_stages - 1)
        self.patch_embed = PatchEmbed(img_size, patch_size, inner_patches, in_chans, dim, patch_norm, norm_eps,
                                      rngs=rngs)
        self.grid_size, self.num_patches = self.patch_embed.grid_size, self.patch_embed.num_patches
        if ape:
            if ape_init == 'sincos':
                table = jnp.asarray(get_2d_sincos_pos_embed(embed_dim, self.grid_size))[None]
            else:
                table = L.trunc_normal_02(rngs.params(), (1, self.num_patches, embed_dim))
            self.absolute_pos_embed = nnx.Param(table, **sharding.axes(None, 'tokens', 'embed'))
        else:
            self.absolute_pos_embed = None

        dpr = iter(float(r) for r in np.linspace(0, drop_path_rate, sum(depths) + sum(depths[:-1]),
                                                  dtype=np.float32))
        blocks: list[nnx.Module] = []
        for s, stage_depth in enumerate(depths):
            main = s == num_stages - 1
            for _ in range(stage_depth if main else 2 * stage_depth):
                blocks.append(BlockWithRPE(dim, num_heads if main else 0, mlp_ratio if main else stem_mlp_ratio,
                                           qkv_bias, qk_scale, drop_rate, attn_drop_rate, next(dpr), norm_eps,
                                           rpe_grid=self.grid_size if (rpe and main) else None,
                                           rpe_init=rpe_init, rngs=rngs))
            if not main:
                blocks.append(PatchMerge(dim, norm_eps, rngs=rngs))
                dim *= 2
        self.blocks = nnx.List(blocks)
        self.main_block = tuple(i for i, b in enumerate(blocks) if not isinstance(b, PatchMerge))
        self.fc_norm = L.layer_norm(embed_dim, norm_eps, rngs) if fc_norm else None
        self.head = (dense(embed_dim, num_classes, rngs, jax.nn.initializers.normal(head_init_std),
                           axes=('embed', 'classes'))
                     if num_classes > 0 else None)
        ops.set_attn_implementation(self, attn_implementation)

    # -- forward ---------------------------------------------------------------------------

    def relative_position_index(self) -> np.ndarray:
        """The static ``(N, N)`` int32 index over the unit grid (``models_hivit.py:171-182``):
        ``(h_p - h_q + G - 1) * (2G - 1) + (w_p - w_q + G - 1)``, units row-major."""
        return relative_position_index(self.grid_size)

    def forward_features(self, x: jax.Array, ids_keep: jax.Array | None = None, *, return_hifeat: bool = False,
                         train: bool = False, rng: jax.Array | None = None):
        """Patch embedding, early stages, APE, main stage (``models_hivit.py:233-272``).

        Args:
          x: images ``(B, img_size, img_size, in_chans)``.
          ids_keep: optional ``(B, L)`` int unit ids to keep (MAE): the units are gathered right
            after the patch embedding, and the APE / RPE index with them.
          return_hifeat: also return the inputs of the PatchMerge layers.
          train, rng: dropout / stochastic depth switch and key.

        Returns:
          Main-stage tokens ``(B, L, C)`` (L = N without ``ids_keep``); with ``return_hifeat`` a
          list ``[merge-0 input (B, L, i, i, c0), merge-1 input ..., tokens]``.
        """
        keys = L.split_key(rng, len(self.blocks) + 1)
        x = self.patch_embed(x)
        if ids_keep is not None:
            x = jnp.take_along_axis(x, ids_keep[:, :, None, None, None], axis=1)
        x = sharding.constrain(x, 'batch', None, None, None, None)          # (B, L, i, i, c)
        n_early = len(self.blocks) - self.num_main_blocks
        hifeat = []
        for blk, key in zip(list(self.blocks)[:n_early], keys):
            if isinstance(blk, PatchMerge):         # the end of an early stage
                hifeat.append(x)
                x = sharding.constrain(blk(x), 'batch', None, None, None, None)
            else:
                x = L.call_block(blk, x, train=train, rng=key, remat=self.remat)
        x = x[:, :, 0, 0, :]
        if self.absolute_pos_embed is not None:
            pos = self.absolute_pos_embed[...].astype(x.dtype)
            x = x + (pos if ids_keep is None else jnp.take(pos[0], ids_keep, axis=0))
        x = L.dropout(x, self.drop_rate, train, keys[-1])
        rpe_index = None
        if self.rpe:
            index = self.relative_position_index()
            rpe_index = index if ids_keep is None else masked_relative_position_index(index, ids_keep)
        x = run_blocks(list(self.blocks)[n_early:], x, rpe_index, train=train, rng=None, keys=keys[n_early:-1],
                       remat=self.remat, scan=self.scan_blocks)
        x = sharding.constrain(x, 'batch', None, None)
        return hifeat + [x] if return_hifeat else x

    def features(self, x: jax.Array, *, train: bool = False, out_indices: Sequence[int] | None = None,
                 rng: jax.Array | None = None) -> dict[str, jax.Array]:
        """Multi-scale maps of HiViT's segmentation / detection backbone, for other input sizes
        (:meth:`jaxmim.registry.Backbone.features`).

        As ``zhangxiaosong18/hivit@2718339 segmentation/backbone/hivit.py`` (``prepare_tokens``
        :122-145, ``forward`` :147-165, ``out_indices=['H', 'M', 19, 19]`` with ``fpn4`` a 2x2 max
        pool :78): the early stages' outputs as maps (stage s: the input of its PatchMerge, i.e. the
        output of the stage's last MLP block, regrouped from units to the dense grid; the
        segmentation code's ``merge_indices = (depths[0] - 1, depths[0] + depths[1])`` points at
        these stage ends only for a list of ``depths[s]`` early blocks, with the doubled list it
        picks mid-stage blocks, a quirk not reproduced), the last main block's tokens as a map, and
        that map max-pooled 2x2 (floor) as the extra coarsest level. No norms (the segmentation
        backbone deletes ``fc_norm``). ``absolute_pos_embed`` is resampled bicubically to the unit
        grid (:func:`jaxmim.models.pos_embed.resample_abs_pos_embed`, timm's size-based form; the
        official ``interpolate_pos_encoding`` :101-120 passes a scale factor (h0 + 0.1) / sqrt(N),
        which maps source coordinates very slightly differently); with ``rpe`` each main block's
        table is resized bicubically to the ``(2hp-1) x (2wp-1)`` offsets of the new grid and
        indexed rectangularly (:func:`jaxmim.models.windows.relative_position_index_hw`; the official code builds the
        index for a square task size and resizes the tables when loading).

        Args:
          x: images ``(B, H, W, in_chans)``, H and W multiples of ``patch_size``.
          train, rng: dropout / drop path switch and key.
          out_indices: indices in ``[0, len(depths)]``: ``0 .. S-2`` the early stages, ``S-1`` the
            main stage, ``S`` the max-pooled extra level; default all.

        Returns:
          ``{'stage{i}': (B, H / s_i, W / s_i, C_i)}`` with ``s_i = (patch_size / inner_patches) 2^i``
          and ``C_i = embed_dim / 2^(S-1-i)`` for ``i < S``, and ``s_S = 2 patch_size``, ``C_S =
          embed_dim`` (the pooled level; floor division). HiViT-B (16 px units, 4x4 inner) at 224:
          ``{'stage0': (B, 56, 56, 128), 'stage1': (B, 28, 28, 256), 'stage2': (B, 14, 14, 512),
          'stage3': (B, 7, 7, 512)}``: strides 4, 8, 16, 32; at 320 x 480: 80x120, 40x60, 20x30, 10x15.

        Raises:
          ValueError: bad images or ``out_indices``.
        """
        n_stages = len(self.depths)
        idx = check_out_indices(out_indices, n_stages + 1, range(n_stages + 1), 'stage')
        h, w = check_feature_images(x, self.in_chans, self.patch_size, type(self).__name__)
        hp, wp = h // self.patch_size, w // self.patch_size
        keys = L.split_key(rng, len(self.blocks) + 1)
        x = units_from_map(self.patch_embed.proj(L.images_to(x, self.patch_embed.proj)), self.inner_patches)
        if self.patch_embed.norm is not None:
            x = self.patch_embed.norm(x)
        x = sharding.constrain(x, 'batch', None, None, None, None)          # (B, hp*wp, i, i, c)
        n_early = len(self.blocks) - self.num_main_blocks
        outs, stage = {}, 0
        for blk, key in zip(list(self.blocks)[:n_early], keys):
            if isinstance(blk, PatchMerge):
                if stage in idx:
                    outs[f'stage{stage}'] = map_from_units(x, hp, wp)
                if stage == idx[-1]:
                    return outs
                stage += 1
                x = sharding.constrain(blk(x), 'batch', None, None, None, None)
            else:
                x = L.call_block(blk, x, train=train, rng=key, remat=self.remat)
        x = x[:, :, 0, 0, :]
        if self.absolute_pos_embed is not None:
            pos = resample_abs_pos_embed(self.absolute_pos_embed[...], (hp, wp), (self.grid_size, self.grid_size), 0)
            x = x + pos.astype(x.dtype)
        x = L.dropout(x, self.drop_rate, train, keys[-1])
        rpe_index = relative_position_index_hw(hp, wp) if self.rpe else None
        x = run_blocks(list(self.blocks)[n_early:], x, rpe_index, train=train, rng=None, keys=keys[n_early:-1],
                       remat=self.remat, scan=self.scan_blocks, rpe_size=(2 * hp - 1, 2 * wp - 1))
        x = sharding.constrain(x.reshape(x.shape[0], hp, wp, x.shape[-1]), 'batch', None, None, None)
        if n_stages - 1 in idx:
            outs[f'stage{n_stages - 1}'] = x
        if n_stages in idx:
            b, c = x.shape[0], x.shape[-1]
            y = x[:, :hp // 2 * 2, :wp // 2 * 2].reshape(b, hp // 2, 2, wp // 2, 2, c)
            outs[f'stage{n_stages}'] = y.max(axis=(2, 4))
        return outs

    def pooled_features(self, x: jax.Array, *, train: bool = False, rng: jax.Array | None = None) -> jax.Array:
        """Images -> the mean of the main-stage tokens, then ``fc_norm`` when the model has one:
        ``(B, embed_dim)`` (the head's input, ``models_hivit.py:274-279``)."""
        x = self.forward_features(x, train=train, rng=rng).mean(axis=1)
        return self.fc_norm(x) if self.fc_norm is not None else x

    def __call__(self, x: jax.Array, *, train: bool = False, rng: jax.Array | None = None) -> jax.Array:
        x = self.pooled_features(x, train=train, rng=rng)
        return self.head(x) if self.head is not None else x

    # -- hooks -----------------------------------------------------------------------------

    def no_weight_decay(self) -> tuple[str, ...]:
        """``absolute_pos_embed`` and every ``relative_position_bias_table`` (official
        ``no_weight_decay`` / ``no_weight_decay_keywords``, ``models_hivit.py:225-231``; the MAE
        fine-tuning ``param_groups_lrd`` excludes the tables by suffix; mmpretrain's recipe
        excludes ``pos_embed`` and the tables too)."""
        return ('absolute_pos_embed', '*relative_position_bias_table')

    def layer_id(self, name: str) -> int:
        """See :func:`hivit_layer_id` (ids ``0 .. len(main_block) + 1``; 29 is the head for HiViT-B)."""
        return hivit_layer_id(name, self.main_block)

    @property
    def num_layer_ids(self) -> int:
        """``len(main_block) + 2`` (30 for HiViT-B: scale ``decay ** (29 - id)``)."""
        return len(self.main_block) + 2

    def pretrained_fresh(self) -> tuple[str, ...]:
        """What MAE fine-tuning may start fresh: ``head``, ``fc_norm`` and the relative-position
        tables (pre-training runs without RPE; the tables start at their init, zero in the
        official fine-tuning, ``models_hivit.py:20-22``)."""
        return ('head.*', 'fc_norm.*', '*relative_position_bias_table')

    def adapt_pretrained(self, name: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """Resizes an ``absolute_pos_embed`` of another unit grid, or a
        ``relative_position_bias_table`` of another grid (same heads), bicubically per channel
        (torch ``interpolate(mode='bicubic', align_corners=False)``), as HV's ``load_finetune``
        does (``supervised/utils.py:22-59``; it passes a scale factor, the size-based form here
        equals it up to float rounding of the source coordinates).

        Raises:
          ValueError: naming the tensor and both shapes otherwise.
        """
        value = np.asarray(value)
        shape = tuple(shape)
        if name == 'absolute_pos_embed' and value.ndim == 3 and len(shape) == 3 and value.shape[2] == shape[2]:
            s1, s2 = math.isqrt(value.shape[1]), math.isqrt(shape[1])
            if s1 * s1 == value.shape[1] and s2 * s2 == shape[1]:
                grid = value.reshape(value.shape[0], s1, s1, value.shape[2])
                return torch_bicubic_resize(grid, (s2, s2)).reshape(shape).astype(value.dtype)
        if (name.endswith('relative_position_bias_table') and value.ndim == 2 and len(shape) == 2
                and value.shape[1] == shape[1]):
            s1, s2 = math.isqrt(value.shape[0]), math.isqrt(shape[0])
            if s1 * s1 == value.shape[0] and s2 * s2 == shape[0]:
                grid = value.reshape(s1, s1, value.shape[1])
                return torch_bicubic_resize(grid, (s2, s2)).reshape(shape).astype(value.dtype)
        return Backbone.adapt_pretrained(self, name, value, shape)
