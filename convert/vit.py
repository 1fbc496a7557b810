"""facebookresearch/mae ViT family: PyTorch twins, key tables and conversion sources.

Two halves, one file:

* **PyTorch twins** (``torch`` only, no timm), official ``state_dict`` keys, shapes and order:

  :class:`MaskedAutoencoderViT`
      ``facebookresearch/mae@efb2a80 models_mae.py`` ``MaskedAutoencoderViT`` (pre-training),
      built on timm 0.3.2 ``PatchEmbed`` / ``Block``. Called ``model(imgs, noise=noise)``.
  :class:`VisionTransformer`
      ``models_vit.py`` ``VisionTransformer(global_pool, **kwargs)`` (fine-tuning): timm 0.3.2
      ``vision_transformer.VisionTransformer`` plus ``fc_norm`` (registered after ``head``; the
      encoder ``norm`` deleted) when ``global_pool``.

* **Conversion sources** registered with :mod:`convert.official`:

  ``'mae_vit'``
      ``MaskedAutoencoderViT(...)`` built as :class:`jaxmim.methods.mae.MaskedAutoencoderViT`
      (:func:`build_mae_vit`); the fixed sin-cos ``pos_embed`` / ``decoder_pos_embed`` are
      :class:`jaxmim.layers.Buffer` variables, converted like parameters (they are
      ``nn.Parameter(requires_grad=False)`` in the official state_dict).
  ``'mae_vit_cls'``
      ``models_vit.VisionTransformer(...)`` built as :class:`jaxmim.models.vit.VisionTransformer`
      (:func:`build_mae_vit_cls`).

Official key order (``torch.nn.Module.state_dict``: a module's own parameters first, then its
children in registration order): MAE ``cls_token, pos_embed, mask_token, decoder_pos_embed,
patch_embed.proj.{weight,bias}, blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}.*,
norm.*, decoder_embed.*, decoder_blocks.{i}.*, decoder_norm.*, decoder_pred.*``; classifier
``cls_token, pos_embed, patch_embed.proj.*, blocks.*, norm.* (no global_pool), head.* (num_classes
> 0), fc_norm.* (global_pool)``. The fused ``attn.qkv`` Linear (3D, D) maps to the fused Dense
kernel (D, 3D) by a plain transpose (rows ``[q; k; v]``, each head-major, on both sides).

Twin layouts: images NCHW float tensors; tokens (B, N, D), patches in raster order after the class
token; MAE ``pred`` (B, L, p*p*C) in raster order with pixels in (p, q, c) order, ``mask`` (B, L)
with 1 = removed. Numerics as timm 0.3.2: exact-erf GELU, attention ``(q @ kᵀ) * scale`` then
softmax, LayerNorm eps from ``norm_layer``.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn
from flax import nnx

from convert import official as O
from convert import _entries as E
from convert._common import DropPath, IntOr2, Mlp, init_linear_layernorm, pair, square, trunc_normal_

__all__ = [
    # PyTorch twins
    'get_2d_sincos_pos_embed', 'DropPath', 'Mlp', 'Attention', 'Block', 'PatchEmbed', 'VisionTransformer',
    'MaskedAutoencoderViT',
    # conversion sources
    'build_mae_vit', 'build_mae_vit_cls', 'vit_block_entries', 'mae_vit_entries', 'mae_vit_cls_entries',
]

# ---------------------------------------------------------------------------------------------
# 2-D sin-cos tables (MAE util/pos_embed.py)
# ---------------------------------------------------------------------------------------------


def _sincos_1d(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    """(M,) positions -> float64 (M, D): ``[sin(pos * w_k), cos(pos * w_k)]``,
    ``w_k = 10000^(-k / (D/2))``, k < D/2 (``get_1d_sincos_pos_embed_from_grid``)."""
    omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000 ** omega
    out = np.einsum('m,d->md', pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int, cls_token: bool = False) -> np.ndarray:
    """MAE's fixed 2-D sin-cos position table, float64 (the official function's output dtype).

    ``np.meshgrid(grid_w, grid_h)`` puts the column index first: for the patch at raster index
    ``i * G + j`` the first D/2 channels embed the column ``j`` and the last D/2 the row ``i``
    (the ``emb_h`` of the official code is the column half). With ``cls_token`` a zero row is
    prepended.
    Source: ``facebookresearch/mae@efb2a80 util/pos_embed.py:20-71``.

    Returns:
      float64 ``(G*G, D)`` or ``(1 + G*G, D)``.

    Raises:
      ValueError: ``embed_dim`` not a multiple of 4 (the official code asserts evenness twice).
    """
    if embed_dim % 4:
        raise ValueError(f'embed_dim must be a multiple of 4 for the 2-D sin-cos table, got {embed_dim}')
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape(2, 1, grid_size, grid_size)
    emb = np.concatenate([_sincos_1d(embed_dim // 2, grid[0]), _sincos_1d(embed_dim // 2, grid[1])], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)
    return emb


# ---------------------------------------------------------------------------------------------
# timm 0.3.2 building blocks
# ---------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """timm 0.3.2 ``Attention``: fused ``qkv`` Linear(D, 3D) (rows [q; k; v], each head-major),
    logits ``(q @ kᵀ) * scale`` with ``scale = qk_scale or head_dim ** -0.5``, softmax, ``proj``.
    Input and output (B, N, D).

    Raises:
        ValueError: ``num_heads`` does not divide ``dim``.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qk_scale: Optional[float] = None,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if num_heads <= 0 or dim % num_heads:
            raise ValueError(f'num_heads {num_heads} must divide dim {dim}')
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    """timm 0.3.2 ``Block``: ``x + drop_path(attn(norm1(x)))``, ``x + drop_path(mlp(norm2(x)))``.
    Children (state_dict order): norm1, attn, drop_path, norm2, mlp. (B, N, D) -> (B, N, D)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 qk_scale: Optional[float] = None, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0, act_layer=nn.GELU, norm_layer=nn.LayerNorm):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale,
                              attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """timm 0.3.2 ``PatchEmbed``: Conv2d(in_chans, embed_dim, k = s = patch); (B, C, H, W) ->
    (B, L, D), L = (H/p)(W/p) in raster order (``proj(x).flatten(2).transpose(1, 2)``).

    Raises:
        ValueError: (forward) an image size other than ``img_size`` (an assert upstream).
    """

    def __init__(self, img_size: IntOr2 = 224, patch_size: IntOr2 = 16, in_chans: int = 3, embed_dim: int = 768):
        super().__init__()
        self.img_size = pair(img_size, 'img_size')
        self.patch_size = pair(patch_size, 'patch_size')
        self.num_patches = (self.img_size[1] // self.patch_size[1]) * (self.img_size[0] // self.patch_size[0])
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) != self.img_size:
            raise ValueError(f"Input image size {tuple(x.shape[2:])} doesn't match model {self.img_size}")
        return self.proj(x).flatten(2).transpose(1, 2)


# ---------------------------------------------------------------------------------------------
# models_vit.VisionTransformer (timm 0.3.2 + global_pool)
# ---------------------------------------------------------------------------------------------


class VisionTransformer(nn.Module):
    """MAE's fine-tuning ViT: ``models_vit.VisionTransformer(global_pool=False, **timm_kwargs)``.

    Arguments are timm 0.3.2 ``VisionTransformer.__init__``'s, same defaults (``img_size=224,
    patch_size=16, in_chans=3, num_classes=1000, embed_dim=768, depth=12, num_heads=12,
    mlp_ratio=4., qkv_bias=False, qk_scale=None, drop_rate=0., attn_drop_rate=0.,
    drop_path_rate=0., hybrid_backbone=None, norm_layer=nn.LayerNorm``), plus ``global_pool``.
    The MAE factories (``vit_base_patch16`` ...) pass ``qkv_bias=True`` and
    ``norm_layer=partial(nn.LayerNorm, eps=1e-6)``.

    Children in registration order: ``patch_embed``, ``pos_drop``, ``blocks``, ``norm`` (deleted
    when ``global_pool``), ``head`` (``nn.Identity`` for ``num_classes == 0``), then ``fc_norm``
    (``global_pool`` only); own parameters ``cls_token`` (1, 1, D) and ``pos_embed`` (1, 1 + L, D).
    Init: timm ``trunc_normal_(.02)`` for ``pos_embed``, ``cls_token`` and every Linear weight,
    Linear biases 0, LayerNorm 1/0, patch conv PyTorch default.

    ``forward(x)``: NCHW images -> logits (B, num_classes) (features (B, D) without a head);
    ``forward_features`` pools the patch tokens then ``fc_norm`` (``global_pool``) or takes the
    ``norm``-ed class token.

    Raises:
        ValueError: ``hybrid_backbone`` (not supported by the twin) or bad sizes.
    """

    def __init__(self, global_pool: bool = False, img_size: IntOr2 = 224, patch_size: IntOr2 = 16,
                 in_chans: int = 3, num_classes: int = 1000, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 qk_scale: Optional[float] = None, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, hybrid_backbone=None, norm_layer=nn.LayerNorm):
        super().__init__()
        if hybrid_backbone is not None:
            raise ValueError('hybrid_backbone is not supported by the twin (MAE never uses it)')
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                      embed_dim=embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(p=drop_rate)
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth, device="cpu")]
        self.blocks = nn.ModuleList([
            Block(dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale,
                  drop=drop_rate, attn_drop=attn_drop_rate, drop_path=dpr[i], norm_layer=norm_layer)
            for i in range(depth)])
        self.norm = norm_layer(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_linear_layernorm)   # timm _init_weights: Linear trunc_normal(.02) / 0, LayerNorm 1 / 0

        self.global_pool = global_pool
        if global_pool:
            self.fc_norm = norm_layer(embed_dim)
            del self.norm

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> pooled features (B, D) (``models_vit.py:32-52``)."""
        B = x.shape[0]
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1)
        x = self.pos_drop(x + self.pos_embed)
        for blk in self.blocks:
            x = blk(x)
        if self.global_pool:
            return self.fc_norm(x[:, 1:, :].mean(dim=1))
        return self.norm(x)[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, num_classes) logits (or (B, D) features when num_classes == 0)."""
        return self.head(self.forward_features(x))


# ---------------------------------------------------------------------------------------------
# models_mae.MaskedAutoencoderViT
# ---------------------------------------------------------------------------------------------


class MaskedAutoencoderViT(nn.Module):
    """MAE pre-training model, ``models_mae.MaskedAutoencoderViT`` with the official arguments and
    defaults (``img_size=224, patch_size=16, in_chans=3, embed_dim=1024, depth=24, num_heads=16,
    decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, mlp_ratio=4.,
    norm_layer=nn.LayerNorm, norm_pix_loss=False``); the factories pass
    ``norm_layer=partial(nn.LayerNorm, eps=1e-6)``.

    State (official order): own parameters ``cls_token``, ``pos_embed`` (fixed sin-cos,
    ``requires_grad=False``), ``mask_token``, ``decoder_pos_embed`` (fixed), then children
    ``patch_embed``, ``blocks``, ``norm``, ``decoder_embed``, ``decoder_blocks``, ``decoder_norm``,
    ``decoder_pred``. Init as ``initialize_weights``: sin-cos tables, patch conv xavier-uniform on
    its (D, C*p*p) view (bias PyTorch default), tokens N(0, .02), Linear xavier-uniform / 0,
    LayerNorm 1/0.

    ``forward(imgs, mask_ratio=0.75, *, noise=None, train=False) -> dict``: ``imgs`` (B, C, H, W);
    ``noise`` (B, L) float decides the masking (``argsort``: the ``int(L * (1 - mask_ratio))``
    smallest are kept), drawn with ``torch.rand`` when None as the official code does. Returns
    ``{'loss': scalar, 'pred': (B, L, p*p*C), 'mask': (B, L) float (1 = removed)}`` (the official
    tuple ``(loss, pred, mask)`` as a dict). ``train`` is accepted for symmetry with jaxmim and has
    no numerical effect (MAE blocks have no dropout or drop path). ``patchify`` generalises the
    official hard-coded 3 channels to ``in_chans`` (identical for 3).

    Raises:
        ValueError: bad sizes, non-square images, or ``noise`` of the wrong shape.
    """

    def __init__(self, img_size: IntOr2 = 224, patch_size: IntOr2 = 16, in_chans: int = 3, embed_dim: int = 1024,
                 depth: int = 24, num_heads: int = 16, decoder_embed_dim: int = 512, decoder_depth: int = 8,
                 decoder_num_heads: int = 16, mlp_ratio: float = 4.0, norm_layer=nn.LayerNorm,
                 norm_pix_loss: bool = False):
        super().__init__()
        self.in_chans = in_chans
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, qk_scale=None, norm_layer=norm_layer)
            for _ in range(depth)])
        self.norm = norm_layer(embed_dim)

        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, decoder_embed_dim),
                                              requires_grad=False)
        self.decoder_blocks = nn.ModuleList([
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, qk_scale=None,
                  norm_layer=norm_layer)
            for _ in range(decoder_depth)])
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, self.patch_embed.patch_size[0] ** 2 * in_chans, bias=True)
        self.norm_pix_loss = norm_pix_loss
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """``models_mae.py:68-89``."""
        grid = int(self.patch_embed.num_patches ** 0.5)
        self.pos_embed.data.copy_(torch.from_numpy(
            get_2d_sincos_pos_embed(self.pos_embed.shape[-1], grid, cls_token=True)).float().unsqueeze(0))
        self.decoder_pos_embed.data.copy_(torch.from_numpy(
            get_2d_sincos_pos_embed(self.decoder_pos_embed.shape[-1], grid, cls_token=True)).float().unsqueeze(0))
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(functools.partial(init_linear_layernorm, linear_weight_init=nn.init.xavier_uniform_))

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, L, p*p*C), raster patches, (p, q, c) pixel order."""
        p = self.patch_embed.patch_size[0]
        if imgs.shape[2] != imgs.shape[3] or imgs.shape[2] % p:
            raise ValueError(f'patchify needs square images divisible by {p}, got {tuple(imgs.shape)}')
        h = w = imgs.shape[2] // p
        x = imgs.reshape(imgs.shape[0], self.in_chans, h, p, w, p)
        x = torch.einsum('nchpwq->nhwpqc', x)
        return x.reshape(imgs.shape[0], h * w, p ** 2 * self.in_chans)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, p*p*C) -> (N, C, H, W), inverse of :meth:`patchify`."""
        p = self.patch_embed.patch_size[0]
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], h, w, p, p, self.in_chans)
        x = torch.einsum('nhwpqc->nchpwq', x)
        return x.reshape(x.shape[0], self.in_chans, h * p, h * p)

    def random_masking(self, x: torch.Tensor, mask_ratio: float, noise: Optional[torch.Tensor] = None):
        """Per-sample shuffle by ``argsort(noise)`` (``models_mae.py:123-148``); x (N, L, D) ->
        ``x_masked`` (N, len_keep, D), ``mask`` (N, L) (0 keep, 1 remove), ``ids_restore`` (N, L)."""
        N, L, D = x.shape
        len_keep = int(L * (1 - mask_ratio))
        if noise is None:
            noise = torch.rand(N, L, device=x.device)
        elif tuple(noise.shape) != (N, L):
            raise ValueError(f'noise must have shape {(N, L)}, got {tuple(noise.shape)}')
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        x_masked = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, D))
        mask = torch.ones([N, L], device=x.device)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, dim=1, index=ids_restore)
        return x_masked, mask, ids_restore

    def forward_encoder(self, x: torch.Tensor, mask_ratio: float, noise: Optional[torch.Tensor] = None):
        """``models_mae.py:150-170``: -> latent (N, 1 + len_keep, D), mask, ids_restore."""
        x = self.patch_embed(x)
        x = x + self.pos_embed[:, 1:, :]
        x, mask, ids_restore = self.random_masking(x, mask_ratio, noise)
        cls_token = self.cls_token + self.pos_embed[:, :1, :]
        x = torch.cat((cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """``models_mae.py:172-193``: latent -> pred (N, L, p*p*C), class token removed."""
        x = self.decoder_embed(x)
        mask_tokens = self.mask_token.repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
        x_ = torch.gather(x_, dim=1, index=ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        x = torch.cat([x[:, :1, :], x_], dim=1)
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:, :]

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``models_mae.py:195-212``: mean over removed patches of the per-patch MSE; with
        ``norm_pix_loss`` the target is normalised per patch (unbiased variance, eps 1e-6)."""
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        loss = ((pred - target) ** 2).mean(dim=-1)
        return (loss * mask).sum() / mask.sum()

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75, *, noise: Optional[torch.Tensor] = None,
                train: bool = False) -> dict:
        del train   # no stochastic layer in MAE pre-training
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        return {'loss': self.forward_loss(imgs, pred, mask), 'pred': pred, 'mask': mask}


# ================================================================================================
# Conversion sources: jaxmim ViT / MAE <-> official state_dict
# ================================================================================================


def build_mae_vit(*, rngs: nnx.Rngs, img_size: IntOr2 = 224, patch_size: IntOr2 = 16, in_chans: int = 3,
                  embed_dim: int = 1024, depth: int = 24, num_heads: int = 16, decoder_embed_dim: int = 512,
                  decoder_depth: int = 8, decoder_num_heads: int = 16, mlp_ratio: float = 4.0,
                  norm_layer: Any = None, norm_pix_loss: bool = False, mask_ratio: float = 0.75) -> nnx.Module:
    """Source ``'mae_vit'``: ``MaskedAutoencoderViT(...)`` of ``facebookresearch/mae@efb2a80
    models_mae.py``, as :class:`jaxmim.methods.mae.MaskedAutoencoderViT`.

    Arguments and defaults are the official constructor's (``norm_layer=None`` stands for the
    default ``torch.nn.LayerNorm``, eps 1e-5; the factories pass
    ``functools.partial(torch.nn.LayerNorm, eps=1e-6)``); ``mask_ratio`` is the official
    ``forward``'s argument (0.75), a constructor argument in jaxmim (no effect on the state_dict).
    E.g. ``mae_vit_base_patch16_dec512d8b``: ``patch_size=16, embed_dim=768, depth=12,
    num_heads=12, decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16,
    norm_layer=partial(nn.LayerNorm, eps=1e-6)``.

    Raises:
      ValueError: another norm layer, non-square sizes, widths not multiples of 4 (sin-cos
        tables), or sizes the model rejects.
    """
    from jaxmim.methods.mae import MaskedAutoencoderViT as JaxMAE
    for name, dim in (('embed_dim', embed_dim), ('decoder_embed_dim', decoder_embed_dim)):
        if int(dim) % 4:
            raise ValueError(f'{name} must be a multiple of 4 (2-D sin-cos table), got {dim}')
    return JaxMAE(img_size=square(img_size, 'img_size', 'ViT'), patch_size=square(patch_size, 'patch_size', 'ViT'),
                  in_chans=int(in_chans), embed_dim=int(embed_dim), depth=int(depth), num_heads=int(num_heads),
                  decoder_embed_dim=int(decoder_embed_dim), decoder_depth=int(decoder_depth),
                  decoder_num_heads=int(decoder_num_heads), mlp_ratio=float(mlp_ratio),
                  norm_eps=E.layer_norm_eps(norm_layer), norm_pix_loss=bool(norm_pix_loss),
                  mask_ratio=float(mask_ratio), rngs=rngs)


def build_mae_vit_cls(*, rngs: nnx.Rngs, global_pool: bool = False, img_size: IntOr2 = 224,
                      patch_size: IntOr2 = 16, in_chans: int = 3, num_classes: int = 1000, embed_dim: int = 768,
                      depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                      qk_scale: Optional[float] = None, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                      drop_path_rate: float = 0.0, hybrid_backbone: Any = None, norm_layer: Any = None
                      ) -> nnx.Module:
    """Source ``'mae_vit_cls'``: ``models_vit.VisionTransformer(global_pool, ...)`` of
    ``facebookresearch/mae@efb2a80`` (timm 0.3.2 ``VisionTransformer`` arguments and defaults;
    ``norm_layer=None`` stands for the default ``torch.nn.LayerNorm``), as
    :class:`jaxmim.models.vit.VisionTransformer`. E.g. ``vit_base_patch16`` fine-tuning:
    ``global_pool=True, patch_size=16, embed_dim=768, depth=12, num_heads=12, qkv_bias=True,
    norm_layer=partial(nn.LayerNorm, eps=1e-6), num_classes=1000, drop_path_rate=0.1``.

    The head is initialised N(0, .02) as timm's constructor does (MAE fine-tuning re-initialises
    it with std 2e-5 after loading a checkpoint; jaxmim's registry variants use 2e-5).

    Raises:
      ValueError: ``hybrid_backbone``, another norm layer, non-square sizes, or sizes the model
        rejects.
    """
    from jaxmim.models.vit import VisionTransformer as JaxViT
    if hybrid_backbone is not None:
        raise ValueError('hybrid_backbone is not supported by jaxmim (MAE never uses it)')
    return JaxViT(img_size=square(img_size, 'img_size', 'ViT'), patch_size=square(patch_size, 'patch_size', 'ViT'),
                  in_chans=int(in_chans), num_classes=int(num_classes), embed_dim=int(embed_dim), depth=int(depth),
                  num_heads=int(num_heads), mlp_ratio=float(mlp_ratio), qkv_bias=bool(qkv_bias), qk_scale=qk_scale,
                  drop_rate=float(drop_rate), attn_drop_rate=float(attn_drop_rate),
                  drop_path_rate=float(drop_path_rate), norm_eps=E.layer_norm_eps(norm_layer),
                  global_pool=bool(global_pool), head_init_std=0.02, rngs=rngs)


def vit_block_entries(blk: nnx.Module, key: str, path: tuple[Any, ...]) -> list[O.Entry]:
    """Entries of one timm 0.3.2 ``Block`` at official prefix ``key`` (e.g. ``'blocks.3.'``) and
    NNX path ``path``: ``norm1``, ``attn.qkv`` (weight (3D, D) <-> kernel (D, 3D) by a transpose;
    bias if present), ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``."""
    return (E.layer_norm_entries(key + 'norm1', path + ('norm1',))
            + E.linear_entries(key + 'attn.qkv', path + ('attn', 'qkv'), blk.attn.qkv)
            + E.linear_entries(key + 'attn.proj', path + ('attn', 'proj'), blk.attn.proj)
            + E.layer_norm_entries(key + 'norm2', path + ('norm2',))
            + E.linear_entries(key + 'mlp.fc1', path + ('mlp', 'fc1'), blk.mlp.fc1)
            + E.linear_entries(key + 'mlp.fc2', path + ('mlp', 'fc2'), blk.mlp.fc2))


def _patch_embed_entries(model: nnx.Module) -> list[O.Entry]:
    return E.conv_entries('patch_embed.proj', ('patch_embed', 'proj'), model.patch_embed.proj)


def mae_vit_entries(model: nnx.Module) -> list[O.Entry]:
    """Official state_dict entries of a jaxmim MAE (``models_mae.MaskedAutoencoderViT``), official
    order: ``cls_token``, ``pos_embed`` (Buffer), ``mask_token``, ``decoder_pos_embed`` (Buffer),
    ``patch_embed.proj``, ``blocks.*``, ``norm``, ``decoder_embed``, ``decoder_blocks.*``,
    ``decoder_norm``, ``decoder_pred``.

    Raises:
      TypeError: ``model`` is not a :class:`jaxmim.methods.mae.MaskedAutoencoderViT`.
    """
    from jaxmim.methods.mae import MaskedAutoencoderViT as JaxMAE
    if not isinstance(model, JaxMAE):
        raise TypeError(f'source mae_vit expects a jaxmim MaskedAutoencoderViT, got {type(model).__name__}')
    out: list[O.Entry] = [O.VariableEntry(k, (k,)) for k in ('cls_token', 'pos_embed', 'mask_token',
                                                              'decoder_pos_embed')]
    out += _patch_embed_entries(model)
    for i, blk in enumerate(model.blocks):
        out += vit_block_entries(blk, f'blocks.{i}.', ('blocks', i))
    out += E.layer_norm_entries('norm', ('norm',))
    out += E.linear_entries('decoder_embed', ('decoder_embed',), model.decoder_embed)
    for i, blk in enumerate(model.decoder_blocks):
        out += vit_block_entries(blk, f'decoder_blocks.{i}.', ('decoder_blocks', i))
    out += E.layer_norm_entries('decoder_norm', ('decoder_norm',))
    out += E.linear_entries('decoder_pred', ('decoder_pred',), model.decoder_pred)
    return out


def mae_vit_cls_entries(model: nnx.Module) -> list[O.Entry]:
    """Official state_dict entries of a jaxmim ViT classifier (``models_vit.VisionTransformer``),
    official order: ``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.*``, ``norm``
    (without global pooling), ``head`` (``num_classes > 0``), ``fc_norm`` (global pooling; it is
    registered after ``head`` in ``models_vit``).

    Raises:
      TypeError: ``model`` is not a :class:`jaxmim.models.vit.VisionTransformer`.
    """
    from jaxmim.models.vit import VisionTransformer as JaxViT
    if not isinstance(model, JaxViT):
        raise TypeError(f'source mae_vit_cls expects a jaxmim VisionTransformer, got {type(model).__name__}')
    out: list[O.Entry] = [O.VariableEntry('cls_token', ('cls_token',)), O.VariableEntry('pos_embed', ('pos_embed',))]
    out += _patch_embed_entries(model)
    for i, blk in enumerate(model.blocks):
        out += vit_block_entries(blk, f'blocks.{i}.', ('blocks', i))
    if model.norm is not None:
        out += E.layer_norm_entries('norm', ('norm',))
    if model.head is not None:
        out += E.linear_entries('head', ('head',), model.head)
    if model.fc_norm is not None:
        out += E.layer_norm_entries('fc_norm', ('fc_norm',))
    return out


def _mae_vit_twin(model: nnx.Module) -> nn.Module:
    """The twin of a jaxmim MAE model, configured from its attributes and variable shapes."""
    import functools
    blk, dblk = model.blocks[0], model.decoder_blocks[0]
    return MaskedAutoencoderViT(
        img_size=model.img_size, patch_size=model.patch_size, in_chans=model.in_chans,
        embed_dim=model.embed_dim, depth=model.depth, num_heads=blk.attn.num_heads,
        decoder_embed_dim=model.decoder_embed_dim, decoder_depth=len(model.decoder_blocks),
        decoder_num_heads=dblk.attn.num_heads, mlp_ratio=blk.mlp.fc1.kernel.shape[1] / model.embed_dim,
        norm_layer=functools.partial(nn.LayerNorm, eps=model.norm.epsilon), norm_pix_loss=model.norm_pix_loss)


class MAETwinCall(nn.Module):
    """Adapts the MAE twin to the jaxmim call convention ``twin(images, noise=...)`` with the
    jaxmim model's ``mask_ratio``."""

    def __init__(self, mae: nn.Module, mask_ratio: float):
        super().__init__()
        self.mae, self.mask_ratio = mae, mask_ratio

    def forward(self, images: torch.Tensor, noise: torch.Tensor) -> dict:
        return self.mae(images, self.mask_ratio, noise=noise)

    def state_dict(self, *args, **kwargs):
        """The wrapped twin's ``state_dict``: the official keys, without the adapter's ``mae.`` prefix."""
        return self.mae.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, **kwargs):
        """Loads official-key ``state_dict`` into the wrapped twin (no ``mae.`` prefix)."""
        return self.mae.load_state_dict(state_dict, strict=strict, **kwargs)


def _mae_vit_call_twin(model: nnx.Module) -> nn.Module:
    return MAETwinCall(_mae_vit_twin(model), model.mask_ratio)


def _mae_vit_cls_twin(model: nnx.Module) -> nn.Module:
    import functools
    blk = model.blocks[0]
    head_dim = model.embed_dim // model.num_heads
    return VisionTransformer(
        global_pool=model.global_pool, img_size=model.img_size, patch_size=model.patch_size,
        in_chans=model.in_chans, num_classes=model.num_classes, embed_dim=model.embed_dim, depth=model.depth,
        num_heads=model.num_heads, mlp_ratio=blk.mlp.fc1.kernel.shape[1] / model.embed_dim,
        qkv_bias=blk.attn.qkv.bias is not None,
        qk_scale=None if blk.attn.scale == head_dim ** -0.5 else blk.attn.scale, drop_rate=model.drop_rate,
        attn_drop_rate=blk.attn.attn_drop, drop_path_rate=float(model.blocks[-1].drop_path),
        norm_layer=functools.partial(nn.LayerNorm, eps=(model.fc_norm or model.norm).epsilon))


O.register_source(O.Source(
    name='mae_vit',
    reference='facebookresearch/mae@efb2a80 models_mae.py MaskedAutoencoderViT',
    build_fn=build_mae_vit,
    entries_fn=mae_vit_entries,
    method='mae',
    twin_fn=_mae_vit_call_twin))

O.register_source(O.Source(
    name='mae_vit_cls',
    reference='facebookresearch/mae@efb2a80 models_vit.py VisionTransformer (timm 0.3.2)',
    build_fn=build_mae_vit_cls,
    entries_fn=mae_vit_cls_entries,
    twin_fn=_mae_vit_cls_twin))
