"""microsoft/SimMIM Swin Transformer family: PyTorch twin, key tables and conversion sources.

Two halves, one file:

* **PyTorch twin** (``torch`` only, no timm): ``SwinTransformer`` (the classifier of
  ``microsoft/SimMIM@d3e29bc models/swin_transformer.py``), ``SwinTransformerForSimMIM`` and
  ``SimMIM`` (the pre-training model of ``models/simmim.py``), built from the official
  constructor arguments. Module names, registration order and persistent buffers follow the
  official code, so ``state_dict()`` keys, shapes, dtypes and order are identical to the official
  models and official checkpoints load with ``load_state_dict(strict=True)``. Registration order
  also mirrors the official code, so with the same ``torch.manual_seed`` the random
  initialisation consumes the RNG in the same order as the official model (timm's
  ``trunc_normal_`` is the same algorithm as ``torch.nn.init.trunc_normal_``).
* **Conversion sources** registered with :mod:`convert.official`:

  ``'simmim_swin'``
      ``SwinTransformer(...)`` of ``models/swin_transformer.py``, built as
      :class:`jaxmim.models.swin.SwinTransformer` (:func:`build_simmim_swin`).
  ``'simmim_swin_pretrain'``
      ``SimMIM(encoder=SwinTransformerForSimMIM(...), encoder_stride=...)`` of
      ``models/simmim.py``, built as :class:`jaxmim.methods.simmim.SimMIM` around
      :class:`jaxmim.models.swin.SwinTransformerForSimMIM` (:func:`build_simmim_swin_pretrain`).

  The key tables are :func:`swin_entries` and :func:`simmim_swin_pretrain_entries`; the derived
  buffers ``relative_position_index`` (int64) and ``attn_mask`` (float32) are
  :class:`convert.official.BufferEntry` (exported, checked on load, never loaded).

Twin layouts: images are NCHW float tensors; tokens are (B, L, C) with L row-major over the patch
grid; SimMIM masks are (B, H / patch, W / patch), 1 = masked. Everything is device-agnostic: the
buffers ``relative_position_index`` (int64) and ``attn_mask`` (float32) move with ``.to(device)``.

Differences of the twin from the official code (all on inputs the official code cannot run or
only asserts on): invalid configurations raise ``ValueError`` at construction (window not dividing
a stage resolution, odd resolution before a patch merge, heads not dividing the width, ...) and
invalid inputs raise ``ValueError`` in ``forward`` where the official code uses ``assert``; the
SimMIM encoder output is reshaped to the real final-stage resolution instead of ``sqrt(L)``
(identical for square images).
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as torch_checkpoint
from flax import nnx

from convert import official as O
from convert import _entries as E
from convert._common import DropPath, IntOr2, Mlp, init_linear_layernorm, pair, square, trunc_normal_

__all__ = [
    # PyTorch twin
    "DropPath", "Mlp", "window_partition", "window_reverse", "make_relative_position_index",
    "make_shift_attn_mask", "WindowAttention", "SwinTransformerBlock", "PatchMerging", "BasicLayer",
    "PatchEmbed", "SwinTransformer", "SwinTransformerForSimMIM", "SimMIM", "build_torch_simmim_swin",
    # conversion sources
    "build_simmim_swin", "build_simmim_swin_pretrain", "swin_entries", "simmim_swin_pretrain_entries",
]

# ---------------------------------------------------------------------------------------------
# Small building blocks (DropPath, Mlp: convert._common)
# ---------------------------------------------------------------------------------------------


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """Cut (B, H, W, C) into non-overlapping windows -> (B * nW, ws, ws, C).

    Windows are row-major over the window grid and fastest-varying within a batch element
    (flat index ``b * nW + wr * (W // ws) + wc``); tokens inside a window are row-major.
    Follows ``models/swin_transformer.py`` ``window_partition``.

    Raises:
        ValueError: if ``x`` is not 4-D or ``window_size`` does not divide H and W.
    """
    if x.ndim != 4:
        raise ValueError(f"window_partition expects (B, H, W, C), got shape {tuple(x.shape)}")
    B, H, W, C = x.shape
    if H % window_size or W % window_size:
        raise ValueError(f"window_size {window_size} does not divide the resolution {H}x{W}")
    x = x.view(B, H // window_size, window_size, W // window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, C)


def window_reverse(windows: torch.Tensor, window_size: int, H: int, W: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * nW, ws, ws, C) -> (B, H, W, C).

    Follows ``models/swin_transformer.py`` ``window_reverse``.

    Raises:
        ValueError: if ``window_size`` does not divide H and W or the window count is not a
            multiple of ``(H // ws) * (W // ws)``.
    """
    if H % window_size or W % window_size:
        raise ValueError(f"window_size {window_size} does not divide the resolution {H}x{W}")
    n_win = (H // window_size) * (W // window_size)
    if windows.shape[0] % n_win:
        raise ValueError(f"{windows.shape[0]} windows is not a multiple of {n_win} windows per image")
    B = windows.shape[0] // n_win
    x = windows.view(B, H // window_size, W // window_size, window_size, window_size, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(B, H, W, -1)


def make_relative_position_index(window_size: IntOr2) -> torch.Tensor:
    """Relative-position index of a (Wh, Ww) window: int64 tensor (Wh*Ww, Wh*Ww).

    Tokens are flattened row-major ('ij' meshgrid); for tokens i = (hi, wi), j = (hj, wj):
    ``idx[i, j] = (hi - hj + Wh - 1) * (2 * Ww - 1) + (wi - wj + Ww - 1)``, a row of the
    ((2Wh-1)(2Ww-1), nH) bias table.  Follows ``WindowAttention.__init__`` in
    ``models/swin_transformer.py``.  Created on the current default device.
    """
    wh, ww = pair(window_size, "window_size")
    coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij"))  # 2, Wh, Ww
    coords = coords.flatten(1)  # 2, N
    rel = coords[:, :, None] - coords[:, None, :]  # 2, N, N
    rel = rel.permute(1, 2, 0).contiguous()  # N, N, 2
    rel[:, :, 0] += wh - 1
    rel[:, :, 1] += ww - 1
    rel[:, :, 0] *= 2 * ww - 1
    return rel.sum(-1).to(torch.int64)


def make_shift_attn_mask(input_resolution: Tuple[int, int], window_size: int,
                         shift_size: int) -> torch.Tensor:
    """Shifted-window attention mask: float32 (nW, ws*ws, ws*ws) with values 0.0 / -100.0.

    The (H, W) map (in the rolled frame) is labelled 3 * row_slice + col_slice with slices
    [0, H-ws), [H-ws, H-s), [H-s, H) per axis; after window partition, entry (w, i, j) is -100.0
    where tokens i and j of window w carry different labels, else 0.0.  nW is row-major over the
    window grid.  Follows ``SwinTransformerBlock.__init__`` in ``models/swin_transformer.py``.

    Raises:
        ValueError: unless ``0 < shift_size < window_size`` and ``window_size`` divides H and W.
    """
    H, W = input_resolution
    if not 0 < shift_size < window_size:
        raise ValueError(f"need 0 < shift_size < window_size, got shift {shift_size}, window {window_size}")
    if H % window_size or W % window_size:
        raise ValueError(f"window_size {window_size} does not divide the resolution {H}x{W}")
    img_mask = torch.zeros((1, H, W, 1), dtype=torch.float32)
    slices = (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None))
    cnt = 0
    for hs in slices:
        for ws_ in slices:
            img_mask[:, hs, ws_, :] = cnt
            cnt += 1
    mask_windows = window_partition(img_mask, window_size).view(-1, window_size * window_size)
    attn_mask = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
    return attn_mask.masked_fill(attn_mask != 0, -100.0).masked_fill(attn_mask == 0, 0.0)


# ---------------------------------------------------------------------------------------------
# Attention, blocks, stages
# ---------------------------------------------------------------------------------------------


class WindowAttention(nn.Module):
    """Window multi-head self-attention with a relative-position bias (W-MSA / SW-MSA).

    Follows ``models/swin_transformer.py`` ``WindowAttention``.  State (in order):
    ``relative_position_bias_table`` ((2Wh-1)(2Ww-1), nH) float parameter, ``relative_position_index``
    (Wh*Ww, Wh*Ww) int64 persistent buffer, ``qkv`` Linear(dim, 3*dim) (rows [q; k; v], each
    head-major), ``proj`` Linear(dim, dim).  q is multiplied by ``qk_scale or head_dim**-0.5``
    before q @ k^T.

    Raises:
        ValueError: if ``num_heads`` does not divide ``dim``.
    """

    def __init__(self, dim: int, window_size: Tuple[int, int], num_heads: int, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if num_heads <= 0 or dim % num_heads:
            raise ValueError(f"num_heads {num_heads} must divide dim {dim}")
        self.dim = dim
        self.window_size = pair(window_size, "window_size")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = qk_scale or head_dim ** -0.5
        wh, ww = self.window_size

        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * wh - 1) * (2 * ww - 1), num_heads))
        self.register_buffer("relative_position_index", make_relative_position_index(self.window_size))

        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

        trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Attend within windows.

        Args:
            x: (B * nW, N, C) float, N = Wh * Ww tokens per window, windows fastest within a batch
                element.
            mask: optional (nW, N, N) additive mask (0 / -100), shared by all images.

        Returns:
            (B * nW, N, C) float.

        Raises:
            ValueError: if N or C do not match the module, or the window count is not a multiple
                of ``mask.shape[0]``.
        """
        B_, N, C = x.shape
        wh, ww = self.window_size
        if N != wh * ww or C != self.dim:
            raise ValueError(f"expected (B*nW, {wh * ww}, {self.dim}) tokens, got {tuple(x.shape)}")
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]

        q = q * self.scale
        attn = q @ k.transpose(-2, -1)  # B_, nH, N, N

        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(N, N, -1)
        attn = attn + bias.permute(2, 0, 1).contiguous().unsqueeze(0)

        if mask is not None:
            nW = mask.shape[0]
            if B_ % nW:
                raise ValueError(f"{B_} windows is not a multiple of the mask's {nW} windows")
            attn = attn.view(B_ // nW, nW, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, N, N)
        attn = self.softmax(attn)
        attn = self.attn_drop(attn)

        x = (attn @ v).transpose(1, 2).reshape(B_, N, C)
        x = self.proj(x)
        x = self.proj_drop(x)
        return x

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}"


class SwinTransformerBlock(nn.Module):
    """Swin block: pre-norm (shifted-)window attention and MLP, each with a residual.

    Follows ``models/swin_transformer.py`` ``SwinTransformerBlock``.  Clamp rule: if
    ``min(input_resolution) <= window_size`` the window becomes ``min(input_resolution)`` and the
    shift 0.  State (in order): ``attn_mask`` persistent float32 buffer (nW, N, N) only when the
    (clamped) shift is > 0 (registered as None otherwise, so absent from the state_dict), then
    ``norm1``, ``attn``, ``norm2``, ``mlp``.  ``drop_path`` is a :class:`DropPath` only if its rate
    is > 0, else ``nn.Identity``.

    Raises:
        ValueError: if the (clamped) window does not divide the resolution, the shift is not in
            [0, window), or ``num_heads`` does not divide ``dim``.
    """

    def __init__(self, dim: int, input_resolution: Tuple[int, int], num_heads: int, window_size: int = 7,
                 shift_size: int = 0, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0, act_layer=nn.GELU, norm_layer=nn.LayerNorm):
        super().__init__()
        self.dim = dim
        self.input_resolution = tuple(int(r) for r in input_resolution)
        self.num_heads = num_heads
        self.window_size = int(window_size)
        self.shift_size = int(shift_size)
        self.mlp_ratio = mlp_ratio
        H, W = self.input_resolution
        if min(self.input_resolution) <= self.window_size:
            # the window covers the whole (square-clamped) map: no partition, no shift
            self.shift_size = 0
            self.window_size = min(self.input_resolution)
        if self.window_size <= 0:
            raise ValueError(f"window_size must be positive, got {window_size} at resolution {H}x{W}")
        if not 0 <= self.shift_size < self.window_size:
            raise ValueError(f"shift_size must be in [0, window_size={self.window_size}), got {self.shift_size}")
        if H % self.window_size or W % self.window_size:
            raise ValueError(f"window size {self.window_size} does not divide the stage resolution {H}x{W}")

        # buffers of a module precede its children in state_dict(); registered first, as the
        # official block does (microsoft/SimMIM@d3e29bc models/swin_transformer.py:209-232)
        attn_mask = (make_shift_attn_mask(self.input_resolution, self.window_size, self.shift_size)
                     if self.shift_size > 0 else None)
        self.register_buffer("attn_mask", attn_mask)

        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, window_size=(self.window_size, self.window_size), num_heads=num_heads,
                                    qkv_bias=qkv_bias, qk_scale=qk_scale, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H*W, C) float tokens (row-major) -> (B, H*W, C).

        Raises:
            ValueError: if the token count or width does not match the block.
        """
        H, W = self.input_resolution
        B, L, C = x.shape
        if L != H * W or C != self.dim:
            raise ValueError(f"expected (B, {H * W}, {self.dim}) tokens for a {H}x{W} stage, got {tuple(x.shape)}")
        ws, s = self.window_size, self.shift_size

        shortcut = x
        x = self.norm1(x).view(B, H, W, C)
        if s > 0:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
        windows = window_partition(x, ws).view(-1, ws * ws, C)
        windows = self.attn(windows, mask=self.attn_mask)
        x = window_reverse(windows.view(-1, ws, ws, C), ws, H, W)
        if s > 0:
            x = torch.roll(x, shifts=(s, s), dims=(1, 2))
        x = x.reshape(B, H * W, C)

        x = shortcut + self.drop_path(x)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, input_resolution={self.input_resolution}, num_heads={self.num_heads}, "
                f"window_size={self.window_size}, shift_size={self.shift_size}, mlp_ratio={self.mlp_ratio}")


class PatchMerging(nn.Module):
    """2x2 patch merging: (B, H*W, C) -> (B, H/2*W/2, 2C).

    Concatenates x0 = x[0::2, 0::2], x1 = x[1::2, 0::2], x2 = x[0::2, 1::2], x3 = x[1::2, 1::2]
    on channels (input channel k*C + c comes from x_k; row offset fastest), then ``norm``
    = LayerNorm(4C), then ``reduction`` = Linear(4C, 2C, bias=False).  ``reduction`` is registered
    before ``norm`` (state_dict order).  Follows ``models/swin_transformer.py`` ``PatchMerging``.

    Raises:
        ValueError: if H or W is odd.
    """

    def __init__(self, input_resolution: Tuple[int, int], dim: int, norm_layer=nn.LayerNorm):
        super().__init__()
        H, W = input_resolution
        if H % 2 or W % 2:
            raise ValueError(f"PatchMerging needs an even resolution, got {H}x{W}")
        self.input_resolution = (int(H), int(W))
        self.dim = dim
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = norm_layer(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H*W, C) -> (B, (H/2)*(W/2), 2C).

        Raises:
            ValueError: if the token count or width does not match.
        """
        H, W = self.input_resolution
        B, L, C = x.shape
        if L != H * W or C != self.dim:
            raise ValueError(f"expected (B, {H * W}, {self.dim}) tokens, got {tuple(x.shape)}")
        x = x.view(B, H, W, C)
        x0 = x[:, 0::2, 0::2, :]
        x1 = x[:, 1::2, 0::2, :]
        x2 = x[:, 0::2, 1::2, :]
        x3 = x[:, 1::2, 1::2, :]
        x = torch.cat([x0, x1, x2, x3], -1).view(B, -1, 4 * C)
        x = self.norm(x)
        return self.reduction(x)

    def extra_repr(self) -> str:
        return f"input_resolution={self.input_resolution}, dim={self.dim}"


class BasicLayer(nn.Module):
    """One Swin stage: ``depth`` blocks (even index unshifted, odd shifted by window // 2), then an
    optional ``downsample`` (PatchMerging).  (B, H*W, C) -> (B, H*W, C), or (B, H/2*W/2, 2C) with
    downsample.  ``use_checkpoint`` wraps each block in activation checkpointing (no numerical
    effect).  Follows ``models/swin_transformer.py`` ``BasicLayer``.

    Raises:
        ValueError: if a list of drop-path rates does not have ``depth`` entries (plus the block
            errors).
    """

    def __init__(self, dim: int, input_resolution: Tuple[int, int], depth: int, num_heads: int, window_size: int,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, qk_scale: Optional[float] = None,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: Union[float, Sequence[float]] = 0.0,
                 norm_layer=nn.LayerNorm, downsample=None, use_checkpoint: bool = False):
        super().__init__()
        self.dim = dim
        self.input_resolution = tuple(int(r) for r in input_resolution)
        self.depth = depth
        self.use_checkpoint = use_checkpoint
        if isinstance(drop_path, (list, tuple)):
            if len(drop_path) != depth:
                raise ValueError(f"got {len(drop_path)} drop-path rates for {depth} blocks")
            rates = [float(r) for r in drop_path]
        else:
            rates = [float(drop_path)] * depth

        self.blocks = nn.ModuleList([
            SwinTransformerBlock(dim=dim, input_resolution=self.input_resolution, num_heads=num_heads,
                                 window_size=window_size, shift_size=0 if i % 2 == 0 else window_size // 2,
                                 mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop,
                                 attn_drop=attn_drop, drop_path=rates[i], norm_layer=norm_layer)
            for i in range(depth)])
        if downsample is not None:
            self.downsample = downsample(self.input_resolution, dim=dim, norm_layer=norm_layer)
        else:
            self.downsample = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H*W, C) -> (B, H*W, C) or, with downsample, (B, H/2*W/2, 2C)."""
        for blk in self.blocks:
            if self.use_checkpoint and torch.is_grad_enabled():
                x = torch_checkpoint.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        if self.downsample is not None:
            x = self.downsample(x)
        return x

    def extra_repr(self) -> str:
        return f"dim={self.dim}, input_resolution={self.input_resolution}, depth={self.depth}"


class PatchEmbed(nn.Module):
    """Patch embedding: Conv2d(in_chans, embed_dim, kernel=stride=patch) on NCHW images, flattened
    to (B, Ph*Pw, embed_dim) tokens (row-major), then ``norm`` (LayerNorm) if a norm layer is given.
    Patch grid = img_size // patch_size (floor, as official).  Follows ``models/swin_transformer.py``
    ``PatchEmbed``.

    Raises:
        ValueError: in ``forward``, if the input is not (B, in_chans, img_h, img_w).
    """

    def __init__(self, img_size: IntOr2 = 224, patch_size: IntOr2 = 4, in_chans: int = 3, embed_dim: int = 96,
                 norm_layer=None):
        super().__init__()
        img_size = pair(img_size, "img_size")
        patch_size = pair(patch_size, "patch_size")
        self.img_size = img_size
        self.patch_size = patch_size
        self.patches_resolution = [img_size[0] // patch_size[0], img_size[1] // patch_size[1]]
        if min(self.patches_resolution) <= 0:
            raise ValueError(f"img_size {img_size} is smaller than patch_size {patch_size}")
        self.num_patches = self.patches_resolution[0] * self.patches_resolution[1]
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) float -> (B, Ph*Pw, embed_dim)."""
        if x.ndim != 4:
            raise ValueError(f"expected an NCHW image batch, got shape {tuple(x.shape)}")
        B, C, H, W = x.shape
        if C != self.in_chans:
            raise ValueError(f"expected {self.in_chans} input channels (NCHW), got {C} (shape {tuple(x.shape)})")
        if (H, W) != self.img_size:
            raise ValueError(f"Input image size ({H}*{W}) doesn't match model ({self.img_size[0]}*{self.img_size[1]}).")
        x = self.proj(x).flatten(2).transpose(1, 2)
        if self.norm is not None:
            x = self.norm(x)
        return x


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


class SwinTransformer(nn.Module):
    """Swin Transformer classifier (``microsoft/SimMIM@d3e29bc models/swin_transformer.py``).

    Args:
        img_size: int or (h, w); inputs must have exactly this size.
        patch_size: int or (h, w) patch (= conv kernel and stride).
        in_chans, num_classes, embed_dim: as official; ``num_classes == 0`` makes ``head`` an
            ``nn.Identity``.
        depths, num_heads: per-stage block counts and head counts (same length).
        window_size: configured window; per block the clamp rule of the official code applies.
        mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate, drop_path_rate, norm_layer, ape,
        patch_norm, use_checkpoint: as official; other ``**kwargs`` are ignored.

    State_dict (official order): [absolute_pos_embed], patch_embed.{proj,norm}, layers.{i}.blocks.{j}
    .{attn_mask (shifted only), norm1, attn.{relative_position_bias_table, relative_position_index,
    qkv, proj}, norm2, mlp.{fc1, fc2}}, layers.{i}.downsample.{reduction, norm} (i < last), norm, head.
    Init: Linear weights trunc_normal(.02) and bias 0, LayerNorm 1/0, bias tables trunc_normal(.02),
    patch conv PyTorch default.  Stochastic depth rates linspace(0, drop_path_rate, sum(depths)).

    Raises:
        ValueError: for inconsistent depths/num_heads, a window that does not divide a stage
            resolution, an odd resolution before a patch merge, heads not dividing a stage width.
    """

    def __init__(self, img_size: IntOr2 = 224, patch_size: IntOr2 = 4, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 window_size: int = 7, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.1, norm_layer=nn.LayerNorm, ape: bool = False, patch_norm: bool = True,
                 use_checkpoint: bool = False, **kwargs: Any):
        super().__init__()
        depths = [int(d) for d in depths]
        num_heads = [int(h) for h in num_heads]
        if len(depths) == 0 or len(depths) != len(num_heads):
            raise ValueError(f"depths {depths} and num_heads {num_heads} must be non-empty and of equal length")
        if any(d <= 0 for d in depths):
            raise ValueError(f"every stage needs at least one block, got depths {depths}")
        if int(window_size) <= 0:
            raise ValueError(f"window_size must be positive, got {window_size}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")

        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.num_layers = len(depths)
        self.embed_dim = embed_dim
        self.ape = ape
        self.patch_norm = patch_norm
        self.num_features = int(embed_dim * 2 ** (self.num_layers - 1))
        self.mlp_ratio = mlp_ratio

        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                      embed_dim=embed_dim, norm_layer=norm_layer if patch_norm else None)
        num_patches = self.patch_embed.num_patches
        patches_resolution = self.patch_embed.patches_resolution
        self.patches_resolution = patches_resolution
        for i in range(self.num_layers):
            res = (patches_resolution[0] // 2 ** i, patches_resolution[1] // 2 ** i)
            if min(res) <= 0 or (i < self.num_layers - 1 and (res[0] % 2 or res[1] % 2)):
                raise ValueError(f"stage {i} resolution {res[0]}x{res[1]} (patch grid {patches_resolution}) "
                                 "must be positive, and even before every patch merge")

        if self.ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, num_patches, embed_dim))
            trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(p=drop_rate)

        dpr = [r.item() for r in torch.linspace(0, drop_path_rate, sum(depths), device="cpu")]
        self.layers = nn.ModuleList()
        for i in range(self.num_layers):
            self.layers.append(BasicLayer(
                dim=int(embed_dim * 2 ** i),
                input_resolution=(patches_resolution[0] // 2 ** i, patches_resolution[1] // 2 ** i),
                depth=depths[i], num_heads=num_heads[i], window_size=int(window_size), mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate, attn_drop=attn_drop_rate,
                drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])], norm_layer=norm_layer,
                downsample=PatchMerging if i < self.num_layers - 1 else None, use_checkpoint=use_checkpoint))

        self.norm = norm_layer(self.num_features)
        self.avgpool = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

        self.apply(init_linear_layernorm)   # _init_weights: Linear trunc_normal(.02) / 0, LayerNorm 1 / 0

    @property
    def final_resolution(self) -> Tuple[int, int]:
        """(h, w) token grid of the last stage: patch grid // 2**(num_layers - 1)."""
        k = 2 ** (self.num_layers - 1)
        return (self.patches_resolution[0] // k, self.patches_resolution[1] // k)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Parameter names excluded from weight decay: {'absolute_pos_embed'}."""
        return {"absolute_pos_embed"}

    @torch.jit.ignore
    def no_weight_decay_keywords(self) -> set:
        """Substrings of parameter names excluded from weight decay: {'relative_position_bias_table'}."""
        return {"relative_position_bias_table"}

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens after patch embedding (and ape/pos_drop) -> final-norm tokens (B, L_last, C_last)."""
        if self.ape:
            x = x + self.absolute_pos_embed
        x = self.pos_drop(x)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) NCHW float images -> (B, num_features) mean-pooled final-norm features.

        Raises:
            ValueError: if the image is not (B, in_chans, img_size, img_size).
        """
        x = self._trunk(self.patch_embed(x))
        x = self.avgpool(x.transpose(1, 2))  # B C 1
        return torch.flatten(x, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) NCHW float images -> (B, num_classes) logits ((B, num_features) when
        num_classes == 0).

        Raises:
            ValueError: if the image is not (B, in_chans, img_size, img_size).
        """
        return self.head(self.forward_features(x))

    def forward_stages(self, x: torch.Tensor, out_indices: Optional[Sequence[int]] = None,
                       norms: Optional[Mapping[int, nn.Module]] = None) -> Tuple[torch.Tensor, ...]:
        """Stage outputs of Swin's detection backbone, on images of any size, with this model's weights.

        A transcription of ``SwinTransformer/Swin-Transformer-Object-Detection@c7b2011
        mmdet/models/backbones/swin_transformer.py``: ``PatchEmbed.forward`` :429-446 (image padded
        at the bottom / right to a multiple of the patch), ``SwinTransformer.forward`` :600-627
        (``absolute_pos_embed`` resized with ``F.interpolate(mode='bicubic')``), ``BasicLayer.forward``
        :362-403 (the shift mask built for the window-padded size; shift ``window // 2`` on odd
        blocks, no clamp rule), ``SwinTransformerBlock.forward`` :198-256 (zero padding after
        ``norm1``, crop after attention) and ``PatchMerging.forward`` :271-298 (odd sizes padded).
        Each block uses its own window (this twin's, after the classifier's clamp rule, which only
        shrinks it when a stage is smaller than ``window_size`` at ``img_size``). The detection
        backbone's ``norm{i}`` layers are not part of this classifier: pass them as ``norms``.
        Pure function of the weights: the twin's state is not changed.

        Args:
            x: (B, in_chans, H, W) NCHW float images, any H, W >= 1.
            out_indices: stages to return (default all), as mmdet's ``out_indices``.
            norms: optional ``{stage: module}`` applied to the (B, H*W, C) stage outputs (mmdet's
                ``norm{i}``); stages without one are returned un-normalised.

        Returns:
            tuple of (B, embed_dim * 2**i, H_i, W_i) NCHW maps in stage order, H_0 = ceil(H / patch),
            H_{i+1} = ceil(H_i / 2); taken before the stage's PatchMerging.

        Raises:
            ValueError: if ``x`` is not (B, in_chans, H, W) or an index is out of range.
        """
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected (B, {self.in_chans}, H, W) NCHW images, got {tuple(x.shape)}")
        out_indices = tuple(range(self.num_layers)) if out_indices is None else tuple(out_indices)
        if any(not 0 <= i < self.num_layers for i in out_indices):
            raise ValueError(f"out_indices {out_indices} must lie in [0, {self.num_layers})")
        pe = self.patch_embed
        ph, pw = pe.patch_size
        _, _, H, W = x.size()
        if W % pw != 0:
            x = F.pad(x, (0, pw - W % pw))
        if H % ph != 0:
            x = F.pad(x, (0, 0, 0, ph - H % ph))
        x = pe.proj(x)
        Wh, Ww = x.size(2), x.size(3)
        x = x.flatten(2).transpose(1, 2)
        if pe.norm is not None:
            x = pe.norm(x)
        if self.ape:
            gh, gw = self.patches_resolution
            table = self.absolute_pos_embed.transpose(1, 2).reshape(1, self.embed_dim, gh, gw)
            table = F.interpolate(table, size=(Wh, Ww), mode="bicubic", align_corners=False)
            x = x + table.flatten(2).transpose(1, 2)
        x = self.pos_drop(x)
        outs = []
        for i, layer in enumerate(self.layers):
            x_out, H, W, x, Wh, Ww = _det_basic_layer(layer, x, Wh, Ww)
            if i in out_indices:
                if norms is not None and i in norms:
                    x_out = norms[i](x_out)
                outs.append(x_out.view(-1, H, W, x_out.shape[-1]).permute(0, 3, 1, 2).contiguous())
        return tuple(outs)


def _det_basic_layer(layer: BasicLayer, x: torch.Tensor, H: int, W: int):
    """mmdet ``BasicLayer.forward`` (:362-403) with the weights of a twin :class:`BasicLayer`:
    (B, H*W, C) -> (x_out, H, W, x_down, Wh, Ww)."""
    window_size = layer.blocks[0].window_size
    shift_size = window_size // 2
    Hp = int(np.ceil(H / window_size)) * window_size
    Wp = int(np.ceil(W / window_size)) * window_size
    attn_mask = None
    if shift_size > 0:
        img_mask = torch.zeros((1, Hp, Wp, 1), device=x.device)
        h_slices = (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None))
        w_slices = (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None))
        cnt = 0
        for h in h_slices:
            for w in w_slices:
                img_mask[:, h, w, :] = cnt
                cnt += 1
        mask_windows = window_partition(img_mask, window_size).view(-1, window_size * window_size)
        attn_mask = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
        attn_mask = attn_mask.masked_fill(attn_mask != 0, float(-100.0)).masked_fill(attn_mask == 0, float(0.0))
    for j, blk in enumerate(layer.blocks):
        x = _det_block(blk, x, H, W, window_size, 0 if j % 2 == 0 else shift_size, attn_mask)
    if layer.downsample is not None:
        x_down = _det_patch_merging(layer.downsample, x, H, W)
        return x, H, W, x_down, (H + 1) // 2, (W + 1) // 2
    return x, H, W, x, H, W


def _det_block(blk: SwinTransformerBlock, x: torch.Tensor, H: int, W: int, window_size: int, shift_size: int,
               mask_matrix: Optional[torch.Tensor]) -> torch.Tensor:
    """mmdet ``SwinTransformerBlock.forward`` (:198-256) with the weights of a twin block."""
    B, L, C = x.shape
    shortcut = x
    x = blk.norm1(x).view(B, H, W, C)
    pad_r = (window_size - W % window_size) % window_size
    pad_b = (window_size - H % window_size) % window_size
    x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    _, Hp, Wp, _ = x.shape
    if shift_size > 0:
        shifted_x = torch.roll(x, shifts=(-shift_size, -shift_size), dims=(1, 2))
        attn_mask = mask_matrix
    else:
        shifted_x = x
        attn_mask = None
    x_windows = window_partition(shifted_x, window_size).view(-1, window_size * window_size, C)
    attn_windows = blk.attn(x_windows, mask=attn_mask).view(-1, window_size, window_size, C)
    shifted_x = window_reverse(attn_windows, window_size, Hp, Wp)
    x = torch.roll(shifted_x, shifts=(shift_size, shift_size), dims=(1, 2)) if shift_size > 0 else shifted_x
    if pad_r > 0 or pad_b > 0:
        x = x[:, :H, :W, :].contiguous()
    x = shortcut + blk.drop_path(x.view(B, H * W, C))
    return x + blk.drop_path(blk.mlp(blk.norm2(x)))


def _det_patch_merging(merge: PatchMerging, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """mmdet ``PatchMerging.forward`` (:271-298) with the weights of a twin :class:`PatchMerging`."""
    B, L, C = x.shape
    x = x.view(B, H, W, C)
    if (H % 2 == 1) or (W % 2 == 1):
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
    x = torch.cat([x[:, 0::2, 0::2, :], x[:, 1::2, 0::2, :], x[:, 0::2, 1::2, :], x[:, 1::2, 1::2, :]], -1)
    return merge.reduction(merge.norm(x.view(B, -1, 4 * C)))


class SwinTransformerForSimMIM(SwinTransformer):
    """SimMIM Swin encoder (``microsoft/SimMIM@d3e29bc models/simmim.py`` ``SwinTransformerForSimMIM``).

    Takes the :class:`SwinTransformer` keyword arguments; ``num_classes`` defaults to 0 here (the
    official class requires it to be passed as 0).  Adds ``mask_token`` (1, 1, embed_dim),
    trunc_normal(.02), created after the parent initialisation; as a direct parameter of the encoder
    it is the first state_dict entry (``encoder.mask_token`` inside :class:`SimMIM`).

    Raises:
        ValueError: if ``num_classes != 0`` (the official code asserts).
    """

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("num_classes", 0)
        if kwargs["num_classes"] != 0:
            raise ValueError(f"SwinTransformerForSimMIM needs num_classes == 0, got {kwargs['num_classes']}")
        super().__init__(**kwargs)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
        trunc_normal_(self.mask_token, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Encode masked images.

        Args:
            x: (B, in_chans, H, W) NCHW float images, (H, W) == img_size.
            mask: (B, H / patch, W / patch) with 1 = masked (bool, int or float); masked patches get
                ``x * (1 - w) + mask_token * w`` applied to the normalised patch embedding.

        Returns:
            (B, num_features, h, w) float feature map of the final norm, (h, w) = final_resolution.

        Raises:
            ValueError: if the image or mask shape is wrong.
        """
        x = self.patch_embed(x)
        if mask is None:
            raise ValueError("SwinTransformerForSimMIM.forward needs a mask")
        B, L, _ = x.shape
        ph, pw = self.patches_resolution
        if tuple(mask.shape) != (B, ph, pw):
            raise ValueError(f"mask must have shape (B, {ph}, {pw}) = {(B, ph, pw)} at patch resolution, "
                             f"got {tuple(mask.shape)}")
        mask_tokens = self.mask_token.expand(B, L, -1)
        w = mask.flatten(1).unsqueeze(-1).type_as(mask_tokens)
        x = x * (1.0 - w) + mask_tokens * w

        x = self._trunk(x)
        h, w_ = self.final_resolution
        B, L, C = x.shape
        return x.transpose(1, 2).reshape(B, C, h, w_)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """{'absolute_pos_embed', 'mask_token'}."""
        return super().no_weight_decay() | {"mask_token"}


class SimMIM(nn.Module):
    """SimMIM pre-training model (``microsoft/SimMIM@d3e29bc models/simmim.py`` ``SimMIM``).

    Args:
        encoder: a :class:`SwinTransformerForSimMIM` (anything with ``num_features``, ``in_chans``,
            ``patch_size`` and ``forward(x, mask) -> (B, C, h, w)``).
        encoder_stride: total stride of the encoder output (32 for Swin with patch 4 and 4 stages).

    ``decoder`` = Sequential(Conv2d(num_features, encoder_stride**2 * 3, 1), PixelShuffle(encoder_stride)),
    PyTorch default init.  State_dict: ``encoder.*`` then ``decoder.0.{weight,bias}``.

    Raises:
        ValueError: if ``in_chans != 3`` (the decoder hard-codes 3 colours) or, for a Swin encoder,
            ``final_resolution * encoder_stride`` differs from ``img_size``.
    """

    def __init__(self, encoder: nn.Module, encoder_stride: int):
        super().__init__()
        if encoder.in_chans != 3:
            raise ValueError(f"SimMIM's decoder reconstructs 3 channels; the encoder has in_chans={encoder.in_chans}")
        if hasattr(encoder, "final_resolution"):
            img = pair(encoder.img_size, "img_size")
            fr = encoder.final_resolution
            if (fr[0] * encoder_stride, fr[1] * encoder_stride) != img:
                raise ValueError(f"encoder_stride {encoder_stride} x final resolution {fr} != img_size {img}")
        self.encoder = encoder
        self.encoder_stride = encoder_stride
        self.decoder = nn.Sequential(
            nn.Conv2d(in_channels=self.encoder.num_features, out_channels=self.encoder_stride ** 2 * 3, kernel_size=1),
            nn.PixelShuffle(self.encoder_stride),
        )
        self.in_chans = self.encoder.in_chans
        self.patch_size = self.encoder.patch_size

    def _loss(self, x: torch.Tensor, x_rec: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ph, pw = pair(self.patch_size, "patch_size")
        m = mask.repeat_interleave(ph, 1).repeat_interleave(pw, 2).unsqueeze(1).contiguous().to(x_rec.dtype)
        loss_recon = F.l1_loss(x, x_rec, reduction="none")
        return (loss_recon * m).sum() / (m.sum() + 1e-5) / self.in_chans

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Official SimMIM loss (0-dim float tensor).

        Args:
            x: (B, 3, H, W) NCHW float images (the reconstruction target, e.g. ImageNet-normalised).
            mask: (B, H / patch, W / patch), 1 = masked.

        Returns:
            ``sum(|x - x_rec| * M) / (sum(M) + 1e-5) / in_chans`` with M the mask repeated
            ``patch_size`` times on both axes, summed over the whole batch.

        Raises:
            ValueError: if the image or mask shape is wrong.
        """
        return self.forward_with_outputs(x, mask)["loss"]

    def forward_with_outputs(self, x: torch.Tensor, mask: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Loss plus the reconstruction.

        Returns:
            dict with ``loss`` (as :meth:`forward`), ``x_rec`` (B, 3, H, W) and ``pred``
            (B, L, stride*stride*3): ``x_rec`` cut into stride x stride units, units row-major
            (L = (H/stride)*(W/stride)), inside a unit pixel row p, column q, colour c, colour
            fastest: ``pred[b, i*(W/stride)+j, (p*stride+q)*3+c] == x_rec[b, c, i*stride+p, j*stride+q]``.

        Raises:
            ValueError: if the image or mask shape is wrong.
        """
        z = self.encoder(x, mask)
        x_rec = self.decoder(z)
        loss = self._loss(x, x_rec, mask)
        B, C, H, W = x_rec.shape
        r = self.encoder_stride
        pred = (x_rec.reshape(B, C, H // r, r, W // r, r).permute(0, 2, 4, 3, 5, 1)
                .reshape(B, (H // r) * (W // r), r * r * C))
        return {"loss": loss, "x_rec": x_rec, "pred": pred}

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Encoder's no-decay names prefixed with 'encoder.'."""
        if hasattr(self.encoder, "no_weight_decay"):
            return {"encoder." + n for n in self.encoder.no_weight_decay()}
        return set()

    @torch.jit.ignore
    def no_weight_decay_keywords(self) -> set:
        """Encoder's no-decay keywords prefixed with 'encoder.'."""
        if hasattr(self.encoder, "no_weight_decay_keywords"):
            return {"encoder." + n for n in self.encoder.no_weight_decay_keywords()}
        return set()


def build_torch_simmim_swin(encoder: Dict[str, Any], encoder_stride: int = 32) -> SimMIM:
    """Build ``SimMIM(SwinTransformerForSimMIM(**encoder, num_classes=0), encoder_stride)``.

    Mirrors ``build_simmim`` for ``MODEL.TYPE == 'swin'`` (``models/simmim.py``).  ``encoder`` holds
    :class:`SwinTransformer` keyword arguments; note the official builder never passes
    ``attn_drop_rate`` (so it stays 0) — leave it out to match.  Swin-B 192/w6:
    ``dict(img_size=192, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=6,
    drop_path_rate=0.0)``.

    Raises:
        ValueError: as the constructors, or if ``encoder`` sets a non-zero ``num_classes``.
    """
    kwargs = dict(encoder)
    if kwargs.get("num_classes", 0) != 0:
        raise ValueError(f"the SimMIM encoder needs num_classes == 0, got {kwargs['num_classes']}")
    kwargs["num_classes"] = 0
    return SimMIM(encoder=SwinTransformerForSimMIM(**kwargs), encoder_stride=encoder_stride)


# ================================================================================================
# Conversion sources: jaxmim Swin / SimMIM <-> official state_dict
# ================================================================================================

_SWIN_ARGS = ('img_size', 'patch_size', 'in_chans', 'num_classes', 'embed_dim', 'depths', 'num_heads',
              'window_size', 'mlp_ratio', 'qkv_bias', 'qk_scale', 'drop_rate', 'attn_drop_rate',
              'drop_path_rate', 'norm_layer', 'ape', 'patch_norm', 'use_checkpoint')


def _swin_kwargs(img_size=224, patch_size=4, in_chans=3, num_classes=1000, embed_dim=96,
                 depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7, mlp_ratio=4.0,
                 qkv_bias=True, qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.1,
                 norm_layer=None, ape=False, patch_norm=True, use_checkpoint=False,
                 **ignored) -> dict[str, Any]:
    """Official ``SwinTransformer.__init__`` arguments (same defaults; ``norm_layer=None`` stands
    for the default ``nn.LayerNorm``) -> jaxmim ``SwinTransformer`` arguments."""
    del use_checkpoint  # activation checkpointing only: no numerical effect
    if ignored:
        warnings.warn(f'official SwinTransformer ignores the arguments {sorted(ignored)}; so does jaxmim '
                      f'(accepted: {list(_SWIN_ARGS)})', stacklevel=5)
    return dict(img_size=square(img_size, 'img_size', 'Swin'), patch_size=square(patch_size, 'patch_size', 'Swin'),
                in_chans=int(in_chans), num_classes=int(num_classes), embed_dim=int(embed_dim),
                depths=tuple(int(d) for d in depths), num_heads=tuple(int(h) for h in num_heads),
                window_size=int(window_size), mlp_ratio=float(mlp_ratio), qkv_bias=bool(qkv_bias),
                qk_scale=qk_scale, drop_rate=float(drop_rate), attn_drop_rate=float(attn_drop_rate),
                drop_path_rate=float(drop_path_rate), ape=bool(ape), patch_norm=bool(patch_norm),
                norm_eps=E.layer_norm_eps(norm_layer))


def build_simmim_swin(*, rngs: nnx.Rngs, **kwargs: Any) -> nnx.Module:
    """Source ``'simmim_swin'``: ``SwinTransformer(**kwargs)`` of
    ``microsoft/SimMIM@d3e29bc models/swin_transformer.py:485-490``, as
    :class:`jaxmim.models.swin.SwinTransformer`.

    Accepted arguments and defaults are the official ones: img_size 224, patch_size 4 (int or a
    square pair), in_chans 3, num_classes 1000 (0: no head), embed_dim 96, depths (2, 2, 6, 2),
    num_heads (3, 6, 12, 24), window_size 7, mlp_ratio 4., qkv_bias True, qk_scale None,
    drop_rate 0., attn_drop_rate 0., drop_path_rate 0.1, norm_layer ``torch.nn.LayerNorm``
    (or ``functools.partial(torch.nn.LayerNorm, eps=...)``: only the eps is used), ape False,
    patch_norm True, use_checkpoint False (ignored: no numerical effect). Other keyword arguments
    are ignored with a warning, as the official ``**kwargs``.

    Raises:
      ValueError: another norm layer, non-square sizes, or sizes the model rejects (a window not
        dividing a stage resolution, ...).
    """
    from jaxmim.models.swin import SwinTransformer
    return SwinTransformer(**_swin_kwargs(**kwargs), rngs=rngs)


def build_simmim_swin_pretrain(*, rngs: nnx.Rngs, encoder: Mapping[str, Any], encoder_stride: int,
                               mask_patch_size: int = 32, mask_ratio: float = 0.6) -> nnx.Module:
    """Source ``'simmim_swin_pretrain'``: ``SimMIM(encoder=SwinTransformerForSimMIM(**encoder),
    encoder_stride=encoder_stride)`` of ``microsoft/SimMIM@d3e29bc models/simmim.py``, as
    :class:`jaxmim.methods.simmim.SimMIM` around :class:`jaxmim.models.swin.SwinTransformerForSimMIM`.

    Args:
      rngs: initialisation streams (encoder first, then the decoder).
      encoder: dict of the encoder's constructor arguments (those of :func:`build_simmim_swin`);
        ``num_classes`` must be 0 or absent (the official class asserts 0).
      encoder_stride: total encoder stride (32 for 4 stages of patch 4).
      mask_patch_size, mask_ratio: the mask generator's settings (data-side in the official code,
        ``DATA.MASK_PATCH_SIZE`` / ``MODEL.SIMMIM.MASK_RATIO``); no effect on the state_dict.

    Raises:
      TypeError: ``encoder`` is not a dict. ValueError: ``num_classes != 0``, ``in_chans != 3``
      (the official decoder hard-codes 3 colours), ``encoder_stride`` x final resolution !=
      img_size, or the errors of :func:`build_simmim_swin`.
    """
    from jaxmim.methods.simmim import SimMIM
    from jaxmim.models.swin import SwinTransformerForSimMIM
    if not isinstance(encoder, Mapping):
        raise TypeError('encoder must be a dict of SwinTransformerForSimMIM constructor arguments, '
                        f'got {type(encoder).__name__}')
    enc_args = dict(encoder)
    if enc_args.get('num_classes', 0) != 0:
        raise ValueError(f'SwinTransformerForSimMIM needs num_classes == 0, got {enc_args["num_classes"]}')
    enc_args['num_classes'] = 0
    kw = _swin_kwargs(**enc_args)
    if kw['in_chans'] != 3:
        raise ValueError(f'the official SimMIM decoder reconstructs 3 channels; got in_chans={kw["in_chans"]}')
    stride = int(encoder_stride)
    final = kw['img_size'] // kw['patch_size'] // 2 ** (len(kw['depths']) - 1)
    if final * stride != kw['img_size']:
        raise ValueError(f'encoder_stride {stride} x final resolution {final} != img_size {kw["img_size"]}')
    del kw['num_classes']
    enc = SwinTransformerForSimMIM(**kw, rngs=rngs)
    return SimMIM(enc, stride, mask_patch_size=int(mask_patch_size), mask_ratio=float(mask_ratio), rngs=rngs)


def swin_entries(enc: nnx.Module, key_prefix: str = '', path_prefix: tuple[Any, ...] = ()) -> list[O.Entry]:
    """Official state_dict entries of a jaxmim Swin (classifier or SimMIM encoder), official order.

    Order follows ``torch.nn.Module.state_dict`` on ``models/swin_transformer.py``: own parameters
    (``absolute_pos_embed`` if ape, then ``mask_token`` for the SimMIM encoder), ``patch_embed``,
    per block ``attn_mask`` (shifted blocks only: a buffer of the block precedes its children),
    ``norm1``, ``attn.relative_position_bias_table``, ``attn.relative_position_index``, ``attn.qkv``,
    ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``; per stage but the last
    ``downsample.reduction`` (registered before) ``downsample.norm``; then ``norm`` and ``head``.
    Buffers are recomputed from the block's (clamped) window, shift and resolution with
    :func:`jaxmim.models.windows.relative_position_index` (int64 here, as the official buffer) and
    :func:`jaxmim.models.windows.shifted_window_mask` (float32).

    Raises:
      TypeError: ``enc`` is not a :class:`jaxmim.models.swin.SwinTransformer`.
    """
    from jaxmim.models import swin as S
    from jaxmim.models import windows as jax_windows
    if not isinstance(enc, S.SwinTransformer):
        raise TypeError(f'expected a jaxmim SwinTransformer, got {type(enc).__name__}')

    out: list[O.Entry] = []
    if enc.absolute_pos_embed is not None:
        out.append(O.VariableEntry('absolute_pos_embed', ('absolute_pos_embed',)))
    if isinstance(enc, S.SwinTransformerForSimMIM):
        out.append(O.VariableEntry('mask_token', ('mask_token',)))
    out.append(O.VariableEntry('patch_embed.proj.weight', ('patch_embed', 'proj', 'kernel'), O.CONV2D))
    out.append(O.VariableEntry('patch_embed.proj.bias', ('patch_embed', 'proj', 'bias')))
    if enc.patch_embed.norm is not None:
        out += E.layer_norm_entries('patch_embed.norm', ('patch_embed', 'norm'))
    for li, layer in enumerate(enc.layers):
        for bi, blk in enumerate(layer.blocks):
            k, p = f'layers.{li}.blocks.{bi}.', ('layers', li, 'blocks', bi)
            ws, s = blk.window_size, blk.shift_size
            h, w = blk.input_resolution
            where = f'window {ws}, shift {s}, stage resolution {h}x{w}'
            if s > 0:
                out.append(O.BufferEntry(k + 'attn_mask', jax_windows.shifted_window_mask(h, w, ws, s), where))
            out += E.layer_norm_entries(k + 'norm1', p + ('norm1',))
            out.append(O.VariableEntry(k + 'attn.relative_position_bias_table',
                                       p + ('attn', 'relative_position_bias_table')))
            out.append(O.BufferEntry(k + 'attn.relative_position_index',
                                     jax_windows.relative_position_index(ws).astype(np.int64), where))
            out += E.linear_entries(k + 'attn.qkv', p + ('attn', 'qkv'), blk.attn.qkv)
            out += E.linear_entries(k + 'attn.proj', p + ('attn', 'proj'), blk.attn.proj)
            out += E.layer_norm_entries(k + 'norm2', p + ('norm2',))
            out += E.linear_entries(k + 'mlp.fc1', p + ('mlp', 'fc1'), blk.mlp.fc1)
            out += E.linear_entries(k + 'mlp.fc2', p + ('mlp', 'fc2'), blk.mlp.fc2)
        if layer.downsample is not None:
            k, p = f'layers.{li}.downsample.', ('layers', li, 'downsample')
            out += E.linear_entries(k + 'reduction', p + ('reduction',), layer.downsample.reduction)
            out += E.layer_norm_entries(k + 'norm', p + ('norm',))
    out += E.layer_norm_entries('norm', ('norm',))
    if enc.head is not None:
        out += E.linear_entries('head', ('head',), enc.head)
    for i in getattr(enc, 'out_indices', None) or ():
        # the detection backbone's output norms (mmdet swin_transformer.py:549-553), built with
        # out_indices=: not in the classifier's layout, so not exported; they keep their values
        out += [O.OmittedEntry((f'norm{i}', name), 'detection-backbone output norm, not in the classifier layout')
                for name in ('scale', 'bias')]
    return E.prefixed(out, key_prefix, path_prefix)


def simmim_swin_pretrain_entries(model: nnx.Module) -> list[O.Entry]:
    """Official state_dict entries of a jaxmim SimMIM with a Swin encoder: ``encoder.*`` (see
    :func:`swin_entries`) then ``decoder.0.weight`` (Conv2d (stride²·3, C, 1, 1)) and
    ``decoder.0.bias``.

    Raises:
      TypeError: ``model`` is not a jaxmim SimMIM around a SwinTransformerForSimMIM.
    """
    from jaxmim.methods.simmim import SimMIM
    from jaxmim.models.swin import SwinTransformerForSimMIM
    if not isinstance(model, SimMIM) or not isinstance(model.encoder, SwinTransformerForSimMIM):
        raise TypeError(f'expected a jaxmim SimMIM with a SwinTransformerForSimMIM encoder, got '
                        f'{type(model).__name__}')
    return (swin_entries(model.encoder, 'encoder.', ('encoder',))
            + [O.VariableEntry('decoder.0.weight', ('decoder', 'kernel'), O.CONV2D),
               O.VariableEntry('decoder.0.bias', ('decoder', 'bias'))])


def _simmim_swin_entries(model: nnx.Module) -> list[O.Entry]:
    from jaxmim.models.swin import SwinTransformer, SwinTransformerForSimMIM
    if not isinstance(model, SwinTransformer) or isinstance(model, SwinTransformerForSimMIM):
        raise TypeError(f'source simmim_swin expects a jaxmim SwinTransformer classifier, got {type(model).__name__}')
    return swin_entries(model)


def swin_twin_kwargs(enc: nnx.Module) -> dict[str, Any]:
    """The official ``SwinTransformer`` constructor arguments of a jaxmim Swin ``enc``
    (classifier or SimMIM encoder), read from its attributes and variable shapes; the inverse
    of :func:`build_simmim_swin`. Used to build the twin of an existing model."""
    import functools
    blk = enc.layers[0].blocks[0]
    head_dim = enc.embed_dim // enc.num_heads[0]
    last = enc.layers[-1].blocks[-1]
    return dict(img_size=enc.img_size, patch_size=enc.patch_size, in_chans=enc.in_chans,
                num_classes=enc.num_classes, embed_dim=enc.embed_dim, depths=list(enc.depths),
                num_heads=list(enc.num_heads), window_size=enc.window_size,
                mlp_ratio=blk.mlp.fc1.kernel.shape[1] / enc.embed_dim, qkv_bias=blk.attn.qkv.bias is not None,
                qk_scale=None if blk.attn.scale == head_dim ** -0.5 else blk.attn.scale,
                drop_rate=enc.drop_rate, attn_drop_rate=blk.attn.attn_drop,
                drop_path_rate=float(last.drop_path), ape=enc.absolute_pos_embed is not None,
                patch_norm=enc.patch_embed.norm is not None,
                norm_layer=functools.partial(nn.LayerNorm, eps=enc.norm.epsilon))


def _simmim_swin_twin(model: nnx.Module) -> nn.Module:
    return SwinTransformer(**swin_twin_kwargs(model))


def _simmim_swin_pretrain_twin(model: nnx.Module) -> nn.Module:
    kw = swin_twin_kwargs(model.encoder)
    kw.pop('num_classes')
    return SimMIM(SwinTransformerForSimMIM(num_classes=0, **kw), model.encoder_stride)


O.register_source(O.Source(
    name='simmim_swin',
    reference='microsoft/SimMIM@d3e29bc models/swin_transformer.py SwinTransformer',
    build_fn=build_simmim_swin,
    entries_fn=_simmim_swin_entries,
    twin_fn=_simmim_swin_twin))

O.register_source(O.Source(
    name='simmim_swin_pretrain',
    reference='microsoft/SimMIM@d3e29bc models/simmim.py SimMIM(SwinTransformerForSimMIM)',
    build_fn=build_simmim_swin_pretrain,
    entries_fn=simmim_swin_pretrain_entries,
    method='simmim',
    twin_fn=_simmim_swin_pretrain_twin))
