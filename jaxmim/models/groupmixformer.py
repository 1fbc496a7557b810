"""GroupMixFormer (Ge et al., 2023, arXiv 2311.15157) in Flax NNX, at parity with the official code.

Follows ``AILab-CVC/GroupMixFormer@3d3f40977c6a models/groupmixformer.py`` (unqualified ``:L``
line references below point into that file). Attribute
names mirror the official PyTorch names (``conv_stem.proj1``, ``patch_embed_layers.{i}.proj.conv1``,
``groupmixformer_backbone.{i}.gma_stage.{j}.att.aggregator.agg1.pointwise_conv``, ``norm4``,
``head`` ...), so the official state_dict maps onto the NNX state by name (``convert/groupmixformer.py``).

Layout: images ``(B, H, W, C)`` float (NHWC); tokens are kept as ``(B, h, w, C)`` maps between
blocks (the official code flattens them to ``(B, h*w, C)`` in raster order, which is the same
memory order). Details that matter (all in the official file):

* Group-Mix Attention (:class:`EfficientAtt`): q, k, v are stacked on the batch axis
  ``[all q; all k; all v]`` before the aggregators, so the aggregator convolutions and their
  BatchNorm statistics are shared by q, k and v, exactly as the official ``(3B, N, C)`` reshape
  does; attention is CoaT's factorised ``q (softmax_N(k)^T v)`` scaled by ``(C // 8)^-0.5`` with
  the **full** stage width C, plus the convolutional relative position term ``q * DWConv(v)``
  (``EfficientAtt`` :159-200, scale :163-165, ``Aggregator`` :56-105).
* LayerNorm eps 1e-6 in the blocks (:346), 1e-5 in the non-attention branch (``Agg_0``, :45);
  exact GELU; Hardswish in the stem, patch embeddings and aggregators.
* Every convolution pads symmetrically by ``k // 2`` (never ``'SAME'``, which pads stride-2
  convolutions of even inputs by (0, 1) and shifts the output).
* BatchNorm (the official ``SyncBatchNorm``): eps 1e-5, Flax momentum 0.9 (PyTorch 0.1); batch
  statistics in training (``train=True``, running statistics updated), running statistics in
  evaluation (frozen). The statistics are plain means over the batch, height and width axes of the
  traced array: under ``jax.jit`` with the batch axis sharded over devices XLA reduces them over
  the **global** batch, which is SyncBatchNorm. The running variance is updated with the unbiased
  batch variance (``n / (n - 1)`` times the biased one that normalises), as PyTorch does
  (:class:`BatchNorm`).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmim import layers as L
from jaxmim import sharding
from jaxmim.registry import Backbone, check_feature_images, check_out_indices, register_model

__all__ = ['SeparableConv2d', 'BatchNorm', 'batch_norm', 'Aggregator', 'Agg0', 'ConvRelPosEnc', 'EfficientAtt',
           'ConvPosEnc', 'ConvStem', 'PatchEmbedLayer', 'GMABlock', 'GMAStage', 'GroupMixFormer',
           'GroupMixFormerForSimMIM', 'CRPE_WINDOW']

CRPE_WINDOW = ((3, 2), (5, 3), (7, 3))
"""(kernel size, heads) of the convolutional relative position encoding (``:174-175``): heads 0-1
use 3x3, heads 2-4 5x5, heads 5-7 7x7 depthwise kernels."""


def _pad(k: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The official symmetric padding ``k // 2`` on both sides of H and W."""
    return ((k // 2, k // 2), (k // 2, k // 2))


def _conv(din: int, dout: int, k: int, rngs: nnx.Rngs, *, stride: int = 1, groups: int = 1,
          use_bias: bool = True) -> nnx.Conv:
    """``nn.Conv2d(din, dout, k, stride, padding=k // 2, groups=groups, bias=use_bias)`` with
    PyTorch's default init (kaiming-uniform a=sqrt(5) and bias U(+-1/sqrt(fan_in)), fan_in =
    din / groups * k * k). Kernel laid out ``(k, k, din / groups, dout)``, logical axes
    ``(None, None, conv_in, conv_out)`` (``conv_in`` dropped for grouped / depthwise kernels)."""
    fan_in = din // groups * k * k
    kernel_axes = sharding.axes(None, None, 'conv_in' if groups == 1 else None, 'conv_out')
    return nnx.Conv(din, dout, (k, k), strides=stride, padding=_pad(k), feature_group_count=groups,
                    use_bias=use_bias, kernel_init=L.torch_default_kernel_init,
                    bias_init=L.torch_default_bias_init(fan_in), rngs=rngs,
                    kernel_metadata=kernel_axes, bias_metadata=sharding.axes('bias'))


class BatchNorm(nnx.BatchNorm):
    """``nnx.BatchNorm`` as PyTorch's: output in the input's dtype, running variance unbiased.

    Under mixed precision (``config.compute_dtype='bfloat16'``) the float32 running statistics and
    affine parameters would promote bf16 activations to float32, so every layer after the first
    BatchNorm would compute in float32; the statistics are still computed in float32 and the
    result is cast back. float32 inputs are unchanged. In training the running variance takes the
    unbiased batch variance, ``var * n / (n - 1)`` with ``n`` the values per channel of the traced
    (global) batch, as ``torch.nn.BatchNorm2d`` / ``SyncBatchNorm`` do; Flax takes the biased one.
    """

    def __call__(self, x: jax.Array, use_running_average: bool | None = None, **kwargs: Any) -> jax.Array:
        """``nnx.BatchNorm.__call__`` on channels-last ``x`` ``(..., C)``, returned in ``x.dtype``."""
        training = not (self.use_running_average if use_running_average is None else use_running_average)
        old = self.var[...] if training else None
        y = super().__call__(x, use_running_average, **kwargs)
        n = math.prod(x.shape[:-1])
        if training and n > 1:   # new = m old + (1 - m) v  ->  m old + (1 - m) v n / (n - 1)
            new = self.var[...]
            self.var[...] = new + (new - self.momentum * old) / (n - 1)
        return y.astype(x.dtype)


def batch_norm(dim: int, rngs: nnx.Rngs) -> BatchNorm:
    """``nn.SyncBatchNorm(dim)``: eps 1e-5, PyTorch momentum 0.1 (Flax 0.9), affine 1/0, running
    mean 0 / var 1; two-pass variance (``use_fast_variance=False``) for parity with PyTorch. Call it
    as ``bn(x, use_running_average=not train)`` on channels-last ``x``; the output has ``x``'s
    dtype (:class:`BatchNorm`)."""
    return BatchNorm(dim, momentum=0.9, epsilon=1e-5, use_fast_variance=False, rngs=rngs,
                         scale_metadata=sharding.axes('norm'), bias_metadata=sharding.axes('norm'))


def hardswish(x: jax.Array) -> jax.Array:
    """``nn.Hardswish``: ``x * relu6(x + 3) / 6``."""
    return x * jnp.clip(x + 3.0, 0.0, 6.0) / 6.0


class SeparableConv2d(nnx.Module):
    """Depthwise ``k x k`` conv (``conv1``, groups = in, no bias) then pointwise 1x1 conv
    (``pointwise_conv``, in -> out, no bias). ``(B, H, W, in)`` -> ``(B, H', W', out)`` with
    ``H' = (H + 2 (k // 2) - k) // stride + 1``. Source: ``:240-249``."""

    def __init__(self, din: int, dout: int, k: int, stride: int = 1, *, rngs: nnx.Rngs):
        self.conv1 = _conv(din, din, k, rngs, stride=stride, groups=din, use_bias=False)
        self.pointwise_conv = _conv(din, dout, 1, rngs, use_bias=False)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.pointwise_conv(self.conv1(x))


class Agg0(nnx.Module):
    """The non-attention branch (official ``Agg_0``, ``:41-53``): ``(B, H, W, 3s)`` (segment 4 of
    q, k, v concatenated in that order on channels) -> SeparableConv 3x3 (3s -> s) -> LayerNorm
    (PyTorch default eps **1e-5**) -> Hardswish -> ``(B, H, W, s)``."""

    def __init__(self, seg_dim: int, *, rngs: nnx.Rngs):
        self.conv = SeparableConv2d(3 * seg_dim, seg_dim, 3, rngs=rngs)
        self.norm = L.layer_norm(seg_dim, 1e-5, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return hardswish(self.norm(self.conv(x)))


class Aggregator(nnx.Module):
    """The multi-scale aggregators of Group-Mix Attention (``Aggregator``, ``:56-105``).

    Input ``(3B, H, W, C)``: q, k and v stacked on the batch axis in that order. Channels are split
    into 5 segments of width ``s = C / 5``: segment 0 -> BN -> Hardswish (identity aggregator);
    segments 1-3 -> SeparableConv 3x3 / 5x5 / 7x7 -> BN -> Hardswish (``agg1..3`` with
    ``norm1..3``); since q, k, v share the batch axis they share these weights and the BatchNorm
    statistics (computed over 3B * H * W values). Segment 4 of q, k, v goes to :class:`Agg0`.

    Returns ``(qkv, local)``: ``qkv`` ``(3, B, num_heads, H*W, 4s / num_heads)`` (head j takes
    channels ``[j c, (j+1) c)`` of the concatenated segments 0-3, so heads 0-1 come from the
    identity segment, 2-3 from 3x3, 4-5 from 5x5, 6-7 from 7x7), and ``local`` ``(B, H, W, s)``.

    Raises:
      ValueError: ``dim`` is not a multiple of ``seg``.
    """

    def __init__(self, dim: int, seg: int = 5, *, rngs: nnx.Rngs):
        if dim % seg:
            raise ValueError(f'GroupMixFormer stage width {dim} must be a multiple of {seg}')
        self.dim, self.seg = dim, seg
        s = dim // seg
        self.norm0 = batch_norm(s, rngs)
        self.agg1 = SeparableConv2d(s, s, 3, rngs=rngs)
        self.norm1 = batch_norm(s, rngs)
        self.agg2 = SeparableConv2d(s, s, 5, rngs=rngs)
        self.norm2 = batch_norm(s, rngs)
        self.agg3 = SeparableConv2d(s, s, 7, rngs=rngs)
        self.norm3 = batch_norm(s, rngs)
        self.agg0 = Agg0(s, rngs=rngs)

    def __call__(self, x: jax.Array, num_heads: int, *, train: bool = False) -> tuple[jax.Array, jax.Array]:
        b3, h, w, c = x.shape
        b, s = b3 // 3, self.dim // self.seg
        segs = [x[..., i * s:(i + 1) * s] for i in range(self.seg)]
        local = segs[4].reshape(3, b, h, w, s).transpose(1, 2, 3, 0, 4).reshape(b, h, w, 3 * s)
        local = self.agg0(local)
        ura = not train
        x0 = hardswish(self.norm0(segs[0], use_running_average=ura))
        x1 = hardswish(self.norm1(self.agg1(segs[1]), use_running_average=ura))
        x2 = hardswish(self.norm2(self.agg2(segs[2]), use_running_average=ura))
        x3 = hardswish(self.norm3(self.agg3(segs[3]), use_running_average=ura))
        y = jnp.concatenate([x0, x1, x2, x3], axis=-1)                      # (3B, H, W, 4s)
        ch = 4 * s // num_heads
        y = y.reshape(3, b, h * w, num_heads, ch).transpose(0, 1, 3, 2, 4)
        return y, local


class ConvRelPosEnc(nnx.Module):
    """Convolutional relative position encoding (CoaT ``ConvRelPosEnc``, ``:108-156``).

    ``q, v`` ``(B, h, N, Ch)`` -> ``q * DWConv(v)`` ``(B, h, N, Ch)``: v is laid out head-major
    as ``(B, H, W, h*Ch)``, its channels split by :data:`CRPE_WINDOW` heads (2, 3, 3) and each
    group convolved depthwise with its own kernel (3, 5, 7; padding k // 2, with bias);
    ``conv_list.{0,1,2}``.

    Raises:
      ValueError: the head counts of ``window`` do not sum to ``num_heads`` (8 for :data:`CRPE_WINDOW`).
    """

    def __init__(self, ch: int, num_heads: int, window: Sequence[tuple[int, int]] = CRPE_WINDOW, *,
                 rngs: nnx.Rngs):
        if sum(n for _, n in window) != num_heads:
            raise ValueError(f'CRPE window {window} splits {sum(n for _, n in window)} heads but '
                             f'num_heads is {num_heads}; GroupMixFormer requires num_heads=8')
        self.ch, self.window = ch, tuple(window)
        self.conv_list = nnx.List([_conv(n * ch, n * ch, k, rngs, groups=n * ch) for k, n in window])

    def __call__(self, q: jax.Array, v: jax.Array, size: tuple[int, int]) -> jax.Array:
        b, nh, n, ch = q.shape
        h, w = size
        v_img = v.transpose(0, 2, 1, 3).reshape(b, h, w, nh * ch)
        outs, start = [], 0
        for conv, (_, heads) in zip(self.conv_list, self.window):
            outs.append(conv(v_img[..., start:start + heads * ch]))
            start += heads * ch
        conv_v = jnp.concatenate(outs, axis=-1).reshape(b, n, nh, ch).transpose(0, 2, 1, 3)
        return q * conv_v


class EfficientAtt(nnx.Module):
    """Group-Mix Attention (``EfficientAtt``, ``:159-200``). ``(B, H, W, C)`` -> ``(B, H, W, C)``.

    1. ``qkv`` Dense(C, 3C): output channels ``[q | k | v]``; stacked on the batch axis (3B, ...).
    2. :class:`Aggregator` -> 8 heads of width ``c = C / 10`` over segments 0-3 and the
       non-attention branch ``(B, H, W, C/5)``.
    3. ``A = q (softmax_N(k)^T v)`` (softmax over the tokens of k, float32), CRPE ``q * DWConv(v)``
       (:class:`ConvRelPosEnc`); ``out = scale * A + CRPE`` with ``scale = qk_scale or
       (C // num_heads)^-0.5`` (the full stage width, not the head width).
    4. Heads merged -> ``(B, H, W, 4C/5)``, the non-attention branch appended last, ``proj`` Dense,
       dropout. ``attn_drop`` exists officially but is unused (``:168``).

    Raises:
      ValueError: ``dim`` not a multiple of 5, ``4 * dim / 5`` not divisible by ``num_heads``, or ``num_heads != 8``
        (:class:`ConvRelPosEnc`); on call, ``train`` with ``proj_drop > 0`` and no ``rng``.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, qk_scale: float | None = None,
                 proj_drop: float = 0.0, *, rngs: nnx.Rngs):
        if dim % 5 or (dim // 5 * 4) % num_heads:
            raise ValueError(f'GroupMixFormer stage width {dim} must be a multiple of 5 with 4/5 of it '
                             f'divisible by num_heads={num_heads} (e.g. a multiple of 10 for 8 heads)')
        self.dim, self.num_heads = dim, num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.qkv = L.linear(dim, 3 * dim, rngs, use_bias=qkv_bias, axes=('embed', 'heads'))
        self.proj = L.linear(dim, dim, rngs, axes=('heads', 'embed'))
        self.proj_drop = proj_drop
        self.aggregator = Aggregator(dim, 5, rngs=rngs)
        self.crpe = ConvRelPosEnc(dim // 5 * 4 // num_heads, num_heads, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False, rng: jax.Array | None = None) -> jax.Array:
        b, h, w, c = x.shape
        qkv = self.qkv(x).reshape(b, h, w, 3, c).transpose(3, 0, 1, 2, 4).reshape(3 * b, h, w, c)
        qkv, local = self.aggregator(qkv, self.num_heads, train=train)
        q, k, v = qkv[0], qkv[1], qkv[2]                                    # (B, h, N, c)
        k_soft = jax.nn.softmax(k.astype(jnp.float32), axis=2).astype(v.dtype)
        kv = jnp.einsum('bhnk,bhnv->bhkv', k_soft, v)
        att = jnp.einsum('bhnk,bhkv->bhnv', q, kv)
        out = self.scale * att + self.crpe(q, v, (h, w))
        out = out.transpose(0, 2, 1, 3).reshape(b, h, w, c // 5 * 4)
        out = jnp.concatenate([out, local.astype(out.dtype)], axis=-1)
        return L.dropout(self.proj(out), self.proj_drop, train, rng)


class ConvPosEnc(nnx.Module):
    """Convolutional position encoding ``x + DWConv_k(x)`` (depthwise, with bias, padding k // 2);
    ``(B, H, W, C)`` -> same. Source: ``ConvPosEnc``, ``:203-217``."""

    def __init__(self, dim: int, k: int = 3, *, rngs: nnx.Rngs):
        self.proj = _conv(dim, dim, k, rngs, groups=dim)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.proj(x) + x


class ConvStem(nnx.Module):
    """Conv 3x3/2 (in -> d/2, bias) -> BN -> Hardswish -> Conv 3x3/2 (d/2 -> d, bias) -> BN ->
    Hardswish; padding 1. ``(B, H, W, in)`` -> ``(B, H/4, W/4, d)`` for H, W multiples of 4.
    Source: ``ConvStem``, ``:220-237``."""

    def __init__(self, in_dim: int, embed_dim: int, *, rngs: nnx.Rngs):
        mid = embed_dim // 2
        self.proj1 = _conv(in_dim, mid, 3, rngs, stride=2)
        self.norm1 = batch_norm(mid, rngs)
        self.proj2 = _conv(mid, embed_dim, 3, rngs, stride=2)
        self.norm2 = batch_norm(embed_dim, rngs)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = hardswish(self.norm1(self.proj1(L.images_to(x, self.proj1)), use_running_average=not train))
        return hardswish(self.norm2(self.proj2(x), use_running_average=not train))


class PatchEmbedLayer(nnx.Module):
    """SeparableConv 3x3 (stride 1 for the first stage, else 2; padding 1) -> BN -> Hardswish.
    ``(B, H, W, in)`` -> ``(B, H/stride, W/stride, out)``. Source: ``PatchEmbedLayer``, ``:252-271``
    (``is_first_layer`` overrides ``in_dim`` with ``out`` and the stride with 1)."""

    def __init__(self, in_dim: int, embed_dim: int, stride: int, *, rngs: nnx.Rngs):
        self.stride = stride
        self.proj = SeparableConv2d(in_dim, embed_dim, 3, stride, rngs=rngs)
        self.norm = batch_norm(embed_dim, rngs)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        return hardswish(self.norm(self.proj(x), use_running_average=not train))


class GMABlock(nnx.Module):
    """GroupMixFormer block (``GMA_Block``, ``:274-299``), ``(B, H, W, C)`` -> same:
    ``x = CPE(x)``; ``x = x + DropPath(GMA(LN1(x)))``; ``x = x + DropPath(MLP(LN2(x)))``; both
    branches use the same drop-path rate (independent draws); LayerNorm eps ``norm_eps`` (1e-6)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: float | None = None, drop: float = 0.0, drop_path: float = 0.0,
                 norm_eps: float = 1e-6, *, rngs: nnx.Rngs):
        self.cpe = ConvPosEnc(dim, 3, rngs=rngs)
        self.norm1 = L.layer_norm(dim, norm_eps, rngs)
        self.att = EfficientAtt(dim, num_heads, qkv_bias, qk_scale, drop, rngs=rngs)
        self.drop_path = drop_path
        self.norm2 = L.layer_norm(dim, norm_eps, rngs)
        self.mlp = L.Mlp(dim, int(dim * mlp_ratio), drop, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False, rng: jax.Array | None = None) -> jax.Array:
        k_att, k_dp1, k_mlp, k_dp2 = L.split_key(rng, 4)
        x = self.cpe(x)
        x = x + L.drop_path(self.att(self.norm1(x), train=train, rng=k_att), self.drop_path, train, k_dp1)
        return x + L.drop_path(self.mlp(self.norm2(x), train=train, rng=k_mlp), self.drop_path, train, k_dp2)


class GMAStage(nnx.Module):
    """``depth`` :class:`GMABlock` s at constant resolution (``GMA_Stage``, ``:302-319``); attribute
    ``gma_stage``; each block under the ``remat`` policy (:func:`jaxmim.layers.call_block`)."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float, qkv_bias: bool,
                 qk_scale: float | None, drop: float, drop_path: Sequence[float], norm_eps: float,
                 remat: str = 'none', *, rngs: nnx.Rngs):
        self.remat = L.check_remat(remat)
        self.gma_stage = nnx.List([GMABlock(dim, num_heads, mlp_ratio, qkv_bias, qk_scale, drop, drop_path[i],
                                            norm_eps, rngs=rngs) for i in range(depth)])

    def __call__(self, x: jax.Array, *, train: bool = False, rng: jax.Array | None = None) -> jax.Array:
        """``(B, H, W, dim)`` NHWC -> ``(B, H, W, dim)``; ``rng`` split into one key per block."""
        for blk, key in zip(self.gma_stage, L.split_key(rng, len(self.gma_stage))):
            x = L.call_block(blk, x, train=train, rng=key, remat=self.remat)
        return x


_M = dict(embed_dims=(40, 80, 160, 160), depths=(3, 3, 12, 4), mlp_ratios=(4, 4, 4, 4), drop_path_rate=0.1)
_T = dict(embed_dims=(80, 160, 200, 240), depths=(4, 4, 12, 4), mlp_ratios=(4, 4, 4, 4), drop_path_rate=0.1)
_S = dict(embed_dims=(80, 160, 320, 320), depths=(2, 4, 12, 4), mlp_ratios=(4, 4, 4, 4), drop_path_rate=0.2)
_B = dict(embed_dims=(200, 240, 320, 480), depths=(8, 8, 12, 8), mlp_ratios=(2, 2, 4, 4), drop_path_rate=0.5)
_L = dict(embed_dims=(240, 320, 360, 480), depths=(8, 10, 30, 10), mlp_ratios=(4, 4, 2, 2), drop_path_rate=0.1)
_DEMO = dict(img_size=32, embed_dims=(40, 80, 160, 160), depths=(1, 1, 3, 1), mlp_ratios=(4, 4, 4, 4),
             drop_path_rate=0.1)
_DATA_224 = dict(image_size=224, eval_crop_ratio=224 / 256)
_DATA_DEMO = dict(image_size=32, eval_crop_ratio=1.0)


@register_model('groupmixformer_mini', **_M, data_defaults=_DATA_224)
@register_model('groupmixformer_tiny', **_T, data_defaults=_DATA_224)
@register_model('groupmixformer_small', **_S, data_defaults=_DATA_224)
@register_model('groupmixformer_base', **_B, data_defaults=_DATA_224)
@register_model('groupmixformer_large', **_L, data_defaults=_DATA_224)
@register_model('groupmixformer_demo_32', **_DEMO, num_classes=10, data_defaults=_DATA_DEMO)
class GroupMixFormer(nnx.Module, Backbone):
    """GroupMixFormer classifier (official ``GroupMixFormer``, ``:322-436``).

    Variants (official ``configs/groupmixformer_*.yaml``; counts computed from the official classes,
    FLOPs with fvcore as in the official ``cal_flops.py``): ``groupmixformer_mini`` (official
    ``miny``) 5,733,120 parameters / 1.4 GFLOPs, ``_tiny`` 10,949,152 / 3.7G, ``_small`` 22,421,320 /
    5.2G, ``_base`` 45,827,272 / 17.6G, ``_large`` the official yaml's shapes (71,833,648 / 38.3G;
    the README's 70.3M / 36.1G is not reproduced by the yaml and the released L checkpoint was not
    available to check its shapes), and ``groupmixformer_demo_32`` (32 px, 10 classes) for
    Fashion-MNIST.

    Args:
      img_size: input side in pixels (square); a multiple of 32.
      in_chans: input channels.
      num_classes: classes of the linear head; 0 gives no head (``norm4`` is kept and the forward
        returns pooled features ``(B, embed_dims[-1])``).
      embed_dims: stage widths (official ``embedding_dims``), multiples of 10 for 8 heads.
      depths: blocks per stage (official ``serial_depths``).
      num_heads: attention heads, one int for all stages (8; the CRPE split needs exactly 8).
      mlp_ratios: MLP hidden width / dim per stage.
      qkv_bias: bias of the fused qkv Dense (True in every official config).
      qk_scale: overrides ``(C // num_heads)^-0.5``.
      drop_rate: dropout after the attention projection and in the MLPs.
      drop_path_rate: stochastic depth, ``linspace(0, rate, sum(depths))`` over the blocks.
      norm_eps: LayerNorm eps of the blocks (1e-6; ``Agg_0`` always uses 1e-5).
      remat: per block, :data:`jaxmim.layers.REMAT_POLICIES` (jaxmim argument; same numbers and
        BatchNorm statistics).
      rngs: NNX RNG streams for initialisation.

    Call: ``model(images, train=False, rng=None)`` with images ``(B, img_size, img_size,
    in_chans)`` float -> logits ``(B, num_classes)`` float. ``train=True`` uses (and updates) batch
    statistics in every BatchNorm and needs ``rng`` when drop path or dropout is on.

    Raises:
      ValueError: mismatched lengths of ``embed_dims`` / ``depths`` / ``mlp_ratios``, widths that
        the 5-segment, 8-head split cannot take, an image size not a multiple of 32, or images of
        another shape.
    """

    def __init__(self, img_size: int = 224, in_chans: int = 3, num_classes: int = 1000,
                 embed_dims: Sequence[int] = (80, 160, 320, 320), depths: Sequence[int] = (2, 4, 12, 4),
                 num_heads: int = 8, mlp_ratios: Sequence[float] = (4, 4, 4, 4), qkv_bias: bool = True,
                 qk_scale: float | None = None, drop_rate: float = 0.0, drop_path_rate: float = 0.2,
                 norm_eps: float = 1e-6, remat: str = 'none', *, rngs: nnx.Rngs):
        embed_dims, depths, mlp_ratios = tuple(embed_dims), tuple(depths), tuple(mlp_ratios)
        if not len(embed_dims) == len(depths) == len(mlp_ratios) or not depths:
            raise ValueError(f'embed_dims {embed_dims}, depths {depths} and mlp_ratios {mlp_ratios} must have '
                             'the same (non-zero) length')
        stride = 4 * 2 ** (len(depths) - 1)
        if img_size % stride:
            raise ValueError(f'img_size {img_size} must be a multiple of {stride} (stem stride 4 and '
                             f'{len(depths) - 1} stride-2 patch embeddings)')
        if num_heads != sum(n for _, n in CRPE_WINDOW):
            raise ValueError(f'num_heads must be 8 (the CRPE head split 2/3/3), got {num_heads}')
        self.img_size, self.in_chans, self.num_classes = img_size, in_chans, num_classes
        self.embed_dims, self.depths, self.num_heads = embed_dims, depths, num_heads
        self.num_stages = len(depths)
        self.num_features = embed_dims[-1]
        self.patch_size = 4                       # stride of the stem: the token grid of stage 1
        self.conv_stem = ConvStem(in_chans, embed_dims[0], rngs=rngs)
        self.patch_embed_layers = nnx.List([
            PatchEmbedLayer(embed_dims[max(i - 1, 0)], embed_dims[i], 1 if i == 0 else 2, rngs=rngs)
            for i in range(self.num_stages)])
        dpr = [float(r) for r in np.linspace(0, drop_path_rate, sum(depths), dtype=np.float32)]
        self.groupmixformer_backbone = nnx.List([
            GMAStage(embed_dims[i], depths[i], num_heads, mlp_ratios[i], qkv_bias, qk_scale, drop_rate,
                     dpr[sum(depths[:i]):sum(depths[:i + 1])], norm_eps, remat, rngs=rngs)
            for i in range(self.num_stages)])
        self.norm4 = batch_norm(embed_dims[-1], rngs)
        self.head = (L.linear(embed_dims[-1], num_classes, rngs, axes=('embed', 'classes'))
                     if num_classes > 0 else None)

    # -- hooks of jaxmim.registry.Backbone ---------------------------------------------------

    def no_weight_decay(self) -> tuple[str, ...]:
        """``mask_token`` of the masked pre-training encoder only. The official optimizer
        (``optimizer.py:4-42``) exempts 1-D tensors and biases, which the universal rule already
        does; its ``no_weight_decay`` names class tokens that do not exist, and conv kernels
        (depthwise included) are decayed."""
        return ('mask_token',)

    def layer_id(self, name: str) -> int:
        """Layer id for layer-wise lr decay (Swin/SimMIM's scheme, ``get_swin_layer``, applied to
        GroupMixFormer's layout). With ``L = sum(depths)``: ``mask_token``, ``conv_stem.*`` and
        ``patch_embed_layers.0.*`` -> 0; ``groupmixformer_backbone.i.gma_stage.j.*`` ->
        ``sum(depths[:i]) + j + 1``; ``patch_embed_layers.i.*`` (i > 0) -> ``sum(depths[:i])`` (the
        previous stage's last block, as Swin's downsample); ``norm4``, ``head`` -> ``L + 1``.

        Raises:
          ValueError: a stage or patch-embedding name that cannot be placed.
        """
        parts, depths = name.split('.'), self.depths
        if parts[0] in ('mask_token', 'conv_stem'):
            return 0
        if parts[0] == 'patch_embed_layers':
            if len(parts) < 2 or not parts[1].isdigit() or int(parts[1]) >= self.num_stages:
                raise ValueError(f'groupmixformer layer_id: cannot place parameter {name!r}')
            return sum(depths[:int(parts[1])])
        if parts[0] == 'groupmixformer_backbone':
            if (len(parts) < 4 or not parts[1].isdigit() or int(parts[1]) >= self.num_stages
                    or parts[2] != 'gma_stage' or not parts[3].isdigit()):
                raise ValueError(f'groupmixformer layer_id: cannot place parameter {name!r} (depths {depths})')
            return sum(depths[:int(parts[1])]) + int(parts[3]) + 1
        return sum(depths) + 1

    @property
    def num_layer_ids(self) -> int:
        """``sum(depths) + 2``."""
        return sum(self.depths) + 2

    # -- forward -----------------------------------------------------------------------------

    def _check_input(self, x: jax.Array) -> None:
        if x.ndim != 4 or x.shape[1] != self.img_size or x.shape[2] != self.img_size or x.shape[3] != self.in_chans:
            raise ValueError(f'expected images (B, {self.img_size}, {self.img_size}, {self.in_chans}) in NHWC '
                             f'layout, got shape {x.shape}')

    def forward_stages(self, x: jax.Array, *, train: bool = False, rng: jax.Array | None = None,
                       return_all: bool = False):
        """Stem output ``(B, H/4, W/4, embed_dims[0])`` -> the last stage map
        ``(B, H/2^(S+1), W/2^(S+1), embed_dims[-1])`` (before ``norm4``), or the list of all stage
        maps when ``return_all`` (official ``return_interm_layers``, NHWC)."""
        outs = []
        for embed, stage, key in zip(self.patch_embed_layers, self.groupmixformer_backbone,
                                     L.split_key(rng, self.num_stages)):
            x = stage(embed(x, train=train), train=train, rng=key)
            x = sharding.constrain(x, 'batch', None, None, None)
            outs.append(x)
        return outs if return_all else x

    def forward_features(self, x: jax.Array, *, train: bool = False, rng: jax.Array | None = None) -> jax.Array:
        """Images ``(B, H, W, C)`` -> ``norm4``-ed, mean-pooled features ``(B, embed_dims[-1])``."""
        self._check_input(x)
        x = sharding.constrain(self.conv_stem(x, train=train), 'batch', None, None, None)
        x = self.forward_stages(x, train=train, rng=rng)
        return self.norm4(x, use_running_average=not train).mean(axis=(1, 2))

    def __call__(self, x: jax.Array, *, train: bool = False, rng: jax.Array | None = None) -> jax.Array:
        x = self.forward_features(x, train=train, rng=rng)
        return self.head(x) if self.head is not None else x

    def features(self, x: jax.Array, *, train: bool = False, out_indices: Sequence[int] | None = None,
                 rng: jax.Array | None = None) -> dict[str, jax.Array]:
        """The four stage maps of the official dense-task mode, at any multiple of 32
        (:meth:`jaxmim.registry.Backbone.features`).

        The official model with ``return_interm_layers=True`` (``:387-390``, ``:414-429``) drops
        ``norm4`` / ``head`` and returns every stage's output, un-normalised; the repository's
        ``detection/`` and ``segmentation/`` backbones were never released (AILab-CVC/GroupMixFormer#1),
        so this is the official multi-scale output. Nothing in the model depends on the image size
        (convolutional position encodings, no tables), so any ``H, W`` that are multiples of
        ``4 * 2^(S-1)`` (32) work. BatchNorms use the running statistics unless ``train``.

        Args:
          x: images ``(B, H, W, in_chans)``, H and W multiples of 32 (4 stages).
          train, rng: BatchNorm mode (batch statistics, updated when ``train``), drop path / dropout key.
          out_indices: stage indices, default all.

        Returns:
          ``{'stage{i}': (B, H / (4 * 2^i), W / (4 * 2^i), embed_dims[i])}``: strides 4, 8, 16, 32.
          GroupMixFormer-S at 224: ``{'stage0': (B, 56, 56, 80), 'stage1': (B, 28, 28, 160), 'stage2':
          (B, 14, 14, 320), 'stage3': (B, 7, 7, 320)}``; at 320 x 480: 80x120, 40x60, 20x30, 10x15.

        Raises:
          ValueError: bad images or ``out_indices``.
        """
        idx = check_out_indices(out_indices, self.num_stages, range(self.num_stages), 'stage')
        check_feature_images(x, self.in_chans, 4 * 2 ** (self.num_stages - 1), type(self).__name__)
        x = sharding.constrain(self.conv_stem(x, train=train), 'batch', None, None, None)
        outs = {}
        for i, (embed, stage, key) in enumerate(zip(self.patch_embed_layers, self.groupmixformer_backbone,
                                                    L.split_key(rng, self.num_stages))):
            x = sharding.constrain(stage(embed(x, train=train), train=train, rng=key), 'batch', None, None, None)
            if i in idx:
                outs[f'stage{i}'] = x
            if i == idx[-1]:
                break
        return outs


@register_model('simmim_groupmixformer_mini', **{**_M, 'drop_path_rate': 0.0}, data_defaults=_DATA_224,
                classifier='groupmixformer_mini')
@register_model('simmim_groupmixformer_small', **{**_S, 'drop_path_rate': 0.0}, data_defaults=_DATA_224,
                classifier='groupmixformer_small')
@register_model('simmim_groupmixformer_demo_32', **{**_DEMO, 'drop_path_rate': 0.0}, data_defaults=_DATA_DEMO,
                classifier='groupmixformer_demo_32')
class GroupMixFormerForSimMIM(GroupMixFormer):
    """GroupMixFormer as a SimMIM encoder (no head, a learnable ``mask_token`` of width
    ``embed_dims[0]``); no official counterpart (jaxmim's own masked pre-training of GroupMixFormer).

    The convolutions need the dense grid, so masked tokens stay in place (SimMIM-style, as Swin):
    the token grid is the stem output (stride 4, ``patch_size = 4``). Two steps keep masked
    pixels from leaking into visible tokens through the stem's overlapping 3x3 stride-2 kernels
    (receptive field 7 px at stride 4): the input pixels of masked patches are set to 0 (the
    normalised mean) before the stem, and the stem outputs at masked positions are replaced by
    ``mask_token``. All BatchNorms run as in the classifier (batch statistics in training).

    Call: ``encoder(images, mask, train=False, rng=None)`` with images ``(B, H, W, C)`` and mask
    ``(B, H/4, W/4)`` (1 = masked, any numeric dtype) -> ``norm4``-ed last stage map
    ``(B, H/32, W/32, embed_dims[-1])`` (encoder stride 32 for 4 stages).

    Raises:
      ValueError: ``num_classes != 0``, or images / mask of the wrong shape.
    """

    def __init__(self, *, num_classes: int = 0, rngs: nnx.Rngs, **kwargs):
        if num_classes != 0:
            raise ValueError('GroupMixFormerForSimMIM is an encoder: num_classes must be 0')
        super().__init__(num_classes=0, rngs=rngs, **kwargs)
        self.mask_token = nnx.Param(L.trunc_normal_02(rngs.params(), (1, 1, 1, self.embed_dims[0])),
                                    **sharding.axes(None, None, None, 'embed'))

    def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool = False,
                 rng: jax.Array | None = None) -> jax.Array:
        self._check_input(x)
        g = self.img_size // self.patch_size
        if mask.shape != (x.shape[0], g, g):
            raise ValueError(f'mask must have shape (B, H/4, W/4) = {(x.shape[0], g, g)}, got {mask.shape}')
        w = mask.astype(x.dtype)[..., None]
        pixels = jnp.repeat(jnp.repeat(w, self.patch_size, axis=1), self.patch_size, axis=2)
        z = self.conv_stem(x * (1.0 - pixels), train=train)
        w = w.astype(z.dtype)   # the images may be float32 while the stem computes in bf16
        z = z * (1.0 - w) + self.mask_token[...].astype(z.dtype) * w
        z = sharding.constrain(z, 'batch', None, None, None)
        z = self.forward_stages(z, train=train, rng=rng)
        return self.norm4(z, use_running_average=not train)
