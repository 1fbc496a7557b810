"""implus/UM-MAE family: PyTorch twins, official key tables and conversion sources.

Two halves, one file (official code ``implus/UM-MAE@cb7776b``; bare ``file:line`` references below
point into it):

* **PyTorch twins** (``torch`` + ``einops`` only, no timm), with the official ``state_dict`` keys,
  shapes and registration order, and the official numerics (LayerNorm eps 1e-6 for the model
  norms and the decoder, but PyTorch's default 1e-5 inside every PVT / Swin block, whose
  constructors are not passed ``norm_layer``, ``models_mae_pvt.py:185-196``,
  ``models_mae_swin.py:326-343``, and in PVT ``Attention.norm``, ``models_mae_pvt.py:60``; exact
  GELU; -100 shift masks):

  :class:`MaskedAutoencoderPVT`
      ``models_mae_pvt.py:152-407`` (UM-MAE on the PVT-S variant).
  :class:`MaskedAutoencoderSwin`
      ``models_mae_swin.py:286-548`` (UM-MAE on the Swin variant with the log-MLP bias).
  :class:`MaskedAutoencoderViT`
      ``models_mae.py:21-215`` (MAE on ViT with dataloader masks and Secondary Masking).
  :class:`SimMIMPVT`, :class:`SimMIMSwin`
      ``models_simmim_pvt.py`` / ``models_simmim_swin.py`` (SimMIM baselines, L1 loss).
  :class:`PVT`, :class:`Swin`
      ``models_pvt.py`` / ``models_swin.py`` (fine-tuning classifiers); the ViT classifier is
      MAE's ``models_vit.py``, the twin :class:`convert.vit.VisionTransformer`.

  Pre-training twins are called ``model(images, mask=mask, noise=noise)``: ``images`` (B, C, H, W)
  float, ``mask`` (B, L) bool from the official generator (``mask_transform.py``; 1/True =
  masked) over the ``stride``-px unit grid (ViT: the patch grid), ``noise`` the uniform draw of
  the official Secondary Masking (``torch.rand``; (B, L) for the pyramids, (B, n_visible) for
  ViT; drawn with ``torch.rand`` when ``None`` as the official code does). They return a dict
  ``{'loss': scalar, 'pred': (B, L, s*s*C) in RASTER unit order, 'mask': (B, L) bool,
  'secondary_mask': (B, L) bool}`` (MAE twins; SimMIM twins have no ``secondary_mask``): the
  official ``pred`` is ``[visible tokens, masked tokens]``; the twin scatters both parts back to
  their units (a visible token goes to the unit whose features it carries).
  ``secondary_mask`` marks the visible units replaced by ``vis_mask_token`` (not in the loss).

* **Decoder position order** (``models_mae_pvt.py:358-407``, ``models_mae_swin.py:499-548``;
  see also implus/UM-MAE#21). The official pyramid decoders add
  ``decoder_pos_embed[~mask]`` (original raster order of the visible units) to the visible
  features, which leave ``PixelShuffle`` in compact-unit order (2x2-block raster order), so
  most visible tokens get another unit's position. ``official_decoder_pos=True`` (the twins'
  default, as trained) reproduces that; ``False`` gathers, for each compact unit in raster
  order, the embedding of its own visible unit (the correction). Masked tokens and the loss
  formula are the same in both modes, the loss value differs through attention.

* **Conversion sources** registered with :mod:`convert.official`: ``ummae_pvt_pretrain``,
  ``ummae_swin_pretrain``, ``ummae_vit_pretrain``, ``ummae_simmim_pvt``, ``ummae_simmim_swin``
  (pre-training models) and ``ummae_pvt``, ``ummae_swin``, ``ummae_vit`` (classifiers).
  Every key table is derived from the official module structure; loading is strict both ways.

Layouts: images NCHW; token grids raster (h-major); ``pred`` pixels in (p, q, c) order as
``patchify``; PixelShuffle channel ``4c + 2i + j`` -> (c, 2s + i, 2t + j).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from convert._common import DropPath, IntOr2, Mlp, init_linear_layernorm, pair
from convert.vit import Block, PatchEmbed as ViTPatchEmbed, VisionTransformer, get_2d_sincos_pos_embed

__all__ = [
    # twins
    'Attention', 'PVTBlock', 'PVTPatchMerge', 'PVTPatchEmbed', 'WindowAttention', 'SwinPatchMerge',
    'SwinBlock', 'SwinPatchEmbed', 'MaskedAutoencoderPVT', 'MaskedAutoencoderSwin', 'MaskedAutoencoderViT',
    'SimMIMPVT', 'SimMIMSwin', 'PVT', 'Swin', 'VisionTransformer',
    # helpers
    'secondary_mask', 'compact_unit_index', 'patchify', 'unpatchify', 'window_partition', 'window_reverse',
]


# ================================================================================================
# Shared helpers
# ================================================================================================


def _init_pyramid(m: nn.Module) -> None:
    """``_init_weights`` of the pyramid models (``models_mae_pvt.py:245-260``): Linear
    xavier-uniform / 0, LayerNorm 1 / 0, Conv2d N(0, sqrt(2 / fan_out)) / 0 with
    ``fan_out = kh * kw * C_out / groups``."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.constant_(m.bias, 0)
    elif isinstance(m, nn.LayerNorm):
        nn.init.constant_(m.bias, 0)
        nn.init.constant_(m.weight, 1.0)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            m.bias.data.zero_()


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, L, p*p*C), raster units, pixels in (p, q, c) order
    (``models_mae_pvt.py:275-289``, generalised from the hard-coded 3 channels).

    Raises:
        ValueError: non-square images or a side not divisible by ``p``.
    """
    n, c, hh, ww = imgs.shape
    if hh != ww or hh % p:
        raise ValueError(f'patchify needs square images divisible by {p}, got {tuple(imgs.shape)}')
    h = hh // p
    x = imgs.reshape(n, c, h, p, h, p)
    x = torch.einsum('nchpwq->nhwpqc', x)
    return x.reshape(n, h * h, p * p * c)


def unpatchify(x: torch.Tensor, p: int, c: int) -> torch.Tensor:
    """(N, L, p*p*C) -> (N, C, H, W), inverse of :func:`patchify`."""
    h = int(round(x.shape[1] ** 0.5))
    x = x.reshape(x.shape[0], h, h, p, p, c)
    x = torch.einsum('nhwpqc->nchpwq', x)
    return x.reshape(x.shape[0], c, h * p, h * p)


def _norm_pix(target: torch.Tensor) -> torch.Tensor:
    """Per-unit normalisation of targets (..., D): unbiased variance, eps 1e-6 inside the sqrt."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + 1.0e-6) ** 0.5


def secondary_mask(mask: torch.Tensor, noise: torch.Tensor, vis_mask_ratio: float) -> torch.Tensor:
    """The pyramids' Secondary Masking (``models_mae_pvt.py:297-305``): ``new_mask`` (N, L) bool.

    ``vis_cnt`` = visible units of sample 0; ``vis_final_cnt = int(vis_cnt * (1 - vmr))``; the
    units ranked (``argsort(mask + noise)``) below ``vis_final_cnt`` stay visible, so
    ``new_mask`` = ``mask`` plus a uniform random ``vis_cnt - vis_final_cnt`` of the visible
    units of each sample (given by ``noise``, (N, L) uniform [0, 1)).
    """
    n, length = mask.shape
    vis_cnt = length - len(mask[0].nonzero())
    vis_final_cnt = int(vis_cnt * (1.0 - vis_mask_ratio))
    ids_shuffle = torch.argsort(mask.float() + noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    new_mask = torch.ones([n, length], device=mask.device)
    new_mask[:, :vis_final_cnt] = 0
    return torch.gather(new_mask, dim=1, index=ids_restore).to(torch.bool)


def compact_unit_index(mask: torch.Tensor) -> torch.Tensor:
    """For a Uniform-Sampling mask (N, M*M) bool (exactly one visible unit per 2x2 block), the
    raster index (N, (M/2)^2) int64 of the visible unit of each block, blocks in raster order:
    compact unit (u, v) <- original unit (2u + a, 2v + b), the gather that the official dilated
    all-ones convolution computes (``models_mae_pvt.py:324-342``, ``models_mae_swin.py:470-488``).

    Raises:
        ValueError: ``M`` odd, or a block without exactly one visible unit.
    """
    n, length = mask.shape
    m = int(round(length ** 0.5))
    if m * m != length or m % 2:
        raise ValueError(f'mask must cover an even square unit grid, got L={length}')
    blocks = (~mask).reshape(n, m // 2, 2, m // 2, 2).permute(0, 1, 3, 2, 4).reshape(n, -1, 4)
    if not bool((blocks.sum(-1) == 1).all()):
        raise ValueError('the pyramid UM-MAE models need a Uniform Sampling mask: exactly one visible '
                         'unit per 2x2 block of units (mask_transform.py regular=True)')
    k = blocks.to(torch.int64).argmax(-1)
    u = torch.arange(m // 2, device=mask.device).repeat_interleave(m // 2)
    v = torch.arange(m // 2, device=mask.device).repeat(m // 2)
    return (2 * u + k // 2) * m + 2 * v + k % 2


def _raster_pred(pred: torch.Tensor, mask: torch.Tensor, vis_index: Optional[torch.Tensor]) -> torch.Tensor:
    """Official ``[visible, masked]`` predictions (N, L, D) -> raster order. The masked part is in
    raster order of the masked units; the visible part is in raster order of the visible units
    (``vis_index is None``, ViT) or in compact order, placed at ``vis_index`` (pyramids)."""
    n, length, d = pred.shape
    n_vis = int((~mask[0]).sum())
    out = torch.empty_like(pred)
    out[mask] = pred[:, n_vis:].reshape(-1, d)
    if vis_index is None:
        out[~mask] = pred[:, :n_vis].reshape(-1, d)
    else:
        out.scatter_(1, vis_index.unsqueeze(-1).expand(-1, -1, d), pred[:, :n_vis])
    return out


def _compact(x: torch.Tensor, k: int) -> torch.Tensor:
    """The official dilated all-ones depthwise conv (``models_mae_pvt.py:324-330``): (N, C, H, W)
    -> (N, C, H/2, W/2); each (2K x 2K) block becomes the sum of its four (K x K) quadrants."""
    n, c, h, w = x.shape
    kernel = torch.ones(c, 1, 2, 2, dtype=x.dtype, device=x.device)
    y = rearrange(x, 'b c (h p1) (w p2) -> (b h w) c p1 p2', p1=2 * k, p2=2 * k)
    y = F.conv2d(y, kernel, dilation=k, groups=c)
    return rearrange(y, '(b h w) c p1 p2 -> b c (h p1) (w p2)', h=h // (2 * k), w=w // (2 * k))


def _check_mask(mask: torch.Tensor, n: int, length: int) -> torch.Tensor:
    if mask.dtype != torch.bool:
        mask = mask.to(torch.bool)
    if tuple(mask.shape) != (n, length):
        raise ValueError(f'mask must have shape {(n, length)}, got {tuple(mask.shape)}')
    return mask


def _check_noise(noise: Optional[torch.Tensor], shape: tuple, device) -> torch.Tensor:
    if noise is None:
        return torch.rand(*shape, device=device)
    if tuple(noise.shape) != tuple(shape):
        raise ValueError(f'noise must have shape {tuple(shape)}, got {tuple(noise.shape)}')
    return noise


# ================================================================================================
# PVT variant (models_mae_pvt.py)
# ================================================================================================


class Attention(nn.Module):
    """Spatial-reduction attention (``models_mae_pvt.py:43-79``).

    q = ``q``(x); K/V source = ``avg_pool2d(x_2d, sr_ratio)`` -> 1x1 Conv ``sr`` -> ``norm``
    (``nn.LayerNorm(dim)``, eps 1e-5 hard-coded) -> ``kv`` Linear(D, 2D); logits
    ``(q @ kᵀ) * scale``; softmax; ``proj``. Input (B, H*W, D) raster, output the same.
    The ``sr`` conv and ``norm`` exist for every ``sr_ratio`` (identity pool at 1).

    Raises:
        ValueError: ``num_heads`` does not divide ``dim``.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qk_scale: Optional[float] = None,
                 sr_ratio: int = 1):
        super().__init__()
        if num_heads <= 0 or dim % num_heads:
            raise ValueError(f'num_heads {num_heads} must divide dim {dim}')
        self.dim = dim
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        self.sr = nn.Conv2d(dim, dim, kernel_size=1)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, N, C = x.shape
        hd = C // self.num_heads
        q = self.q(x).reshape(B, N, self.num_heads, hd).permute(0, 2, 1, 3)
        x_ = x.permute(0, 2, 1).reshape(B, C, H, W)
        x_ = F.avg_pool2d(x_, self.sr_ratio)
        x_ = self.norm(self.sr(x_).reshape(B, C, -1).permute(0, 2, 1))
        kv = self.kv(x_).reshape(B, -1, 2, self.num_heads, hd).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class PVTPatchMerge(nn.Module):
    """PVT ``PatchMerge`` (``models_mae_pvt.py:105-123``): Conv2d(C_in, C_out, k = s = 2) with
    bias, **no norm**; (B, H*W, C_in), H, W -> (B, H*W/4, C_out), (H/2, W/2)."""

    def __init__(self, patch_size: IntOr2 = 2, in_chans: int = 3, embed_dim: int = 96):
        super().__init__()
        self.patch_size = pair(patch_size, 'patch_size')
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, x: torch.Tensor, H: int, W: int):
        """(B, H*W, C_in), H, W -> (B, H*W/4, C_out), (H/2, W/2).

        Raises:
            ValueError: the token count of ``x`` is not ``H * W``.
        """
        N, L, C = x.shape
        if L != H * W:
            raise ValueError(f'token count {L} != {H}x{W}')
        x = self.proj(x.permute(0, 2, 1).reshape(N, C, H, W)).flatten(2).transpose(1, 2)
        return x, (H // self.patch_size[0], W // self.patch_size[1])


class PVTBlock(nn.Module):
    """``PVTBlock`` (``models_mae_pvt.py:82-102``): optional ``downsample`` first, then
    ``x + drop_path(attn(norm1(x)))`` and ``x + drop_path(mlp(norm2(x)))``. Children in
    registration order: norm1, attn, drop_path, norm2, mlp, downsample."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, drop_path: float = 0.0, act_layer=nn.GELU,
                 norm_layer=nn.LayerNorm, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale, sr_ratio=sr_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer)
        self.downsample = downsample

    def forward(self, x: torch.Tensor, H: int, W: int):
        if self.downsample is not None:
            x, (H, W) = self.downsample(x, H, W)
        x = x + self.drop_path(self.attn(self.norm1(x), H, W))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, (H, W)


class PVTPatchEmbed(nn.Module):
    """PVT ``PatchEmbed`` (``models_mae_pvt.py:126-146``): Conv2d(k = s = patch), no norm;
    (B, C, H, W) -> (B, L, D) raster."""

    def __init__(self, img_size: IntOr2 = 224, patch_size: IntOr2 = 4, in_chans: int = 3, embed_dim: int = 96):
        super().__init__()
        self.img_size = pair(img_size, 'img_size')
        self.patch_size = pair(patch_size, 'patch_size')
        self.patches_resolution = [self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1]]
        self.num_patches = self.patches_resolution[0] * self.patches_resolution[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def _pvt_blocks(embed_dims, depths, num_heads, mlp_ratios, sr_ratios, dpr, norm_layer=nn.LayerNorm) -> nn.ModuleList:
    """The flat PVT block list; block 0 of stages 2.. owns a ``PVTPatchMerge`` (``:181-197``).
    ``norm_layer`` is the blocks' (official: the default ``nn.LayerNorm``, eps 1e-5 — the
    pyramid ``PVTBlock`` is never given the model's ``norm_layer``)."""
    blocks = nn.ModuleList()
    idx = 0
    for i in range(len(depths)):
        for dep in range(depths[i]):
            down = PVTPatchMerge(2, embed_dims[i - 1], embed_dims[i]) if (i > 0 and dep == 0) else None
            blocks.append(PVTBlock(embed_dims[i], num_heads[i], sr_ratios[i], mlp_ratios[i], qkv_bias=True,
                                   drop_path=dpr[idx], norm_layer=norm_layer, downsample=down))
            idx += 1
    return blocks


def _pyramid_decoder_forward(model: nn.Module, x: torch.Tensor, mask: torch.Tensor, vis_index: torch.Tensor):
    """``forward_decoder`` of the pyramid MAEs (``models_mae_pvt.py:358-389``), with the
    position order chosen by ``model.official_decoder_pos``. -> (pred [vis, masked], mask_num)."""
    x = model.decoder_embed(x)
    N, L, nD = x.shape
    M = int(round(L ** 0.5))
    x_vis = model.decoder_expand(x.permute(0, 2, 1).reshape(-1, nD, M, M)).flatten(2).permute(0, 2, 1)
    D = x_vis.shape[-1]
    pe = model.decoder_pos_embed.expand(N, -1, -1)
    if model.official_decoder_pos:
        pos_vis = pe[~mask].reshape(N, -1, D)
    else:
        pos_vis = torch.gather(pe, 1, vis_index.unsqueeze(-1).expand(-1, -1, D))
    pos_mask = pe[mask].reshape(N, -1, D)
    x = torch.cat([x_vis + pos_vis, model.mask_token + pos_mask], dim=1)
    for blk in model.decoder_blocks:
        x = blk(x)
    return model.decoder_pred(model.decoder_norm(x)), pos_mask.shape[1]


def _mse_loss(model, imgs, pred_masked, mask):
    """``forward_loss`` (``models_mae_pvt.py:391-407``): MSE of the masked predictions against
    ``patchify(imgs, stride)[mask]`` (norm-pix optional), plain mean."""
    target = patchify(imgs, model.stride)
    N, _, D = target.shape
    target = target[mask].reshape(N, -1, D)
    if model.norm_pix_loss:
        target = _norm_pix(target)
    return ((pred_masked - target) ** 2).mean()


class MaskedAutoencoderPVT(nn.Module):
    """UM-MAE on the PVT variant, ``models_mae_pvt.MaskedAutoencoderPVT`` with the official
    arguments and defaults (``models_mae_pvt.py:152-157``); factory ``mae_pvt_small_256``:
    ``img_size=256, norm_layer=partial(nn.LayerNorm, eps=1e-6)`` and the defaults below.

    Extra (not official) argument ``official_decoder_pos`` (default True = as trained): see the
    module docstring.

    State (official order): own parameters ``vis_mask_token`` (1, 1, E0) when
    ``vis_mask_ratio > 0``, ``pos_embed`` (1, (img/patch)^2, E0) fixed sin-cos, ``mask_token``
    (1, 1, Dd), ``decoder_pos_embed`` (1, (img/stride)^2, Dd) fixed; children ``patch_embed``,
    ``blocks``, ``norm``, ``decoder_embed`` (E3 -> 4 Dd), ``decoder_blocks``, ``decoder_norm``,
    ``decoder_pred`` (Dd -> stride^2 C).

    ``forward(imgs, mask, *, noise=None, train=False) -> dict`` (module docstring).

    Raises:
        ValueError: sizes that do not tile (img % (2 stride), stride % patch), a mask of the wrong
        shape or not one visible unit per 2x2 block, or noise of the wrong shape.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 4, in_chans: int = 3, stride: int = 16,
                 embed_dims: Sequence[int] = (64, 128, 320, 512), depths: Sequence[int] = (3, 4, 6, 3),
                 num_heads: Sequence[int] = (1, 2, 5, 8), mlp_ratios: Sequence[float] = (8, 8, 4, 4),
                 sr_ratios: Sequence[int] = (4, 2, 1, 1), decoder_embed_dim: int = 512, decoder_depth: int = 2,
                 decoder_num_heads: int = 16, decoder_mlp_ratio: float = 4, norm_layer=nn.LayerNorm,
                 norm_pix_loss: bool = False, vis_mask_ratio: float = 0.0, official_decoder_pos: bool = True):
        super().__init__()
        if img_size % (2 * stride) or stride % patch_size:
            raise ValueError(f'img_size {img_size} must be a multiple of 2*stride and stride {stride} a multiple '
                             f'of patch_size {patch_size}')
        self.embed_dims = list(embed_dims)
        self.stride = stride
        self.kernel_stride = stride // patch_size
        self.in_chans = in_chans
        self.vis_mask_ratio = vis_mask_ratio
        self.official_decoder_pos = bool(official_decoder_pos)
        if vis_mask_ratio > 0:
            self.vis_mask_token = nn.Parameter(torch.zeros(1, 1, embed_dims[0]))
        self.patch_embed = PVTPatchEmbed(img_size, patch_size, in_chans, embed_dims[0])
        num_patches = self.patch_embed.num_patches
        self.embed_h = self.embed_w = int(round(num_patches ** 0.5))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, embed_dims[0]), requires_grad=False)
        self.blocks = _pvt_blocks(embed_dims, depths, num_heads, mlp_ratios, sr_ratios, [0.0] * sum(depths))
        self.norm = norm_layer(embed_dims[-1])
        self.decoder_embed = nn.Linear(embed_dims[-1], 4 * decoder_embed_dim, bias=True)
        self.decoder_expand = nn.PixelShuffle(2)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_num_patches = (img_size // stride) ** 2
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, self.decoder_num_patches, decoder_embed_dim),
                                              requires_grad=False)
        self.decoder_blocks = nn.ModuleList([
            Block(decoder_embed_dim, decoder_num_heads, decoder_mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(decoder_depth)])
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, stride ** 2 * in_chans, bias=True)
        self.norm_pix_loss = norm_pix_loss
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """``models_mae_pvt.py:224-243``."""
        self.pos_embed.data.copy_(torch.from_numpy(
            get_2d_sincos_pos_embed(self.pos_embed.shape[-1], self.embed_h)).float().unsqueeze(0))
        self.decoder_pos_embed.data.copy_(torch.from_numpy(get_2d_sincos_pos_embed(
            self.decoder_pos_embed.shape[-1], int(round(self.decoder_num_patches ** 0.5)))).float().unsqueeze(0))
        nn.init.normal_(self.mask_token, std=0.02)
        if hasattr(self, 'vis_mask_token'):
            nn.init.normal_(self.vis_mask_token, std=0.02)
        self.apply(_init_pyramid)
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))

    def forward_encoder(self, x: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor):
        """``models_mae_pvt.py:291-356`` with ``noise`` injected: -> (latent (N, (img/32)^2... ,
        E3), new_mask (N, L) bool)."""
        N = x.size(0)
        x = self.patch_embed(x)
        L = mask.size(1)
        new_mask = secondary_mask(mask, noise, self.vis_mask_ratio)
        M = int(round(L ** 0.5))
        scale = self.embed_h // M
        m_up = mask.reshape(N, M, M).repeat_interleave(scale, 1).repeat_interleave(scale, 2).unsqueeze(1)
        nm_up = new_mask.reshape(N, M, M).repeat_interleave(scale, 1).repeat_interleave(scale, 2).unsqueeze(1)
        if hasattr(self, 'vis_mask_token'):
            token_mask = (~m_up).int() - (~nm_up).int()
            vmt = self.vis_mask_token.expand(N, self.patch_embed.num_patches, -1)
            vmt = vmt.reshape(N, self.embed_h, self.embed_w, self.embed_dims[0]).permute(0, 3, 1, 2) * token_mask
        else:
            vmt = 0
        K = self.kernel_stride
        x = x.reshape(N, self.embed_h, self.embed_w, self.embed_dims[0]).permute(0, 3, 1, 2)
        x = _compact(x * (~nm_up) + vmt, K)
        ipe = self.pos_embed.expand(N, -1, -1).reshape(N, self.embed_h, self.embed_w, -1).permute(0, 3, 1, 2)
        x = x + _compact(ipe * (~m_up), K)
        _, _, H, W = x.size()
        x = x.permute(0, 2, 3, 1).reshape(N, -1, self.embed_dims[0])
        for blk in self.blocks:
            x, (H, W) = blk(x, H, W)
        return self.norm(x), new_mask

    def forward(self, imgs: torch.Tensor, mask: torch.Tensor, *, noise: Optional[torch.Tensor] = None,
                train: bool = False) -> dict:
        del train   # no stochastic layer in pre-training
        L = (imgs.shape[-1] // self.stride) ** 2
        mask = _check_mask(mask, imgs.shape[0], L)
        noise = _check_noise(noise, (imgs.shape[0], L), imgs.device)
        vis_index = compact_unit_index(mask)
        latent, new_mask = self.forward_encoder(imgs, mask, noise)
        pred, mask_num = _pyramid_decoder_forward(self, latent, mask, vis_index)
        loss = _mse_loss(self, imgs, pred[:, -mask_num:], mask)
        return {'loss': loss, 'pred': _raster_pred(pred, mask, vis_index), 'mask': mask,
                'secondary_mask': new_mask & ~mask}


class PVT(nn.Module):
    """Fine-tuning PVT, ``models_pvt.PVT`` (``models_pvt.py:24-119``; factory ``pvt_small_256``:
    ``img_size=256, norm_layer=partial(nn.LayerNorm, eps=1e-6)``).

    State: ``pos_embed`` (1, L, E0) learnable (zero init), ``patch_embed``, ``blocks`` (drop path
    linear 0..``drop_path_rate`` over all blocks), ``fc_norm``, ``head``. ``forward(x)``:
    (B, C, H, W) -> logits (B, num_classes) (mean pool -> fc_norm -> head).

    Raises:
        ValueError: ``global_pool=False`` (the official forward always pools).
    """

    def __init__(self, img_size: int = 224, num_classes: int = 1000, patch_size: int = 4, in_chans: int = 3,
                 embed_dims: Sequence[int] = (64, 128, 320, 512), depths: Sequence[int] = (3, 4, 6, 3),
                 num_heads: Sequence[int] = (1, 2, 5, 8), mlp_ratios: Sequence[float] = (8, 8, 4, 4),
                 sr_ratios: Sequence[int] = (8, 4, 2, 1), drop_path_rate: float = 0.1, norm_layer=nn.LayerNorm,
                 global_pool: bool = True):
        super().__init__()
        if not global_pool:
            raise ValueError('global_pool must be True (models_pvt.PVT always mean-pools)')
        self.patch_size = patch_size
        self.patch_embed = PVTPatchEmbed(img_size, patch_size, in_chans, embed_dims[0])
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, embed_dims[0]))
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depths), device="cpu")]
        self.blocks = _pvt_blocks(embed_dims, depths, num_heads, mlp_ratios, sr_ratios, dpr)
        self.fc_norm = norm_layer(embed_dims[-1])
        self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_pyramid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, H, W = x.size()
        x = self.patch_embed(x) + self.pos_embed
        H, W = H // self.patch_size, W // self.patch_size
        for blk in self.blocks:
            x, (H, W) = blk(x, H, W)
        return self.head(self.fc_norm(x.mean(dim=1)))


class SimMIMPVT(nn.Module):
    """SimMIM baseline on PVT, ``models_simmim_pvt.SimMIMPVT`` (factory ``simmim_pvt_small_256``:
    ``img_size=256, sr_ratios=[8, 4, 2, 1], norm_layer=partial(nn.LayerNorm, eps=1e-6)``).

    State: ``mask_token`` (1, 1, E0), ``pos_embed`` fixed sin-cos, ``patch_embed``, ``blocks``,
    ``norm``, ``decoder_pred`` (E3 -> 4 stride^2 C, PixelShuffle(2) to the unit grid).
    ``forward(imgs, mask, *, noise=None, train=False)``: masked tokens are replaced by
    ``mask_token`` (mask upsampled to the token grid), sin-cos added after; loss L1 on masked
    units (raw or norm-pix targets), plain mean. Returns ``{'loss', 'pred' (raster), 'mask'}``;
    ``noise`` is accepted for a common signature and ignored.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 4, in_chans: int = 3, stride: int = 16,
                 embed_dims: Sequence[int] = (64, 128, 320, 512), depths: Sequence[int] = (3, 4, 6, 3),
                 num_heads: Sequence[int] = (1, 2, 5, 8), mlp_ratios: Sequence[float] = (8, 8, 4, 4),
                 sr_ratios: Sequence[int] = (8, 4, 2, 1), norm_layer=nn.LayerNorm, norm_pix_loss: bool = False):
        super().__init__()
        self.stride = stride
        self.in_chans = in_chans
        self.patch_size = patch_size
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dims[0]))
        self.patch_embed = PVTPatchEmbed(img_size, patch_size, in_chans, embed_dims[0])
        self.embed_h = int(round(self.patch_embed.num_patches ** 0.5))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, embed_dims[0]),
                                      requires_grad=False)
        self.blocks = _pvt_blocks(embed_dims, depths, num_heads, mlp_ratios, sr_ratios, [0.0] * sum(depths))
        self.norm = norm_layer(embed_dims[-1])
        self.decoder_pred = nn.Linear(embed_dims[-1], 4 * stride ** 2 * in_chans, bias=True)
        self.decoder_shuffle = nn.PixelShuffle(2)
        self.norm_pix_loss = norm_pix_loss
        self.pos_embed.data.copy_(torch.from_numpy(
            get_2d_sincos_pos_embed(embed_dims[0], self.embed_h)).float().unsqueeze(0))
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(_init_pyramid)
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))

    def forward(self, imgs: torch.Tensor, mask: torch.Tensor, *, noise: Optional[torch.Tensor] = None,
                train: bool = False) -> dict:
        del noise, train
        N, _, H, W = imgs.shape
        mask = _check_mask(mask, N, (W // self.stride) ** 2)
        x = self.patch_embed(imgs)
        H, W = H // self.patch_size, W // self.patch_size
        w = _upsample_mask(mask, self.embed_h).flatten(1).unsqueeze(-1).type_as(x)
        x = x * (1.0 - w) + self.mask_token.expand(N, x.shape[1], -1) * w
        x = x + self.pos_embed
        for blk in self.blocks:
            x, (H, W) = blk(x, H, W)
        pred = _simmim_decode(self, self.norm(x))
        return {'loss': _l1_loss(self, imgs, pred, mask), 'pred': pred, 'mask': mask}


def _upsample_mask(mask: torch.Tensor, side: int) -> torch.Tensor:
    """(N, M*M) unit mask -> (N, side, side) token mask by ``repeat_interleave``."""
    n, length = mask.shape
    m = int(round(length ** 0.5))
    s = side // m
    return mask.reshape(n, m, m).repeat_interleave(s, 1).repeat_interleave(s, 2)


def _simmim_decode(model, x: torch.Tensor) -> torch.Tensor:
    """SimMIM ``forward_decoder``: Linear -> PixelShuffle(2) -> (N, units, stride^2 C) raster."""
    x = model.decoder_pred(x)
    N, L, D = x.shape
    M = int(round(L ** 0.5))
    return model.decoder_shuffle(x.permute(0, 2, 1).reshape(N, D, M, M)).flatten(2).permute(0, 2, 1)


def _l1_loss(model, imgs, pred, mask):
    """SimMIM ``forward_loss`` (``models_simmim_pvt.py:161-183``): L1 on masked units, plain mean."""
    target = patchify(imgs, model.stride)
    N, _, D = target.shape
    target = target[mask].reshape(N, -1, D)
    if model.norm_pix_loss:
        target = _norm_pix(target)
    return (pred[mask].reshape(N, -1, D) - target).abs().mean()


# ================================================================================================
# Swin variant (models_mae_swin.py)
# ================================================================================================


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, ws, ws, C), windows in raster order per sample."""
    B, H, W, C = x.shape
    x = x.view(B, H // window_size, window_size, W // window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, C)


def window_reverse(windows: torch.Tensor, window_size: int, H: int, W: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * nW, ws, ws, C) -> (B, H, W, C)."""
    B = int(windows.shape[0] / (H * W / window_size / window_size))
    x = windows.view(B, H // window_size, W // window_size, window_size, window_size, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(B, H, W, -1)


class WindowAttention(nn.Module):
    """Window attention with the continuous log-MLP relative bias (``models_mae_swin.py:60-116``).

    ``forward(x (B*nW, N, C), pos_hw (B or 1, H, W, 2) [h, w], mask (nW, N, N) or None)``:
    ``q * scale``; logits ``q @ kᵀ``; bias = ``posmlp`` (Conv1x1(2->P), ReLU, Conv1x1(P->nH)) on
    ``Δ = sign·ln(1+|Δ|)``, ``Δ[c, i, j] = pos[j, c] - pos[i, c]`` per window (shared over the
    batch when ``pos_hw`` has batch 1); then the -100 shift mask; softmax; ``proj``.
    """

    def __init__(self, dim: int, window_size, num_heads: int, posmlp_dim: int = 32, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None):
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.posmlp = nn.Sequential(nn.Conv2d(2, posmlp_dim, 1), nn.ReLU(inplace=True),
                                    nn.Conv2d(posmlp_dim, num_heads, 1))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x: torch.Tensor, pos_hw: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        B_, N, C = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = q @ k.transpose(-2, -1)
        pos = window_partition(pos_hw, self.window_size[0]).permute(0, 3, 1, 2).flatten(2)
        rel = pos.unsqueeze(2) - pos.unsqueeze(3)
        rel = torch.sign(rel) * torch.log(1.0 + rel.abs())
        bias = self.posmlp(rel)
        if pos_hw.size(0) == 1:
            nW, nH, WW, _ = bias.size()
            bias = bias.unsqueeze(0).expand(B_ // nW, -1, -1, -1, -1).reshape(-1, nH, WW, WW)
        attn = attn + bias
        if mask is not None:
            nW = mask.shape[0]
            attn = attn.view(B_ // nW, nW, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, N, N)
        attn = self.softmax(attn)
        return self.proj((attn @ v).transpose(1, 2).reshape(B_, N, C))


class SwinPatchMerge(nn.Module):
    """Swin-variant ``PatchMerge`` (``models_mae_swin.py:119-146``): ``norm`` LN(C_in) then
    Conv2d(C_in, C_out, k = s = 2); ``pos_hw <- pos_hw[:, ::2, ::2] / 2``."""

    def __init__(self, patch_size: IntOr2 = 2, in_chans: int = 3, embed_dim: int = 96, norm_layer=nn.LayerNorm):
        """Builds ``norm`` LN(in_chans) and ``proj`` Conv2d(in_chans -> embed_dim, k = s = 2).

        Raises:
            ValueError: ``patch_size`` is not 2 (or not a positive int / pair, :func:`pair`).
        """
        super().__init__()
        self.patch_size = pair(patch_size, 'patch_size')
        if self.patch_size[0] != 2:
            raise ValueError('PatchMerge patch_size must be 2 (an assert upstream)')
        self.norm = norm_layer(in_chans)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, x: torch.Tensor, pos_hw: torch.Tensor):
        N, L, C = x.shape
        _, H, W, _ = pos_hw.shape
        x = self.norm(x).permute(0, 2, 1).reshape(N, C, H, W)
        x = self.proj(x).flatten(2).transpose(1, 2)
        return x, (H // 2, W // 2), pos_hw[:, 0::2, 0::2, :] / 2.0


class SwinBlock(nn.Module):
    """Swin-variant block (``models_mae_swin.py:149-255``): optional ``downsample`` first, then
    (S)W-MSA with cyclic shift of x and ``pos_hw``, MLP. ``window_size``/``shift_size`` are
    clipped when ``min(input_resolution) <= window_size``; the -100 region mask ``attn_mask`` is a
    plain attribute (not in the state_dict). Children: norm1, attn, drop_path, norm2, mlp,
    downsample. ``forward(x (B, H*W, C), pos_hw (B|1, H, W, 2)) -> (x, pos_hw)`` (``H, W`` from
    ``pos_hw`` before the downsample)."""

    def __init__(self, dim: int, input_resolution, num_heads: int, window_size: int = 8, shift_size: int = 0,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, qk_scale: Optional[float] = None,
                 posmlp_dim: int = 32, drop_path: float = 0.0, act_layer=nn.GELU, norm_layer=nn.LayerNorm,
                 downsample: Optional[nn.Module] = None):
        """Builds the block (arguments as the official constructor) and its shift mask.

        Raises:
            ValueError: ``shift_size`` (after the clip) outside ``[0, window_size)``.
        """
        super().__init__()
        self.input_resolution = input_resolution
        self.window_size = window_size
        self.shift_size = shift_size
        if min(input_resolution) <= window_size:
            self.shift_size = 0
            self.window_size = min(input_resolution)
        if not 0 <= self.shift_size < self.window_size:
            raise ValueError('shift_size must be in [0, window_size)')
        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, window_size=(self.window_size, self.window_size), num_heads=num_heads,
                                    qkv_bias=qkv_bias, qk_scale=qk_scale, posmlp_dim=posmlp_dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer)
        attn_mask = None
        if self.shift_size > 0:
            H, W = input_resolution
            img_mask = torch.zeros((1, H, W, 1))
            ws, ss = self.window_size, self.shift_size
            cnt = 0
            for h in (slice(0, -ws), slice(-ws, -ss), slice(-ss, None)):
                for w in (slice(0, -ws), slice(-ws, -ss), slice(-ss, None)):
                    img_mask[:, h, w, :] = cnt
                    cnt += 1
            mw = window_partition(img_mask, ws).view(-1, ws * ws)
            attn_mask = mw.unsqueeze(1) - mw.unsqueeze(2)
            attn_mask = attn_mask.masked_fill(attn_mask != 0, -100.0).masked_fill(attn_mask == 0, 0.0)
        self.attn_mask = attn_mask
        self.downsample = downsample

    def forward(self, x: torch.Tensor, pos_hw: torch.Tensor):
        """x (B, H*W, C), pos_hw (B|1, H, W, 2) -> (x, pos_hw), halved first by a ``downsample``.

        Raises:
            ValueError: the token count of ``x`` (after the downsample) is not ``H * W`` of ``pos_hw``.
        """
        H, W = pos_hw.size(1), pos_hw.size(2)
        if self.downsample is not None:
            x, (H, W), pos_hw = self.downsample(x, pos_hw)
        B, L, C = x.shape
        if L != H * W:
            raise ValueError(f'input dimension wrong: expected (B, {H}*{W}={H * W}, C) tokens, got {tuple(x.shape)}')
        shortcut = x
        x = self.norm1(x).view(B, H, W, C)
        s, ws = self.shift_size, self.window_size
        if s > 0:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
            pos_hw = torch.roll(pos_hw, shifts=(-s, -s), dims=(1, 2))
        xw = window_partition(x, ws).view(-1, ws * ws, C)
        mask = None if self.attn_mask is None else self.attn_mask.to(x.device)
        aw = self.attn(xw, pos_hw, mask=mask).view(-1, ws, ws, C)
        x = window_reverse(aw, ws, H, W)
        if s > 0:
            x = torch.roll(x, shifts=(s, s), dims=(1, 2))
            pos_hw = torch.roll(pos_hw, shifts=(s, s), dims=(1, 2))
        x = shortcut + self.drop_path(x.reshape(B, H * W, C))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, pos_hw


class SwinPatchEmbed(nn.Module):
    """Swin-variant ``PatchEmbed`` (``models_mae_swin.py:258-280``): Conv2d(k = s = patch) then
    ``norm``; (B, C, H, W) -> (B, L, D)."""

    def __init__(self, img_size: IntOr2 = 224, patch_size: IntOr2 = 4, in_chans: int = 3, embed_dim: int = 96,
                 norm_layer=nn.LayerNorm):
        super().__init__()
        self.img_size = pair(img_size, 'img_size')
        self.patch_size = pair(patch_size, 'patch_size')
        self.patches_resolution = [self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1]]
        self.num_patches = self.patches_resolution[0] * self.patches_resolution[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.norm = norm_layer(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


def _swin_blocks(embed_dim, depths, num_heads, window_size, mlp_ratio, posmlp_dim, res, add, dpr,
                 norm_layer) -> nn.ModuleList:
    """Flat Swin-variant block list; stage i runs at ``res // 2**(i + add)`` (``add=1`` for the
    half-resolution UM-MAE encoder, 0 otherwise); block 0 of stages 2.. owns a
    :class:`SwinPatchMerge` (given ``norm_layer``). The blocks themselves are NOT given
    ``norm_layer`` upstream (``models_mae_swin.py:318-337``, ``models_swin.py``,
    ``models_simmim_swin.py``), so their ``norm1``/``norm2`` are ``nn.LayerNorm`` with eps 1e-5."""
    blocks = nn.ModuleList()
    idx = 0
    for i in range(len(depths)):
        for dep in range(depths[i]):
            down = (SwinPatchMerge(2, embed_dim * 2 ** (i - 1), embed_dim * 2 ** i, norm_layer)
                    if (i > 0 and dep == 0) else None)
            r = (res[0] // 2 ** (i + add), res[1] // 2 ** (i + add))
            blocks.append(SwinBlock(embed_dim * 2 ** i, r, num_heads[i], window_size,
                                    0 if dep % 2 == 0 else window_size // 2, mlp_ratio, True, None, posmlp_dim,
                                    dpr[idx], downsample=down))
            idx += 1
    return blocks


def _grid_pos_hw(side: int) -> torch.Tensor:
    """(1, side, side, 2) float token coordinates, channel 0 = h, 1 = w (``models_swin.py``)."""
    h = torch.arange(side)[None, :, None, None].repeat(1, 1, side, 1).float()
    w = torch.arange(side)[None, None, :, None].repeat(1, side, 1, 1).float()
    return torch.cat((h, w), dim=-1)


class MaskedAutoencoderSwin(nn.Module):
    """UM-MAE on the Swin variant, ``models_mae_swin.MaskedAutoencoderSwin``
    (``models_mae_swin.py:286-291``); factories ``mae_swin_tiny_256`` (defaults +
    ``norm_layer=partial(nn.LayerNorm, eps=1e-6)``), ``mae_swin_large_256`` (embed 192, depths
    2/2/18/2, heads 6/12/24/48, ``posmlp_dim=64``, ``decoder_depth=8``). The decoder blocks use the
    encoder's ``mlp_ratio`` (official).

    Extra argument ``official_decoder_pos`` as :class:`MaskedAutoencoderPVT`. State:
    ``vis_mask_token`` (when ``vis_mask_ratio > 0``), ``mask_token``, ``decoder_pos_embed``,
    ``patch_embed`` (proj + norm), ``blocks``, ``norm``, ``decoder_*``. The Secondary-Masking
    token is passed through ``patch_embed.norm``; ``pos_hw`` coordinates are zeroed at masked
    tokens and compacted with the features.

    Raises:
        ValueError: as :class:`MaskedAutoencoderPVT`.
    """

    def __init__(self, img_size: int = 256, patch_size: int = 4, in_chans: int = 3, stride: int = 16,
                 embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 mlp_ratio: float = 4, window_size: int = 8, posmlp_dim: int = 32, decoder_embed_dim: int = 512,
                 decoder_depth: int = 2, decoder_num_heads: int = 16, norm_layer=nn.LayerNorm,
                 norm_pix_loss: bool = False, vis_mask_ratio: float = 0.0, official_decoder_pos: bool = True):
        super().__init__()
        if img_size % (2 * stride) or stride % patch_size:
            raise ValueError(f'img_size {img_size} must be a multiple of 2*stride and stride {stride} a multiple '
                             f'of patch_size {patch_size}')
        self.embed_dim = embed_dim
        self.stride = stride
        self.kernel_stride = stride // patch_size
        self.in_chans = in_chans
        self.vis_mask_ratio = vis_mask_ratio
        self.official_decoder_pos = bool(official_decoder_pos)
        if vis_mask_ratio > 0:
            self.vis_mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.patch_embed = SwinPatchEmbed(img_size, patch_size, in_chans, embed_dim, norm_layer)
        res = self.patch_embed.patches_resolution
        self.embed_h = self.embed_w = res[0]
        # (1, 2, H, W), official layout; a non-persistent buffer: moves with .to(device), not in the state dict
        self.register_buffer('pos_hw', _grid_pos_hw(self.embed_h).permute(0, 3, 1, 2), persistent=False)
        self.blocks = _swin_blocks(embed_dim, depths, num_heads, window_size, mlp_ratio, posmlp_dim, res, 1,
                                   [0.0] * sum(depths), norm_layer)
        out_dim = embed_dim * 2 ** (len(depths) - 1)
        self.norm = norm_layer(out_dim)
        self.decoder_embed = nn.Linear(out_dim, 4 * decoder_embed_dim, bias=True)
        self.decoder_expand = nn.PixelShuffle(2)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_num_patches = (img_size // stride) ** 2
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, self.decoder_num_patches, decoder_embed_dim),
                                              requires_grad=False)
        self.decoder_blocks = nn.ModuleList([
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(decoder_depth)])
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, stride ** 2 * in_chans, bias=True)
        self.norm_pix_loss = norm_pix_loss
        self.decoder_pos_embed.data.copy_(torch.from_numpy(get_2d_sincos_pos_embed(
            decoder_embed_dim, img_size // stride)).float().unsqueeze(0))
        nn.init.normal_(self.mask_token, std=0.02)
        if hasattr(self, 'vis_mask_token'):
            nn.init.normal_(self.vis_mask_token, std=0.02)
        self.apply(_init_pyramid)
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))

    def forward_encoder(self, x: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor):
        """``models_mae_swin.py:436-497`` with ``noise`` injected -> (latent, new_mask)."""
        N = x.size(0)
        x = self.patch_embed(x)
        L = mask.size(1)
        new_mask = secondary_mask(mask, noise, self.vis_mask_ratio)
        M = int(round(L ** 0.5))
        scale = self.embed_h // M
        m_up = mask.reshape(N, M, M).repeat_interleave(scale, 1).repeat_interleave(scale, 2).unsqueeze(1)
        nm_up = new_mask.reshape(N, M, M).repeat_interleave(scale, 1).repeat_interleave(scale, 2).unsqueeze(1)
        if hasattr(self, 'vis_mask_token'):
            token_mask = (~m_up).int() - (~nm_up).int()
            vmt = self.patch_embed.norm(self.vis_mask_token).expand(N, self.patch_embed.num_patches, -1)
            vmt = vmt.reshape(N, self.embed_h, self.embed_w, self.embed_dim).permute(0, 3, 1, 2) * token_mask
        else:
            vmt = 0
        K = self.kernel_stride
        x = x.reshape(N, self.embed_h, self.embed_w, self.embed_dim).permute(0, 3, 1, 2)
        x = _compact(x * (~nm_up) + vmt, K)
        pos_hw = _compact(self.pos_hw.repeat(N, 1, 1, 1).to(x.device) * (~m_up), K).permute(0, 2, 3, 1)
        x = x.permute(0, 2, 3, 1).reshape(N, -1, self.embed_dim)
        for blk in self.blocks:
            x, pos_hw = blk(x, pos_hw)
        return self.norm(x), new_mask

    def forward(self, imgs: torch.Tensor, mask: torch.Tensor, *, noise: Optional[torch.Tensor] = None,
                train: bool = False) -> dict:
        del train
        L = (imgs.shape[-1] // self.stride) ** 2
        mask = _check_mask(mask, imgs.shape[0], L)
        noise = _check_noise(noise, (imgs.shape[0], L), imgs.device)
        vis_index = compact_unit_index(mask)
        latent, new_mask = self.forward_encoder(imgs, mask, noise)
        pred, mask_num = _pyramid_decoder_forward(self, latent, mask, vis_index)
        loss = _mse_loss(self, imgs, pred[:, -mask_num:], mask)
        return {'loss': loss, 'pred': _raster_pred(pred, mask, vis_index), 'mask': mask,
                'secondary_mask': new_mask & ~mask}


class Swin(nn.Module):
    """Fine-tuning Swin variant, ``models_swin.Swin`` (``models_swin.py:23-135``); factories
    ``swin_tiny_256`` / ``swin_large_256`` (``posmlp_dim=64``), window 16,
    ``norm_layer=partial(nn.LayerNorm, eps=1e-6)``. State: ``patch_embed``, ``blocks``,
    ``fc_norm``, ``head``. ``forward(x)``: (B, C, H, W) -> logits; ``pos_hw`` is the integer grid
    (batch 1, bias shared). ``with_cp`` (gradient checkpointing) has no numerical effect.

    Raises:
        ValueError: ``global_pool=False`` (the official forward always pools).
    """

    def __init__(self, img_size: int = 256, num_classes: int = 1000, patch_size: int = 4, in_chans: int = 3,
                 embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 mlp_ratio: float = 4, window_size: int = 16, posmlp_dim: int = 32, drop_path_rate: float = 0.1,
                 norm_layer=nn.LayerNorm, global_pool: bool = True, with_cp: bool = False):
        super().__init__()
        if not global_pool:
            raise ValueError('global_pool must be True (models_swin.Swin always mean-pools)')
        self.patch_embed = SwinPatchEmbed(img_size, patch_size, in_chans, embed_dim, norm_layer)
        res = self.patch_embed.patches_resolution
        self.register_buffer('pos_hw', _grid_pos_hw(res[0]), persistent=False)
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depths), device="cpu")]
        self.blocks = _swin_blocks(embed_dim, depths, num_heads, window_size, mlp_ratio, posmlp_dim, res, 0, dpr,
                                   norm_layer)
        out_dim = embed_dim * 2 ** (len(depths) - 1)
        self.fc_norm = norm_layer(out_dim)
        self.head = nn.Linear(out_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_pyramid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        pos_hw = self.pos_hw.to(x.device)
        for blk in self.blocks:
            x, pos_hw = blk(x, pos_hw)
        return self.head(self.fc_norm(x.mean(dim=1)))


class SimMIMSwin(nn.Module):
    """SimMIM baseline on the Swin variant, ``models_simmim_swin.SimMIMSwin`` (factory
    ``simmim_swin_tiny_256``: ``window_size=16``, ``norm_layer=partial(nn.LayerNorm, eps=1e-6)``).
    Full resolution, ``pos_hw`` grid of batch 1. State: ``mask_token`` (1, 1, E), ``patch_embed``,
    ``blocks``, ``norm``, ``decoder_pred`` (8E -> 4 stride^2 C). Forward as :class:`SimMIMPVT`."""

    def __init__(self, img_size: int = 256, patch_size: int = 4, in_chans: int = 3, stride: int = 16,
                 embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 mlp_ratio: float = 4, window_size: int = 8, posmlp_dim: int = 32, norm_layer=nn.LayerNorm,
                 norm_pix_loss: bool = False):
        super().__init__()
        self.stride = stride
        self.in_chans = in_chans
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.patch_embed = SwinPatchEmbed(img_size, patch_size, in_chans, embed_dim, norm_layer)
        res = self.patch_embed.patches_resolution
        self.embed_h = res[0]
        self.register_buffer('pos_hw', _grid_pos_hw(res[0]), persistent=False)
        self.blocks = _swin_blocks(embed_dim, depths, num_heads, window_size, mlp_ratio, posmlp_dim, res, 0,
                                   [0.0] * sum(depths), norm_layer)
        out_dim = embed_dim * 2 ** (len(depths) - 1)
        self.norm = norm_layer(out_dim)
        self.decoder_pred = nn.Linear(out_dim, 4 * stride ** 2 * in_chans, bias=True)
        self.decoder_shuffle = nn.PixelShuffle(2)
        self.norm_pix_loss = norm_pix_loss
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(_init_pyramid)
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))

    def forward(self, imgs: torch.Tensor, mask: torch.Tensor, *, noise: Optional[torch.Tensor] = None,
                train: bool = False) -> dict:
        del noise, train
        N = imgs.shape[0]
        mask = _check_mask(mask, N, (imgs.shape[-1] // self.stride) ** 2)
        x = self.patch_embed(imgs)
        w = _upsample_mask(mask, self.embed_h).flatten(1).unsqueeze(-1).type_as(x)
        x = x * (1.0 - w) + self.mask_token.expand(N, x.shape[1], -1) * w
        pos_hw = self.pos_hw.to(x.device)
        for blk in self.blocks:
            x, pos_hw = blk(x, pos_hw)
        pred = _simmim_decode(self, self.norm(x))
        return {'loss': _l1_loss(self, imgs, pred, mask), 'pred': pred, 'mask': mask}


# ================================================================================================
# ViT with Secondary Masking (models_mae.py)
# ================================================================================================


class MaskedAutoencoderViT(nn.Module):
    """UM-MAE's ``models_mae.MaskedAutoencoderViT`` (``models_mae.py:24-28``): MAE whose mask comes
    from the dataloader, with optional Secondary Masking. Factory
    ``mae_vit_base_patch16_dec512d2b``: ``patch_size=16, embed_dim=768, depth=12, num_heads=12,
    decoder_depth=2, norm_layer=partial(nn.LayerNorm, eps=1e-6)``. ``mask_ratio`` and
    ``asymmetric_decoder`` are accepted and unused (as upstream).

    State (official order): ``vis_mask_token`` (vmr > 0), ``cls_token``, ``pos_embed`` (fixed,
    with a zero cls row), ``mask_token``, ``decoder_pos_embed``; children ``patch_embed``,
    ``blocks``, ``norm``, ``decoder_embed``, ``decoder_blocks``, ``decoder_norm``,
    ``decoder_pred``.

    ``forward(imgs, mask, *, noise=None, train=False)``: ``mask`` (N, L) bool, the same visible
    count in every sample; ``noise`` (N, n_visible) uniform: visible token i (raster order) is
    replaced by ``vis_mask_token + pos_embed`` iff ``argsort(noise)[i] >= int(n_vis * (1 - vmr))``
    (``models_mae.py:141-154``, exactly as upstream).

    Raises:
        ValueError: bad mask / noise shapes, or unequal visible counts.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 1024,
                 depth: int = 24, num_heads: int = 16, decoder_embed_dim: int = 512, decoder_depth: int = 8,
                 decoder_num_heads: int = 16, mlp_ratio: float = 4.0, norm_layer=nn.LayerNorm,
                 norm_pix_loss: bool = False, asymmetric_decoder: bool = False, mask_ratio: float = 0.75,
                 vis_mask_ratio: float = 0.0):
        super().__init__()
        self.vis_mask_ratio = vis_mask_ratio
        self.in_chans = in_chans
        if vis_mask_ratio > 0:
            self.vis_mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.patch_embed = ViTPatchEmbed(img_size, patch_size, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
                                     for _ in range(depth)])
        self.norm = norm_layer(embed_dim)
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, decoder_embed_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList([
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(decoder_depth)])
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size ** 2 * in_chans, bias=True)
        self.norm_pix_loss = norm_pix_loss
        grid = int(round(num_patches ** 0.5))
        self.pos_embed.data.copy_(torch.from_numpy(
            get_2d_sincos_pos_embed(embed_dim, grid, cls_token=True)).float().unsqueeze(0))
        self.decoder_pos_embed.data.copy_(torch.from_numpy(
            get_2d_sincos_pos_embed(decoder_embed_dim, grid, cls_token=True)).float().unsqueeze(0))
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        if hasattr(self, 'vis_mask_token'):
            nn.init.normal_(self.vis_mask_token, std=0.02)
        self.apply(functools.partial(init_linear_layernorm, linear_weight_init=nn.init.xavier_uniform_))

    def forward(self, imgs: torch.Tensor, mask: torch.Tensor, *, noise: Optional[torch.Tensor] = None,
                train: bool = False) -> dict:
        del train
        p = self.patch_embed.patch_size[0]
        N = imgs.shape[0]
        L = self.patch_embed.num_patches
        mask = _check_mask(mask, N, L)
        n_vis = int((~mask).sum(1)[0])
        if not bool(((~mask).sum(1) == n_vis).all()):
            raise ValueError('every sample needs the same number of visible patches')
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        D = x.shape[-1]
        x = x[~mask].reshape(N, -1, D)
        sec = torch.zeros(N, L, dtype=torch.bool, device=imgs.device)
        if self.vis_mask_ratio > 0:
            noise = _check_noise(noise, (N, n_vis), imgs.device)
            vmt = (self.vis_mask_token + self.pos_embed[:, 1:, :]).expand(N, -1, -1)[~mask].reshape(N, -1, D)
            ids = torch.argsort(noise, dim=1)
            len_keep = int(n_vis * (1 - self.vis_mask_ratio))
            vis_mask = torch.ones([N, n_vis], device=x.device)
            vis_mask[:, :len_keep] = 0
            vis_mask = torch.gather(vis_mask, dim=1, index=ids).unsqueeze(-1)
            x = x * (1.0 - vis_mask) + vmt * vis_mask
            sec[~mask] = vis_mask.reshape(-1).bool()
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(N, -1, -1)
        x = torch.cat((cls, x), dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.decoder_embed(self.norm(x))
        Dd = x.shape[-1]
        pe = self.decoder_pos_embed[:, 1:, :].expand(N, -1, -1)
        pos_vis = pe[~mask].reshape(N, -1, Dd)
        pos_mask = pe[mask].reshape(N, -1, Dd)
        x_ = torch.cat([x[:, 1:, :] + pos_vis, self.mask_token + pos_mask], dim=1)
        x = torch.cat([x[:, :1, :] + self.decoder_pos_embed[:, :1, :], x_], dim=1)
        for blk in self.decoder_blocks:
            x = blk(x)
        pred = self.decoder_pred(self.decoder_norm(x))[:, 1:, :]
        mask_num = pos_mask.shape[1]
        target = patchify(imgs, p)
        target = target[mask].reshape(N, -1, target.shape[-1])
        if self.norm_pix_loss:
            target = _norm_pix(target)
        loss = ((pred[:, -mask_num:] - target) ** 2).mean()
        return {'loss': loss, 'pred': _raster_pred(pred, mask, None), 'mask': mask, 'secondary_mask': sec}


# ================================================================================================
# Conversion sources: jaxmim UM-MAE models <-> official state_dicts
# ================================================================================================

from flax import nnx  # noqa: E402  (conversion half; the twins above need only torch)

from convert import _entries as E  # noqa: E402
from convert import official as O  # noqa: E402
from convert import vit as _vit  # noqa: E402
from convert._common import mlp_ratio_of, square  # noqa: E402


def _variables(model: nnx.Module) -> set:
    return {tuple(p) for p, _ in nnx.to_flat_state(nnx.state(model))}


class _Table:
    """Accumulates the entries of one model in official order, checking each NNX path against the
    model's variables so optional tensors (biases, ``vis_mask_token``, ``downsample``) follow the
    model."""

    def __init__(self, model: nnx.Module):
        self.have = _variables(model)
        self.out: list[O.Entry] = []

    def has(self, path: tuple) -> bool:
        return any(p[:len(path)] == path for p in self.have)

    def token(self, key: str, path: tuple | None = None, optional: bool = False) -> None:
        path = path or (key,)
        if optional and path not in self.have:
            return
        self.out.append(O.VariableEntry(key, path))

    def _wb(self, key: str, path: tuple, weight_leaf: str, layout: O.Layout) -> None:
        self.out.append(O.VariableEntry(key + '.weight', path + (weight_leaf,), layout))
        if path + ('bias',) in self.have:
            self.out.append(O.VariableEntry(key + '.bias', path + ('bias',)))

    def linear(self, key: str, path: tuple) -> None:
        self._wb(key, path, 'kernel', O.LINEAR)

    def conv(self, key: str, path: tuple) -> None:
        self._wb(key, path, 'kernel', O.CONV2D)

    def ln(self, key: str, path: tuple) -> None:
        self._wb(key, path, 'scale', O.COPY)


def _mlp(t: _Table, key: str, path: tuple) -> None:
    t.linear(key + 'mlp.fc1', path + ('mlp', 'fc1'))
    t.linear(key + 'mlp.fc2', path + ('mlp', 'fc2'))


def _pvt_block(t: _Table, i: int) -> None:
    """``blocks.{i}``: norm1, attn.{q, kv, proj, sr, norm}, norm2, mlp, downsample.proj (official
    registration order of ``PVTBlock`` / ``Attention``)."""
    k, p = f'blocks.{i}.', ('blocks', i)
    t.ln(k + 'norm1', p + ('norm1',))
    for name in ('q', 'kv', 'proj'):
        t.linear(k + 'attn.' + name, p + ('attn', name))
    t.conv(k + 'attn.sr', p + ('attn', 'sr'))
    t.ln(k + 'attn.norm', p + ('attn', 'norm'))
    t.ln(k + 'norm2', p + ('norm2',))
    _mlp(t, k, p)
    if t.has(p + ('downsample',)):
        t.conv(k + 'downsample.proj', p + ('downsample', 'proj'))


def _swin_block(t: _Table, i: int) -> None:
    """``blocks.{i}``: norm1, attn.{posmlp.0, posmlp.2, qkv, proj}, norm2, mlp,
    downsample.{norm, proj} (``SwinBlock`` / ``WindowAttention`` / ``PatchMerge`` order)."""
    k, p = f'blocks.{i}.', ('blocks', i)
    t.ln(k + 'norm1', p + ('norm1',))
    t.conv(k + 'attn.posmlp.0', p + ('attn', 'posmlp', 0))
    t.conv(k + 'attn.posmlp.2', p + ('attn', 'posmlp', 2))
    t.linear(k + 'attn.qkv', p + ('attn', 'qkv'))
    t.linear(k + 'attn.proj', p + ('attn', 'proj'))
    t.ln(k + 'norm2', p + ('norm2',))
    _mlp(t, k, p)
    if t.has(p + ('downsample',)):
        t.ln(k + 'downsample.norm', p + ('downsample', 'norm'))
        t.conv(k + 'downsample.proj', p + ('downsample', 'proj'))


def _decoder(t: _Table, model: nnx.Module) -> None:
    """``decoder_embed``, ``decoder_blocks.{i}`` (timm Block), ``decoder_norm``, ``decoder_pred``."""
    t.linear('decoder_embed', ('decoder_embed',))
    for i, blk in enumerate(model.decoder_blocks):
        t.out += _vit.vit_block_entries(blk, f'decoder_blocks.{i}.', ('decoder_blocks', i))
    t.ln('decoder_norm', ('decoder_norm',))
    t.linear('decoder_pred', ('decoder_pred',))


def _check_type(model: nnx.Module, module: str, cls: str, source: str) -> None:
    import importlib
    expected = getattr(importlib.import_module(module), cls)
    if not isinstance(model, expected):
        raise TypeError(f'source {source} expects a jaxmim {cls}, got {type(model).__name__}')


def ummae_pvt_pretrain_entries(model: nnx.Module) -> list[O.Entry]:
    """Official ``MaskedAutoencoderPVT`` state_dict entries, official order: ``vis_mask_token``
    (when the model has it), ``pos_embed`` (Buffer), ``mask_token``, ``decoder_pos_embed``
    (Buffer), ``patch_embed.proj``, ``blocks.*``, ``norm``, decoder.

    Raises:
      TypeError: not a :class:`jaxmim.methods.ummae.pvt.MaskedAutoencoderPVT`.
    """
    _check_type(model, 'jaxmim.methods.ummae.pvt', 'MaskedAutoencoderPVT', 'ummae_pvt_pretrain')
    t = _Table(model)
    t.token('vis_mask_token', optional=True)
    for k in ('pos_embed', 'mask_token', 'decoder_pos_embed'):
        t.token(k)
    t.conv('patch_embed.proj', ('patch_embed', 'proj'))
    for i in range(len(model.blocks)):
        _pvt_block(t, i)
    t.ln('norm', ('norm',))
    _decoder(t, model)
    return t.out


def ummae_simmim_pvt_entries(model: nnx.Module) -> list[O.Entry]:
    """Official ``SimMIMPVT`` entries: ``mask_token``, ``pos_embed``, ``patch_embed.proj``,
    ``blocks.*``, ``norm``, ``decoder_pred``.

    Raises:
      TypeError: not a :class:`jaxmim.methods.ummae.pvt.SimMIMPVT`.
    """
    _check_type(model, 'jaxmim.methods.ummae.pvt', 'SimMIMPVT', 'ummae_simmim_pvt')
    t = _Table(model)
    t.token('mask_token')
    t.token('pos_embed')
    t.conv('patch_embed.proj', ('patch_embed', 'proj'))
    for i in range(len(model.blocks)):
        _pvt_block(t, i)
    t.ln('norm', ('norm',))
    t.linear('decoder_pred', ('decoder_pred',))
    return t.out


def ummae_pvt_entries(model: nnx.Module) -> list[O.Entry]:
    """Official ``models_pvt.PVT`` entries: ``pos_embed``, ``patch_embed.proj``, ``blocks.*``,
    ``fc_norm``, ``head`` (``num_classes > 0``).

    Raises:
      TypeError: not a :class:`jaxmim.models.pvt.PVT`.
    """
    _check_type(model, 'jaxmim.models.pvt', 'PVT', 'ummae_pvt')
    t = _Table(model)
    t.token('pos_embed')
    t.conv('patch_embed.proj', ('patch_embed', 'proj'))
    for i in range(len(model.blocks)):
        _pvt_block(t, i)
    t.ln('fc_norm', ('fc_norm',))
    if t.has(('head',)):
        t.linear('head', ('head',))
    return t.out


def _swin_patch_embed(t: _Table) -> None:
    t.conv('patch_embed.proj', ('patch_embed', 'proj'))
    t.ln('patch_embed.norm', ('patch_embed', 'norm'))


def ummae_swin_pretrain_entries(model: nnx.Module) -> list[O.Entry]:
    """Official ``MaskedAutoencoderSwin`` entries: ``vis_mask_token`` (when present),
    ``mask_token``, ``decoder_pos_embed`` (Buffer), ``patch_embed.{proj, norm}``, ``blocks.*``,
    ``norm``, decoder.

    Raises:
      TypeError: not a :class:`jaxmim.methods.ummae.swin.MaskedAutoencoderSwin`.
    """
    _check_type(model, 'jaxmim.methods.ummae.swin', 'MaskedAutoencoderSwin', 'ummae_swin_pretrain')
    t = _Table(model)
    t.token('vis_mask_token', optional=True)
    t.token('mask_token')
    t.token('decoder_pos_embed')
    _swin_patch_embed(t)
    for i in range(len(model.blocks)):
        _swin_block(t, i)
    t.ln('norm', ('norm',))
    _decoder(t, model)
    return t.out


def ummae_simmim_swin_entries(model: nnx.Module) -> list[O.Entry]:
    """Official ``SimMIMSwin`` entries: ``mask_token``, ``patch_embed.{proj, norm}``,
    ``blocks.*``, ``norm``, ``decoder_pred``.

    Raises:
      TypeError: not a :class:`jaxmim.methods.ummae.swin.SimMIMSwin`.
    """
    _check_type(model, 'jaxmim.methods.ummae.swin', 'SimMIMSwin', 'ummae_simmim_swin')
    t = _Table(model)
    t.token('mask_token')
    _swin_patch_embed(t)
    for i in range(len(model.blocks)):
        _swin_block(t, i)
    t.ln('norm', ('norm',))
    t.linear('decoder_pred', ('decoder_pred',))
    return t.out


def ummae_swin_entries(model: nnx.Module) -> list[O.Entry]:
    """Official ``models_swin.Swin`` entries: ``patch_embed.{proj, norm}``, ``blocks.*``,
    ``fc_norm``, ``head`` (``num_classes > 0``).

    Raises:
      TypeError: not a :class:`jaxmim.models.ummae_swin.Swin`.
    """
    _check_type(model, 'jaxmim.models.ummae_swin', 'Swin', 'ummae_swin')
    t = _Table(model)
    _swin_patch_embed(t)
    for i in range(len(model.blocks)):
        _swin_block(t, i)
    t.ln('fc_norm', ('fc_norm',))
    if t.has(('head',)):
        t.linear('head', ('head',))
    return t.out


def ummae_vit_pretrain_entries(model: nnx.Module) -> list[O.Entry]:
    """Official UM-MAE ``models_mae.MaskedAutoencoderViT`` entries, official order:
    ``vis_mask_token`` (when present), ``cls_token``, ``pos_embed``, ``mask_token``,
    ``decoder_pos_embed``, ``patch_embed.proj``, ``blocks.*``, ``norm``, decoder.

    Raises:
      TypeError: not a :class:`jaxmim.methods.ummae.vit.MaskedAutoencoderViTUM`.
    """
    _check_type(model, 'jaxmim.methods.ummae.vit', 'MaskedAutoencoderViTUM', 'ummae_vit_pretrain')
    t = _Table(model)
    t.token('vis_mask_token', optional=True)
    for k in ('cls_token', 'pos_embed', 'mask_token', 'decoder_pos_embed'):
        t.token(k)
    t.conv('patch_embed.proj', ('patch_embed', 'proj'))
    for i, blk in enumerate(model.blocks):
        t.out += _vit.vit_block_entries(blk, f'blocks.{i}.', ('blocks', i))
    t.ln('norm', ('norm',))
    _decoder(t, model)
    return t.out


# ------------------------------------------------------------------------------------------------
# Builders (official constructor arguments -> jaxmim models)
# ------------------------------------------------------------------------------------------------

_BLOCK_NORM_EPS = 1e-5
"""eps of the pyramid blocks' ``norm1``/``norm2``: the official constructors never pass
``norm_layer`` to ``PVTBlock`` / ``SwinBlock``, so they are ``nn.LayerNorm(dim)`` (1e-5)."""


def _make(module: str, cls: str, rngs: nnx.Rngs, norm_layer: Any, kwargs: dict) -> nnx.Module:
    """Instantiates ``module.cls`` with ``kwargs`` plus ``norm_eps`` from ``norm_layer`` (and the
    blocks' eps 1e-5 when the jaxmim model takes a separate ``block_norm_eps``)."""
    import importlib
    import inspect
    klass = getattr(importlib.import_module(module), cls)
    params = inspect.signature(klass.__init__).parameters
    kwargs = dict(kwargs, norm_eps=E.layer_norm_eps(norm_layer))
    if 'block_norm_eps' in params:
        kwargs['block_norm_eps'] = _BLOCK_NORM_EPS
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        raise ValueError(f'{cls}: arguments {unknown} are not supported by the jaxmim model')
    return klass(**kwargs, rngs=rngs)


def _ints(v: Sequence[Any]) -> tuple:
    return tuple(int(x) for x in v)


def build_ummae_pvt_pretrain(*, rngs: nnx.Rngs, img_size: int = 224, patch_size: int = 4, in_chans: int = 3,
                             stride: int = 16, embed_dims=(64, 128, 320, 512), depths=(3, 4, 6, 3),
                             num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4), sr_ratios=(4, 2, 1, 1),
                             decoder_embed_dim: int = 512, decoder_depth: int = 2, decoder_num_heads: int = 16,
                             decoder_mlp_ratio: float = 4, norm_layer: Any = None, norm_pix_loss: bool = False,
                             vis_mask_ratio: float = 0.0, official_decoder_pos: bool = True) -> nnx.Module:
    """Source ``'ummae_pvt_pretrain'``: ``models_mae_pvt.MaskedAutoencoderPVT(...)`` (official
    arguments and defaults; ``norm_layer=None`` = ``nn.LayerNorm``; ``mae_pvt_small_256``:
    ``img_size=256, norm_layer=partial(nn.LayerNorm, eps=1e-6)``) as
    :class:`jaxmim.methods.ummae.pvt.MaskedAutoencoderPVT`. ``official_decoder_pos`` (not official)
    defaults to True so converted checkpoints behave as trained (``models_mae_pvt.py:358-407``).

    Raises:
      ValueError: another norm layer or sizes the model rejects.
    """
    return _make('jaxmim.methods.ummae.pvt', 'MaskedAutoencoderPVT', rngs, norm_layer, dict(
        img_size=square(img_size, 'img_size', 'PVT'), patch_size=square(patch_size, 'patch_size', 'PVT'),
        in_chans=int(in_chans), stride=int(stride), embed_dims=_ints(embed_dims), depths=_ints(depths),
        num_heads=_ints(num_heads), mlp_ratios=tuple(float(m) for m in mlp_ratios), sr_ratios=_ints(sr_ratios),
        decoder_embed_dim=int(decoder_embed_dim), decoder_depth=int(decoder_depth),
        decoder_num_heads=int(decoder_num_heads), decoder_mlp_ratio=float(decoder_mlp_ratio),
        norm_pix_loss=bool(norm_pix_loss), vis_mask_ratio=float(vis_mask_ratio),
        official_decoder_pos=bool(official_decoder_pos)))


def build_ummae_simmim_pvt(*, rngs: nnx.Rngs, img_size: int = 224, patch_size: int = 4, in_chans: int = 3,
                           stride: int = 16, embed_dims=(64, 128, 320, 512), depths=(3, 4, 6, 3),
                           num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4), sr_ratios=(8, 4, 2, 1),
                           norm_layer: Any = None, norm_pix_loss: bool = False) -> nnx.Module:
    """Source ``'ummae_simmim_pvt'``: ``models_simmim_pvt.SimMIMPVT(...)`` (``simmim_pvt_small_256``:
    ``img_size=256, norm_layer=partial(nn.LayerNorm, eps=1e-6)``) as
    :class:`jaxmim.methods.ummae.pvt.SimMIMPVT`.

    Raises:
      ValueError: another norm layer or sizes the model rejects.
    """
    return _make('jaxmim.methods.ummae.pvt', 'SimMIMPVT', rngs, norm_layer, dict(
        img_size=square(img_size, 'img_size', 'PVT'), patch_size=square(patch_size, 'patch_size', 'PVT'),
        in_chans=int(in_chans), stride=int(stride), embed_dims=_ints(embed_dims), depths=_ints(depths),
        num_heads=_ints(num_heads), mlp_ratios=tuple(float(m) for m in mlp_ratios), sr_ratios=_ints(sr_ratios),
        norm_pix_loss=bool(norm_pix_loss)))


def build_ummae_pvt(*, rngs: nnx.Rngs, img_size: int = 224, num_classes: int = 1000, patch_size: int = 4,
                    in_chans: int = 3, embed_dims=(64, 128, 320, 512), depths=(3, 4, 6, 3), num_heads=(1, 2, 5, 8),
                    mlp_ratios=(8, 8, 4, 4), sr_ratios=(8, 4, 2, 1), drop_path_rate: float = 0.1,
                    norm_layer: Any = None, global_pool: bool = True) -> nnx.Module:
    """Source ``'ummae_pvt'``: ``models_pvt.PVT(...)`` (``pvt_small_256``: ``img_size=256,
    norm_layer=partial(nn.LayerNorm, eps=1e-6)``) as :class:`jaxmim.models.pvt.PVT`.

    Raises:
      ValueError: ``global_pool=False`` (the official forward always pools), another norm layer,
        or sizes the model rejects.
    """
    if not global_pool:
        raise ValueError('global_pool must be True (models_pvt.PVT always mean-pools)')
    return _make('jaxmim.models.pvt', 'PVT', rngs, norm_layer, dict(
        img_size=square(img_size, 'img_size', 'PVT'), num_classes=int(num_classes),
        patch_size=square(patch_size, 'patch_size', 'PVT'), in_chans=int(in_chans), embed_dims=_ints(embed_dims),
        depths=_ints(depths), num_heads=_ints(num_heads), mlp_ratios=tuple(float(m) for m in mlp_ratios),
        sr_ratios=_ints(sr_ratios), drop_path_rate=float(drop_path_rate)))


def build_ummae_swin_pretrain(*, rngs: nnx.Rngs, img_size: int = 256, patch_size: int = 4, in_chans: int = 3,
                              stride: int = 16, embed_dim: int = 96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                              mlp_ratio: float = 4, window_size: int = 8, posmlp_dim: int = 32,
                              decoder_embed_dim: int = 512, decoder_depth: int = 2, decoder_num_heads: int = 16,
                              norm_layer: Any = None, norm_pix_loss: bool = False, vis_mask_ratio: float = 0.0,
                              official_decoder_pos: bool = True) -> nnx.Module:
    """Source ``'ummae_swin_pretrain'``: ``models_mae_swin.MaskedAutoencoderSwin(...)``
    (``mae_swin_tiny_256``: defaults + ``norm_layer=partial(nn.LayerNorm, eps=1e-6)``;
    ``mae_swin_large_256``: ``embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48],
    posmlp_dim=64, decoder_depth=8``) as :class:`jaxmim.methods.ummae.swin.MaskedAutoencoderSwin`.
    ``official_decoder_pos`` as :func:`build_ummae_pvt_pretrain`.

    Raises:
      ValueError: another norm layer or sizes the model rejects.
    """
    return _make('jaxmim.methods.ummae.swin', 'MaskedAutoencoderSwin', rngs, norm_layer, dict(
        img_size=square(img_size, 'img_size', 'Swin'), patch_size=square(patch_size, 'patch_size', 'Swin'),
        in_chans=int(in_chans), stride=int(stride), embed_dim=int(embed_dim), depths=_ints(depths),
        num_heads=_ints(num_heads), mlp_ratio=float(mlp_ratio), window_size=int(window_size),
        posmlp_dim=int(posmlp_dim), decoder_embed_dim=int(decoder_embed_dim), decoder_depth=int(decoder_depth),
        decoder_num_heads=int(decoder_num_heads), norm_pix_loss=bool(norm_pix_loss),
        vis_mask_ratio=float(vis_mask_ratio), official_decoder_pos=bool(official_decoder_pos)))


def build_ummae_simmim_swin(*, rngs: nnx.Rngs, img_size: int = 256, patch_size: int = 4, in_chans: int = 3,
                            stride: int = 16, embed_dim: int = 96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                            mlp_ratio: float = 4, window_size: int = 8, posmlp_dim: int = 32,
                            norm_layer: Any = None, norm_pix_loss: bool = False) -> nnx.Module:
    """Source ``'ummae_simmim_swin'``: ``models_simmim_swin.SimMIMSwin(...)``
    (``simmim_swin_tiny_256``: ``window_size=16, norm_layer=partial(nn.LayerNorm, eps=1e-6)``) as
    :class:`jaxmim.methods.ummae.swin.SimMIMSwin`.

    Raises:
      ValueError: another norm layer or sizes the model rejects.
    """
    return _make('jaxmim.methods.ummae.swin', 'SimMIMSwin', rngs, norm_layer, dict(
        img_size=square(img_size, 'img_size', 'Swin'), patch_size=square(patch_size, 'patch_size', 'Swin'),
        in_chans=int(in_chans), stride=int(stride), embed_dim=int(embed_dim), depths=_ints(depths),
        num_heads=_ints(num_heads), mlp_ratio=float(mlp_ratio), window_size=int(window_size),
        posmlp_dim=int(posmlp_dim), norm_pix_loss=bool(norm_pix_loss)))


def build_ummae_swin(*, rngs: nnx.Rngs, img_size: int = 256, num_classes: int = 1000, patch_size: int = 4,
                     in_chans: int = 3, embed_dim: int = 96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                     mlp_ratio: float = 4, window_size: int = 16, posmlp_dim: int = 32, drop_path_rate: float = 0.1,
                     norm_layer: Any = None, global_pool: bool = True, with_cp: bool = False) -> nnx.Module:
    """Source ``'ummae_swin'``: ``models_swin.Swin(...)`` (``swin_tiny_256`` / ``swin_large_256``
    with ``posmlp_dim=64``; ``norm_layer=partial(nn.LayerNorm, eps=1e-6)``) as
    :class:`jaxmim.models.ummae_swin.Swin`. ``with_cp`` (activation checkpointing) is accepted and
    has no numerical effect.

    Raises:
      ValueError: ``global_pool=False``, another norm layer or sizes the model rejects.
    """
    del with_cp
    if not global_pool:
        raise ValueError('global_pool must be True (models_swin.Swin always mean-pools)')
    return _make('jaxmim.models.ummae_swin', 'Swin', rngs, norm_layer, dict(
        img_size=square(img_size, 'img_size', 'Swin'), num_classes=int(num_classes),
        patch_size=square(patch_size, 'patch_size', 'Swin'), in_chans=int(in_chans), embed_dim=int(embed_dim),
        depths=_ints(depths), num_heads=_ints(num_heads), mlp_ratio=float(mlp_ratio), window_size=int(window_size),
        posmlp_dim=int(posmlp_dim), drop_path_rate=float(drop_path_rate)))


def build_ummae_vit_pretrain(*, rngs: nnx.Rngs, img_size: int = 224, patch_size: int = 16, in_chans: int = 3,
                             embed_dim: int = 1024, depth: int = 24, num_heads: int = 16,
                             decoder_embed_dim: int = 512, decoder_depth: int = 8, decoder_num_heads: int = 16,
                             mlp_ratio: float = 4.0, norm_layer: Any = None, norm_pix_loss: bool = False,
                             asymmetric_decoder: bool = False, mask_ratio: float = 0.75,
                             vis_mask_ratio: float = 0.0) -> nnx.Module:
    """Source ``'ummae_vit_pretrain'``: UM-MAE's ``models_mae.MaskedAutoencoderViT(...)``
    (``mae_vit_base_patch16_dec512d2b``: ``patch_size=16, embed_dim=768, depth=12, num_heads=12,
    decoder_depth=2, norm_layer=partial(nn.LayerNorm, eps=1e-6)``) as
    :class:`jaxmim.methods.ummae.vit.MaskedAutoencoderViTUM`. ``asymmetric_decoder`` is unused
    upstream and must stay False.

    Raises:
      ValueError: ``asymmetric_decoder``, another norm layer or sizes the model rejects.
    """
    if asymmetric_decoder:
        raise ValueError('asymmetric_decoder is unused by the official model; only False is accepted')
    return _make('jaxmim.methods.ummae.vit', 'MaskedAutoencoderViTUM', rngs, norm_layer, dict(
        img_size=square(img_size, 'img_size', 'ViT'), patch_size=square(patch_size, 'patch_size', 'ViT'),
        in_chans=int(in_chans), embed_dim=int(embed_dim), depth=int(depth), num_heads=int(num_heads),
        decoder_embed_dim=int(decoder_embed_dim), decoder_depth=int(decoder_depth),
        decoder_num_heads=int(decoder_num_heads), mlp_ratio=float(mlp_ratio), norm_pix_loss=bool(norm_pix_loss),
        mask_ratio=float(mask_ratio), vis_mask_ratio=float(vis_mask_ratio)))


def ummae_swin_pretrain_twin(model: nnx.Module) -> nn.Module:
    """The PyTorch twin of a jaxmim :class:`jaxmim.methods.ummae.swin.MaskedAutoencoderSwin`: the
    official-layout :class:`MaskedAutoencoderSwin` above with the model's sizes and options (stage
    depths and heads, window, MLP and position-MLP widths, decoder, norms, ``norm_pix_loss``,
    ``vis_mask_ratio``, ``official_decoder_pos``; read from its layers), called ``twin(images NCHW,
    mask=(B, L) bool, noise=(B, L))`` with the model's ``host_inputs``; its state dict has
    :func:`ummae_swin_pretrain_entries`' keys.

    Raises:
      TypeError: not a jaxmim UM-MAE Swin. LookupError: a model the official class cannot express
        (block norms other than ``nn.LayerNorm``'s eps 1e-5, or drop path: the official encoder has
        neither).
    """
    _check_type(model, 'jaxmim.methods.ummae.swin', 'MaskedAutoencoderSwin', 'ummae_swin_pretrain')
    blocks = list(model.blocks)
    if any(b.norm1.epsilon != _BLOCK_NORM_EPS or float(b.drop_path) for b in blocks):
        raise LookupError('the official UM-MAE Swin encoder has LayerNorm eps 1e-5 in its blocks and no drop '
                          'path; this model differs: no PyTorch twin')
    depths, heads = [], []
    for blk in blocks:                      # a stage starts at its merging block
        if not depths or blk.downsample is not None:
            depths.append(0)
            heads.append(blk.attn.num_heads)
        depths[-1] += 1
    first, dec = blocks[0], model.decoder_blocks[0]
    return MaskedAutoencoderSwin(
        img_size=model.img_size, patch_size=model.patch_size, in_chans=model.in_chans, stride=model.stride,
        embed_dim=model.embed_dim, depths=tuple(depths), num_heads=tuple(heads),
        mlp_ratio=mlp_ratio_of(first), window_size=first.feature_window,
        posmlp_dim=first.attn.posmlp[0].kernel.shape[-1], decoder_embed_dim=model.mask_token.shape[-1],
        decoder_depth=len(model.decoder_blocks), decoder_num_heads=dec.attn.num_heads,
        norm_layer=functools.partial(nn.LayerNorm, eps=model.norm.epsilon), norm_pix_loss=bool(model.norm_pix_loss),
        vis_mask_ratio=float(model.vis_mask_ratio), official_decoder_pos=bool(model.official_decoder_pos))


_REF = 'implus/UM-MAE@cb7776b '
for _name, _ref, _build, _entries, _method in (
        ('ummae_pvt_pretrain', 'models_mae_pvt.py MaskedAutoencoderPVT', build_ummae_pvt_pretrain,
         ummae_pvt_pretrain_entries, 'ummae'),
        ('ummae_swin_pretrain', 'models_mae_swin.py MaskedAutoencoderSwin', build_ummae_swin_pretrain,
         ummae_swin_pretrain_entries, 'ummae'),
        ('ummae_vit_pretrain', 'models_mae.py MaskedAutoencoderViT', build_ummae_vit_pretrain,
         ummae_vit_pretrain_entries, 'ummae'),
        ('ummae_simmim_pvt', 'models_simmim_pvt.py SimMIMPVT', build_ummae_simmim_pvt,
         ummae_simmim_pvt_entries, 'ummae_simmim'),
        ('ummae_simmim_swin', 'models_simmim_swin.py SimMIMSwin', build_ummae_simmim_swin,
         ummae_simmim_swin_entries, 'ummae_simmim'),
        ('ummae_pvt', 'models_pvt.py PVT', build_ummae_pvt, ummae_pvt_entries, None),
        ('ummae_swin', 'models_swin.py Swin', build_ummae_swin, ummae_swin_entries, None),
        ('ummae_vit', 'models_vit.py VisionTransformer (timm 0.3.2)', _vit.build_mae_vit_cls,
         _vit.mae_vit_cls_entries, None)):
    O.register_source(O.Source(name=_name, reference=_REF + _ref, build_fn=_build, entries_fn=_entries,
                               method=_method,
                               twin_fn=ummae_swin_pretrain_twin if _name == 'ummae_swin_pretrain' else None))
del _name, _ref, _build, _entries, _method
