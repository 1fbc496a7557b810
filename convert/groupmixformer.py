"""AILab-CVC/GroupMixFormer family: PyTorch twin, key table and the conversion source.

Two halves, one file:

* **PyTorch twin** (``torch`` and ``einops``-free, no timm): :class:`GroupMixFormer`, the classifier
  of ``AILab-CVC/GroupMixFormer@3d3f40977c6a models/groupmixformer.py`` (bare ``:L`` references
  below point into that file), built from the official constructor arguments. Module names and
  registration order follow the official code, so ``state_dict()`` keys, shapes and order equal the
  official model's (BatchNorm ``running_mean`` / ``running_var`` / ``num_batches_tracked`` included)
  and the official checkpoints' ``model`` entry loads with ``load_state_dict(strict=True)``. The
  official ``nn.SyncBatchNorm`` is an ``nn.BatchNorm2d`` here: identical state_dict, identical in
  evaluation; in training it is SyncBatchNorm on one process (no process group needed).
* **Conversion source** ``'groupmixformer'`` registered with :mod:`convert.official`:
  ``GroupMixFormer(...)`` built as :class:`OfficialGroupMixFormer`, a
  :class:`jaxmim.models.groupmixformer.GroupMixFormer` whose call is the official forward at any
  multiple of 32 (:func:`build_groupmixformer`; no ``img_size`` needed), key table
  :func:`groupmixformer_entries`. BatchNorm
  ``running_mean`` / ``running_var`` <-> ``nnx.BatchStat`` ``mean`` / ``var``;
  ``num_batches_tracked`` is a :class:`convert.official.ConstantEntry` (0 on export, ignored on
  import).

Twin layouts: images NCHW float; tokens (B, N, C) raster order. Official quirks kept: the
attention scale ``(C // 8)^-0.5`` from the full stage width (:163-165); the CRPE head split 2/3/3
against the aggregator split 2/2/2/2 (:174-175); ``Agg_0``'s LayerNorm eps 1e-5 (:45) against
1e-6 in the blocks (:346).
Differences of the twin from the official code: no ``import ipdb``; invalid configurations raise
``ValueError`` at construction; the broken ``reset_classifier`` is not provided; ``norm4`` is
``BatchNorm2d(embedding_dims[-1])`` (officially ``embedding_dims[3]``, the same for 4 stages).
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Optional, Sequence

import jax
import torch
import torch.nn as nn
from flax import nnx

from convert import official as O
from convert import _entries as E
from convert._common import DropPath, Mlp, trunc_normal_
from jaxmim.models.groupmixformer import GroupMixFormer as JaxGMF

__all__ = [
    # PyTorch twin
    'SeparableConv2d', 'Agg0', 'Aggregator', 'ConvRelPosEnc', 'EfficientAtt', 'ConvPosEnc', 'ConvStem',
    'PatchEmbedLayer', 'GMABlock', 'GMAStage', 'GroupMixFormer',
    # conversion source
    'OfficialGroupMixFormer', 'build_groupmixformer', 'groupmixformer_entries', 'arch_from_state_dict',
]

_CRPE_WINDOW = ((3, 2), (5, 3), (7, 3))


class SeparableConv2d(nn.Module):
    """Depthwise ``conv1`` (k x k, groups = in, no bias) then ``pointwise_conv`` (1x1, no bias);
    padding ``k // 2`` (``:240-249``). (B, in, H, W) -> (B, out, H', W')."""

    def __init__(self, din: int, dout: int, k: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(din, din, k, stride, k // 2, groups=din, bias=False)
        self.pointwise_conv = nn.Conv2d(din, dout, 1, 1, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.conv1(x))


class Agg0(nn.Module):
    """Official ``Agg_0`` (``:41-53``): (B, 3s, H, W) -> sepconv 3x3 -> LayerNorm(s, eps 1e-5) ->
    Hardswish -> tokens (B, N, s)."""

    def __init__(self, seg_dim: int):
        super().__init__()
        self.conv = SeparableConv2d(3 * seg_dim, seg_dim, 3)
        self.norm = nn.LayerNorm(seg_dim)
        self.act = nn.Hardswish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.act(self.norm(x.flatten(2).transpose(1, 2)))


class Aggregator(nn.Module):
    """Official ``Aggregator`` (``:56-105``). Input (3B, N, C) = [q; k; v] stacked on the batch;
    returns ((3, B, heads, N, 4C/5/heads), (B, N, C/5))."""

    def __init__(self, dim: int, seg: int = 5):
        super().__init__()
        self.dim, self.seg = dim, seg
        s = dim // seg
        self.norm0 = nn.BatchNorm2d(s)
        self.act0 = nn.Hardswish()
        self.agg1 = SeparableConv2d(s, s, 3)
        self.norm1 = nn.BatchNorm2d(s)
        self.act1 = nn.Hardswish()
        self.agg2 = SeparableConv2d(s, s, 5)
        self.norm2 = nn.BatchNorm2d(s)
        self.act2 = nn.Hardswish()
        self.agg3 = SeparableConv2d(s, s, 7)
        self.norm3 = nn.BatchNorm2d(s)
        self.act3 = nn.Hardswish()
        self.agg0 = Agg0(s)

    def forward(self, x: torch.Tensor, size, num_heads: int):
        B3, N, C = x.shape
        H, W = size
        B, s = B3 // 3, self.dim // self.seg
        segs = x.transpose(1, 2).reshape(B3, C, H, W).split([s] * self.seg, dim=1)
        local = self.agg0(segs[4].reshape(3, B, s, H, W).permute(1, 0, 2, 3, 4).reshape(B, 3 * s, H, W))
        y = torch.cat([self.act0(self.norm0(segs[0])), self.act1(self.norm1(self.agg1(segs[1]))),
                       self.act2(self.norm2(self.agg2(segs[2]))), self.act3(self.norm3(self.agg3(segs[3])))], dim=1)
        Ca = C // 5 * 4
        return y.reshape(3, B, num_heads, Ca // num_heads, H * W).permute(0, 1, 2, 4, 3), local


class ConvRelPosEnc(nn.Module):
    """CoaT ``ConvRelPosEnc`` with window {3: 2, 5: 3, 7: 3} (``:108-156``): q, v (B, h, N, Ch) ->
    ``q * DWConv(v)``; ``conv_list.{0,1,2}`` depthwise with bias, padding k // 2."""

    def __init__(self, ch: int, num_heads: int):
        """Builds the three depthwise convs of width ``n * ch`` for the window's ``n`` heads each.

        Raises:
          ValueError: ``num_heads`` is not 8 (the heads of the CRPE window).
        """
        super().__init__()
        if sum(n for _, n in _CRPE_WINDOW) != num_heads:
            raise ValueError(f'num_heads must be 8 for the CRPE split, got {num_heads}')
        self.conv_list = nn.ModuleList([nn.Conv2d(n * ch, n * ch, k, 1, k // 2, groups=n * ch)
                                        for k, n in _CRPE_WINDOW])
        self.channel_splits = [n * ch for _, n in _CRPE_WINDOW]

    def forward(self, q: torch.Tensor, v: torch.Tensor, size) -> torch.Tensor:
        B, h, N, Ch = q.shape
        H, W = size
        v_img = v.permute(0, 1, 3, 2).reshape(B, h * Ch, H, W)       # 'B h (H W) Ch -> B (h Ch) H W'
        conv_v = torch.cat([conv(x) for conv, x in zip(self.conv_list, v_img.split(self.channel_splits, dim=1))],
                           dim=1)
        conv_v = conv_v.reshape(B, h, Ch, N).permute(0, 1, 3, 2)     # 'B (h Ch) H W -> B h (H W) Ch'
        return q * conv_v


class EfficientAtt(nn.Module):
    """Official ``EfficientAtt`` (Group-Mix Attention, ``:159-200``). (B, N, C) -> (B, N, C)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qk_scale: Optional[float] = None,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.aggregator = Aggregator(dim, 5)
        self.crpe = ConvRelPosEnc(dim // 5 * 4 // num_heads, num_heads)

    def forward(self, x: torch.Tensor, size) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, C).permute(2, 0, 1, 3).reshape(3 * B, N, C)
        qkv, local = self.aggregator(qkv, size, self.num_heads)
        q, k, v = qkv[0], qkv[1], qkv[2]
        kv = torch.einsum('bhnk,bhnv->bhkv', k.softmax(dim=2), v)
        att = torch.einsum('bhnk,bhkv->bhnv', q, kv)
        x = self.scale * att + self.crpe(q, v, size)
        x = torch.cat([x.transpose(1, 2).reshape(B, N, C // 5 * 4), local], dim=-1)
        return self.proj_drop(self.proj(x))


class ConvPosEnc(nn.Module):
    """Official ``ConvPosEnc`` (``:203-217``): tokens (B, N, C) -> ``x + DWConv3x3(x)``."""

    def __init__(self, dim: int, k: int = 3):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, k, 1, k // 2, groups=dim)

    def forward(self, x: torch.Tensor, size) -> torch.Tensor:
        B, N, C = x.shape
        feat = x.transpose(1, 2).reshape(B, C, *size)
        return (self.proj(feat) + feat).flatten(2).transpose(1, 2)


class ConvStem(nn.Module):
    """Official ``ConvStem`` (``:220-237``): two Conv 3x3/2 (bias) + BN + Hardswish."""

    def __init__(self, in_dim: int = 3, embedding_dims: int = 64):
        super().__init__()
        mid = embedding_dims // 2
        self.proj1 = nn.Conv2d(in_dim, mid, 3, 2, 1)
        self.norm1 = nn.BatchNorm2d(mid)
        self.act1 = nn.Hardswish()
        self.proj2 = nn.Conv2d(mid, embedding_dims, 3, 2, 1)
        self.norm2 = nn.BatchNorm2d(embedding_dims)
        self.act2 = nn.Hardswish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.norm2(self.proj2(self.act1(self.norm1(self.proj1(x))))))


class PatchEmbedLayer(nn.Module):
    """Official ``PatchEmbedLayer`` (``:252-271``): sepconv 3x3 (stride 1 first, else 2) + BN +
    Hardswish; returns tokens (B, N, C) and (H, W)."""

    def __init__(self, patch_size: int = 2, in_dim: int = 3, embedding_dims: int = 768, is_first_layer: bool = False):
        super().__init__()
        if is_first_layer:
            patch_size, in_dim = 1, embedding_dims
        self.stride = patch_size
        self.proj = SeparableConv2d(in_dim, embedding_dims, 3, patch_size)
        self.norm = nn.BatchNorm2d(embedding_dims)
        self.act = nn.Hardswish()

    def forward(self, x: torch.Tensor):
        H, W = x.shape[2] // self.stride, x.shape[3] // self.stride
        return self.act(self.norm(self.proj(x))).flatten(2).transpose(1, 2), (H, W)


class GMABlock(nn.Module):
    """Official ``GMA_Block`` (``:274-299``): CPE, then pre-norm GMA and MLP residuals."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 qk_scale: Optional[float] = None, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path_rate: float = 0.0, norm_layer=nn.LayerNorm):
        super().__init__()
        self.cpe = ConvPosEnc(dim, 3)
        self.norm1 = norm_layer(dim)
        self.att = EfficientAtt(dim, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path_rate = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor, size) -> torch.Tensor:
        x = self.cpe(x, size)
        x = x + self.drop_path_rate(self.att(self.norm1(x), size))
        return x + self.drop_path_rate(self.mlp(self.norm2(x)))


class GMAStage(nn.Module):
    """Official ``GMA_Stage``: ``gma_stage`` ModuleList of blocks."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, qk_scale: Optional[float],
                 drop: float, attn_drop: float, drop_path_rate: Sequence[float], norm_layer, serial_depth: int):
        super().__init__()
        self.gma_stage = nn.ModuleList([GMABlock(dim, num_heads, mlp_ratio, qkv_bias, qk_scale, drop, attn_drop,
                                                 drop_path_rate[i], norm_layer) for i in range(serial_depth)])

    def forward(self, x: torch.Tensor, size) -> torch.Tensor:
        for blk in self.gma_stage:
            x = blk(x, size)
        return x


class GroupMixFormer(nn.Module):
    """The official ``GroupMixFormer`` classifier (``:322-436``) with its constructor arguments and
    defaults (S: ``embedding_dims=[80, 160, 320, 320], serial_depths=[2, 4, 12, 4]``, 8 heads,
    ``qkv_bias=True``, ``norm_layer=partial(nn.LayerNorm, eps=1e-6)``). ``forward(x)``: NCHW images
    -> logits (B, num_classes): ``norm4`` BatchNorm on the last map, spatial mean, ``head``.
    Init (``_init_weights``): Linear trunc_normal(.02) / 0, LayerNorm 1 / 0, convs and BN PyTorch
    defaults.

    ``return_interm_layers=True`` (the dense-task form, ``:388-390, :428-429``): no ``norm4`` /
    ``head``; ``forward(x)`` returns the list of the stage maps (B, d_i, H_i, W_i).

    Raises:
      ValueError: ``num_stages != len(embedding_dims)`` or widths not multiples of 10.
    """

    def __init__(self, patch_size: int = 4, in_dim: int = 3, num_stages: int = 4, num_classes: int = 1000,
                 embedding_dims: Sequence[int] = (80, 160, 320, 320), serial_depths: Sequence[int] = (2, 4, 12, 4),
                 num_heads: int = 8, mlp_ratios: Sequence[float] = (4, 4, 4, 4), qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.2, norm_layer=functools.partial(nn.LayerNorm, eps=1e-6),
                 return_interm_layers: bool = False, out_features=None, pretrained: bool = False):
        super().__init__()
        del patch_size, out_features, pretrained           # unused officially ("seem useless")
        self.return_interm_layers = return_interm_layers
        if not len(embedding_dims) == len(serial_depths) == len(mlp_ratios) == num_stages:
            raise ValueError('embedding_dims, serial_depths and mlp_ratios must have num_stages entries')
        if any(d % 10 for d in embedding_dims):
            raise ValueError(f'embedding_dims must be multiples of 10, got {list(embedding_dims)}')
        self.num_stages, self.num_classes = num_stages, num_classes
        self.conv_stem = ConvStem(in_dim, embedding_dims[0])
        self.patch_embed_layers = nn.ModuleList([
            PatchEmbedLayer(2, embedding_dims[i - 1], embedding_dims[i], is_first_layer=i == 0)
            for i in range(num_stages)])
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, sum(serial_depths), device="cpu")]
        starts = [sum(serial_depths[:i]) for i in range(num_stages + 1)]
        self.groupmixformer_backbone = nn.ModuleList([
            GMAStage(embedding_dims[i], num_heads, mlp_ratios[i], qkv_bias, qk_scale, drop_rate, attn_drop_rate,
                     dpr[starts[i]:starts[i + 1]], norm_layer, serial_depths[i]) for i in range(num_stages)])
        if not return_interm_layers:
            self.norm4 = nn.BatchNorm2d(embedding_dims[-1])
            self.head = nn.Linear(embedding_dims[-1], num_classes)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    def forward_features(self, x: torch.Tensor) -> list:
        """NCHW images -> the list of stage maps (B, d_i, H_i, W_i)."""
        b = x.shape[0]
        x = self.conv_stem(x)
        out = []
        for embed, stage in zip(self.patch_embed_layers, self.groupmixformer_backbone):
            tokens, (H, W) = embed(x)
            x = stage(tokens, (H, W)).reshape(b, H, W, -1).permute(0, 3, 1, 2)
            out.append(x)
        return out

    def forward(self, x: torch.Tensor):
        """NCHW images -> logits (B, num_classes), or the stage maps with ``return_interm_layers``."""
        if self.return_interm_layers:
            return self.forward_features(x)
        return self.head(self.norm4(self.forward_features(x)[-1]).mean(dim=(2, 3)))


# ================================================================================================
# Conversion source: jaxmim GroupMixFormer <-> official state_dict
# ================================================================================================


class OfficialGroupMixFormer(JaxGMF):
    """The official ``GroupMixFormer`` as the source ``'groupmixformer'`` builds it: a
    :class:`jaxmim.models.groupmixformer.GroupMixFormer` (same variables, so the same official
    keys) whose call is the official ``forward`` (``models/groupmixformer.py:427-436``) at any
    input size the official code takes, a multiple of the total stride ``4 * 2^(S-1)`` (32 for 4
    stages) in each of height and width (square or not; the model has no size-bound table).

    Args:
      return_interm_layers: official argument; True builds no ``norm4`` / ``head`` and the call
        returns the stage maps (the dense-task form, ``:388-390``, ``:428-429``).
      **kwargs: :class:`jaxmim.models.groupmixformer.GroupMixFormer` arguments; its ``img_size``
        is only the nominal size (the inherited ``forward_features`` still checks it).

    Call: ``model(images, *, train=False, rng=None)`` with images ``(B, H, W, in_chans)`` float
    NHWC -> logits ``(B, num_classes)`` (``norm4`` BatchNorm, spatial mean, ``head``), or with
    ``return_interm_layers`` the list of the S stage maps ``(B, H/2^(i+2), W/2^(i+2), d_i)``
    (official NCHW maps in jaxmim's channels-last layout). ``train=True`` uses and updates batch
    statistics.

    Raises:
      ValueError: (call) images not 4-D, with another channel count, or a side that is not a
        multiple of the total stride.
    """

    def __init__(self, *, return_interm_layers: bool = False, **kwargs: Any):
        if return_interm_layers:
            kwargs['num_classes'] = 0
        super().__init__(**kwargs)
        self.return_interm_layers = bool(return_interm_layers)
        if self.return_interm_layers:
            self.norm4 = None                  # the official model builds neither (:388-390)

    @property
    def stride(self) -> int:
        """Total stride of the last stage map: ``4 * 2^(S-1)``."""
        return 4 * 2 ** (self.num_stages - 1)

    def __call__(self, x: jax.Array, *, train: bool = False, rng: jax.Array | None = None):
        s = self.stride
        if x.ndim != 4 or x.shape[3] != self.in_chans or x.shape[1] % s or x.shape[2] % s or not x.shape[1]:
            raise ValueError(f'images must be (B, H, W, {self.in_chans}) NHWC with H and W multiples of {s} '
                             f'(the stem and {self.num_stages - 1} stride-2 embeddings), got shape {x.shape}')
        maps = self.forward_stages(self.conv_stem(x, train=train), train=train, rng=rng, return_all=True)
        if self.return_interm_layers:
            return maps
        y = self.norm4(maps[-1], use_running_average=not train).mean(axis=(1, 2))
        return self.head(y)


def build_groupmixformer(*, rngs: nnx.Rngs, patch_size: int = 4, in_dim: int = 3, num_stages: int = 4,
                         num_classes: int = 1000, embedding_dims: Sequence[int] = (80, 160, 320, 320),
                         serial_depths: Sequence[int] = (2, 4, 12, 4), num_heads: int = 8,
                         mlp_ratios: Sequence[float] = (4, 4, 4, 4), qkv_bias: bool = True,
                         qk_scale: Optional[float] = None, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                         drop_path_rate: float = 0.2, norm_layer: Any = None, return_interm_layers: bool = False,
                         out_features: Any = None, pretrained: bool = False, img_size: int = 224) -> nnx.Module:
    """Source ``'groupmixformer'``: ``GroupMixFormer(...)`` of ``AILab-CVC/GroupMixFormer@3d3f40977c6a
    models/groupmixformer.py``, as :class:`OfficialGroupMixFormer` (a
    :class:`jaxmim.models.groupmixformer.GroupMixFormer` whose call is the official forward at any
    input size that is a multiple of 32).

    Arguments and defaults are the official constructor's (``norm_layer=None`` stands for the
    official default ``partial(nn.LayerNorm, eps=1e-6)``); ``return_interm_layers=True`` gives the
    dense-task backbone (no ``norm4`` / ``head``; the call returns the stage maps). ``img_size``
    is not an official argument and not needed: it only sets the jaxmim model's nominal size
    (default 224, the official training and evaluation size; used by the inherited
    ``forward_features`` and by jaxmim's shape reports), the call takes any multiple of 32.
    E.g. the official ``miny`` yaml: ``embedding_dims=[40, 80, 160, 160], serial_depths=[3, 3, 12,
    4], mlp_ratios=[4, 4, 4, 4]``.

    Raises:
      ValueError: ``num_classes < 1``, ``num_stages`` not matching the lists, a classifier with
        fewer than 4 stages or ``embedding_dims[3] != embedding_dims[-1]`` (the official ``norm4``
        is ``SyncBatchNorm(embedding_dims[3])``, ``:389``), another norm layer, or sizes the model
        rejects.
    """
    del patch_size, out_features, pretrained, attn_drop_rate     # unused by the official model
    if not return_interm_layers and int(num_classes) < 1:
        raise ValueError(f'num_classes must be >= 1 (the official head is always a Linear), got {num_classes}')
    if not len(embedding_dims) == len(serial_depths) == len(mlp_ratios) == int(num_stages):
        raise ValueError(f'num_stages={num_stages} but embedding_dims {list(embedding_dims)}, serial_depths '
                         f'{list(serial_depths)}, mlp_ratios {list(mlp_ratios)}')
    if not return_interm_layers and (len(embedding_dims) < 4 or embedding_dims[3] != embedding_dims[-1]):
        raise ValueError(f'embedding_dims {list(embedding_dims)}: the official classifier normalises the last map '
                         'with SyncBatchNorm(embedding_dims[3]), so it needs at least 4 stages and '
                         'embedding_dims[3] == embedding_dims[-1] (or return_interm_layers=True)')
    return OfficialGroupMixFormer(
        return_interm_layers=bool(return_interm_layers), img_size=int(img_size), in_chans=int(in_dim),
        num_classes=int(num_classes), embed_dims=tuple(int(d) for d in embedding_dims),
        depths=tuple(int(d) for d in serial_depths), num_heads=int(num_heads),
        mlp_ratios=tuple(float(r) for r in mlp_ratios), qkv_bias=bool(qkv_bias), qk_scale=qk_scale,
        drop_rate=float(drop_rate), drop_path_rate=float(drop_path_rate),
        norm_eps=E.layer_norm_eps(norm_layer, default=1e-6), rngs=rngs)


def _sep_entries(key: str, path: tuple, sep: nnx.Module) -> list:
    return (E.conv_entries(key + '.conv1', path + ('conv1',), sep.conv1)
            + E.conv_entries(key + '.pointwise_conv', path + ('pointwise_conv',), sep.pointwise_conv))


def _bn(key: str, path: tuple, module: nnx.Module) -> list:
    return E.batch_norm_entries(key, path, module)


def _block_entries(blk: nnx.Module, key: str, path: tuple) -> list:
    """Entries of one ``GMA_Block`` at official prefix ``key`` (``'...gma_stage.j.'``)."""
    att, agg = blk.att, blk.att.aggregator
    a, g = path + ('att',), path + ('att', 'aggregator')
    out = E.conv_entries(key + 'cpe.proj', path + ('cpe', 'proj'), blk.cpe.proj)
    out += E.layer_norm_entries(key + 'norm1', path + ('norm1',))
    out += E.linear_entries(key + 'att.qkv', a + ('qkv',), att.qkv)
    out += E.linear_entries(key + 'att.proj', a + ('proj',), att.proj)
    ka = key + 'att.aggregator.'
    out += _bn(ka + 'norm0', g + ('norm0',), agg.norm0)
    for i in (1, 2, 3):
        out += _sep_entries(ka + f'agg{i}', g + (f'agg{i}',), getattr(agg, f'agg{i}'))
        out += _bn(ka + f'norm{i}', g + (f'norm{i}',), getattr(agg, f'norm{i}'))
    out += _sep_entries(ka + 'agg0.conv', g + ('agg0', 'conv'), agg.agg0.conv)
    out += E.layer_norm_entries(ka + 'agg0.norm', g + ('agg0', 'norm'))
    for i, conv in enumerate(att.crpe.conv_list):
        out += E.conv_entries(key + f'att.crpe.conv_list.{i}', a + ('crpe', 'conv_list', i), conv)
    out += E.layer_norm_entries(key + 'norm2', path + ('norm2',))
    out += E.linear_entries(key + 'mlp.fc1', path + ('mlp', 'fc1'), blk.mlp.fc1)
    out += E.linear_entries(key + 'mlp.fc2', path + ('mlp', 'fc2'), blk.mlp.fc2)
    return out


def groupmixformer_entries(model: nnx.Module) -> list:
    """Official state_dict entries of a jaxmim GroupMixFormer classifier, in official order (module
    registration order of the official classes; 1149 keys for S): ``conv_stem.{proj1, norm1, proj2,
    norm2}``, ``patch_embed_layers.i.{proj.conv1, proj.pointwise_conv, norm}``,
    ``groupmixformer_backbone.i.gma_stage.j.{cpe.proj, norm1, att.qkv, att.proj,
    att.aggregator.{norm0, agg1, norm1, agg2, norm2, agg3, norm3, agg0.conv, agg0.norm},
    att.crpe.conv_list.{0,1,2}, norm2, mlp.fc1, mlp.fc2}``, ``norm4``, ``head``. Each BatchNorm is
    ``weight, bias, running_mean, running_var, num_batches_tracked``.

    A model built with ``return_interm_layers=True`` (no ``norm4``, no head) has the official
    dense-task keys: the same without ``norm4.*`` and ``head.*``.

    Raises:
      TypeError: ``model`` is not a jaxmim GroupMixFormer classifier with a head (or the dense-task
        form without ``norm4`` and head).
    """
    from jaxmim.models.groupmixformer import GroupMixFormerForSimMIM
    backbone = getattr(model, 'norm4', None) is None and getattr(model, 'head', None) is None
    if (not isinstance(model, JaxGMF) or isinstance(model, GroupMixFormerForSimMIM)
            or (model.head is None and not backbone)):
        raise TypeError(f'source groupmixformer expects a jaxmim GroupMixFormer classifier with a head (or one '
                        f'built with return_interm_layers=True), got {type(model).__name__}')
    stem = model.conv_stem
    out = E.conv_entries('conv_stem.proj1', ('conv_stem', 'proj1'), stem.proj1)
    out += _bn('conv_stem.norm1', ('conv_stem', 'norm1'), stem.norm1)
    out += E.conv_entries('conv_stem.proj2', ('conv_stem', 'proj2'), stem.proj2)
    out += _bn('conv_stem.norm2', ('conv_stem', 'norm2'), stem.norm2)
    for i, pe in enumerate(model.patch_embed_layers):
        out += _sep_entries(f'patch_embed_layers.{i}.proj', ('patch_embed_layers', i, 'proj'), pe.proj)
        out += _bn(f'patch_embed_layers.{i}.norm', ('patch_embed_layers', i, 'norm'), pe.norm)
    for i, stage in enumerate(model.groupmixformer_backbone):
        for j, blk in enumerate(stage.gma_stage):
            out += _block_entries(blk, f'groupmixformer_backbone.{i}.gma_stage.{j}.',
                                  ('groupmixformer_backbone', i, 'gma_stage', j))
    if not backbone:
        out += _bn('norm4', ('norm4',), model.norm4)
        out += E.linear_entries('head', ('head',), model.head)
    return out


def arch_from_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The official constructor arguments that a GroupMixFormer ``state_dict`` was saved from,
    read from its keys and shapes: ``embedding_dims`` (``patch_embed_layers.i.norm.weight``),
    ``serial_depths`` (the ``gma_stage.j`` indices), ``mlp_ratios`` (``mlp.fc1`` rows / width),
    ``num_classes`` (``head.weight``), ``qkv_bias``, ``num_stages``.

    The released L checkpoint is the ground truth for L (the official
    ``configs/groupmixformer_large.yaml``, marked "# need to adjust", gives 71.83 M parameters, the
    README 70.3 M): build with these arguments, then load strictly::

        sd = official.unwrap_state_dict(torch.load(path))
        model = official.build('groupmixformer', **arch_from_state_dict(sd))
        official.load_state_dict(model, 'groupmixformer', sd)

    Raises:
      ValueError: keys that are not a GroupMixFormer classifier's (names the first missing one).
    """
    def shape(key):
        if key not in state_dict:
            raise ValueError(f'not a GroupMixFormer classifier state_dict: no {key!r}')
        return tuple(state_dict[key].shape)       # torch.Tensor or np.ndarray

    stages = sorted({int(k.split('.')[1]) for k in state_dict if k.startswith('patch_embed_layers.')})
    if not stages:
        raise ValueError("not a GroupMixFormer classifier state_dict: no 'patch_embed_layers.*' keys")
    dims, depths, ratios = [], [], []
    for i in stages:
        d = shape(f'patch_embed_layers.{i}.norm.weight')[0]
        prefix = f'groupmixformer_backbone.{i}.gma_stage.'
        blocks = {int(k[len(prefix):].split('.')[0]) for k in state_dict if k.startswith(prefix)}
        hidden = shape(f'{prefix}0.mlp.fc1.weight')[0]
        dims.append(d)
        depths.append(max(blocks) + 1)
        ratios.append(hidden / d if hidden % d else hidden // d)
    return {'num_stages': len(stages), 'embedding_dims': dims, 'serial_depths': depths, 'mlp_ratios': ratios,
            'num_classes': shape('head.weight')[0],
            'qkv_bias': 'groupmixformer_backbone.0.gma_stage.0.att.qkv.bias' in state_dict}


O.register_source(O.Source(
    name='groupmixformer',
    reference='AILab-CVC/GroupMixFormer@3d3f40977c6a models/groupmixformer.py GroupMixFormer',
    build_fn=build_groupmixformer,
    entries_fn=groupmixformer_entries))
