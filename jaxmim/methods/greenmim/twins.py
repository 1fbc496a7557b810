"""GreenMIM with a Twins-SVT (ALTGVT) encoder that runs on the visible tokens only.

Huang et al., "Green Hierarchical Vision Transformer for Masked Image Modeling", NeurIPS 2022
(arXiv 2205.13515), Twins-SVT of Chu et al. (NeurIPS 2021); follows
``LayneH/GreenMIM@b981012 modeling/green_twins_models.py`` (``GroupAttention`` :15-45, GSA
``Attention`` :48-92, ``GroupBlock`` :127-144, ``SparsePatchEmbed`` :175-206, ``PosCNN`` :279-290,
``CPVTV2.forward_features`` :340-369, ``ALTGVT`` :382-408), ``modeling/sparse_conv_spconv.py`` and
``modeling/model_factory.py:142-175``.

Static shapes under ``jit``: every stage has a fixed number of visible tokens (12 visible 32-px
units of 49 at 224 px), and every sparse convolution has kernel = stride aligned with the mask
unit, so it is a per-block dense linear map over the visible k x k blocks
(:func:`jaxmim.methods.greenmim.sparse_conv.block_indices`); all mask-dependent index work (window ids, knapsack
grouping, block indices) is one int32 ``plan`` vector made on the host by
:class:`GreenTwinsPlanner`.

Per stage (``CPVTV2.forward_features``): stage 1 a dense patch-embedding conv (k = s = 4) + LN
over the whole image, then the gather of the visible tokens; stages 2-4 ``SparsePatchEmbed``
(sparse conv k = s = 2 + LN) on the visible 2x2 blocks. Blocks alternate LSA (even j: attention
inside the windows of the **unshifted** ``wss[0]`` partition through Group Window Attention, an
additive -100 group mask, no relative-position bias) and GSA (odd j: keys / values from a
sparse conv k = s = ``sr`` + LN of the visible tokens; plain attention when ``sr == 1``). The PEG
(depthwise 3x3 conv on the zero-filled canvas) follows block 0 of every stage; the official
``PosCNN`` returns the conv output **without** the residual (``green_twins_models.py:285-287``),
reproduced by default
(``peg_residual=False``); ``peg_residual=True`` gives Twins/CPVT's ``conv(x) + x``.

The pre-training wrapper (decoder, mask tokens, loss, masking inputs) is the Swin GreenMIM's
:class:`jaxmim.methods.greenmim.swin.GreenMIMSwin`, reused unchanged (official ``MaskedAutoencoder``).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmim import layers as L
from jaxmim import ops, sharding
from jaxmim.methods.greenmim.grouping import MASK_VALUE, GreenSwinPlanner
from jaxmim.methods.greenmim.sparse_conv import block_indices
from jaxmim.methods.greenmim.swin import GreenMIMSwin, GreenSwinBlock, take_tokens
from jaxmim.models import swin as swin_lib
from jaxmim.registry import register_model

__all__ = ['GreenTwinsPlanner', 'group_mask', 'sparse_conv_visible', 'depthwise_conv_visible', 'LSABlock',
           'GSABlock', 'SparseConvWeights', 'SparsePatchEmbed', 'PosCNN', 'GreenTwinsTransformer', 'GreenMIMTwins']


# ----------------------------------------------------------------------------------------
# Host side: the plan.
# ----------------------------------------------------------------------------------------

class GreenTwinsPlanner(GreenSwinPlanner):
    """Static layout and host-side index arrays of the visible-token Twins-SVT encoder.

    The windows of the LSA blocks are those of :class:`GreenSwinPlanner` with one (unshifted)
    partition per stage and window ``wss[0]`` at every stage (``ALTGVT.window_size = wss[0]``,
    ``green_twins_models.py:395``; ``GroupingModule(self.window_size, 0)`` :349): entries
    ``pos{s}``, ``gid{s}_0`` and, in grouping mode, ``idx{s}_0`` / ``inv{s}_0``. A window larger
    than the stage grid is clamped to the grid (the same single window). Added entries:

    * ``embed{s}`` (s >= 1) ``(N_s * 4,)``: for every visible stage-s token (raster order) the
      indices of its 2x2 stage-(s-1) visible tokens in ``(kh, kw)`` row-major order (the
      ``SparsePatchEmbed`` k = 2 blocks);
    * ``sr{s}`` (``sr_ratios[s] > 1``) ``(N_s,)``: the visible k x k blocks (k = ``sr_ratios[s]``)
      of stage s, ``N_s / k^2`` rows of ``k^2`` indices in ``(kh, kw)`` order, rows in raster order
      of the reduced grid (the GSA spatial reduction).

    Args:
      img_size, patch_size, mask_unit, len_keep, dims: as :class:`GreenSwinPlanner`.
      window_size: ``wss[0]`` in tokens.
      num_stages: stages.
      sr_ratios: GSA reduction per stage; each must divide the stage's tokens per mask unit.

    Raises:
      ValueError: sizes that do not fit (messages name the field).
    """

    def __init__(self, img_size: int, patch_size: int, mask_unit: int, len_keep: int, window_size: int,
                 num_stages: int, dims: Sequence[int], sr_ratios: Sequence[int]):
        if len(sr_ratios) != num_stages:
            raise ValueError(f'sr_ratios {tuple(sr_ratios)} must have one entry per stage ({num_stages})')
        super().__init__(img_size, patch_size, mask_unit, len_keep, window_size, (1,) * num_stages, dims)
        self.sr_ratios = tuple(int(r) for r in sr_ratios)
        for s, (st, r) in enumerate(zip(self.stages, self.sr_ratios)):
            if r < 1 or st.unit % r:
                raise ValueError(f'sr_ratios[{s}] = {r} must be >= 1 and divide the {st.unit} stage-{s} tokens '
                                 'per mask unit (every reduction block fully visible or fully masked)')
        off = self.plan_length
        for s, st in enumerate(self.stages):
            if s > 0:
                self.layout[f'embed{s}'] = (off, (st.num_tokens * 4,))
                off += st.num_tokens * 4
            if self.sr_ratios[s] > 1:
                self.layout[f'sr{s}'] = (off, (st.num_tokens,))
                off += st.num_tokens
        self.plan_length = off

    def plan(self, keep: np.ndarray) -> np.ndarray:
        """The int32 plan ``(plan_length,)`` of one unit mask ``keep`` ``(units**2,)`` bool
        (True = visible). Raises ValueError as :meth:`GreenSwinPlanner.plan`."""
        out = super().plan(keep)      # (plan_length,): the window entries filled, the rest 0
        for s, st in enumerate(self.stages):
            pos = self.get(out, f'pos{s}')
            if s > 0:
                prev = self.stages[s - 1]
                idx, out_pos = block_indices(self.get(out, f'pos{s - 1}'), prev.resolution, 2)
                assert np.array_equal(out_pos, pos)
                o, (n,) = self.layout[f'embed{s}']
                out[o:o + n] = idx.reshape(-1)
            if self.sr_ratios[s] > 1:
                idx, _ = block_indices(pos, st.resolution, self.sr_ratios[s])
                o, (n,) = self.layout[f'sr{s}']
                out[o:o + n] = idx.reshape(-1)
        return out


# ----------------------------------------------------------------------------------------
# Device side.
# ----------------------------------------------------------------------------------------

def group_mask(gid: jax.Array) -> jax.Array:
    """Additive group mask of ``GroupAttention`` (``group_window_attention.py:203-210``): 0 where
    two slots hold tokens of the same window, -100 otherwise (pads, gid -1, never match).

    Args:
      gid: ``(..., n)`` int window id per slot, -1 for pads.

    Returns:
      float32 ``(..., 1, n, n)`` (broadcast over heads).
    """
    allowed = (gid[..., :, None] == gid[..., None, :]) & (gid[..., :, None] >= 0)
    return jnp.where(allowed, 0.0, MASK_VALUE)[..., None, :, :].astype(jnp.float32)


def sparse_conv_visible(x: jax.Array, idx: jax.Array, kernel: jax.Array, bias: jax.Array | None) -> jax.Array:
    """Sparse conv with kernel = stride = k at the visible output sites, as a per-block linear map
    (``SparseConv2d``, ``sparse_conv_spconv.py:21-29``). Equals a dense conv of the
    zero-filled canvas read at the fully visible blocks (each output site's block is fully
    visible because the mask unit is a multiple of k).

    Args:
      x: ``(B, N, C_in)`` visible tokens.
      idx: ``(Bm, N_out * k*k)`` int32 (Bm 1 = shared by the batch, or B), each block's token
        indices in ``(kh, kw)`` order (:func:`jaxmim.methods.greenmim.sparse_conv.block_indices`).
      kernel: ``(k, k, C_in, C_out)`` HWIO.
      bias: ``(C_out,)`` or None.

    Returns:
      ``(B, N_out, C_out)``, output sites in raster order.
    """
    b, _, c = x.shape
    kk = kernel.shape[0] * kernel.shape[1]
    blocks = take_tokens(x, idx).reshape(b, -1, kk * c)
    out = blocks @ kernel.reshape(kk * c, -1).astype(x.dtype)
    return out + bias.astype(x.dtype) if bias is not None else out


def depthwise_conv_visible(x: jax.Array, pos: jax.Array, resolution: tuple[int, int], kernel: jax.Array,
                           bias: jax.Array | None) -> jax.Array:
    """Depthwise conv (stride 1, zero padding (k-1)/2) of the visible tokens on a zero-filled
    canvas, read back at the visible sites (``SparseDWConv2d``, ``sparse_conv_spconv.py:41-60``).

    Args:
      x: ``(B, N, C)`` visible tokens (raster order).
      pos: ``(Bm, N)`` int raster positions on the ``H x W`` grid (Bm 1 or B).
      resolution: ``(H, W)``.
      kernel: ``(kh, kw, 1, C)`` depthwise HWIO, odd sizes.
      bias: ``(C,)`` or None.

    Returns:
      ``(B, N, C)``; masked neighbours contribute 0.
    """
    b, n, c = x.shape
    h, w = resolution
    canvas = jnp.zeros((b, h * w, c), x.dtype)
    if pos.shape[0] == 1:
        canvas = canvas.at[:, pos[0]].set(x)
    else:
        canvas = canvas.at[jnp.arange(b)[:, None], pos].set(x)
    out = jax.lax.conv_general_dilated(canvas.reshape(b, h, w, c), kernel.astype(x.dtype), (1, 1), 'SAME',
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=c)
    out = take_tokens(out.reshape(b, h * w, c), pos)
    return out + bias.astype(x.dtype) if bias is not None else out


class SparseConvWeights(nnx.Conv):
    """The weights of an official ``spconv`` sparse conv (``SparseConv2d``, not an ``nn.Conv2d``),
    applied by :func:`sparse_conv_visible`; kept out of the xavier re-initialisation
    (``keeps_own_init``), as ``initialize_weights`` (``base_green_models.py:94-124``) and
    ``CPVTV2._init_weights`` only touch ``nn.Linear`` / ``nn.Conv2d``."""

    keeps_own_init = True


def _conv_holder(cin: int, cout: int, k: int, rngs: nnx.Rngs) -> SparseConvWeights:
    """A ``(k, k, cin, cout)`` kernel and a bias (logical axes ``(None, None, conv_in, conv_out)``
    and ``bias``) initialised as spconv 2.x's ``SparseConvolution.reset_parameters``
    (traveller59/spconv v2.3.8 ``spconv/pytorch/conv.py:705-750``): both U(+-1/sqrt(k*k*cin)),
    kaiming-uniform with a = sqrt(5) over fan_in = cin * k * k."""
    return SparseConvWeights(cin, cout, (k, k), strides=k, padding='VALID',
                             kernel_init=L.torch_default_kernel_init, bias_init=L.torch_default_bias_init(k * k * cin),
                             rngs=rngs, kernel_metadata=sharding.axes(None, None, 'conv_in', 'conv_out'),
                             bias_metadata=sharding.axes('bias'))


class _Attention(nnx.Module):
    """timm ``Attention`` variables: ``qkv`` (C -> 3C), ``proj`` (C -> C); ``attn_implementation``
    (:data:`jaxmim.ops.ATTN_IMPLEMENTATIONS`) of the grouped core (:meth:`LSABlock.attend`)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, qk_scale: float | None, *,
                 attn_implementation: str | None = None, rngs: nnx.Rngs):
        if dim % num_heads:
            raise ValueError(f'dim {dim} must be divisible by num_heads {num_heads}')
        self.attn_implementation = ops.check_attn_implementation(attn_implementation)
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.qkv = L.linear(dim, 3 * dim, rngs, use_bias=qkv_bias, axes=('embed', 'heads'))
        self.proj = L.linear(dim, dim, rngs, axes=('heads', 'embed'))


class LSABlock(nnx.Module):
    """Locally-grouped self-attention block (``GroupBlock`` with ``GroupAttention``,
    ``green_twins_models.py:15-45, :127-144``): pre-norm, attention inside the windows of the
    unshifted partition (Group Window Attention, additive -100 group mask, no relative-position
    bias, ``q * scale`` before ``q k^T``), MLP.

    Variables: ``norm1``, ``attn.{qkv, proj}``, ``norm2``, ``mlp.{fc1, fc2}``.
    Call ``block(x, part, arrays, train=, rng=)``: ``x`` ``(B, N, C)`` raster order; ``part`` the
    static :class:`~jaxmim.methods.greenmim.grouping.WindowGrouping`; ``arrays`` ``gid`` and, in
    grouping mode, ``idx`` / ``inv`` ``(Bm, ...)`` -> ``(B, N, C)``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, qk_scale: float | None,
                 drop_path: float, norm_eps: float, *, rngs: nnx.Rngs):
        self.norm1 = L.layer_norm(dim, norm_eps, rngs)
        self.attn = _Attention(dim, num_heads, qkv_bias, qk_scale, rngs=rngs)
        self.drop_path = drop_path
        self.norm2 = L.layer_norm(dim, norm_eps, rngs)
        self.mlp = L.Mlp(dim, int(dim * mlp_ratio), rngs=rngs)

    # Multi-head attention per group with an additive term (Bm, G, 1, n, n), projections on the
    # real tokens only: the Swin block's, which reads only ``attn.qkv``, ``attn.proj``,
    # ``attn.num_heads`` and ``attn.scale``.
    attend = GreenSwinBlock.attend
    grouped_attention = GreenSwinBlock.grouped_attention

    def group_attention(self, y: jax.Array, part, arrays: dict[str, jax.Array]) -> jax.Array:
        """Normalised visible tokens ``y`` ``(B, N, C)`` -> ``(B, N, C)``: grouped (gather, masked
        attention per group, scatter back) or, in masking mode, one masked N x N attention."""
        gid = arrays['gid']
        bm = gid.shape[0]
        if part.mode == 'grouping':
            ng, gs = part.num_groups, part.group_size
            return self.grouped_attention(y, group_mask(gid.reshape(bm, ng, gs)), arrays['idx'],
                                          arrays['inv'], ng)
        return self.grouped_attention(y, group_mask(gid[:, None]))

    def __call__(self, x: jax.Array, part, arrays: dict[str, jax.Array], *, train: bool = False,
                 rng: jax.Array | None = None) -> jax.Array:
        k1, k2 = L.split_key(rng, 2)
        x = x + L.drop_path(self.group_attention(self.norm1(x), part, arrays), self.drop_path, train, k1)
        return x + L.drop_path(self.mlp(self.norm2(x)), self.drop_path, train, k2)


class _GSAAttention(nnx.Module):
    """GSA ``Attention`` variables (``green_twins_models.py:48-70``): ``q`` (C -> C), ``kv``
    (C -> 2C), ``proj``; with ``sr_ratio > 1`` also ``sr`` (sparse conv k = s = sr, kernel
    ``(sr, sr, C, C)``) and ``norm``; ``attn_implementation`` (:data:`jaxmim.ops.ATTN_IMPLEMENTATIONS`)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, qk_scale: float | None, sr_ratio: int,
                 norm_eps: float, *, attn_implementation: str | None = None, rngs: nnx.Rngs):
        if dim % num_heads:
            raise ValueError(f'dim {dim} must be divisible by num_heads {num_heads}')
        self.attn_implementation = ops.check_attn_implementation(attn_implementation)
        self.num_heads, self.sr_ratio = num_heads, sr_ratio
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.q = L.linear(dim, dim, rngs, use_bias=qkv_bias, axes=('embed', 'heads'))
        self.kv = L.linear(dim, 2 * dim, rngs, use_bias=qkv_bias, axes=('embed', 'kv'))
        self.proj = L.linear(dim, dim, rngs, axes=('heads', 'embed'))
        if sr_ratio > 1:
            self.sr = _conv_holder(dim, dim, sr_ratio, rngs)
            self.norm = L.layer_norm(dim, norm_eps, rngs)
        else:
            self.sr = self.norm = None

    def __call__(self, x: jax.Array, sr_idx: jax.Array | None) -> jax.Array:
        """``x`` ``(B, N, C)`` normalised visible tokens, ``sr_idx`` ``(Bm, N)`` reduction blocks
        (None when ``sr_ratio == 1``) -> ``(B, N, C)``; ``(q k^T) * scale`` as the official code, softmax in
        float32 (:func:`jaxmim.ops.attention`)."""
        b, n, c = x.shape
        nh, hd = self.num_heads, c // self.num_heads
        q = self.q(x).reshape(b, n, nh, hd)
        src = x
        if self.sr is not None:
            src = self.norm(sparse_conv_visible(x, sr_idx, self.sr.kernel[...], self.sr.bias[...]))
        kv = self.kv(src).reshape(b, src.shape[1], 2, nh, hd)
        out = ops.attention(q, kv[:, :, 0], kv[:, :, 1], scale=self.scale, implementation=self.attn_implementation)
        return self.proj(out.reshape(b, n, c))


class GSABlock(nnx.Module):
    """Global sub-sampled attention block (``GroupBlock`` with ``ws == 1``, GSA ``Attention``):
    pre-norm, attention of every visible token to keys/values of the spatially reduced visible
    tokens, MLP. Variables ``norm1``, ``attn.{q, kv, proj[, sr, norm]}``, ``norm2``,
    ``mlp.{fc1, fc2}``. Call ``block(x, sr_idx, train=, rng=)`` -> ``(B, N, C)``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, qk_scale: float | None,
                 drop_path: float, norm_eps: float, sr_ratio: int, *, rngs: nnx.Rngs):
        self.norm1 = L.layer_norm(dim, norm_eps, rngs)
        self.attn = _GSAAttention(dim, num_heads, qkv_bias, qk_scale, sr_ratio, norm_eps, rngs=rngs)
        self.drop_path = drop_path
        self.norm2 = L.layer_norm(dim, norm_eps, rngs)
        self.mlp = L.Mlp(dim, int(dim * mlp_ratio), rngs=rngs)

    def __call__(self, x: jax.Array, sr_idx: jax.Array | None, *, train: bool = False,
                 rng: jax.Array | None = None) -> jax.Array:
        k1, k2 = L.split_key(rng, 2)
        x = x + L.drop_path(self.attn(self.norm1(x), sr_idx), self.drop_path, train, k1)
        return x + L.drop_path(self.mlp(self.norm2(x)), self.drop_path, train, k2)


class SparsePatchEmbed(nnx.Module):
    """``SparsePatchEmbed`` (``green_twins_models.py:175-206``): sparse conv k = s = 2 + LN on the
    visible 2x2 blocks. Variables ``proj`` (kernel ``(2, 2, C_in, C_out)``, bias), ``norm``.
    Call ``embed(x, idx)``: ``x`` ``(B, N, C_in)``, ``idx`` ``(Bm, N/4 * 4)`` -> ``(B, N/4, C_out)``
    in raster order of the new grid."""

    def __init__(self, cin: int, cout: int, norm_eps: float, *, rngs: nnx.Rngs):
        self.proj = _conv_holder(cin, cout, 2, rngs)
        self.norm = L.layer_norm(cout, norm_eps, rngs)

    def __call__(self, x: jax.Array, idx: jax.Array) -> jax.Array:
        return self.norm(sparse_conv_visible(x, idx, self.proj.kernel[...], self.proj.bias[...]))


class PosCNN(nnx.Module):
    """PEG ``PosCNN`` (``green_twins_models.py:279-290``): depthwise 3x3 conv (padding 1, bias) of
    the zero-filled canvas at the visible sites. Variables ``proj.0`` (kernel ``(3, 3, 1, C)``,
    bias). ``residual=False`` is the official GreenMIM behaviour (conv output only, ``green_twins_models.py:285-287``);
    ``True`` adds the input back (Twins/CPVT ``proj(x) + x``)."""

    def __init__(self, dim: int, residual: bool, *, rngs: nnx.Rngs):
        self.residual = residual
        conv = nnx.Conv(dim, dim, (3, 3), padding='SAME', feature_group_count=dim,
                        kernel_init=L.torch_default_kernel_init, bias_init=jax.nn.initializers.zeros, rngs=rngs,
                        kernel_metadata=sharding.axes(None, None, None, 'conv_out'),
                        bias_metadata=sharding.axes('bias'))
        self.proj = nnx.List([conv])

    def __call__(self, x: jax.Array, pos: jax.Array, resolution: tuple[int, int]) -> jax.Array:
        conv = self.proj[0]
        out = depthwise_conv_visible(x, pos, resolution, conv.kernel[...], conv.bias[...])
        return out + x if self.residual else out


class GreenTwinsTransformer(nnx.Module):
    """Twins-SVT (``ALTGVT``) encoder on the visible tokens (``green_twins_models.py:293-408``).

    Variables have the official names (``green_twins_models.py:293-408``): ``patch_embeds.0.{proj, norm}`` (dense conv),
    ``patch_embeds.{1..}.{proj, norm}`` (sparse conv k = 2), ``pos_block.{s}.proj.0``,
    ``blocks.{s}.{j}.*`` (:class:`LSABlock` even j, :class:`GSABlock` odd j), ``norm``.

    Args:
      img_size, patch_size, in_chans: image and stage-1 patch (pixels).
      embed_dims, num_heads, mlp_ratios, depths, sr_ratios, wss: per stage (official lists;
        only ``wss[0]`` is used, as the official code).
      qkv_bias, qk_scale, drop_path_rate, norm_eps: as the official constructor.
      mask_unit, len_keep: mask unit (pixels) and visible units.
      peg_residual: False (official, no residual) or True (``conv(x) + x``).
      remat: per block, :data:`jaxmim.layers.REMAT_POLICIES` (jaxmim argument; same numbers).

    Call ``encoder(images, plan, train=, rng=)``: images ``(B, H, W, C)``, plan ``(Bm, P)`` int32
    -> ``(B, len_keep, embed_dims[-1])`` final-norm features of the visible units, raster order.

    Raises:
      ValueError: per-stage lists of different lengths, or sizes that do not fit.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 4, in_chans: int = 3,
                 embed_dims: Sequence[int] = (64, 128, 256), num_heads: Sequence[int] = (1, 2, 4),
                 mlp_ratios: Sequence[float] = (4, 4, 4), depths: Sequence[int] = (4, 4, 4),
                 sr_ratios: Sequence[int] = (4, 2, 1), wss: Sequence[int] = (7, 7, 7), qkv_bias: bool = False,
                 qk_scale: float | None = None, drop_path_rate: float = 0.0, norm_eps: float = 1e-6,
                 mask_unit: int = 32, len_keep: int = 12, peg_residual: bool = False, remat: str = 'none', *,
                 rngs: nnx.Rngs):
        self.remat = L.check_remat(remat)
        embed_dims, num_heads, depths = tuple(embed_dims), tuple(num_heads), tuple(depths)
        mlp_ratios, sr_ratios, wss = tuple(mlp_ratios), tuple(sr_ratios), tuple(wss)
        n = len(depths)
        for field, v in (('embed_dims', embed_dims), ('num_heads', num_heads), ('mlp_ratios', mlp_ratios),
                         ('sr_ratios', sr_ratios)):
            if len(v) != n:
                raise ValueError(f'{field} {v} must have one entry per stage (depths {depths})')
        if not wss:
            raise ValueError('wss must name at least the stage-1 window size')
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.embed_dims, self.depths, self.num_heads, self.sr_ratios = embed_dims, depths, num_heads, sr_ratios
        self.window_size = int(wss[0])
        self.num_layers = n
        self.num_features = embed_dims[-1]
        self.peg_residual = peg_residual
        self.planner = GreenTwinsPlanner(img_size, patch_size, mask_unit, len_keep, self.window_size, n, embed_dims,
                                         sr_ratios)
        embeds = [swin_lib.PatchEmbed(img_size, patch_size, in_chans, embed_dims[0], True, norm_eps, rngs=rngs)]
        embeds[0].proj.bias[...] = jnp.zeros_like(embeds[0].proj.bias[...])  # CPVTV2._init_weights zeroes conv biases
        embeds += [SparsePatchEmbed(embed_dims[s - 1], embed_dims[s], norm_eps, rngs=rngs) for s in range(1, n)]
        self.patch_embeds = nnx.List(embeds)
        dpr = [float(r) for r in np.linspace(0, drop_path_rate, sum(depths), dtype=np.float32)]
        blocks, cur = [], 0
        for s in range(n):
            stage = []
            for j in range(depths[s]):
                args = (embed_dims[s], num_heads[s], mlp_ratios[s], qkv_bias, qk_scale, dpr[cur + j], norm_eps)
                stage.append(LSABlock(*args, rngs=rngs) if j % 2 == 0 else GSABlock(*args, sr_ratios[s], rngs=rngs))
            blocks.append(nnx.List(stage))
            cur += depths[s]
        self.blocks = nnx.List(blocks)
        self.pos_block = nnx.List([PosCNN(d, peg_residual, rngs=rngs) for d in embed_dims])
        self.norm = L.layer_norm(self.num_features, norm_eps, rngs)

    def __call__(self, images: jax.Array, plan: jax.Array, *, train: bool = False,
                 rng: jax.Array | None = None) -> jax.Array:
        pl = self.planner
        if plan.ndim != 2 or plan.shape[1] != pl.plan_length:
            raise ValueError(f'plan must have shape (1 or B, {pl.plan_length}), got {plan.shape}')
        x = self.patch_embeds[0](images)
        b, h, w, c = x.shape
        x = take_tokens(x.reshape(b, h * w, c), pl.get(plan, 'pos0'))
        x = sharding.constrain(x, 'batch', None, None)
        keys = L.split_key(rng, sum(self.depths))
        k = 0
        for s in range(self.num_layers):
            st = pl.stages[s]
            if s > 0:
                x = self.patch_embeds[s](x, pl.get(plan, f'embed{s}'))
            part = st.partitions[0]
            lsa = {'gid': pl.get(plan, f'gid{s}_0')}
            if part.mode == 'grouping':
                lsa.update(idx=pl.get(plan, f'idx{s}_0'), inv=pl.get(plan, f'inv{s}_0'))
            sr_idx = pl.get(plan, f'sr{s}') if self.sr_ratios[s] > 1 else None
            for j, blk in enumerate(self.blocks[s]):
                x = L.call_block(blk, x, *((part, lsa) if j % 2 == 0 else (sr_idx,)), train=train, rng=keys[k],
                                 remat=self.remat)
                k += 1
                if j == 0:
                    x = self.pos_block[s](x, pl.get(plan, f'pos{s}'), st.resolution)
            x = sharding.constrain(x, 'batch', None, None)
        return self.norm(x)

    def layer_id(self, name: str) -> int:
        """Layer-decay ids in SimMIM's Swin scheme transposed to Twins: ``patch_embeds.0`` -> 0;
        ``blocks.{s}.{j}`` -> ``sum(depths[:s]) + j + 1``; ``pos_block.{s}`` -> ``sum(depths[:s]) + 1``
        (it follows block 0); ``patch_embeds.{s}`` (s >= 1) -> ``sum(depths[:s])`` (it ends stage
        s-1, like Swin's downsample); anything else -> ``sum(depths) + 1``. (No official Twins
        fine-tuning recipe exists in GreenMIM; this is jaxmim's choice.)"""
        parts = name.split('.')
        if parts[0] == 'patch_embeds':
            s = int(parts[1])
            return 0 if s == 0 else sum(self.depths[:s])
        if parts[0] == 'blocks':
            return sum(self.depths[:int(parts[1])]) + int(parts[2]) + 1
        if parts[0] == 'pos_block':
            return sum(self.depths[:int(parts[1])]) + 1
        return sum(self.depths) + 1


_TWINS_L = dict(embed_dims=(128, 256, 512, 1024), num_heads=(4, 8, 16, 32), mlp_ratios=(4, 4, 4, 4),
                depths=(2, 2, 18, 2), wss=(7, 7, 7, 7), sr_ratios=(8, 4, 2, 1))
_DEMO = dict(img_size=32, patch_size=2, mask_unit=8, embed_dims=(32, 64, 128), num_heads=(2, 4, 8),
             mlp_ratios=(4, 4, 4), depths=(2, 2, 2), wss=(4, 4, 4), sr_ratios=(4, 2, 1), decoder_embed_dim=64,
             decoder_num_heads=4)


@register_model('green_mim_twins_large_patch4_dec512b1', **_TWINS_L)
@register_model('green_mim_twins_demo_patch2_32_dec64b1', **_DEMO,
                data_defaults=dict(image_size=32, eval_crop_ratio=1.0))
class GreenMIMTwins(GreenMIMSwin):
    """GreenMIM pre-training model with a visible-token Twins-SVT encoder (official
    ``MaskedAutoencoder`` around ``ALTGVT``, ``model_factory.py:142-175``).

    The wrapper (masking inputs ``noise`` / ``plan``, decoder, loss, ``mask_mode``,
    ``decoder_placement``, hooks) is :class:`jaxmim.methods.greenmim.swin.GreenMIMSwin`'s; only the
    encoder (:class:`GreenTwinsTransformer`) and the layer ids differ.

    Args:
      img_size, patch_size, in_chans, embed_dims, num_heads, mlp_ratios, depths, sr_ratios, wss,
        qkv_bias, qk_scale, drop_path_rate, norm_eps, peg_residual: the encoder.
      mask_unit, decoder_embed_dim, decoder_depth, decoder_num_heads, norm_pix_loss, mask_ratio,
        mask_mode, decoder_placement, attn_implementation, remat: as
        :class:`~jaxmim.methods.greenmim.swin.GreenMIMSwin` (``mlp_ratio`` of the decoder is 4, official).
      rngs: initialisation (official ``CPVTV2._init_weights`` then ``initialize_weights``): every
        Linear and dense conv kernel xavier-uniform on its flattened view, dense conv biases zero;
        the sparse convs (``patch_embeds.{1,2,3}.proj``, ``attn.sr``) keep spconv's own init
        (:class:`SparseConvWeights`).

    Call ``model(images, *, noise, plan=None, train=False, rng=None)`` -> ``{'loss', 'pred'
    (B, L, unit*unit*C), 'mask' (B, L), 'latent'}`` exactly as the Swin model.

    Raises:
      ValueError: a bad choice field, ratio, size or per-stage list.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 4, in_chans: int = 3,
                 embed_dims: Sequence[int] = (128, 256, 512, 1024), num_heads: Sequence[int] = (4, 8, 16, 32),
                 mlp_ratios: Sequence[float] = (4, 4, 4, 4), depths: Sequence[int] = (2, 2, 18, 2),
                 sr_ratios: Sequence[int] = (8, 4, 2, 1), wss: Sequence[int] = (7, 7, 7, 7),
                 qkv_bias: bool = True, qk_scale: float | None = None, drop_path_rate: float = 0.0,
                 norm_eps: float = 1e-6, peg_residual: bool = False, mask_unit: int = 32,
                 decoder_embed_dim: int = 512, decoder_depth: int = 1, decoder_num_heads: int = 16,
                 norm_pix_loss: bool = False, mask_ratio: float = 0.75, mask_mode: str = 'batch',
                 decoder_placement: str = 'raster', attn_implementation: str | None = None, remat: str = 'none', *,
                 rngs: nnx.Rngs):
        self._init_masking(img_size, in_chans, mask_unit, mask_ratio, mask_mode, norm_pix_loss, decoder_placement)
        self.remat = L.check_remat(remat)
        self.encoder = GreenTwinsTransformer(img_size, patch_size, in_chans, embed_dims, num_heads, mlp_ratios, depths,
                                             sr_ratios, wss, qkv_bias, qk_scale, drop_path_rate, norm_eps, mask_unit,
                                             self.len_keep, peg_residual, remat=remat, rngs=rngs)
        self._init_decoder(decoder_embed_dim, decoder_depth, decoder_num_heads, 4.0, norm_eps, rngs)
        ops.set_attn_implementation(self, attn_implementation)

    def layer_id(self, name: str) -> int:
        """:meth:`GreenTwinsTransformer.layer_id` for ``encoder.*``; decoder and ``mask_token``
        -> ``sum(depths) + 1``."""
        if name.startswith('encoder.'):
            return self.encoder.layer_id(name[len('encoder.'):])
        return sum(self.encoder.depths) + 1
