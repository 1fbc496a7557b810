"""GreenMIM: MAE-style pre-training of a hierarchical (Swin) encoder on visible tokens only.

Huang et al., "Green Hierarchical Vision Transformer for Masked Image Modeling", NeurIPS 2022
(arXiv 2205.13515); follows ``LayneH/GreenMIM@b981012 modeling/base_green_models.py``
(``MaskedAutoencoder``), ``modeling/green_swin_models.py`` (visible-token Swin),
``modeling/group_window_attention.py`` and ``modeling/model_factory.py:25-140``. The method block
is :class:`jaxmim.methods.greenmim.method.GreenMIMMethod`.

Static shapes: one 32-px mask unit grid, ``len_keep = int(L (1 - mask_ratio))`` visible units, so
every stage has a fixed number of visible tokens; the mask-dependent index work (window ids,
knapsack grouping, merge indices) is one int32 ``plan`` vector of fixed length per sample made
in NumPy by :class:`jaxmim.methods.greenmim.grouping.GreenSwinPlanner` (static group size and a
provable bound on the group count). Masking inputs (``input_keys``): ``noise`` and ``plan``;
without ``plan`` the model computes it from ``noise`` with a host callback.

Mask modes (``mask_mode``): ``'batch'`` (official: one mask shared by the batch, taken from
row 0 of ``noise``/``plan``; indices, masks and biases are built once for the batch) and
``'sample'`` (every sample its own mask; the same static shapes, per-sample gathers and
per-sample bias tensors).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmim import layers as L
from jaxmim import ops, sharding
from jaxmim.methods.greenmim.grouping import GreenSwinPlanner, group_attention_logits_bias, planner_pool
from jaxmim.methods.mae.vit import mae_loss
from jaxmim.models import swin as swin_lib
from jaxmim.models.stacking import check_scan, run_blocks
from jaxmim.models.pos_embed import get_2d_sincos_pos_embed
from jaxmim.models.vit import Block, xavier_uniform, xavier_uniform_flat
from jaxmim.registry import Backbone, register_model

__all__ = ['GreenSwinBlock', 'GreenSwinTransformer', 'GreenMIMSwin', 'take_tokens',
           'MASK_MODES', 'DECODER_PLACEMENTS', 'MERGE_ORDERS']

MASK_MODES = ('batch', 'sample')
DECODER_PLACEMENTS = ('raster', 'official')
MERGE_ORDERS = ('swin', 'v1')


def take_tokens(x: jax.Array, idx: jax.Array) -> jax.Array:
    """Gathers tokens: ``x`` ``(B, N, ...)``, ``idx`` ``(Bm, K)`` int with ``Bm`` 1 (shared by the
    batch) or B (per sample) -> ``(B, K, ...)``."""
    if idx.shape[0] == 1:
        return jnp.take(x, idx[0], axis=1)
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def _check_choice(field: str, value: str, accepted: Sequence[str]) -> None:
    if value not in accepted:
        raise ValueError(f'{field} must be one of {tuple(accepted)}, got {value!r}')


class GreenSwinBlock(nnx.Module):
    """Swin block on the visible tokens with Group Window Attention.

    Variables as :class:`jaxmim.models.swin.SwinTransformerBlock` (``norm1``, ``attn.{qkv, proj,
    relative_position_bias_table}``, ``norm2``, ``mlp.{fc1, fc2}``), so dense Swin weights load
    unchanged. Call ``block(x, part, arrays, train=, rng=)`` with ``x`` ``(B, N, C)`` visible tokens
    in raster order; ``part`` the static :class:`~jaxmim.methods.greenmim.grouping.WindowGrouping`;
    ``arrays`` a dict with ``gid`` ``(Bm, K)``, ``coords`` ``(Bm, N, 2)`` and, in grouping mode,
    ``idx`` ``(Bm, nG g)`` / ``inv`` ``(Bm, N)``. Returns ``(B, N, C)``.
    Source: ``green_swin_models.py:40-98`` and ``group_window_attention.py:67-105, :283-295``.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, mlp_ratio: float, qkv_bias: bool,
                 qk_scale: float | None, drop_path: float, norm_eps: float, *, rngs: nnx.Rngs):
        self.window_size = window_size
        self.norm1 = L.layer_norm(dim, norm_eps, rngs)
        self.attn = swin_lib.WindowAttention(dim, window_size, num_heads, qkv_bias, qk_scale, rngs=rngs)
        self.drop_path = drop_path
        self.norm2 = L.layer_norm(dim, norm_eps, rngs)
        self.mlp = L.Mlp(dim, int(dim * mlp_ratio), rngs=rngs)

    def attend(self, qkv: jax.Array, term: jax.Array) -> jax.Array:
        """Multi-head attention core per group, projections excluded: ``qkv`` ``(B, G, n, 3C)``
        (the ``attn.qkv`` output), additive ``term`` ``(Bm, G, nH or 1, n, n)`` -> ``(B, G, n, C)``
        before ``attn.proj``. q scaled by head_dim^-0.5 before ``q k^T``; softmax in float32
        (:func:`jaxmim.ops.attention` with ``attn.attn_implementation``)."""
        a = self.attn
        b, g, n, c3 = qkv.shape
        qkv = qkv.reshape(b, g, n, 3, a.num_heads, c3 // (3 * a.num_heads))
        out = ops.attention(qkv[..., 0, :, :] * a.scale, qkv[..., 1, :, :], qkv[..., 2, :, :], scale=1.0, bias=term,
                            implementation=a.attn_implementation)
        return out.reshape(b, g, n, c3 // 3)

    def grouped_attention(self, y: jax.Array, term: jax.Array, idx: jax.Array | None = None,
                          inv: jax.Array | None = None, num_groups: int = 1) -> jax.Array:
        """Attention of visible tokens ``y`` ``(B, N, C)`` in groups -> ``(B, N, C)``.

        ``qkv`` and ``proj`` run on the N real tokens; only the ``q k^T`` / ``attn v`` core runs
        on the padded group layout: ``idx`` ``(Bm, nG g)`` gathers ``qkv`` into ``num_groups``
        groups, ``inv`` ``(Bm, N)`` scatters the outputs back, and pad slots (masked out by
        ``term``) cost only their share of the ``g^2`` terms. Without ``idx``, one group of all N
        tokens (the masked single-group mode). ``term`` ``(Bm, nG, nH or 1, g, g)`` additive.
        """
        a = self.attn
        qkv = a.qkv(y)
        if idx is None:
            return a.proj(self.attend(qkv[:, None], term)[:, 0])
        b, n, c3 = qkv.shape
        qkv = take_tokens(qkv, idx).reshape(b, num_groups, -1, c3)
        out = self.attend(qkv, term).reshape(b, -1, c3 // 3)
        return a.proj(take_tokens(out, inv))

    def window_attention(self, y: jax.Array, part, arrays: dict[str, jax.Array]) -> jax.Array:
        """Group Window Attention of normalised visible tokens ``y`` ``(B, N, C)`` (raster order)
        -> ``(B, N, C)``: groups of windows (grouping mode) or one group of all tokens (masking
        mode), attention under the additive window mask and bias (:meth:`grouped_attention`)."""
        gid, coords = arrays['gid'], arrays['coords']
        bm = gid.shape[0]
        table = self.attn.relative_position_bias_table[...]
        if part.mode == 'grouping':
            ng, gs = part.num_groups, part.group_size
            cg = jnp.take_along_axis(coords, arrays['idx'][..., None], axis=1).reshape(bm, ng, gs, 2)
            term = group_attention_logits_bias(table, gid.reshape(bm, ng, gs), cg, part.window_size)
            return self.grouped_attention(y, term, arrays['idx'], arrays['inv'], ng)
        term = group_attention_logits_bias(table, gid[:, None], coords[:, None], part.window_size)
        return self.grouped_attention(y, term)

    def __call__(self, x: jax.Array, part, arrays: dict[str, jax.Array], *, train: bool = False,
                 rng: jax.Array | None = None) -> jax.Array:
        k_dp1, k_mlp, k_dp2 = L.split_key(rng, 3)
        out = self.window_attention(self.norm1(x), part, arrays)
        x = x + L.drop_path(out, self.drop_path, train, k_dp1)
        return x + L.drop_path(self.mlp(self.norm2(x)), self.drop_path, train, k_dp2)


class GreenBasicLayer(nnx.Module):
    """One stage: ``blocks`` (even ones on the regular partition, odd ones on the shifted one when
    the stage shifts) and ``downsample`` (:class:`jaxmim.models.swin.PatchMerging` variables)."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float,
                 qkv_bias: bool, qk_scale: float | None, drop_path: Sequence[float], norm_eps: float,
                 downsample: bool, *, rngs: nnx.Rngs):
        self.blocks = nnx.List([GreenSwinBlock(dim, num_heads, window_size, mlp_ratio, qkv_bias, qk_scale,
                                               drop_path[i], norm_eps, rngs=rngs) for i in range(depth)])
        self.downsample = swin_lib.PatchMerging(dim, norm_eps, rngs=rngs) if downsample else None


class GreenSwinTransformer(nnx.Module):
    """Swin encoder that runs on the visible tokens only (``green_swin_models.py:287-407``).

    Variables have the official Swin names (``patch_embed.{proj, norm}``,
    ``layers.{s}.blocks.{i}.*``, ``layers.{s}.downsample.{norm, reduction}``, ``norm``); no
    ``head``, no absolute position embedding (``ape=False``).

    Args:
      img_size, patch_size, in_chans, embed_dim, depths, num_heads, window_size, mlp_ratio,
        qkv_bias, qk_scale, drop_path_rate, norm_eps: as the official constructor
        (``green_swin_models.py:287-407``).
      mask_unit: mask-unit side in pixels (32).
      len_keep: visible units.
      merge_order: ``'swin'`` concatenates the 2x2 neighbours of a merge in Swin's order
        (0,0),(1,0),(0,1),(1,1) (HEAD); ``'v1'`` in the row-first order (0,0),(0,1),(1,0),(1,1) of
        the first release, which the released checkpoints were trained with
        (``LayneH/GreenMIM@e33a941 models_swin.py:244-246`` vs ``green_swin_models.py:134-137``).
      remat: per block, :data:`jaxmim.layers.REMAT_POLICIES` (jaxmim argument; same numbers).
      scan_blocks: each stage's blocks as one ``jax.lax.scan`` (by pairs where the stage alternates
        regular and shifted partitions; jaxmim argument; same parameters and numbers,
        :func:`jaxmim.models.stacking.run_blocks`).

    Call ``encoder(images, plan, train=, rng=)``: images ``(B, H, W, C)``, plan ``(Bm, P)``
    int32 (Bm 1 or B) -> ``(B, len_keep, num_features)`` final-norm features of the visible units
    in raster order.

    Raises:
      ValueError: ``depths`` and ``num_heads`` differ in length, a bad ``merge_order``/``remat``/``scan_blocks``,
        a geometry :class:`GreenSwinPlanner` rejects; on call, ``plan`` not of shape ``(1 or B, plan_length)``.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96,
                 depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 window_size: int = 7, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: float | None = None, drop_path_rate: float = 0.0, norm_eps: float = 1e-6,
                 mask_unit: int = 32, len_keep: int = 12, merge_order: str = 'swin', remat: str = 'none',
                 scan_blocks: bool = False, *, rngs: nnx.Rngs):
        depths, num_heads = tuple(depths), tuple(num_heads)
        self.remat, self.scan_blocks = L.check_remat(remat), check_scan(scan_blocks)
        if len(depths) != len(num_heads):
            raise ValueError(f'depths {depths} and num_heads {num_heads} must have the same length')
        _check_choice('merge_order', merge_order, MERGE_ORDERS)
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.embed_dim, self.depths, self.num_heads, self.window_size = embed_dim, depths, num_heads, window_size
        self.num_layers = len(depths)
        self.num_features = embed_dim * 2 ** (self.num_layers - 1)
        self.merge_order = merge_order
        dims = [embed_dim * 2 ** i for i in range(self.num_layers)]
        self.planner = GreenSwinPlanner(img_size, patch_size, mask_unit, len_keep, window_size, depths, dims)
        self.patch_embed = swin_lib.PatchEmbed(img_size, patch_size, in_chans, embed_dim, True, norm_eps, rngs=rngs)
        dpr = [float(r) for r in np.linspace(0, drop_path_rate, sum(depths), dtype=np.float32)]
        self.layers = nnx.List([
            GreenBasicLayer(dims[i], depths[i], num_heads[i], self.planner.stages[i].partitions[0].window_size,
                            mlp_ratio, qkv_bias, qk_scale, dpr[sum(depths[:i]):sum(depths[:i + 1])], norm_eps,
                            downsample=i < self.num_layers - 1, rngs=rngs)
            for i in range(self.num_layers)])
        self.norm = L.layer_norm(self.num_features, norm_eps, rngs)

    def merge(self, layer: GreenBasicLayer, x: jax.Array, merge_idx: jax.Array) -> jax.Array:
        """Patch merging on visible tokens: ``x`` ``(B, N, C)``, ``merge_idx`` ``(Bm, N' * 4)`` ->
        ``(B, N', 2C)`` (``green_swin_models.py:101-151``; equals dense merging on a zero-filled
        canvas followed by the gather, since merge windows are all-visible or all-masked)."""
        b, _, c = x.shape
        x4 = take_tokens(x, merge_idx).reshape(b, -1, 4, c)
        if self.merge_order == 'v1':
            x4 = x4[:, :, (0, 2, 1, 3)]
        x4 = x4.reshape(b, -1, 4 * c)
        return layer.downsample.reduction(layer.downsample.norm(x4))

    def stage_arrays(self, plan: jax.Array, stage: int, partition: int) -> dict[str, jax.Array]:
        """The index arrays block ``partition`` (0 regular, 1 shifted) of ``stage`` takes, sliced
        from ``plan`` ``(Bm, P)``: ``gid``, ``coords`` ``(Bm, N, 2)`` (h, w) and in grouping mode
        ``idx``, ``inv`` (see :class:`GreenSwinPlanner`)."""
        pl, st = self.planner, self.planner.stages[stage]
        pos = pl.get(plan, f'pos{stage}')
        arrays = {'gid': pl.get(plan, f'gid{stage}_{partition}'),
                  'coords': jnp.stack([pos // st.resolution[1], pos % st.resolution[1]], axis=-1)}
        if st.partitions[partition].mode == 'grouping':
            arrays['idx'] = pl.get(plan, f'idx{stage}_{partition}')
            arrays['inv'] = pl.get(plan, f'inv{stage}_{partition}')
        return arrays

    def __call__(self, images: jax.Array, plan: jax.Array, *, train: bool = False,
                 rng: jax.Array | None = None) -> jax.Array:
        pl = self.planner
        if plan.ndim != 2 or plan.shape[1] != pl.plan_length:
            raise ValueError(f'plan must have shape (1 or B, {pl.plan_length}), got {plan.shape}')
        x = self.patch_embed(images)
        b, h, w, c = x.shape
        x = sharding.constrain(take_tokens(x.reshape(b, h * w, c), pl.get(plan, 'pos0')), 'batch', None, None)
        keys = L.split_key(rng, sum(self.depths))
        k = 0
        for s, layer in enumerate(self.layers):
            parts = pl.stages[s].partitions      # block j runs on partition j % len(parts)
            n = len(layer.blocks)
            x = run_blocks(layer.blocks, x, train=train, rng=None, keys=keys[k:k + n], remat=self.remat,
                           scan=self.scan_blocks, period=len(parts),
                           position_args=[(part, self.stage_arrays(plan, s, p)) for p, part in enumerate(parts)])
            k += n
            if layer.downsample is not None:
                x = self.merge(layer, x, pl.get(plan, f'merge{s}'))
            x = sharding.constrain(x, 'batch', None, None)
        return self.norm(x)


def _xavier_reinit(module: nnx.Module, key: jax.Array) -> None:
    """Official ``MaskedAutoencoder.initialize_weights`` (``base_green_models.py:94-124``): every
    Linear kernel xavier-uniform (bias 0, already), conv kernels xavier on the flattened view; a
    conv whose class sets ``keeps_own_init`` (the Twins encoder's spconv weights) is left alone."""
    for i, (_, m) in enumerate(nnx.iter_graph(module)):
        if isinstance(m, nnx.Linear):
            m.kernel[...] = xavier_uniform(jax.random.fold_in(key, i), m.kernel.shape)
        elif isinstance(m, nnx.Conv) and not getattr(type(m), 'keeps_own_init', False):
            m.kernel[...] = xavier_uniform_flat(jax.random.fold_in(key, i), m.kernel.shape)


_SWIN_B = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))
_SWIN_L = dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48))
_DEMO = dict(img_size=32, patch_size=2, mask_unit=8, embed_dim=32, depths=(2, 2, 2), num_heads=(2, 4, 8),
             window_size=4, decoder_embed_dim=64, decoder_num_heads=4)


@register_model('green_mim_swin_base_patch4_dec512b1', **_SWIN_B, window_size=7,
                classifier='swin_base_patch4_window7_224')
@register_model('green_mim_swin_base_patch4_win14_dec512b1', **_SWIN_B, window_size=14,
                classifier='swin_base_patch4_window14_224')
@register_model('green_mim_swin_large_patch4_win14_dec512b1', **_SWIN_L, window_size=14,
                classifier='swin_large_patch4_window14_224')
@register_model('green_mim_swin_demo_patch2_32_dec64b1', **_DEMO,
                data_defaults=dict(image_size=32, eval_crop_ratio=1.0), classifier='swin_demo_patch2_window4_32')
class GreenMIMSwin(nnx.Module, Backbone):
    """GreenMIM pre-training model with a visible-token Swin encoder (official
    ``MaskedAutoencoder`` around ``SwinTransformer``, ``model_factory.py:25-140``).

    Args:
      img_size, patch_size, in_chans, embed_dim, depths, num_heads, window_size, mlp_ratio,
        qkv_bias, qk_scale, drop_path_rate, norm_eps, merge_order: the encoder
        (:class:`GreenSwinTransformer`).
      mask_unit: mask unit / decoder patch in pixels (the official ``patch_size=32``).
      decoder_embed_dim, decoder_depth, decoder_num_heads: decoder (512, 1, 16).
      norm_pix_loss: per-unit normalised target (unbiased variance, eps 1e-6).
      mask_ratio: fraction of units removed; ``len_keep = int(L (1 - mask_ratio))`` (12 of 49).
      mask_mode: ``'batch'`` (one mask per batch, official) or ``'sample'``.
      decoder_placement: ``'raster'`` (default, correct) puts the encoder's raster-ordered visible
        features at their units; ``'official'`` reproduces the official concatenate-and-unshuffle
        with ``ids_restore``, which permutes visible features among visible units
        (``base_green_models.py:192-202``; the released checkpoints were trained with it).
      attn_implementation: :data:`jaxmim.ops.ATTN_IMPLEMENTATIONS` (encoder and decoder).
      remat: per encoder and decoder block, :data:`jaxmim.layers.REMAT_POLICIES` (same numbers).
      scan_blocks: the encoder's stages as scans (:class:`GreenSwinTransformer`).
      rngs: initialisation (every Linear xavier-uniform, ``base_green_models.py:94-124``).

    Variables: ``encoder.*`` (official Swin names), ``decoder_embed``, ``mask_token`` (1,1,Dd),
    ``decoder_pos_embed`` (1, L, Dd) fixed sin-cos :class:`jaxmim.layers.Buffer`,
    ``decoder_blocks.{i}.*``, ``decoder_norm``, ``decoder_pred`` (Dd -> unit*unit*C).

    Call ``model(images, *, noise, plan=None, train=False, rng=None)``: images ``(B, H, W, C)``
    (normalised, also the target); noise ``(1, L)`` or ``(B, L)`` float32 (uniform; the
    ``len_keep`` smallest are kept, ``argsort`` stable); ``plan`` ``(1 or B, P)`` int32 from
    :meth:`host_inputs` (computed from ``noise`` by a host callback when None). In ``'batch'``
    mode only row 0 of ``noise``/``plan`` is used. Returns ``loss`` (scalar float32), ``pred``
    ``(B, L, unit*unit*C)`` raster order, ``mask`` ``(B, L)`` float32 (1 = removed), ``latent``
    ``(B, len_keep, D)``.

    Raises:
      ValueError: a bad choice field, ratio, image or noise shape.
    """

    input_keys: tuple[str, ...] = ('noise', 'plan')
    planner_workers: int = 0     # host processes for per-sample plans (GreenMIMMethod.build sets it)

    def __init__(self, img_size: int = 224, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 128,
                 depths: Sequence[int] = (2, 2, 18, 2), num_heads: Sequence[int] = (4, 8, 16, 32),
                 window_size: int = 7, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: float | None = None, drop_path_rate: float = 0.0, norm_eps: float = 1e-6,
                 mask_unit: int = 32, decoder_embed_dim: int = 512, decoder_depth: int = 1,
                 decoder_num_heads: int = 16, norm_pix_loss: bool = False, mask_ratio: float = 0.75,
                 mask_mode: str = 'batch', decoder_placement: str = 'raster', merge_order: str = 'swin',
                 attn_implementation: str | None = None, remat: str = 'none', scan_blocks: bool = False, *,
                 rngs: nnx.Rngs):
        self._init_masking(img_size, in_chans, mask_unit, mask_ratio, mask_mode, norm_pix_loss, decoder_placement)
        self.remat = L.check_remat(remat)
        self.encoder = GreenSwinTransformer(img_size, patch_size, in_chans, embed_dim, depths, num_heads, window_size,
                                            mlp_ratio, qkv_bias, qk_scale, drop_path_rate, norm_eps, mask_unit,
                                            self.len_keep, merge_order, remat=remat, scan_blocks=scan_blocks, rngs=rngs)
        self._init_decoder(decoder_embed_dim, decoder_depth, decoder_num_heads, mlp_ratio, norm_eps, rngs)
        ops.set_attn_implementation(self, attn_implementation)

    def _init_masking(self, img_size: int, in_chans: int, mask_unit: int, mask_ratio: float, mask_mode: str,
                      norm_pix_loss: bool, decoder_placement: str) -> None:
        """Checks and stores the wrapper's masking settings (shared with the Twins encoder,
        :mod:`jaxmim.methods.greenmim.twins`); sets ``grid_size``, ``num_patches``, ``len_keep``.

        Raises:
          ValueError: a bad choice field, ratio or unit size.
        """
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f'mask_ratio must be in [0, 1), got {mask_ratio}')
        _check_choice('mask_mode', mask_mode, MASK_MODES)
        _check_choice('decoder_placement', decoder_placement, DECODER_PLACEMENTS)
        if img_size % mask_unit:
            raise ValueError(f'mask_unit {mask_unit} must divide img_size {img_size}')
        self.img_size, self.in_chans, self.patch_size = img_size, in_chans, mask_unit
        self.mask_unit, self.mask_ratio, self.mask_mode = mask_unit, mask_ratio, mask_mode
        self.norm_pix_loss, self.decoder_placement = norm_pix_loss, decoder_placement
        self.grid_size = img_size // mask_unit
        self.num_patches = self.grid_size ** 2
        self.len_keep = int(self.num_patches * (1 - mask_ratio))
        if self.len_keep < 1:
            raise ValueError(f'mask_ratio {mask_ratio} keeps no unit of {self.num_patches}')

    def _init_decoder(self, decoder_embed_dim: int, decoder_depth: int, decoder_num_heads: int, mlp_ratio: float,
                      norm_eps: float, rngs: nnx.Rngs) -> None:
        """Builds the MAE decoder after ``self.encoder`` (width ``encoder.num_features``) and
        re-initialises every encoder Linear/Conv xavier-uniform (``base_green_models.py:60-124``)."""
        enc_dim = self.encoder.num_features
        self.decoder_embed = L.linear(enc_dim, decoder_embed_dim, rngs, kernel_init=xavier_uniform,
                                      axes=('embed', 'embed'))
        self.mask_token = nnx.Param(L.trunc_normal_02(rngs.params(), (1, 1, decoder_embed_dim)),
                                    **sharding.axes(None, None, 'embed'))
        self.decoder_pos_embed = L.Buffer(jnp.asarray(get_2d_sincos_pos_embed(decoder_embed_dim, self.grid_size))[None],
                                          **sharding.axes(None, 'tokens', 'embed'))
        self.decoder_blocks = nnx.List([
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_eps=norm_eps,
                  kernel_init=xavier_uniform, rngs=rngs) for _ in range(decoder_depth)])
        self.decoder_norm = L.layer_norm(decoder_embed_dim, norm_eps, rngs)
        self.decoder_pred = L.linear(decoder_embed_dim, self.mask_unit ** 2 * self.in_chans, rngs,
                                     kernel_init=xavier_uniform, axes=('embed', 'pixels'))
        _xavier_reinit(self.encoder, rngs.params())

    # -- masking inputs --------------------------------------------------------------------

    @property
    def planner(self) -> GreenSwinPlanner:
        """The encoder's static layout and host-side index computation."""
        return self.encoder.planner

    def _noise_rows(self, batch_size: int) -> int:
        return 1 if self.mask_mode == 'batch' else batch_size

    def _plan_callback(self, noise: jax.Array) -> jax.Array:
        rows = noise.shape[0]
        shape = jax.ShapeDtypeStruct((rows, self.planner.plan_length), jnp.int32)
        return jax.pure_callback(self._plans, shape, noise, vmap_method='sequential')

    def _plans(self, noise) -> np.ndarray:
        """``(R, L)`` noise -> ``(R, P)`` int32 plans, on the planner pool when ``planner_workers
        >= 2`` and R > 1 (bit-identical either way)."""
        noise = np.asarray(noise)
        if self.planner_workers > 1 and noise.shape[0] > 1:
            return planner_pool(self.planner, self.planner_workers).plans(noise)
        return self.planner.plans(noise, per_sample=True)

    def sample_inputs(self, key: jax.Array, batch_size: int) -> dict[str, jax.Array]:
        """``{'noise': U[0, 1) (1 or B, L), 'plan': (1 or B, P) int32}``: noise drawn on device,
        plan computed from it on the host by ``jax.pure_callback`` (static shapes)."""
        noise = jax.random.uniform(key, (self._noise_rows(batch_size), self.num_patches), jnp.float32)
        return {'noise': noise, 'plan': self._plan_callback(noise)}

    def host_inputs(self, rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
        """The input pipeline's ``{'noise': (B, L) float32, 'plan': (B, P) int32}``; in ``'batch'``
        mode one noise row is drawn and repeated (rows must stay B for batch sharding). In
        ``'sample'`` mode with ``planner_workers >= 2`` the B plans are made by a process pool
        (bit-identical to the in-process plans), as in the step's host callback."""
        noise = rng.random((self._noise_rows(batch_size), self.num_patches), dtype=np.float32)
        plan = self._plans(noise)
        if noise.shape[0] != batch_size:
            noise, plan = (np.repeat(a, batch_size, axis=0) for a in (noise, plan))
        return {'noise': noise, 'plan': plan}

    # -- forward ---------------------------------------------------------------------------

    def forward_decoder(self, latent: jax.Array, noise: jax.Array, pos: jax.Array) -> jax.Array:
        """Decoder embedding, mask tokens, sin-cos positions, blocks, prediction
        (``base_green_models.py:188-211``): ``latent`` ``(B, len_keep, D)`` raster-ordered, ``pos``
        ``(Bm, len_keep)`` their unit indices -> ``(B, L, unit*unit*C)``."""
        x = sharding.constrain(self.decoder_embed(latent), 'batch', None, None)
        b, n, d = x.shape
        tokens = jnp.broadcast_to(self.mask_token[...].astype(x.dtype), (b, self.num_patches, d))
        if self.decoder_placement == 'raster':
            if pos.shape[0] == 1:
                x = tokens.at[:, pos[0]].set(x)
            else:
                x = tokens.at[jnp.arange(b)[:, None], pos].set(x)
        else:   # official: cat([x_vis, mask_tokens]) unshuffled with ids_restore of the noise
            ids_restore = jnp.argsort(jnp.argsort(noise, axis=1, stable=True), axis=1, stable=True)
            x = jnp.concatenate([x, tokens[:, n:]], axis=1)
            x = take_tokens(x, ids_restore)
        x = x + self.decoder_pos_embed[...].astype(x.dtype)
        for blk in self.decoder_blocks:
            x = L.call_block(blk, x, train=False, rng=None, remat=self.remat)
        return sharding.constrain(self.decoder_pred(self.decoder_norm(x)), 'batch', None, None)

    def __call__(self, images: jax.Array, *, noise: jax.Array, plan: jax.Array | None = None,
                 train: bool = False, rng: jax.Array | None = None) -> dict[str, Any]:
        b = images.shape[0]
        if noise.ndim != 2 or noise.shape[1] != self.num_patches or noise.shape[0] not in (1, b):
            raise ValueError(f'noise must have shape (1 or B, L) = (1 or {b}, {self.num_patches}), got {noise.shape}')
        if self.mask_mode == 'batch':
            noise = noise[:1]
            plan = plan[:1] if plan is not None else None
        elif noise.shape[0] != b:
            raise ValueError(f"mask_mode 'sample' needs noise of shape (B, L) = {(b, self.num_patches)}, "
                             f'got {noise.shape}')
        if plan is None:
            plan = self._plan_callback(noise)
        plan = plan.astype(jnp.int32)
        latent = self.encoder(images, plan, train=train, rng=rng)
        pos = self.planner.get(plan, f'pos{self.encoder.num_layers - 1}')
        pred = self.forward_decoder(latent, noise, pos).astype(jnp.float32)
        ranks = jnp.argsort(jnp.argsort(noise, axis=1, stable=True), axis=1, stable=True)
        mask = jnp.broadcast_to((ranks >= self.len_keep).astype(jnp.float32), (b, self.num_patches))
        loss = mae_loss(images, pred, mask, self.mask_unit, self.norm_pix_loss)
        return {'loss': loss, 'pred': pred, 'mask': mask, 'latent': latent}

    # -- hooks -----------------------------------------------------------------------------

    def no_weight_decay(self) -> tuple[str, ...]:
        """Names containing ``position_bias`` or ``token`` (``main_pretrain.py:176-178``), besides
        the universal 1-D / bias rule."""
        return ('*position_bias*', '*token*')

    def layer_id(self, name: str) -> int:
        """SimMIM's Swin ids (:meth:`jaxmim.models.swin.SwinTransformer.layer_id`) for
        ``encoder.*``; everything else (decoder, ``mask_token``) -> ``sum(depths) + 1``."""
        if name.startswith('encoder.'):
            return swin_lib.SwinTransformer.layer_id(self.encoder, name[len('encoder.'):])
        return sum(self.encoder.depths) + 1

    @property
    def num_layer_ids(self) -> int:
        """``sum(depths) + 2``."""
        return sum(self.encoder.depths) + 2

