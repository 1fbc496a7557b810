"""Swin Transformer (Liu et al., 2021) in Flax NNX, at numerical parity with microsoft/SimMIM.

Follows ``microsoft/SimMIM@d3e29bc models/swin_transformer.py`` (the classifier SimMIM
fine-tunes) and ``models/simmim.py`` ``SwinTransformerForSimMIM`` (the pre-training
encoder). Attribute names mirror the official PyTorch names (``patch_embed.proj``,
``layers.{i}.blocks.{j}.attn.qkv``, ``layers.{i}.downsample.reduction`` ...), so the
official state-dict maps onto the NNX state by name (see ``convert/official.py``).

Layout: images are ``(B, H, W, C)`` float arrays (NHWC); tokens are kept as
``(B, h, w, C)`` maps between blocks. Hidden details (all in
``microsoft/SimMIM@d3e29bc models/swin_transformer.py``): LayerNorm eps 1e-5 with biased
variance (PyTorch default ``nn.LayerNorm``), exact erf GELU (``Mlp``, :15-31), q scaled by
head_dim^-0.5 before q·kᵀ (:124-125), relative-position index from an 'ij' meshgrid (:94-104),
shift mask filled with -100 (:209-232), roll by -s before and +s after attention (:245, :262),
window clamped to the stage resolution when smaller (:193-197), PatchMerging concatenation
order (0,0),(1,0),(0,1),(1,1) (:319-322). The relative-position index
and the shift mask are static NumPy constants, never variables (:mod:`jaxmim.models.windows`);
SimMIM's resize of the relative-position tables to another window size is
:func:`jaxmim.models.pos_embed.resize_rel_pos_table`.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmim import layers as L
from jaxmim import ops, sharding
from jaxmim.models.pos_embed import bicubic_resize, resize_rel_pos_table
from jaxmim.models.stacking import check_scan, run_blocks
from jaxmim.models.windows import (relative_position_index, shifted_window_mask, stage_window, window_partition,
                                   window_reverse)
from jaxmim.registry import Backbone, check_feature_images, check_out_indices, register_model


# ----------------------------------------------------------------------------------------
# Modules.
# ----------------------------------------------------------------------------------------

class WindowAttention(nnx.Module):
    """Window multi-head self-attention with a learned relative-position bias.

    Input ``(B*nW, N, C)`` tokens of windows (N = window_size^2), optional mask
    ``(nW, N, N)`` added per window; output ``(B*nW, N, C)``. The fused ``qkv`` Dense has
    output channels ordered ``s*C + h*head_dim + d`` (s in q, k, v). ``q * scale``, then
    :func:`jaxmim.ops.attention` with bias + mask as its additive term (softmax in float32);
    ``attn_implementation``: :data:`jaxmim.ops.ATTN_IMPLEMENTATIONS`.
    Source: ``models/swin_transformer.py:66-145``.

    Raises:
      ValueError: ``dim`` not divisible by ``num_heads``, or a bad ``attn_implementation``.
    """

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True,
                 qk_scale: float | None = None, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 *, attn_implementation: str | None = None, rngs: nnx.Rngs):
        if dim % num_heads:
            raise ValueError(f'dim {dim} must be divisible by num_heads {num_heads}')
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nnx.Param(
            L.trunc_normal_02(rngs.params(), ((2 * window_size - 1) ** 2, num_heads)), **sharding.axes('relpos', None))
        self.qkv = L.linear(dim, 3 * dim, rngs, use_bias=qkv_bias, axes=('embed', 'heads'))
        self.proj = L.linear(dim, dim, rngs, axes=('heads', 'embed'))
        self.attn_drop, self.proj_drop = attn_drop, proj_drop
        self.attn_implementation = ops.check_attn_implementation(attn_implementation)

    def __call__(self, x: jax.Array, mask: np.ndarray | None = None, *, train: bool = False,
                 rng: jax.Array | None = None) -> jax.Array:
        bw, n, c = x.shape
        k_attn, k_proj = L.split_key(rng, 2)
        index = relative_position_index(self.window_size).reshape(-1)
        bias = self.relative_position_bias_table[...][index].reshape(n, n, -1).transpose(2, 0, 1)   # (nH, N, N)
        lead = (bw,) if mask is None else (bw // mask.shape[0], mask.shape[0])     # (B*nW,) or (B, nW)
        if mask is not None:                                # the additive -100 shift mask, (nW, 1, N, N)
            bias = bias + jnp.asarray(mask)[:, None]
        qkv = self.qkv(x).reshape(*lead, n, 3, self.num_heads, c // self.num_heads)
        out = ops.attention(qkv[..., 0, :, :] * self.scale, qkv[..., 1, :, :], qkv[..., 2, :, :], scale=1.0,
                            bias=bias, implementation=self.attn_implementation,
                            dropout_rate=self.attn_drop if train else 0.0, dropout_rng=k_attn)
        return L.dropout(self.proj(out.reshape(bw, n, c)), self.proj_drop, train, k_proj)


class SwinTransformerBlock(nnx.Module):
    """Pre-norm Swin block: (shifted) window attention and MLP, each with a residual.

    Input and output ``(B, H, W, C)`` with ``(H, W) = input_resolution``. ``window_size``
    and ``shift_size`` are given after the clamp rule (:func:`~jaxmim.models.windows.stage_window`);
    ``feature_shift`` (default ``shift_size``) is the shift of the detection backbone's block,
    which has no clamp rule (:meth:`forward_padded`). Source: ``models/swin_transformer.py:164-271``.

    Raises:
      ValueError: ``window_size`` does not divide ``input_resolution``, ``feature_shift`` outside
        ``[0, window_size)``, or ``dim`` not divisible by ``num_heads``.
    """

    def __init__(self, dim: int, input_resolution: tuple[int, int], num_heads: int,
                 window_size: int, shift_size: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: float | None = None, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0, norm_eps: float = 1e-5, *, feature_shift: int | None = None,
                 rngs: nnx.Rngs):
        h, w = input_resolution
        if h % window_size or w % window_size:
            raise ValueError(f'window_size {window_size} does not divide the stage resolution {h}x{w}; '
                             'choose img_size, patch_size and window_size so every stage resolution '
                             'is a multiple of its window')
        self.input_resolution = (h, w)
        self.window_size, self.shift_size = window_size, shift_size
        self.feature_shift = shift_size if feature_shift is None else feature_shift
        if not 0 <= self.feature_shift < window_size:
            raise ValueError(f'feature_shift must be in [0, window_size={window_size}), got {feature_shift}')
        self.norm1 = L.layer_norm(dim, norm_eps, rngs)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop,
                                    rngs=rngs)
        self.drop_path = drop_path
        self.norm2 = L.layer_norm(dim, norm_eps, rngs)
        self.mlp = L.Mlp(dim, int(dim * mlp_ratio), drop, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False, rng: jax.Array | None = None) -> jax.Array:
        return self._forward(x, self.shift_size, train, rng)

    def forward_padded(self, x: jax.Array, *, train: bool = False, rng: jax.Array | None = None) -> jax.Array:
        """The block of Swin's detection backbone on a map of any size: ``(B, H, W, C)`` -> same.

        After ``norm1`` the map is zero-padded at the bottom / right to multiples of the window
        (the padded tokens take part in the attention, as officially), rolled by
        ``-feature_shift``, attended in windows with the shift mask of the *padded* size, rolled
        back and cropped. Source: ``SwinTransformer/Swin-Transformer-Object-Detection@c7b2011
        mmdet/models/backbones/swin_transformer.py`` ``SwinTransformerBlock.forward`` :198-256
        (padding :214-219, crop :246-247) and ``BasicLayer.forward`` (mask :370-389).
        """
        return self._forward(x, self.feature_shift, train, rng)

    def _forward(self, x: jax.Array, s: int, train: bool, rng: jax.Array | None) -> jax.Array:
        b, h, w, c = x.shape
        ws = self.window_size
        hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
        k_attn, k_dp1, k_mlp, k_dp2 = L.split_key(rng, 4)
        y = self.norm1(x)
        if (hp, wp) != (h, w):
            y = jnp.pad(y, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
        mask = None
        if s > 0:
            y = jnp.roll(y, (-s, -s), axis=(1, 2))
            mask = shifted_window_mask(hp, wp, ws, s)
        y = window_partition(y, ws).reshape(-1, ws * ws, c)
        y = self.attn(y, mask, train=train, rng=k_attn)
        y = window_reverse(y.reshape(-1, ws, ws, c), ws, hp, wp)
        if s > 0:
            y = jnp.roll(y, (s, s), axis=(1, 2))
        if (hp, wp) != (h, w):
            y = y[:, :h, :w]
        x = x + L.drop_path(y, self.drop_path, train, k_dp1)
        y = self.mlp(self.norm2(x), train=train, rng=k_mlp)
        return x + L.drop_path(y, self.drop_path, train, k_dp2)


class PatchMerging(nnx.Module):
    """2x2 patch merging: ``(B, H, W, C)`` -> ``(B, H/2, W/2, 2C)``.

    Concatenates the offsets (0,0), (1,0), (0,1), (1,1) (row offset fastest) on channels,
    so input feature ``k*C + c`` comes from offset k; then LayerNorm(4C) and a bias-free
    Dense 4C -> 2C. Source: ``models/swin_transformer.py:292-329``.

    Raises:
      ValueError: on call, an odd ``H`` or ``W`` without ``pad=True``.
    """

    def __init__(self, dim: int, norm_eps: float = 1e-5, *, rngs: nnx.Rngs):
        self.reduction = L.linear(4 * dim, 2 * dim, rngs, use_bias=False, axes=('embed', 'embed'))
        self.norm = L.layer_norm(4 * dim, norm_eps, rngs)

    def __call__(self, x: jax.Array, *, pad: bool = False) -> jax.Array:
        """``pad``: zero-pad an odd height / width by one row / column first (the detection
        backbone's ``PatchMerging``, ``mmdet/models/backbones/swin_transformer.py:283-286``);
        otherwise an odd resolution is an error."""
        b, h, w, c = x.shape
        if pad and (h % 2 or w % 2):
            x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
        elif h % 2 or w % 2:
            raise ValueError(f'PatchMerging needs an even resolution, got {h}x{w}')
        x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]],
                            axis=-1)
        return self.reduction(self.norm(x))


class BasicLayer(nnx.Module):
    """One Swin stage: ``depth`` blocks (even ones unshifted, odd ones shifted by window//2),
    then PatchMerging when ``downsample``. ``(B, H, W, C)`` -> ``(B, H', W', C')``.
    ``remat`` / ``scan_blocks``: see :class:`SwinTransformer`. Source: ``models/swin_transformer.py:341-397``."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], depth: int, num_heads: int,
                 window_size: int, mlp_ratio: float, qkv_bias: bool, qk_scale: float | None,
                 drop: float, attn_drop: float, drop_path: Sequence[float], norm_eps: float,
                 downsample: bool, remat: str = 'none', scan_blocks: bool = False, *, rngs: nnx.Rngs):
        self.remat, self.scan_blocks = L.check_remat(remat), check_scan(scan_blocks)
        blocks = []
        for i in range(depth):
            ws, shift = stage_window(input_resolution, window_size, 0 if i % 2 == 0 else window_size // 2)
            blocks.append(SwinTransformerBlock(
                dim, input_resolution, num_heads, ws, shift, mlp_ratio, qkv_bias, qk_scale, drop,
                attn_drop, drop_path[i], norm_eps, feature_shift=0 if i % 2 == 0 else ws // 2, rngs=rngs))
        self.blocks = nnx.List(blocks)
        self.downsample = PatchMerging(dim, norm_eps, rngs=rngs) if downsample else None

    def __call__(self, x: jax.Array, *, train: bool = False, rng: jax.Array | None = None) -> jax.Array:
        # scanned in pairs (shift 0, shift window // 2): one scan step per pair
        x = run_blocks(self.blocks, x, train=train, rng=rng, remat=self.remat, scan=self.scan_blocks, period=2)
        if self.downsample is not None:
            x = self.downsample(x)
        return x

    def forward_padded(self, x: jax.Array, *, train: bool = False,
                       rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """The detection backbone's stage on a map of any size: blocks by
        :meth:`SwinTransformerBlock.forward_padded`, then PatchMerging with odd sizes padded.
        Returns ``(x_out, x_next)``: the stage output ``(B, H, W, C)`` before merging (what the
        detection backbone normalises and returns) and the next stage's input
        ``(B, ceil(H/2), ceil(W/2), 2C)`` (``x_out`` again for the last stage). Source:
        ``mmdet/models/backbones/swin_transformer.py`` ``BasicLayer.forward`` :362-403."""
        for blk, key in zip(self.blocks, L.split_key(rng, len(self.blocks))):
            x = blk.forward_padded(x, train=train, rng=key)
        return x, (self.downsample(x, pad=True) if self.downsample is not None else x)


class PatchEmbed(nnx.Module):
    """Non-overlapping patch embedding: conv k=s=patch_size, then LayerNorm when ``patch_norm``.
    ``(B, H, W, in_chans)`` -> ``(B, H/p, W/p, embed_dim)``. The conv keeps PyTorch's default
    init. Source: ``models/swin_transformer.py:411-449``.

    Raises:
      ValueError: on call, images not of shape ``(B, img_size, img_size, C)``.
    """

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int,
                 patch_norm: bool, norm_eps: float, *, rngs: nnx.Rngs):
        self.img_size, self.patch_size = img_size, patch_size
        fan_in = in_chans * patch_size * patch_size
        self.proj = nnx.Conv(in_chans, embed_dim, (patch_size, patch_size), strides=patch_size,
                             padding='VALID', kernel_init=L.torch_default_kernel_init,
                             bias_init=L.torch_default_bias_init(fan_in), rngs=rngs,
                             kernel_metadata=sharding.axes(None, None, 'conv_in', 'conv_out'),
                             bias_metadata=sharding.axes('bias'))
        self.norm = L.layer_norm(embed_dim, norm_eps, rngs) if patch_norm else None

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[1] != self.img_size or x.shape[2] != self.img_size:
            raise ValueError(f'expected images (B, {self.img_size}, {self.img_size}, C) in NHWC layout, '
                             f'got shape {x.shape}')
        x = self.proj(L.images_to(x, self.proj))
        return self.norm(x) if self.norm is not None else x


_T = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24))
_S = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24))
_B = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))
_L = dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48))
_DEMO = dict(img_size=32, patch_size=4, embed_dim=64, depths=(2, 2, 2), num_heads=(2, 4, 8),
             window_size=4, drop_path_rate=0.1)
_DEMO_P2 = dict(img_size=32, patch_size=2, embed_dim=32, depths=(2, 2, 2), num_heads=(2, 4, 8),
                window_size=4, drop_path_rate=0.1)   # the classifier of the GreenMIM demo encoder
_DATA_192 = dict(image_size=192)
_DATA_DEMO = dict(image_size=32, eval_crop_ratio=1.0)


@register_model('swin_tiny_patch4_window7_224', **_T, window_size=7, drop_path_rate=0.2)
@register_model('swin_small_patch4_window7_224', **_S, window_size=7, drop_path_rate=0.3)
@register_model('swin_base_patch4_window7_224', **_B, window_size=7, drop_path_rate=0.5)
@register_model('swin_base_patch4_window14_224', **_B, window_size=14, drop_path_rate=0.5)
@register_model('swin_large_patch4_window14_224', **_L, window_size=14, drop_path_rate=0.2)
@register_model('swin_base_patch4_window6_192', **_B, img_size=192, window_size=6, drop_path_rate=0.1,
                data_defaults=_DATA_192)
@register_model('swin_demo_patch4_window4_32', **_DEMO, num_classes=10, data_defaults=_DATA_DEMO)
@register_model('swin_demo_patch2_window4_32', **_DEMO_P2, num_classes=10, data_defaults=_DATA_DEMO)
class SwinTransformer(nnx.Module, Backbone):
    """Swin Transformer classifier (official v1 definition as fine-tuned by SimMIM).

    Args (names and defaults of the official constructor, ``swin_transformer.py:485-490``):
      img_size: input side in pixels (square images).
      patch_size: patch side in pixels.
      in_chans: input channels.
      num_classes: classes of the linear head; 0 gives no head (features only).
      embed_dim: channels of stage 1; stage i has ``embed_dim * 2**i``.
      depths: blocks per stage.
      num_heads: attention heads per stage.
      window_size: window side in tokens (clamped per stage, see :func:`~jaxmim.models.windows.stage_window`).
      mlp_ratio: MLP hidden width / dim.
      qkv_bias: bias in the fused qkv projection.
      qk_scale: overrides head_dim^-0.5 when set.
      drop_rate: dropout after the embedding, in MLPs and after attention projections.
      attn_drop_rate: dropout on attention probabilities.
      drop_path_rate: stochastic depth, linear from 0 to this over all blocks.
      ape: learned absolute position embedding (off in every official config).
      patch_norm: LayerNorm after the patch embedding.
      norm_eps: LayerNorm epsilon (PyTorch default 1e-5).
      remat: what each block keeps for the backward pass (:data:`jaxmim.layers.REMAT_POLICIES`:
        ``'none'``, ``'block'``, ``'dots_saveable'``, ``'dots_with_no_batch_dims_saveable'``; same
        numbers, less activation memory).
      scan_blocks: run each stage's blocks as one ``jax.lax.scan`` over pairs of blocks (a deep
        stage compiles once; same parameters and numbers, :func:`jaxmim.models.stacking.run_blocks`).
      attn_implementation: :data:`jaxmim.ops.ATTN_IMPLEMENTATIONS` (jaxmim argument).
      out_indices: None (a classifier only: the official key set), or the stages whose outputs
        :meth:`features` returns, each with its own LayerNorm ``norm{i}`` (eps ``norm_eps``)
        as the detection backbone has (mmdet ``out_indices=(0, 1, 2, 3)``). These norms are
        not in classifier checkpoints (:meth:`pretrained_fresh` lets them start fresh) nor in
        the ``simmim_swin`` conversion layout.
      rngs: NNX RNG streams for initialisation.

    Call: ``model(images, train=False, rng=None)`` with images ``(B, img_size, img_size,
    in_chans)`` float -> logits ``(B, num_classes)`` (or pooled features ``(B, num_features)``
    when ``num_classes == 0``). ``rng`` is required when training with dropout or drop path.
    Multi-scale maps of any input size: :meth:`features`.

    Raises:
      ValueError: sizes that do not fit (a window that does not divide a stage, an odd
        stage resolution before merging, mismatched ``depths``/``num_heads``), a bad ``attn_implementation``.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 4, in_chans: int = 3,
                 num_classes: int = 1000, embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2),
                 num_heads: Sequence[int] = (3, 6, 12, 24), window_size: int = 7,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, qk_scale: float | None = None,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.1,
                 ape: bool = False, patch_norm: bool = True, norm_eps: float = 1e-5,
                 remat: str = 'none', scan_blocks: bool = False, out_indices: Sequence[int] | None = None,
                 attn_implementation: str | None = None, *, rngs: nnx.Rngs):
        depths, num_heads = tuple(depths), tuple(num_heads)
        use_remat = L.check_remat(remat)
        if out_indices is not None:
            out_indices = check_out_indices(out_indices, len(depths), (), 'stage')
        if len(depths) != len(num_heads):
            raise ValueError(f'depths {depths} and num_heads {num_heads} must have the same length')
        if img_size % patch_size:
            raise ValueError(f'patch_size {patch_size} must divide img_size {img_size}')
        grid = img_size // patch_size
        if grid % (2 ** (len(depths) - 1)):
            raise ValueError(f'the patch grid {grid}x{grid} must be divisible by 2^(stages-1) = '
                             f'{2 ** (len(depths) - 1)} for patch merging')
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.num_classes, self.embed_dim = num_classes, embed_dim
        self.depths, self.num_heads, self.window_size = depths, num_heads, window_size
        self.num_layers = len(depths)
        self.num_features = embed_dim * 2 ** (self.num_layers - 1)
        self.patches_resolution = (grid, grid)
        self.drop_rate = drop_rate

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, patch_norm, norm_eps,
                                      rngs=rngs)
        self.absolute_pos_embed = (nnx.Param(L.trunc_normal_02(rngs.params(), (1, grid * grid, embed_dim)),
                                             **sharding.axes(None, 'tokens', 'embed'))
                                   if ape else None)   # official layout (1, L, C), tokens row-major
        dpr = [float(r) for r in np.linspace(0, drop_path_rate, sum(depths), dtype=np.float32)]
        stages = []
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            res = (grid // 2 ** i, grid // 2 ** i)
            stages.append(BasicLayer(
                embed_dim * 2 ** i, res, depth, heads, window_size, mlp_ratio, qkv_bias, qk_scale,
                drop_rate, attn_drop_rate, dpr[sum(depths[:i]):sum(depths[:i + 1])], norm_eps,
                downsample=i < self.num_layers - 1, remat=use_remat, scan_blocks=scan_blocks, rngs=rngs))
        self.layers = nnx.List(stages)
        self.norm = L.layer_norm(self.num_features, norm_eps, rngs)
        self.head = (L.linear(self.num_features, num_classes, rngs, axes=('embed', 'classes'))
                     if num_classes > 0 else None)
        self.out_indices = out_indices
        for i in out_indices or ():          # mmdet/models/backbones/swin_transformer.py:549-553
            setattr(self, f'norm{i}', L.layer_norm(embed_dim * 2 ** i, norm_eps, rngs))
        ops.set_attn_implementation(self, attn_implementation)

    # -- hooks of jaxmim.registry.Backbone ---------------------------------------------------

    def pretrained_fresh(self) -> tuple[str, ...]:
        """``head`` and the detection norms ``norm{i}`` of ``out_indices`` (absent from
        classification and pre-training checkpoints)."""
        return ('head.*',) + tuple(f'norm{i}.*' for i in self.out_indices or ())

    def no_weight_decay(self) -> tuple[str, ...]:
        """``absolute_pos_embed`` and every ``relative_position_bias_table`` (official
        ``no_weight_decay`` / ``no_weight_decay_keywords``, ``swin_transformer.py:556-562``);
        ``mask_token`` of the SimMIM encoder (``models/simmim.py``)."""
        return ('absolute_pos_embed', '*relative_position_bias_table*', 'mask_token')

    def layer_id(self, name: str) -> int:
        """SimMIM's ``get_swin_layer`` (``microsoft/SimMIM@d3e29bc optimizer.py:123-136``).

        With ``L = sum(depths)``: ``mask_token`` and ``patch_embed.*`` -> 0;
        ``layers.l.blocks.b.*`` -> ``sum(depths[:l]) + b + 1``; ``layers.l.downsample.*`` ->
        ``sum(depths[:l + 1])`` (the id of the stage's last block); everything else (final
        ``norm``, ``head``, ``absolute_pos_embed``) -> ``L + 1``. Swin-B (2, 2, 18, 2): stage-3
        blocks 5..22, head 25.

        Raises:
          ValueError: a ``layers.*`` name that is neither a block nor a downsample parameter,
            or whose stage is out of range.
        """
        depths = self.depths
        parts = name.split('.')
        if parts[0] in ('mask_token', 'patch_embed'):
            return 0
        if parts[0] == 'layers':
            if len(parts) < 4 or not parts[1].isdigit() or int(parts[1]) >= len(depths):
                raise ValueError(f'swin layer_id: cannot place parameter {name!r} (depths {depths})')
            stage = int(parts[1])
            if parts[2] == 'downsample':
                return sum(depths[:stage + 1])
            if parts[2] == 'blocks' and parts[3].isdigit():
                return sum(depths[:stage]) + int(parts[3]) + 1
            raise ValueError(f'swin layer_id: cannot place parameter {name!r}')
        return sum(depths) + 1

    @property
    def num_layer_ids(self) -> int:
        """``sum(depths) + 2``."""
        return sum(self.depths) + 2

    def adapt_pretrained(self, name: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """Resizes a ``relative_position_bias_table`` of another window size with SimMIM's
        geometric bicubic scheme (:func:`~jaxmim.models.pos_embed.resize_rel_pos_table`; window 6 -> 7 of
        the official 192 -> 224 fine-tuning path).

        Raises:
          ValueError: any other tensor whose shape differs, or a table whose head count differs.
        """
        if 'relative_position_bias_table' in name and value.ndim == 2 and value.shape[1] == shape[1]:
            return resize_rel_pos_table(value, shape[0])
        return Backbone.adapt_pretrained(self, name, value, shape)

    def embed(self, x: jax.Array) -> jax.Array:
        """Patch embedding (+ norm): ``(B, H, W, C)`` -> ``(B, h, w, embed_dim)``, batch kept
        sharded (:func:`jaxmim.sharding.constrain`)."""
        return sharding.constrain(self.patch_embed(x), 'batch', None, None, None)

    def forward_tokens(self, x: jax.Array, *, train: bool = False,
                       rng: jax.Array | None = None) -> jax.Array:
        """Runs the stages on embedded tokens ``(B, h, w, embed_dim)`` and applies the final
        norm: returns ``(B, h/2^(S-1), w/2^(S-1), num_features)``."""
        k_pos, k_layers = L.split_key(rng, 2)
        if self.absolute_pos_embed is not None:
            x = x + self.absolute_pos_embed[...].reshape(1, *x.shape[1:])
        x = L.dropout(x, self.drop_rate, train, k_pos)
        for layer, key in zip(self.layers, L.split_key(k_layers, self.num_layers)):
            x = sharding.constrain(layer(x, train=train, rng=key), 'batch', None, None, None)
        return self.norm(x)

    def forward_features(self, x: jax.Array, *, train: bool = False,
                         rng: jax.Array | None = None) -> jax.Array:
        """Images ``(B, H, W, C)`` -> mean-pooled features ``(B, num_features)``."""
        return self.forward_tokens(self.embed(x), train=train, rng=rng).mean(axis=(1, 2))

    def __call__(self, x: jax.Array, *, train: bool = False, rng: jax.Array | None = None) -> jax.Array:
        x = self.forward_features(x, train=train, rng=rng)
        return self.head(x) if self.head is not None else x

    def features(self, x: jax.Array, *, train: bool = False, out_indices: Sequence[int] | None = None,
                 rng: jax.Array | None = None) -> dict[str, jax.Array]:
        """Stage outputs of Swin's detection / segmentation backbone, for any input size
        (:meth:`jaxmim.registry.Backbone.features`).

        Follows ``SwinTransformer/Swin-Transformer-Object-Detection@c7b2011
        mmdet/models/backbones/swin_transformer.py`` ``SwinTransformer.forward`` :600-627 (the
        same backbone as Swin-Transformer-Semantic-Segmentation): the image is zero-padded at
        the bottom / right to a multiple of ``patch_size`` (``PatchEmbed.forward`` :429-446);
        ``absolute_pos_embed`` (when ``ape``) resized bicubically to the patch grid; every block
        pads its map to multiples of its window (:meth:`SwinTransformerBlock.forward_padded`;
        odd blocks shifted by window // 2 with the mask of the padded size, with no clamp rule:
        on the classifier's last 7x7 stage of a 224 model the detection backbone shifts where
        the classifier does not); PatchMerging pads odd sizes. Stage i's output is taken
        **before** its PatchMerging and normalised by ``norm{i}`` when the model was built with
        ``out_indices`` (the detection backbone); a model built without them returns the
        un-normalised stage outputs. Windows are the block's window (the classifier's, after the
        clamp rule when a stage was smaller than ``window_size`` at ``img_size``).

        Args:
          x: images ``(B, H, W, in_chans)`` float, any H, W >= 1.
          train, rng: dropout / drop path switch and key.
          out_indices: stage indices; default: the constructor's ``out_indices``, or all stages.
            With feature norms, only stages that have one.

        Returns:
          ``{'stage{i}': (B, H_i, W_i, embed_dim * 2**i)}`` with ``H_0 = ceil(H / patch_size)``
          and ``H_{i+1} = ceil(H_i / 2)`` (strides 4, 8, 16, 32 for patch 4). Swin-T at 224:
          ``{'stage0': (B, 56, 56, 96), 'stage1': (B, 28, 28, 192), 'stage2': (B, 14, 14, 384),
          'stage3': (B, 7, 7, 768)}``; at 320 x 480: 80x120, 40x60, 20x30, 10x15.

        Raises:
          ValueError: bad images, or ``out_indices`` out of range or without a feature norm.
        """
        built = self.out_indices
        idx = check_out_indices(out_indices, self.num_layers,
                                built if built is not None else range(self.num_layers), 'stage')
        if built is not None and not set(idx) <= set(built):
            raise ValueError(f'out_indices {tuple(out_indices)}: this model has feature norms for the stages '
                             f'{built} only (constructor out_indices)')
        check_feature_images(x, self.in_chans, 1, type(self).__name__)
        k_pos, k_layers = L.split_key(rng, 2)
        p = self.patch_size
        h, w = x.shape[1:3]
        if h % p or w % p:
            x = jnp.pad(x, ((0, 0), (0, -h % p), (0, -w % p), (0, 0)))
        x = self.patch_embed.proj(L.images_to(x, self.patch_embed.proj))
        if self.patch_embed.norm is not None:
            x = self.patch_embed.norm(x)
        x = sharding.constrain(x, 'batch', None, None, None)
        if self.absolute_pos_embed is not None:
            g = self.patches_resolution
            table = self.absolute_pos_embed[...].reshape(1, g[0], g[1], -1)
            x = x + bicubic_resize(table, x.shape[1:3]).astype(x.dtype)
        x = L.dropout(x, self.drop_rate, train, k_pos)
        outs = {}
        for i, (layer, key) in enumerate(zip(self.layers, L.split_key(k_layers, self.num_layers))):
            out, x = layer.forward_padded(x, train=train, rng=key)
            if i in idx:
                out = getattr(self, f'norm{i}')(out) if built is not None else out
                outs[f'stage{i}'] = sharding.constrain(out, 'batch', None, None, None)
            if i == idx[-1]:
                break
        return outs


@register_model('simmim_swin_base_patch4_window6_192', **_B, img_size=192, window_size=6, drop_path_rate=0.0,
                data_defaults=_DATA_192, classifier='swin_base_patch4_window6_192')
@register_model('simmim_swin_large_patch4_window12_192', **_L, img_size=192, window_size=12,
                drop_path_rate=0.0, data_defaults=_DATA_192)
@register_model('simmim_swin_demo_patch4_window4_32', **_DEMO, data_defaults=_DATA_DEMO,
                classifier='swin_demo_patch4_window4_32')
class SwinTransformerForSimMIM(SwinTransformer):
    """The SimMIM pre-training encoder: Swin without head plus a learnable ``mask_token``.

    Call: ``encoder(images, mask, train=False, rng=None)`` with images ``(B, H, W, C)`` and
    mask ``(B, H/patch, W/patch)`` (1 = masked, any numeric dtype). The *normalised* patch
    embedding of masked patches is replaced by the mask token. Returns the final-norm
    feature map ``(B, H/32, W/32, num_features)`` for 4 stages of patch 4 (NHWC; the official
    code returns the NCHW transpose). Source: ``models/simmim.py:19-54``.

    Raises:
      ValueError: ``num_classes != 0`` or a mask whose shape is not the patch grid.
    """

    def __init__(self, *, num_classes: int = 0, rngs: nnx.Rngs, **kwargs):
        if num_classes != 0:
            raise ValueError('SwinTransformerForSimMIM is an encoder: num_classes must be 0')
        super().__init__(num_classes=0, rngs=rngs, **kwargs)
        self.mask_token = nnx.Param(L.trunc_normal_02(rngs.params(), (1, 1, self.embed_dim)),
                                    **sharding.axes(None, None, 'embed'))

    def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool = False,
                 rng: jax.Array | None = None) -> jax.Array:
        x = self.embed(x)
        if mask.shape != x.shape[:3]:
            raise ValueError(f'mask must have shape (B, H/patch, W/patch) = {x.shape[:3]}, got {mask.shape}')
        w = mask.astype(x.dtype)[..., None]
        x = x * (1.0 - w) + self.mask_token[...].astype(x.dtype) * w
        return self.forward_tokens(x, train=train, rng=rng)
