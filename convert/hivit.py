"""HiViT family: PyTorch twins, key tables and conversion sources.

Two halves, one file (key layouts of the official classes at ``zhangxiaosong18/hivit@2718339`` and
of ``open-mmlab/mmpretrain@ee7f2e8``):

* **PyTorch twins** (``torch`` only, no timm / mmcv), official ``state_dict`` keys, shapes and order:

  :class:`HiViT` with ``copy='sup'``
      ``zhangxiaosong18/hivit@2718339 supervised/models/hivit.py`` ``HiViT`` (3-stage form): one
      ``relative_position_index`` buffer per attention, tables trunc_normal(.02).
  :class:`HiViT` with ``copy='ssl'``
      ``self_supervised/models/models_hivit.py`` ``HiViT`` (MAE fine-tuning): one model-level
      ``relative_position_index`` buffer passed to every block, tables zero, logits cast to
      float32 and clamped before the softmax.
  :class:`HiViTMaskedAutoencoder`
      ``self_supervised/models/models_hivit_mae.py`` (pre-training), called
      ``model(imgs, noise=noise)``.
  :class:`MMPHiViT`
      ``open-mmlab/mmpretrain@ee7f2e8 mmpretrain/models/backbones/hivit.py`` ``HiViT`` backbone
      (``pos_embed``; both a model-level and per-attention index buffers when ``rpe``; returns
      the tuple of the ``out_indices`` feature maps, the last main block's by default).

* **Conversion sources** registered with :mod:`convert.official`:

  ``'hivit'``        supervised classifier -> :class:`jaxmim.models.hivit.HiViT`
  ``'hivit_ssl'``    self-supervised fine-tuning classifier -> :class:`jaxmim.models.hivit.HiViT`
  ``'hivit_mae'``    MAE pre-training model -> :class:`jaxmim.methods.mae.hivit.HiViTMaskedAutoencoder`
  ``'mmpretrain_hivit'``  mmpretrain backbone -> :class:`MMPretrainHiViT`, a
  :class:`jaxmim.models.hivit.HiViT` without ``fc_norm`` / head (``pos_embed`` <->
  ``absolute_pos_embed``) whose call returns mmpretrain's tuple of feature maps

Every source builds, from the official constructor arguments alone, a model whose call is the
official forward (same inputs, NHWC instead of NCHW; pre-training models return a dict instead
of a tuple).

``relative_position_index`` buffers are :class:`convert.official.BufferEntry` (int64, exported,
checked on import, recomputed). Block indices are the official flat ``blocks`` list (MLP blocks,
merges and attention blocks interleaved), the same indices as in jaxmim.

Twin layouts: images NCHW; units (B, N, i, i, C) in raster order; tokens (B, N, C); MAE ``pred``
(B, N, p*p*C) raster order with pixels in (row, col, channel) order, ``mask`` (B, N), 1 = removed.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Optional, Sequence

import jax
import numpy as np
import torch
import torch.nn as nn
from flax import nnx

from convert import official as O
from convert import _entries as E
from convert._common import DropPath, IntOr2, Mlp, init_linear_layernorm, mlp_ratio_of, pair, square, trunc_normal_
from convert.vit import MAETwinCall, get_2d_sincos_pos_embed
from jaxmim.models.hivit import HiViT as JaxHiViT

__all__ = [
    # PyTorch twins
    'make_relative_position_index', 'Attention', 'BlockWithRPE', 'PatchEmbed', 'PatchMerge', 'HiViT',
    'HiViTMaskedAutoencoder', 'MMPHiViT',
    # conversion sources
    'build_hivit', 'build_hivit_ssl', 'build_hivit_mae', 'build_mmpretrain_hivit', 'MMPretrainHiViT',
    'mmp_out_indices', 'hivit_entries',
    'hivit_ssl_entries', 'hivit_mae_entries', 'mmpretrain_hivit_entries',
]

COPIES = ('sup', 'ssl', 'mmp')


def make_relative_position_index(grid: int) -> torch.Tensor:
    """The official Swin-style index over a ``grid x grid`` unit grid (``models_hivit.py:171-182``):
    int64 (N, N), ``(h_p - h_q + G - 1) * (2G - 1) + (w_p - w_q + G - 1)``, units row-major."""
    coords = torch.stack(torch.meshgrid([torch.arange(grid), torch.arange(grid)], indexing='ij'))
    flat = torch.flatten(coords, 1)
    rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += grid - 1
    rel[:, :, 1] += grid - 1
    rel[:, :, 0] *= 2 * grid - 1
    return rel.sum(-1)


# ---------------------------------------------------------------------------------------------
# Twin building blocks
# ---------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """HiViT ``Attention`` (``models_hivit.py:10-53``; supervised ``hivit.py:9-68``; mmpretrain).

    ``qkv`` Linear(C, 3C), ``q *= scale``, ``attn = q @ kᵀ`` (+ bias), softmax, ``proj``.
    ``copy='ssl'``: table zeros, uses the index it is given (flat (N*N,) or per-sample (B, L*L)),
    casts the logits to float32 and clamps them before the softmax; ``'sup'`` / ``'mmp'``: table
    trunc_normal(.02) and its own ``relative_position_index`` buffer, the given index is only an
    on/off flag. Input/output (B, N, C).

    Raises:
        ValueError: ``num_heads`` does not divide ``dim`` or unknown ``copy``.
    """

    def __init__(self, input_size: int, dim: int, num_heads: int, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 rpe: bool = True, copy: str = 'ssl'):
        super().__init__()
        if copy not in COPIES:
            raise ValueError(f'copy must be one of {COPIES}, got {copy!r}')
        if num_heads <= 0 or dim % num_heads:
            raise ValueError(f'num_heads {num_heads} must divide dim {dim}')
        self.copy, self.num_heads = copy, num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * input_size - 1) ** 2, num_heads)) if rpe else None
        if rpe and copy != 'ssl':
            self.register_buffer('relative_position_index', make_relative_position_index(input_size))
            trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x: torch.Tensor, rpe_index=None) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        if rpe_index is not None:
            if self.copy != 'ssl':
                rpe_index = self.relative_position_index.view(-1)
            S = int(math.sqrt(rpe_index.size(-1)))
            bias = self.relative_position_bias_table[rpe_index].view(-1, S, S, self.num_heads)
            attn = attn + bias.permute(0, 3, 1, 2).contiguous()
        if self.copy == 'ssl':
            attn = attn.float().clamp(min=torch.finfo(torch.float32).min, max=torch.finfo(torch.float32).max)
        attn = self.attn_drop(self.softmax(attn))
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class BlockWithRPE(nn.Module):
    """``BlockWithRPE`` (``models_hivit.py:56-82``): ``num_heads == 0`` builds no ``norm1`` /
    ``attn`` (MLP-only block on any (..., C) input). Children (state_dict order): norm1, attn,
    drop_path, norm2, mlp."""

    def __init__(self, input_size: int, dim: int, num_heads: float = 0.0, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, qk_scale: Optional[float] = None, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, rpe: bool = True, act_layer=nn.GELU,
                 norm_layer=nn.LayerNorm, copy: str = 'ssl'):
        super().__init__()
        with_attn = num_heads > 0
        self.norm1 = norm_layer(dim) if with_attn else None
        self.attn = Attention(input_size, dim, int(num_heads), qkv_bias, qk_scale, attn_drop, drop, rpe,
                              copy) if with_attn else None
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)

    def forward(self, x: torch.Tensor, rpe_index=None) -> torch.Tensor:
        if self.attn is not None:
            x = x + self.drop_path(self.attn(self.norm1(x), rpe_index))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """HiViT ``PatchEmbed`` (``models_hivit.py:85-118``): Conv2d k = s = patch / inner, regrouped
    ``view(B, C, Hp, i, Wp, i).permute(0, 2, 4, 3, 5, 1)`` -> (B, N, i, i, C), then ``norm``."""

    def __init__(self, img_size: IntOr2 = 224, patch_size: IntOr2 = 16, inner_patches: int = 4, in_chans: int = 3,
                 embed_dim: int = 96, norm_layer=None):
        super().__init__()
        self.img_size, self.patch_size = pair(img_size, 'img_size'), pair(patch_size, 'patch_size')
        self.inner_patches = inner_patches
        self.patches_resolution = [self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1]]
        self.num_patches = self.patches_resolution[0] * self.patches_resolution[1]
        conv = [s // inner_patches for s in self.patch_size]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=conv, stride=conv)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        hp, wp = H // self.patch_size[0], W // self.patch_size[1]
        i = self.inner_patches
        x = self.proj(x).view(B, -1, hp, i, wp, i).permute(0, 2, 4, 3, 5, 1).reshape(B, hp * wp, i, i, -1)
        return self.norm(x) if self.norm is not None else x


class PatchMerge(nn.Module):
    """``PatchMerge`` (``models_hivit.py:121-136``): concat x0 = (0,0), x1 = (1,0), x2 = (0,1),
    x3 = (1,1) (row, col) offsets on the inner axes, ``norm`` LN(4C), ``reduction`` Linear(4C, 2C,
    bias=False)."""

    def __init__(self, dim: int, norm_layer):
        super().__init__()
        self.norm = norm_layer(dim * 4)
        self.reduction = nn.Linear(dim * 4, dim * 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x[..., 0::2, 0::2, :], x[..., 1::2, 0::2, :], x[..., 0::2, 1::2, :],
                       x[..., 1::2, 1::2, :]], dim=-1)
        return self.reduction(self.norm(x))


def _init_hivit(m: nn.Module) -> None:
    """HiViT ``_init_weights``: Linear trunc_normal(.02) / 0, LayerNorm 1 / 0."""
    init_linear_layernorm(m)


class HiViT(nn.Module):
    """Official 3-stage HiViT classifier (``copy='sup'``: supervised copy; ``'ssl'``: the
    self-supervised copy used for MAE fine-tuning). Official constructor arguments and defaults
    (supervised: ``depths=[4, 4, 19]`` default; self-supervised: ``[2, 2, 20]``).

    State (official order): ``absolute_pos_embed`` (ape), [``relative_position_index`` (ssl and
    rpe)], ``patch_embed.{proj, norm}``, ``blocks.*`` (MLP blocks, merges, attention blocks in one
    list), ``fc_norm``, ``head`` (num_classes > 0).

    ``forward(x)``: (B, C, H, W) -> (B, num_classes) (mean over units, ``fc_norm``, ``head``).
    ``forward_features(x, ids_keep=None, return_hifeat=False)`` as the official.

    Raises:
        ValueError: a 4-stage ``depths`` (the supervised copy's unused form) or bad sizes.
    """

    def __init__(self, img_size: IntOr2 = 224, patch_size: IntOr2 = 16, inner_patches: int = 4, in_chans: int = 3,
                 num_classes: int = 1000, embed_dim: int = 512, depths: Sequence[int] = (2, 2, 20),
                 num_heads: int = 8, stem_mlp_ratio: float = 3.0, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, norm_layer=nn.LayerNorm, ape: bool = True, rpe: bool = True,
                 patch_norm: bool = True, copy: str = 'ssl', _head: bool = True):
        super().__init__()
        if len(depths) > 3:
            raise ValueError('the 4-stage HiViT form (supervised/models/hivit.py:182-186) is not supported')
        self.copy, self.ape, self.rpe = copy, ape, rpe
        self.num_features = embed_dim
        self.num_main_blocks = depths[-1]
        dim = embed_dim // 2 ** (len(depths) - 1)
        self.patch_embed = PatchEmbed(img_size, patch_size, inner_patches, in_chans, dim,
                                      norm_layer if patch_norm else None)
        num_patches = self.patch_embed.num_patches
        hp, wp = self.patch_embed.patches_resolution
        if hp != wp:
            raise ValueError('HiViT needs a square unit grid')
        if ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, num_patches, self.num_features))
            trunc_normal_(self.absolute_pos_embed, std=0.02)
        if rpe and copy in ('ssl', 'mmp'):
            self.register_buffer('relative_position_index', make_relative_position_index(hp))
        self.pos_drop = nn.Dropout(p=drop_rate)
        dpr = iter(x.item() for x in torch.linspace(0, drop_path_rate, sum(depths) + sum(depths[:-1]), device='cpu'))
        self.blocks = nn.ModuleList()
        for stage_depth in depths:
            main = dim == self.num_features
            for _ in range(stage_depth if main else 2 * stage_depth):
                self.blocks.append(BlockWithRPE(hp, dim, num_heads if main else 0,
                                                mlp_ratio if main else stem_mlp_ratio,
                                                qkv_bias, qk_scale, drop_rate, attn_drop_rate, next(dpr), rpe,
                                                norm_layer=norm_layer, copy=copy))
            if not main:
                self.blocks.append(PatchMerge(dim, norm_layer))
                dim *= 2
        if _head:
            self.fc_norm = norm_layer(self.num_features)
            self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_hivit)

    def _rpe_index(self, ids_keep: Optional[torch.Tensor]):
        if not self.rpe:
            return None
        if self.copy != 'ssl':
            return True
        if ids_keep is None:
            return self.relative_position_index.view(-1)
        B, L = ids_keep.shape
        idx = self.relative_position_index[ids_keep, :]
        return torch.gather(idx, dim=-1, index=ids_keep[:, None, :].expand(-1, L, -1)).reshape(B, -1)

    def forward_features(self, x: torch.Tensor, ids_keep: Optional[torch.Tensor] = None,
                         return_hifeat: bool = False):
        """``models_hivit.py:233-272``: -> tokens (B, L, C) (or ``[merge inputs..., tokens]``)."""
        B = x.shape[0]
        x = self.patch_embed(x)
        if ids_keep is not None:
            x = torch.gather(x, dim=1, index=ids_keep[:, :, None, None, None].expand(-1, -1, *x.shape[2:]))
        hifeat = []
        for blk in self.blocks[:-self.num_main_blocks]:
            if isinstance(blk, PatchMerge):
                hifeat.append(x)
            x = blk(x)
        x = x[..., 0, 0, :]
        if self.ape:
            pos = self._pos_embed()
            if ids_keep is not None:
                pos = torch.gather(pos.expand(B, -1, -1), dim=1,
                                   index=ids_keep[:, :, None].expand(-1, -1, pos.shape[2]))
            x = x + pos
        x = self.pos_drop(x)
        rpe_index = self._rpe_index(ids_keep)
        for blk in self.blocks[-self.num_main_blocks:]:
            x = blk(x, rpe_index)
        return hifeat + [x] if return_hifeat else x

    def _pos_embed(self) -> torch.Tensor:
        return self.absolute_pos_embed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, num_classes) logits."""
        return self.head(self.fc_norm(self.forward_features(x).mean(dim=1)))


class MMPHiViT(HiViT):
    """mmpretrain ``HiViT`` backbone (``arch`` names or a dict with ``embed_dims``, ``depths``,
    ``num_heads``; ``norm_cfg=dict(type='LN', eps=...)`` with mmcv's default eps 1e-5).

    State: ``pos_embed``, [``relative_position_index`` (rpe)], ``patch_embed.*``, ``blocks.*``
    (with per-attention ``relative_position_index`` when rpe). ``forward(x)`` is mmpretrain's
    (``mmpretrain/models/backbones/hivit.py`` ``HiViT.forward``): the tuple of the maps of the
    blocks whose index (counted separately in the early and in the main loop) is in
    ``out_indices``, whose last entry is overwritten with ``depths[-1] - 1`` (the default
    ``[23]`` gives ``((B, C, Hp, Wp),)``, the last main block). As officially, an early-block
    index or a main index before the last breaks the following blocks (the map replaces the
    tokens). Native input size only (no APE interpolation). Unlike mmpretrain, the caller's
    ``out_indices`` list is copied, not mutated.

    Raises:
        ValueError: unknown arch, ``layer_scale_init_value > 0``, ``kernel_size`` / ``pad_size``.
    """

    arch_zoo = {'tiny': (384, [1, 1, 10], 6), 'small': (384, [2, 2, 20], 6),
                'base': (512, [2, 2, 24], 8), 'large': (768, [2, 2, 40], 12)}

    def __init__(self, arch: Any = 'base', img_size: IntOr2 = 224, patch_size: IntOr2 = 16, inner_patches: int = 4,
                 in_chans: int = 3, stem_mlp_ratio: float = 3.0, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, norm_cfg: Optional[dict] = None, out_indices: Any = None,
                 ape: bool = True, rpe: bool = False, patch_norm: bool = True):
        embed_dim, depths, num_heads = _mmp_arch(arch)
        self_out = list(out_indices) if out_indices is not None else [23]
        self_out[-1] = depths[-1] - 1                     # mmpretrain hivit.py: out_indices[-1] = depths[-1] - 1
        eps = float((norm_cfg or {}).get('eps', 1e-5))
        super().__init__(img_size, patch_size, inner_patches, in_chans, 0, embed_dim, depths, num_heads,
                         stem_mlp_ratio, mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate, drop_path_rate,
                         functools.partial(nn.LayerNorm, eps=eps), False, rpe, patch_norm, copy='mmp', _head=False)
        if ape:
            self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, embed_dim))
            trunc_normal_(self.pos_embed, std=0.02)
            self.ape = True
        self.out_indices = self_out

    def _pos_embed(self) -> torch.Tensor:
        return self.pos_embed

    def forward(self, x: torch.Tensor):
        """(B, C, H, W) -> tuple of NCHW maps, mmpretrain's ``HiViT.forward`` loop as written."""
        B = x.shape[0]
        Hp, Wp = self.patch_embed.patches_resolution
        x = self.patch_embed(x)
        outs = []
        for i, blk in enumerate(self.blocks[:-self.num_main_blocks]):
            x = blk(x)
            if i in self.out_indices:
                x = x.reshape(B, Hp, Wp, *x.shape[-3:]).permute(0, 5, 1, 3, 2, 4).reshape(
                    B, -1, Hp * x.shape[-3], Wp * x.shape[-2]).contiguous()
                outs.append(x)
        x = x[..., 0, 0, :]
        if self.ape:
            x = x + self.pos_embed
        x = self.pos_drop(x)
        rpe_index = True if self.rpe else None
        for i, blk in enumerate(self.blocks[-self.num_main_blocks:]):
            x = blk(x, rpe_index)
            if i in self.out_indices:
                x = x.transpose(1, 2).reshape(B, -1, Hp, Wp).contiguous()
                outs.append(x)
        return tuple(outs)


def _mmp_arch(arch: Any) -> tuple[int, list[int], int]:
    """mmpretrain ``arch``: a name (``t``/``tiny``, ``s``/``small``, ``b``/``base``, ``l``/``large``)
    or a dict ``{embed_dims, depths, num_heads}`` -> (embed_dim, depths, num_heads).

    Raises:
        ValueError: unknown name or dict keys.
    """
    if isinstance(arch, str):
        names = {'t': 'tiny', 's': 'small', 'b': 'base', 'l': 'large'}
        key = names.get(arch.lower(), arch.lower())
        if key not in MMPHiViT.arch_zoo:
            raise ValueError(f'arch {arch!r} is not one of {sorted(MMPHiViT.arch_zoo) + sorted(names)}')
        d, depths, h = MMPHiViT.arch_zoo[key]
        return d, list(depths), h
    if not isinstance(arch, dict) or set(arch) != {'embed_dims', 'depths', 'num_heads'}:
        raise ValueError(f'a custom arch must be a dict with keys embed_dims, depths, num_heads, got {arch!r}')
    return int(arch['embed_dims']), list(arch['depths']), int(arch['num_heads'])


class HiViTMaskedAutoencoder(HiViT):
    """``models_hivit_mae.HiViTMaskedAutoencoder`` (official arguments and defaults: ``rpe=True``,
    ``decoder_depth=8``, ``hifeat=False``; the factory ``mae_hivit_base_dec512d6b`` passes
    ``depths=[2, 2, 20], decoder_depth=6, hifeat=True, rpe=False, norm_layer=partial(LayerNorm,
    eps=1e-6)``).

    State (official order): ``absolute_pos_embed`` (sin-cos, trainable), ``mask_token``,
    ``decoder_pos_embed`` (sin-cos, fixed), [``relative_position_index``], ``patch_embed.*``,
    ``blocks.*``, ``norm`` (7C with hifeat, else C and unused), ``decoder_embed``,
    ``decoder_blocks.*``, ``decoder_norm``, ``decoder_pred``.

    ``forward(imgs, mask_ratio=0.75, *, noise=None, train=False) -> {'loss', 'pred', 'mask'}``:
    ``noise`` (B, N) decides the masking (drawn with ``torch.rand`` when None, as officially);
    ``norm_pix_loss`` is always True (hard-coded officially).

    Raises:
        ValueError: ``ape=False`` (the official constructor fails then) or a wrong noise shape.
    """

    def __init__(self, img_size: IntOr2 = 224, patch_size: IntOr2 = 16, in_chans: int = 3, embed_dim: int = 512,
                 depths: Sequence[int] = (2, 2, 20), num_heads: int = 8, stem_mlp_ratio: float = 3.0,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, qk_scale: Optional[float] = None,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 norm_layer=nn.LayerNorm, ape: bool = True, rpe: bool = True, patch_norm: bool = True,
                 decoder_embed_dim: int = 512, decoder_depth: int = 8, decoder_num_heads: int = 16,
                 hifeat: bool = False):
        if not ape:
            raise ValueError('ape=False: the official HiViTMaskedAutoencoder needs absolute_pos_embed')
        super().__init__(img_size, patch_size, 4, in_chans, 0, embed_dim, depths, num_heads, stem_mlp_ratio,
                         mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate, drop_path_rate, norm_layer,
                         ape, rpe, patch_norm, copy='ssl', _head=False)
        self.hifeat = hifeat
        self.norm_pix_loss = True
        p = self.patch_embed.patch_size[0]
        self.decoder_patch_size, self.in_chans = p, in_chans
        self.norm = norm_layer(7 * embed_dim if hifeat else embed_dim)
        self.decoder_embed = nn.Linear(7 * embed_dim if hifeat else embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        n = self.patch_embed.num_patches
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, n, decoder_embed_dim), requires_grad=False)
        hp = self.patch_embed.patches_resolution[0]
        self.decoder_blocks = nn.ModuleList([
            BlockWithRPE(hp, decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias, qk_scale, rpe=False,
                         norm_layer=norm_layer, copy='ssl') for _ in range(decoder_depth)])
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, p * p * in_chans)
        with torch.no_grad():
            self.absolute_pos_embed.copy_(torch.from_numpy(get_2d_sincos_pos_embed(embed_dim, hp)).float()[None])
            self.decoder_pos_embed.copy_(
                torch.from_numpy(get_2d_sincos_pos_embed(decoder_embed_dim, hp)).float()[None])
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(_init_hivit)

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, p*p*C), raster units, (row, col, channel) pixel order."""
        p = self.decoder_patch_size
        h = w = imgs.shape[2] // p
        x = imgs.reshape(imgs.shape[0], self.in_chans, h, p, w, p)
        return torch.einsum('nchpwq->nhwpqc', x).reshape(imgs.shape[0], h * w, p * p * self.in_chans)

    def masking_id(self, batch_size: int, mask_ratio: float, noise: Optional[torch.Tensor] = None):
        """``models_hivit_mae.py:119-137`` with optional given noise -> ids_keep, ids_restore, mask."""
        N, L = batch_size, self.absolute_pos_embed.size(1)
        device = self.absolute_pos_embed.device
        len_keep = int(L * (1 - mask_ratio))
        if noise is None:
            noise = torch.rand(N, L, device=device)
        elif tuple(noise.shape) != (N, L):
            raise ValueError(f'noise must have shape {(N, L)}, got {tuple(noise.shape)}')
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        mask = torch.ones([N, L], device=device)
        mask[:, :len_keep] = 0
        return ids_keep, ids_restore, torch.gather(mask, dim=1, index=ids_restore)

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75, *, noise: Optional[torch.Tensor] = None,
                train: bool = False) -> dict:
        del train
        ids_keep, ids_restore, mask = self.masking_id(imgs.shape[0], mask_ratio, noise)
        if self.hifeat:
            feats = self.forward_features(imgs, ids_keep=ids_keep, return_hifeat=True)
            B, N, _ = feats[-1].shape
            x = self.norm(torch.cat([f.reshape(B, N, -1) for f in feats], dim=-1))
        else:
            x = self.forward_features(imgs, ids_keep=ids_keep)
        x = self.decoder_embed(x)
        tokens = self.mask_token.repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
        x = torch.cat([x, tokens], dim=1)
        x = torch.gather(x, dim=1, index=ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        pred = self.decoder_pred(self.decoder_norm(x))
        target = self.patchify(imgs)
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
        loss = (((pred - target) ** 2).mean(dim=-1) * mask).sum() / mask.sum()
        return {'loss': loss, 'pred': pred, 'mask': mask}


# ================================================================================================
# Conversion sources
# ================================================================================================


def _check_zero(**rates: float) -> None:
    for name, value in rates.items():
        if float(value) != 0.0:
            raise ValueError(f'{name}={value}: jaxmim HiViT MAE has no dropout (official recipes use 0)')


def build_hivit(*, rngs: nnx.Rngs, img_size: IntOr2 = 224, patch_size: IntOr2 = 16, inner_patches: int = 4,
                in_chans: int = 3, num_classes: int = 1000, embed_dim: int = 512, depths: Sequence[int] = (4, 4, 19),
                num_heads: int = 8, stem_mlp_ratio: float = 3.0, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                qk_scale: Optional[float] = None, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                drop_path_rate: float = 0.0, norm_layer: Any = None, ape: bool = True, rpe: bool = True,
                patch_norm: bool = True, use_checkpoint: bool = False, kernel_size: Any = None,
                pad_size: Any = None) -> nnx.Module:
    """Source ``'hivit'``: ``HiViT(...)`` of ``zhangxiaosong18/hivit@2718339
    supervised/models/hivit.py`` (official defaults, e.g. ``depths=[4, 4, 19]``; the builder passes
    ``norm_layer=partial(nn.LayerNorm, eps=1e-6)``; ``norm_layer=None`` = ``nn.LayerNorm``), as
    :class:`jaxmim.models.hivit.HiViT` with RPE tables trunc_normal(.02).

    Raises:
      ValueError: a 4-stage ``depths``, ``kernel_size`` / ``pad_size`` (overlapping stems, unused
        by every config), non-square sizes, another norm layer.
    """
    if kernel_size is not None or pad_size is not None:
        raise ValueError('kernel_size / pad_size stems are not supported (no HiViT config uses them)')
    del use_checkpoint
    return _build_cls(rngs, img_size, patch_size, inner_patches, in_chans, num_classes, embed_dim, depths, num_heads,
                      stem_mlp_ratio, mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate, drop_path_rate,
                      E.layer_norm_eps(norm_layer), ape, rpe, patch_norm, 'trunc_normal', True)


def build_hivit_ssl(*, rngs: nnx.Rngs, img_size: IntOr2 = 224, patch_size: IntOr2 = 16, in_chans: int = 3,
                    num_classes: int = 1000, embed_dim: int = 512, depths: Sequence[int] = (2, 2, 20),
                    num_heads: int = 8, stem_mlp_ratio: float = 3.0, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                    qk_scale: Optional[float] = None, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                    drop_path_rate: float = 0.0, norm_layer: Any = None, ape: bool = True, rpe: bool = True,
                    patch_norm: bool = True, use_checkpoint: bool = False, global_pool: Any = None) -> nnx.Module:
    """Source ``'hivit_ssl'``: ``HiViT(...)`` of ``self_supervised/models/models_hivit.py`` (the MAE
    fine-tuning classifier; ``hivit_base`` = ``embed_dim=512, depths=[2, 2, 20], num_heads=8,
    rpe=True, norm_layer=partial(nn.LayerNorm, eps=1e-6)``), as
    :class:`jaxmim.models.hivit.HiViT` with zero-initialised RPE tables. ``global_pool`` (passed by
    ``main_finetune.py`` and swallowed by the official ``**kwargs``) is accepted and ignored.

    Raises:
      ValueError: non-square sizes, another norm layer, more than 3 stages.
    """
    del use_checkpoint, global_pool
    return _build_cls(rngs, img_size, patch_size, 4, in_chans, num_classes, embed_dim, depths, num_heads,
                      stem_mlp_ratio, mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate, drop_path_rate,
                      E.layer_norm_eps(norm_layer), ape, rpe, patch_norm, 'zeros', True)


def _build_cls(rngs, img_size, patch_size, inner_patches, in_chans, num_classes, embed_dim, depths, num_heads,
               stem_mlp_ratio, mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate, drop_path_rate, eps, ape,
               rpe, patch_norm, rpe_init, fc_norm, cls=None, **extra) -> nnx.Module:
    if len(depths) > 3:
        raise ValueError('the 4-stage HiViT form is not supported')
    return (cls or JaxHiViT)(**extra, img_size=square(img_size, 'img_size', 'HiViT'),
                    patch_size=square(patch_size, 'patch_size', 'HiViT'),
                    inner_patches=int(inner_patches), in_chans=int(in_chans), num_classes=int(num_classes),
                    embed_dim=int(embed_dim), depths=tuple(int(d) for d in depths), num_heads=int(num_heads),
                    stem_mlp_ratio=float(stem_mlp_ratio), mlp_ratio=float(mlp_ratio), qkv_bias=bool(qkv_bias),
                    qk_scale=qk_scale, drop_rate=float(drop_rate), attn_drop_rate=float(attn_drop_rate),
                    drop_path_rate=float(drop_path_rate), norm_eps=eps, ape=bool(ape), rpe=bool(rpe),
                    rpe_init=rpe_init, patch_norm=bool(patch_norm), fc_norm=fc_norm, head_init_std=0.02, rngs=rngs)


def build_hivit_mae(*, rngs: nnx.Rngs, img_size: IntOr2 = 224, patch_size: IntOr2 = 16, in_chans: int = 3,
                    embed_dim: int = 512, depths: Sequence[int] = (2, 2, 20), num_heads: int = 8,
                    stem_mlp_ratio: float = 3.0, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                    qk_scale: Optional[float] = None, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                    drop_path_rate: float = 0.0, norm_layer: Any = None, ape: bool = True, rpe: bool = True,
                    patch_norm: bool = True, use_checkpoint: bool = False, decoder_embed_dim: int = 512,
                    decoder_depth: int = 8, decoder_num_heads: int = 16, hifeat: bool = False,
                    norm_pix_loss: Any = None, mask_ratio: float = 0.75) -> nnx.Module:
    """Source ``'hivit_mae'``: ``HiViTMaskedAutoencoder(...)`` of ``self_supervised/models/
    models_hivit_mae.py`` (official defaults; ``mae_hivit_base_dec512d6b`` = ``decoder_depth=6,
    hifeat=True, rpe=False, norm_layer=partial(nn.LayerNorm, eps=1e-6)``), as
    :class:`jaxmim.methods.mae.hivit.HiViTMaskedAutoencoder`. ``norm_pix_loss`` is swallowed as
    officially (always True); ``mask_ratio`` is the official forward's argument.

    Raises:
      ValueError: ``ape=False``, non-zero dropout rates, non-square sizes, another norm layer.
    """
    from jaxmim.methods.mae.hivit import HiViTMaskedAutoencoder as JaxMAE
    del use_checkpoint, norm_pix_loss
    if not ape:
        raise ValueError('ape=False: the official HiViTMaskedAutoencoder needs absolute_pos_embed')
    _check_zero(drop_rate=drop_rate, attn_drop_rate=attn_drop_rate)
    return JaxMAE(img_size=square(img_size, 'img_size', 'HiViT'), patch_size=square(patch_size, 'patch_size', 'HiViT'),
                  inner_patches=4, in_chans=int(in_chans), embed_dim=int(embed_dim),
                  depths=tuple(int(d) for d in depths), num_heads=int(num_heads),
                  stem_mlp_ratio=float(stem_mlp_ratio), mlp_ratio=float(mlp_ratio), qkv_bias=bool(qkv_bias),
                  qk_scale=qk_scale, drop_path_rate=float(drop_path_rate), norm_eps=E.layer_norm_eps(norm_layer),
                  ape=True, rpe=bool(rpe), rpe_init='zeros', patch_norm=bool(patch_norm), hifeat=bool(hifeat),
                  decoder_embed_dim=int(decoder_embed_dim), decoder_depth=int(decoder_depth),
                  decoder_num_heads=int(decoder_num_heads), norm_pix_loss=True, mask_ratio=float(mask_ratio),
                  rngs=rngs)


class MMPretrainHiViT(JaxHiViT):
    """mmpretrain's ``HiViT`` backbone as the source ``'mmpretrain_hivit'`` builds it: a
    :class:`jaxmim.models.hivit.HiViT` (``num_classes=0``, ``fc_norm=False``; same variables, so
    the same official keys) whose call is mmpretrain's ``HiViT.forward``
    (``open-mmlab/mmpretrain@ee7f2e8 mmpretrain/models/backbones/hivit.py:572-600``): a tuple of
    feature maps, one per index of ``out_indices`` met by a block; with mmpretrain's rule that the
    last index is overwritten by ``depths[-1] - 1`` (``hivit.py:453``) the well-defined forward
    returns the last main block's map only (no final norm: the backbone has none).

    Args:
      out_indices: mmpretrain's ``out_indices`` after the overwrite of its last entry
        (:func:`mmp_out_indices`).
      **kwargs: :class:`jaxmim.models.hivit.HiViT` arguments.

    Call: ``model(images, *, train=False, rng=None)``: images ``(B, img_size, img_size, C_in)``
    float NHWC -> ``((B, Hp, Wp, C),)``, mmpretrain's ``((B, C, Hp, Wp),)`` in the channels-last
    layout of jaxmim (``.transpose(0, 3, 1, 2)`` gives mmpretrain's). The classifier pieces stay:
    ``forward_features`` gives the tokens ``(B, Hp*Wp, C)`` (units row-major), their mean is
    mmpretrain's ``GlobalAveragePooling`` neck; a jaxmim HiViT classifier without ``fc_norm``
    (e.g. the registry's ``hivit_*_mmpretrain`` with ``num_classes=0``) loads the same keys.

    Raises:
      ValueError: (call) images of another size (mmpretrain would interpolate ``pos_embed``
        bicubically; not provided), or a configuration whose official forward is ill-defined: an
        index of ``out_indices`` (the overwritten last one included) that meets an early block,
        or a main block before the last; mmpretrain then hands a ``(B, C, H, W)`` map to the next
        block, which fails or computes garbage (e.g. ``depths[-1] - 1`` smaller than the number
        of early blocks, ``2 * sum(depths[:-1]) + len(depths) - 1``).
    """

    def __init__(self, *, out_indices: Sequence[int], **kwargs: Any):
        super().__init__(**kwargs)
        self.out_indices = tuple(int(i) for i in out_indices)

    def ill_defined_out_indices(self) -> list[int]:
        """Indices of :attr:`out_indices` that break mmpretrain's forward (see the class)."""
        n_early = len(self.blocks) - self.num_main_blocks
        return sorted({i for i in self.out_indices if 0 <= i < n_early or 0 <= i < self.num_main_blocks - 1})

    def __call__(self, x: jax.Array, *, train: bool = False, rng: jax.Array | None = None) -> tuple[jax.Array, ...]:
        bad = self.ill_defined_out_indices()
        if bad:
            raise ValueError(f'out_indices {list(self.out_indices)}: indices {bad} meet an early block or a main '
                             f'block before the last ({len(self.blocks) - self.num_main_blocks} early, '
                             f'{self.num_main_blocks} main blocks); mmpretrain\'s forward is ill-defined there')
        if x.ndim != 4 or x.shape[1:3] != (self.img_size, self.img_size):
            raise ValueError(f'images must be (B, {self.img_size}, {self.img_size}, {self.in_chans}) NHWC, got shape '
                             f'{x.shape}; other sizes (mmpretrain interpolates pos_embed) are not provided')
        tokens = self.forward_features(x, train=train, rng=rng)
        g = self.grid_size
        return (tokens.reshape(tokens.shape[0], g, g, tokens.shape[-1]),)


def mmp_out_indices(out_indices: Any, depths: Sequence[int]) -> tuple[int, ...]:
    """mmpretrain's ``out_indices`` as its ``HiViT.__init__`` leaves them: the given list (default
    ``[23]``) with the last entry overwritten by ``depths[-1] - 1`` (``hivit.py:452-453``).

    Raises:
      ValueError: an empty list, non-integer entries, or entries other than the last that make
        the official forward ill-defined (they meet an early block or a main block before the
        last; see :class:`MMPretrainHiViT`).
    """
    idx = [23] if out_indices is None else list(out_indices)
    if not idx or not all(isinstance(i, (int, np.integer)) for i in idx):
        raise ValueError(f'out_indices must be a non-empty list of ints, got {out_indices!r}')
    idx = [int(i) for i in idx]
    idx[-1] = int(depths[-1]) - 1
    n_early = 2 * sum(int(d) for d in depths[:-1]) + len(depths) - 1
    bad = [i for i in idx[:-1] if 0 <= i < n_early or 0 <= i < idx[-1]]
    if bad:
        raise ValueError(f'out_indices {list(out_indices)}: entries {bad} meet an early block (0..{n_early - 1}) or '
                         f'a main block before the last (0..{idx[-1] - 1}); mmpretrain\'s forward then feeds a '
                         'feature map to the next block. Only the last main block (the last entry, overwritten '
                         f'with depths[-1] - 1 = {idx[-1]}) can be returned')
    return tuple(idx)


def build_mmpretrain_hivit(*, rngs: nnx.Rngs, arch: Any = 'base', img_size: IntOr2 = 224, patch_size: IntOr2 = 16,
                           inner_patches: int = 4, in_chans: int = 3, stem_mlp_ratio: float = 3.0,
                           mlp_ratio: float = 4.0, qkv_bias: bool = True, qk_scale: Optional[float] = None,
                           drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                           norm_cfg: Optional[dict] = None, out_indices: Any = None, ape: bool = True,
                           rpe: bool = False, patch_norm: bool = True, frozen_stages: int = -1,
                           kernel_size: Any = None, pad_size: Any = None, layer_scale_init_value: float = 0.0,
                           init_cfg: Any = None) -> nnx.Module:
    """Source ``'mmpretrain_hivit'``: ``mmpretrain.models.backbones.HiViT(...)`` (official defaults;
    ``norm_cfg=None`` = ``dict(type='LN')``, eps 1e-5), as :class:`MMPretrainHiViT`: a
    :class:`jaxmim.models.hivit.HiViT` with ``num_classes=0, fc_norm=False`` whose call returns
    mmpretrain's tuple of feature maps (channels-last). ``out_indices`` as mmpretrain (its last
    entry is overwritten with ``depths[-1] - 1``; other entries must not meet a block, see
    :func:`mmp_out_indices`). ``frozen_stages`` and ``init_cfg`` do not change the state_dict or
    the forward and are ignored.

    Raises:
      ValueError: an unknown arch, a norm other than LN, ``out_indices`` entries that break the
        official forward, ``layer_scale_init_value > 0``, ``kernel_size`` / ``pad_size``.
    """
    del frozen_stages, init_cfg
    embed_dim, depths, num_heads = _mmp_arch(arch)
    cfg = dict(norm_cfg or {'type': 'LN'})
    if cfg.pop('type', 'LN') != 'LN' or set(cfg) - {'eps', 'requires_grad'}:
        raise ValueError(f'norm_cfg must be dict(type="LN"[, eps=...]), got {norm_cfg!r}')
    indices = mmp_out_indices(out_indices, depths)
    if float(layer_scale_init_value) > 0:
        raise ValueError('layer_scale_init_value > 0 (gamma_1 / gamma_2) is not supported')
    if kernel_size is not None or pad_size is not None:
        raise ValueError('kernel_size / pad_size stems are not supported')
    return _build_cls(rngs, img_size, patch_size, inner_patches, in_chans, 0, embed_dim, depths, num_heads,
                      stem_mlp_ratio, mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate, drop_path_rate,
                      float(cfg.get('eps', 1e-5)), ape, rpe, patch_norm, 'trunc_normal', False,
                      cls=MMPretrainHiViT, out_indices=indices)


# -- key tables -----------------------------------------------------------------------------------

def _index_entry(key: str, model: nnx.Module) -> O.BufferEntry:
    return O.BufferEntry(key, np.asarray(model.relative_position_index(), np.int64),
                         f'the {model.grid_size}x{model.grid_size} unit grid')


def _block_entries(model: nnx.Module, per_attention_index: bool) -> list[O.Entry]:
    """``blocks.*`` of a jaxmim HiViT in official order; ``per_attention_index`` adds the
    supervised / mmpretrain ``attn.relative_position_index`` buffers."""
    from jaxmim.models.hivit import PatchMerge as JaxMerge
    out: list[O.Entry] = []
    for i, blk in enumerate(model.blocks):
        key, path = f'blocks.{i}.', ('blocks', i)
        if isinstance(blk, JaxMerge):
            out += E.layer_norm_entries(key + 'norm', path + ('norm',))
            out += E.linear_entries(key + 'reduction', path + ('reduction',), blk.reduction)
            continue
        if blk.attn is not None:
            out += E.layer_norm_entries(key + 'norm1', path + ('norm1',))
            if blk.attn.relative_position_bias_table is not None:
                out.append(O.VariableEntry(key + 'attn.relative_position_bias_table',
                                           path + ('attn', 'relative_position_bias_table')))
                if per_attention_index:
                    out.append(_index_entry(key + 'attn.relative_position_index', model))
            out += E.linear_entries(key + 'attn.qkv', path + ('attn', 'qkv'), blk.attn.qkv)
            out += E.linear_entries(key + 'attn.proj', path + ('attn', 'proj'), blk.attn.proj)
        out += E.layer_norm_entries(key + 'norm2', path + ('norm2',))
        out += E.linear_entries(key + 'mlp.fc1', path + ('mlp', 'fc1'), blk.mlp.fc1)
        out += E.linear_entries(key + 'mlp.fc2', path + ('mlp', 'fc2'), blk.mlp.fc2)
    return out


def _patch_embed_entries(model: nnx.Module) -> list[O.Entry]:
    out = E.conv_entries('patch_embed.proj', ('patch_embed', 'proj'), model.patch_embed.proj)
    if model.patch_embed.norm is not None:
        out += E.layer_norm_entries('patch_embed.norm', ('patch_embed', 'norm'))
    return out


def _check_type(model: nnx.Module, source: str, mae: bool) -> None:
    from jaxmim.methods.mae.hivit import HiViTMaskedAutoencoder as JaxMAE
    if mae != isinstance(model, JaxMAE) or not isinstance(model, JaxHiViT):
        want = 'HiViTMaskedAutoencoder' if mae else 'HiViT classifier'
        raise TypeError(f'source {source} expects a jaxmim {want}, got {type(model).__name__}')


def _classifier_entries(model: nnx.Module, source: str, ape_key: str, model_index: bool,
                        per_attention_index: bool) -> list[O.Entry]:
    _check_type(model, source, mae=False)
    out: list[O.Entry] = []
    if model.absolute_pos_embed is not None:
        out.append(O.VariableEntry(ape_key, ('absolute_pos_embed',)))
    if model.rpe and model_index:
        out.append(_index_entry('relative_position_index', model))
    out += _patch_embed_entries(model) + _block_entries(model, per_attention_index)
    if model.fc_norm is not None:
        out += E.layer_norm_entries('fc_norm', ('fc_norm',))
    if model.head is not None:
        out += E.linear_entries('head', ('head',), model.head)
    return out


def hivit_entries(model: nnx.Module) -> list[O.Entry]:
    """Official state_dict entries of the supervised classifier (``supervised/models/hivit.py``):
    ``absolute_pos_embed``, ``patch_embed.*``, ``blocks.*`` (per-attention
    ``relative_position_index`` buffers), ``fc_norm``, ``head``.

    Raises:
      TypeError: ``model`` is not a jaxmim HiViT classifier.
    """
    return _classifier_entries(model, 'hivit', 'absolute_pos_embed', False, True)


def hivit_ssl_entries(model: nnx.Module) -> list[O.Entry]:
    """Official state_dict entries of the self-supervised copy's classifier: as :func:`hivit_entries`
    with one model-level ``relative_position_index`` (after ``absolute_pos_embed``) instead of
    per-attention buffers.

    Raises:
      TypeError: ``model`` is not a jaxmim HiViT classifier.
    """
    return _classifier_entries(model, 'hivit_ssl', 'absolute_pos_embed', True, False)


def mmpretrain_hivit_entries(model: nnx.Module) -> list[O.Entry]:
    """mmpretrain backbone entries (``mmpretrain/models/backbones/hivit.py``): ``pos_embed``,
    ``relative_position_index`` (rpe), ``patch_embed.*``, ``blocks.*`` (per-attention index
    buffers); no ``fc_norm`` / head.

    Raises:
      TypeError: ``model`` is not a jaxmim HiViT classifier, or it has ``fc_norm`` / a head.
    """
    if getattr(model, 'fc_norm', None) is not None or getattr(model, 'head', None) is not None:
        raise TypeError('source mmpretrain_hivit is the backbone: build the model with num_classes=0, fc_norm=False')
    return _classifier_entries(model, 'mmpretrain_hivit', 'pos_embed', True, True)


def hivit_mae_entries(model: nnx.Module) -> list[O.Entry]:
    """Official state_dict entries of ``HiViTMaskedAutoencoder``
    (``self_supervised/models/models_hivit_mae.py``), official order:
    ``absolute_pos_embed``, ``mask_token``, ``decoder_pos_embed`` (Buffer), [``relative_position_index``],
    ``patch_embed.*``, ``blocks.*``, ``norm``, ``decoder_embed``, ``decoder_blocks.*``,
    ``decoder_norm``, ``decoder_pred``.

    Raises:
      TypeError: ``model`` is not a jaxmim HiViTMaskedAutoencoder.
    """
    _check_type(model, 'hivit_mae', mae=True)
    out: list[O.Entry] = [O.VariableEntry(k, (k,)) for k in ('absolute_pos_embed', 'mask_token', 'decoder_pos_embed')]
    if model.rpe:
        out.append(_index_entry('relative_position_index', model))
    out += _patch_embed_entries(model) + _block_entries(model, False)
    out += E.layer_norm_entries('norm', ('norm',))
    out += E.linear_entries('decoder_embed', ('decoder_embed',), model.decoder_embed)
    for i, blk in enumerate(model.decoder_blocks):
        key, path = f'decoder_blocks.{i}.', ('decoder_blocks', i)
        out += E.layer_norm_entries(key + 'norm1', path + ('norm1',))
        out += E.linear_entries(key + 'attn.qkv', path + ('attn', 'qkv'), blk.attn.qkv)
        out += E.linear_entries(key + 'attn.proj', path + ('attn', 'proj'), blk.attn.proj)
        out += E.layer_norm_entries(key + 'norm2', path + ('norm2',))
        out += E.linear_entries(key + 'mlp.fc1', path + ('mlp', 'fc1'), blk.mlp.fc1)
        out += E.linear_entries(key + 'mlp.fc2', path + ('mlp', 'fc2'), blk.mlp.fc2)
    out += E.layer_norm_entries('decoder_norm', ('decoder_norm',))
    out += E.linear_entries('decoder_pred', ('decoder_pred',), model.decoder_pred)
    return out


O.register_source(O.Source(
    name='hivit',
    reference='zhangxiaosong18/hivit@2718339 supervised/models/hivit.py HiViT',
    build_fn=build_hivit,
    entries_fn=hivit_entries))

O.register_source(O.Source(
    name='hivit_ssl',
    reference='zhangxiaosong18/hivit@2718339 self_supervised/models/models_hivit.py HiViT',
    build_fn=build_hivit_ssl,
    entries_fn=hivit_ssl_entries))

def hivit_mae_twin(model: nnx.Module) -> nn.Module:
    """The PyTorch twin of a jaxmim :class:`jaxmim.methods.mae.hivit.HiViTMaskedAutoencoder`: the
    official :class:`HiViTMaskedAutoencoder` above with the model's sizes, rates and options (read
    from its layers), called ``twin(images NCHW, noise=(B, N))`` with the model's ``mask_ratio``
    (:class:`convert.vit.MAETwinCall`); its state dict has :func:`hivit_mae_entries`' keys.

    Raises:
      TypeError: not a jaxmim HiViT MAE. LookupError: a model the official class cannot express
        (``norm_pix_loss=False``: the official loss always normalises; no ``absolute_pos_embed``).
    """
    _check_type(model, 'hivit_mae', mae=True)
    if not model.norm_pix_loss or model.absolute_pos_embed is None:
        raise LookupError('the official HiViT MAE always normalises the pixel targets and has an absolute '
                          'position embedding; this model has norm_pix_loss=False or ape=False: no PyTorch twin')
    first, last = model.blocks[0], model.blocks[model.main_block[-1]]
    head_dim = model.embed_dim // model.num_heads
    dec = model.decoder_blocks[0]
    return MAETwinCall(HiViTMaskedAutoencoder(
        img_size=model.img_size, patch_size=model.patch_size, in_chans=model.in_chans, embed_dim=model.embed_dim,
        depths=tuple(model.depths), num_heads=model.num_heads, stem_mlp_ratio=mlp_ratio_of(first), mlp_ratio=mlp_ratio_of(last),
        qkv_bias=last.attn.qkv.bias is not None,
        qk_scale=None if last.attn.scale == head_dim ** -0.5 else last.attn.scale,
        drop_path_rate=float(last.drop_path), norm_layer=functools.partial(nn.LayerNorm, eps=last.norm2.epsilon),
        ape=True, rpe=bool(model.rpe), patch_norm=model.patch_embed.norm is not None,
        decoder_embed_dim=model.decoder_embed.kernel.shape[1], decoder_depth=len(model.decoder_blocks),
        decoder_num_heads=dec.attn.num_heads, hifeat=bool(model.hifeat)), model.mask_ratio)


O.register_source(O.Source(
    name='hivit_mae',
    reference='zhangxiaosong18/hivit@2718339 self_supervised/models/models_hivit_mae.py HiViTMaskedAutoencoder',
    build_fn=build_hivit_mae,
    entries_fn=hivit_mae_entries,
    method='mae',
    twin_fn=hivit_mae_twin))

O.register_source(O.Source(
    name='mmpretrain_hivit',
    reference='open-mmlab/mmpretrain mmpretrain/models/backbones/hivit.py HiViT (backbone)',
    build_fn=build_mmpretrain_hivit,
    entries_fn=mmpretrain_hivit_entries))
