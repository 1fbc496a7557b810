"""The Swin variant of UM-MAE: its building blocks and fine-tuning classifier ``Swin``.

Follows ``implus/UM-MAE@cb7776b`` ``models_swin.py:23-135`` (``Swin``, ``swin_tiny_256``,
``swin_large_256``) and the blocks of ``models_mae_swin.py:60-280``. The pre-training models built
from these blocks (``MaskedAutoencoderSwin``, ``SimMIMSwin``) are in :mod:`jaxmim.methods.ummae.swin`.

Differences from Swin v1 (``jaxmim.models.swin``): the relative position bias is a continuous MLP
of log-spaced coordinate differences (``posmlp``: Conv1x1(2 -> P) -> ReLU -> Conv1x1(P -> heads)
on ``sign(d) * ln(1 + |d|)`` with ``d = pos[key] - pos[query]``), fed by absolute token
coordinates ``pos_hw`` that travel with the tokens (compacted with them in pre-training, halved at
each merge); merging is LayerNorm(C) then a 2x2 stride-2 conv (C -> 2C); the block list is flat
(block 0 of stages 2-4 owns ``downsample``); q pre-scaled; shift masks of -100.

LayerNorm eps: the official constructors never pass ``norm_layer`` to ``SwinBlock``
(``models_mae_swin.py:326-343``, ``models_swin.py:57-75``, ``models_simmim_swin.py:60-77``; only its
``PatchMerge`` gets it), so every block's ``norm1`` / ``norm2`` is ``nn.LayerNorm(dim)`` with eps
**1e-5** (``block_norm_eps``); the factories' ``partial(nn.LayerNorm, eps=1e-6)`` (``norm_eps``)
reaches ``patch_embed.norm``, ``downsample.norm``, ``norm`` / ``fc_norm`` and the MAE decoder.

Attribute names are the official state-dict keys (``patch_embed.{proj, norm}``, ``blocks.{i}.{norm1,
attn.posmlp.0, attn.posmlp.2, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2, downsample.norm,
downsample.proj}``, ``norm`` / ``fc_norm``, ``head``). ``pos_hw`` and the shift masks
are constants, never variables. Layout: images ``(B, H, W, C)``, tokens as maps ``(B, h, w, C)``,
``pos_hw`` as ``(Bp, h, w, 2)`` (channel 0 = row, 1 = column; Bp = 1 when shared by the batch).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmim import layers as L
from jaxmim import ops, sharding
from jaxmim.models.flat_blocks import UMMAEHooks, conv, conv_fan_out_init
from jaxmim.models.windows import shifted_window_mask, window_partition, window_reverse
from jaxmim.models.pvt import stage_outputs
from jaxmim.models.vit import Mlp, dense, xavier_uniform, xavier_uniform_flat
from jaxmim.registry import Backbone, check_feature_images, check_out_indices, register_model

__all__ = ['ReLU', 'WindowAttention', 'PatchMerge', 'SwinBlock', 'PatchEmbed', 'pos_grid', 'swin_blocks', 'run_blocks',
           'Swin', 'SWIN_TINY', 'SWIN_LARGE', 'DATA_256']


class ReLU(nnx.Module):
    """Parameterless ``nn.ReLU`` (index 1 of the official ``posmlp`` Sequential, so the convs keep the
    keys ``posmlp.0`` / ``posmlp.2``)."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(x)


def pos_grid(size: int) -> np.ndarray:
    """Absolute token coordinates ``(1, size, size, 2)`` float32, ``[..., 0]`` = row h, ``[..., 1]`` =
    column w (``models_swin.py`` ``pos_hw``)."""
    h, w = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32), indexing='ij')
    return np.stack([h, w], axis=-1)[None]


class WindowAttention(nnx.Module):
    """Window attention with the log-spaced MLP position bias (``models_mae_swin.py:60-116``).

    Call ``attn(x, pos, num_windows, mask)``: ``x`` ``(B*nW, N, C)`` window tokens; ``pos``
    ``(Bp*nW, N, 2)`` their coordinates (Bp = B per sample, or 1 shared), or ``(1, N, 2)``
    coordinates shared by every window (the detection backbone's window-local grid); ``mask``
    ``(nW, N, N)`` additive or None. Logits ``(q * scale) @ kᵀ + bias (+ mask)``, softmax in float32
    (:func:`jaxmim.ops.attention`, ``attn_implementation`` :data:`jaxmim.ops.ATTN_IMPLEMENTATIONS`),
    ``proj``. ``qkv`` output channel ``s*C + h*head_dim + d``.

    ``pos_lattice = (scale, extent)`` (optional) promises that every coordinate times ``scale`` is an
    integer in ``[0, extent)``, as in the UM-MAE pre-training encoder, whose coordinates are original
    token indices halved at each merge. The bias is then the same ``posmlp`` evaluated once on the
    ``(2 * extent - 1)^2`` possible offsets and gathered per pair, instead of a ``(Bp*nW, N, N,
    posmlp_dim)`` hidden activation per sample (measured on Swin-T at batch 64: step memory 9.01 ->
    6.14 GiB, README "UM-MAE"). Values agree with the direct evaluation to float rounding.

    Raises:
      ValueError: ``dim`` not divisible by ``num_heads``; a ``pos_lattice`` that is not two positive
        integers.
    """

    def __init__(self, dim: int, num_heads: int, posmlp_dim: int = 32, qkv_bias: bool = True,
                 qk_scale: float | None = None, pos_lattice: tuple[int, int] | None = None, *,
                 attn_implementation: str | None = None, rngs: nnx.Rngs):
        if dim % num_heads:
            raise ValueError(f'dim {dim} must be divisible by num_heads {num_heads}')
        if pos_lattice is not None and (len(pos_lattice) != 2 or min(int(v) for v in pos_lattice) < 1):
            raise ValueError(f'pos_lattice must be (scale, extent) with positive integers, got {pos_lattice}')
        self.pos_lattice = None if pos_lattice is None else (int(pos_lattice[0]), int(pos_lattice[1]))
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.posmlp = nnx.List([conv(2, posmlp_dim, 1, rngs), ReLU(), conv(posmlp_dim, num_heads, 1, rngs)])
        self.qkv = dense(dim, 3 * dim, rngs, xavier_uniform, use_bias=qkv_bias, axes=('embed', 'heads'))
        self.proj = dense(dim, dim, rngs, xavier_uniform, axes=('heads', 'embed'))
        self.attn_implementation = ops.check_attn_implementation(attn_implementation)

    def _mlp(self, d: jax.Array) -> jax.Array:
        """``(..., 2)`` offsets -> ``(..., nH)``: ``sign(d) * log(1 + |d|)``, then the two 1x1 convs."""
        d = jnp.sign(d) * jnp.log(1.0 + jnp.abs(d))
        for layer in self.posmlp:
            d = layer(d)
        return d

    def position_bias(self, pos: jax.Array) -> jax.Array:
        """``(Bp*nW, N, 2)`` coordinates -> bias ``(Bp*nW, nH, N, N)``: ``d[i, j] = pos[j] - pos[i]``,
        ``sign(d) * log(1 + |d|)``, then the two 1x1 convs (through the offset table when
        ``pos_lattice`` is set)."""
        if self.pos_lattice is None:
            return self._mlp(pos[:, None, :, :] - pos[:, :, None, :]).transpose(0, 3, 1, 2)
        scale, extent = self.pos_lattice
        side = 2 * extent - 1
        offsets = np.arange(-(extent - 1), extent, dtype=np.float32) / scale
        lattice = np.stack(np.meshgrid(offsets, offsets, indexing='ij'), axis=-1)[None]   # (1, side, side, 2)
        table = self._mlp(jnp.asarray(lattice, pos.dtype)).reshape(side * side, -1)    # (side^2, nH)
        n = jnp.round(pos.astype(jnp.float32) * scale).astype(jnp.int32)       # (Bp*nW, N, 2)
        dn = n[:, None, :, :] - n[:, :, None, :] + (extent - 1)                # (Bp*nW, N_q, N_k, 2)
        return jnp.take(table, dn[..., 0] * side + dn[..., 1], axis=0).transpose(0, 3, 1, 2)

    def __call__(self, x: jax.Array, pos: jax.Array, num_windows: int, mask: np.ndarray | None = None) -> jax.Array:
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw // num_windows, num_windows, n, 3, self.num_heads, c // self.num_heads)
        bias = self.position_bias(pos.astype(qkv.dtype))                      # (Bp*nW or 1, nH, N, N)
        bias = bias[:, None] if bias.shape[0] == 1 else bias.reshape(-1, num_windows, *bias.shape[1:])
        if mask is not None:
            bias = bias + jnp.asarray(mask)[:, None]                            # (nW, 1, N, N)
        out = ops.attention(qkv[..., 0, :, :] * jnp.asarray(self.scale, qkv.dtype), qkv[..., 1, :, :],
                            qkv[..., 2, :, :], scale=1.0, bias=bias, implementation=self.attn_implementation)
        return self.proj(out.reshape(bw, n, c))


class PatchMerge(nnx.Module):
    """``norm`` LN(C_in) -> ``proj`` Conv(C_in -> C_out, k2, s2); ``pos_hw[:, ::2, ::2] / 2``.
    ``(B, H, W, C_in), (Bp, H, W, 2)`` -> ``(B, H/2, W/2, C_out), (Bp, H/2, W/2, 2)``.
    Source: ``models_mae_swin.py:119-146``."""

    def __init__(self, in_chans: int, embed_dim: int, norm_eps: float = 1e-6, *, rngs: nnx.Rngs):
        self.norm = L.layer_norm(in_chans, norm_eps, rngs)
        self.proj = conv(in_chans, embed_dim, 2, rngs)

    def __call__(self, x: jax.Array, pos: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.proj(self.norm(x)), pos[:, 0::2, 0::2] / 2.0


class SwinBlock(nnx.Module):
    """``[downsample ->]`` (shifted) window attention with the MLP bias, MLP; residuals, drop path.

    ``input_resolution`` is the stage's (after ``downsample``); a window no smaller than the map is
    clamped to it without shift. Shifted blocks roll both the tokens and ``pos_hw`` by ``-shift``
    and use the -100 region mask. ``norm_eps``: eps of ``norm1`` / ``norm2`` (default 1e-5 = the
    official ``norm_layer=nn.LayerNorm`` default, never overridden by the official models);
    ``downsample_norm_eps``: eps of ``downsample.norm`` (the official ``PatchMerge`` receives the
    model's ``norm_layer``: 1e-6 in the factories); ``pos_lattice``: see :class:`WindowAttention`.
    Source: ``models_mae_swin.py:149-255``.

    Raises:
      ValueError: a window that does not divide the resolution.
    """

    def __init__(self, dim: int, input_resolution: int, num_heads: int, window_size: int = 8, shift_size: int = 0,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, posmlp_dim: int = 32, drop_path: float = 0.0,
                 norm_eps: float = 1e-5, downsample_from: int | None = None, *, downsample_norm_eps: float = 1e-6,
                 pos_lattice: tuple[int, int] | None = None, rngs: nnx.Rngs):
        self.feature_window, self.feature_shift = window_size, shift_size   # no clamp: forward_padded
        if input_resolution <= window_size:
            window_size, shift_size = input_resolution, 0
        if input_resolution % window_size:
            raise ValueError(f'window_size {window_size} must divide the stage resolution {input_resolution}')
        self.input_resolution, self.window_size, self.shift_size = input_resolution, window_size, shift_size
        self.norm1 = L.layer_norm(dim, norm_eps, rngs)
        self.attn = WindowAttention(dim, num_heads, posmlp_dim, qkv_bias, pos_lattice=pos_lattice, rngs=rngs)
        self.drop_path = drop_path
        self.norm2 = L.layer_norm(dim, norm_eps, rngs)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), kernel_init=xavier_uniform, rngs=rngs)
        self.downsample = (PatchMerge(downsample_from, dim, downsample_norm_eps, rngs=rngs) if downsample_from
                           else None)

    def __call__(self, x: jax.Array, pos: jax.Array, *, train: bool = False,
                 rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """``x`` ``(B, H, W, C_in)`` NHWC, ``pos`` ``(Bp, H, W, 2)`` (h, w) coordinates (Bp = B or 1), both at
        ``2R`` before a ``downsample`` else ``R = input_resolution`` -> ``(x, pos)`` ``(B, R, R, dim), (Bp, R, R, 2)``.

        Raises:
          ValueError: ``x`` or ``pos`` (after ``downsample``) not at ``R x R``.
        """
        k1, k2 = L.split_key(rng, 2)
        if self.downsample is not None:
            x, pos = self.downsample(x, pos)
        b, h, w, c = x.shape
        ws, s = self.window_size, self.shift_size
        if (h, w) != (self.input_resolution,) * 2 or pos.shape[1:3] != (h, w):
            raise ValueError(f'SwinBlock built for {self.input_resolution}^2 tokens got x {x.shape}, pos {pos.shape}')
        y, p, mask = self.norm1(x), pos, None
        if s > 0:
            y = jnp.roll(y, (-s, -s), axis=(1, 2))
            p = jnp.roll(p, (-s, -s), axis=(1, 2))
            mask = shifted_window_mask(h, w, ws, s)
        nw = (h // ws) * (w // ws)
        y = window_partition(y, ws).reshape(-1, ws * ws, c)
        p = window_partition(p, ws).reshape(-1, ws * ws, 2)
        y = self.attn(y, p, nw, mask)
        y = window_reverse(y.reshape(-1, ws, ws, c), ws, h, w)
        if s > 0:
            y = jnp.roll(y, (s, s), axis=(1, 2))
        x = x + L.drop_path(y, self.drop_path, train, k1)
        x = x + L.drop_path(self.mlp(self.norm2(x)), self.drop_path, train, k2)
        return x, pos

    def forward_padded(self, x: jax.Array, *, train: bool = False, rng: jax.Array | None = None) -> jax.Array:
        """The block of UM-MAE's Swin detection backbone on a map of any size: ``(B, H, W, C_in)`` ->
        ``(B, H', W', C)`` (H' = H // 2 after a ``downsample``, whose 2x2 conv floors).

        ``[downsample (norm, conv) ->]`` ``norm1``, zero padding at the bottom / right to multiples of
        the configured window (``feature_window``: no clamp rule, the detection model is built at
        1024 px), roll by ``-feature_shift`` with the -100 mask of the padded size, window attention
        whose position bias is the ``posmlp`` of the **window-local** coordinate grid shared by all
        windows, roll back, crop, residuals. Source: ``implus/UM-MAE@cb7776b DET/swin.py``
        ``SwinBlock.forward`` :143-216 (padding :155-159, mask :161-181) and
        ``WindowAttention.forward`` :75-109 (local ``pos_hw`` :66-70).
        """
        k1, k2 = L.split_key(rng, 2)
        if self.downsample is not None:
            x = self.downsample.proj(self.downsample.norm(x))
        b, h, w, c = x.shape
        ws, s = self.feature_window, self.feature_shift
        hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
        y, mask = self.norm1(x), None
        if (hp, wp) != (h, w):
            y = jnp.pad(y, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
        if s > 0:
            y = jnp.roll(y, (-s, -s), axis=(1, 2))
            mask = shifted_window_mask(hp, wp, ws, s)
        nw = (hp // ws) * (wp // ws)
        y = window_partition(y, ws).reshape(-1, ws * ws, c)
        y = self.attn(y, jnp.asarray(pos_grid(ws).reshape(1, ws * ws, 2), y.dtype), nw, mask)
        y = window_reverse(y.reshape(-1, ws, ws, c), ws, hp, wp)
        if s > 0:
            y = jnp.roll(y, (s, s), axis=(1, 2))
        y = y[:, :h, :w]
        x = x + L.drop_path(y, self.drop_path, train, k1)
        return x + L.drop_path(self.mlp(self.norm2(x)), self.drop_path, train, k2)


class PatchEmbed(nnx.Module):
    """``proj`` Conv(k = s = patch) then ``norm`` LN; ``(B, H, W, C)`` -> ``(B, H/p, W/p, D)``. ``init``
    'mae': xavier on the flattened kernel (pre-training models), 'conv': N(0, sqrt(2/fan_out))
    (classifier); bias 0. Source: ``models_mae_swin.py:258-280``.

    Raises:
      ValueError: ``patch_size`` does not divide ``img_size``; on call, images not ``(B, img_size, img_size, C)``.
    """

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int, norm_eps: float = 1e-6,
                 init: str = 'conv', *, rngs: nnx.Rngs):
        if img_size % patch_size:
            raise ValueError(f'patch_size {patch_size} must divide img_size {img_size}')
        self.img_size, self.in_chans = img_size, in_chans
        self.proj = conv(in_chans, embed_dim, patch_size, rngs,
                         xavier_uniform_flat if init == 'mae' else conv_fan_out_init)
        self.norm = L.layer_norm(embed_dim, norm_eps, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[1:] != (self.img_size, self.img_size, self.in_chans):
            raise ValueError(f'expected images (B, {self.img_size}, {self.img_size}, {self.in_chans}) NHWC, '
                             f'got {x.shape}')
        return self.norm(self.proj(L.images_to(x, self.proj)))


def swin_blocks(embed_dim, depths, num_heads, window_size, mlp_ratio, posmlp_dim, dpr, block_norm_eps, norm_eps,
                resolution, rngs, pos_extent: int | None = None) -> nnx.List:
    """Flat block list (``models_mae_swin.py:318-344``); stage i at ``resolution / 2^i``.
    ``dpr``: drop-path rate of each block; ``block_norm_eps``: eps of each block's ``norm1`` /
    ``norm2``; ``norm_eps``: of ``downsample.norm``; ``pos_extent``: when set, stage i's
    coordinates are integers in ``[0, pos_extent)`` divided by ``2^i`` and its blocks take the
    offset-table bias (``pos_lattice = (2^i, pos_extent)``).

    Raises:
      ValueError: ``depths`` and ``num_heads`` of different lengths, a resolution that cannot be
        halved per stage, or a window that does not divide its stage.
    """
    if len(depths) != len(num_heads):
        raise ValueError(f'depths {tuple(depths)} and num_heads {tuple(num_heads)} must have the same length')
    blocks = []
    for i, depth in enumerate(depths):
        if resolution % 2 ** i or resolution // 2 ** i < 1:
            raise ValueError(f'stage {i + 1}: resolution {resolution} cannot be halved {i} times')
        for j in range(depth):
            blocks.append(SwinBlock(
                embed_dim * 2 ** i, resolution // 2 ** i, num_heads[i], window_size,
                0 if j % 2 == 0 else window_size // 2, mlp_ratio, True, posmlp_dim, dpr[len(blocks)],
                block_norm_eps, embed_dim * 2 ** (i - 1) if i > 0 and j == 0 else None,
                downsample_norm_eps=norm_eps, pos_lattice=None if pos_extent is None else (2 ** i, pos_extent),
                rngs=rngs))
    return nnx.List(blocks)


def run_blocks(blocks, x: jax.Array, pos: jax.Array, train: bool, rng: jax.Array | None,
               remat: str = 'none') -> jax.Array:
    """Runs the flat block list on tokens ``(B, H, W, C)`` with coordinates ``pos`` ``(Bp, H, W, 2)``
    (halved at each merge), one drop-path key per block, each block under the ``remat`` policy
    (:func:`jaxmim.layers.call_block`); returns the last stage's map. Each stage's output (before the
    next ``downsample``, and the last) keeps the batch sharded (:func:`jaxmim.sharding.constrain`)."""
    for i, (blk, key) in enumerate(zip(blocks, L.split_key(rng, len(blocks)))):
        x, pos = L.call_block(blk, x, pos, train=train, rng=key, remat=remat)
        if i + 1 == len(blocks) or blocks[i + 1].downsample is not None:
            x = sharding.constrain(x, 'batch', None, None, None)
    return x


SWIN_TINY = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24))
"""Swin-T stage settings shared by ``swin_tiny_256`` and its pre-training models (``models_swin.py``)."""
SWIN_LARGE = dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48))
"""Swin-L stage settings shared by ``swin_large_256`` and its pre-training models."""
DATA_256 = dict(image_size=256, eval_crop_ratio=1.0)


@register_model('swin_tiny_256', **SWIN_TINY, img_size=256, window_size=16, num_classes=1000, drop_path_rate=0.1,
                data_defaults=DATA_256)
@register_model('swin_large_256', **SWIN_LARGE, img_size=256, window_size=16, posmlp_dim=64, num_classes=1000,
                drop_path_rate=0.2, data_defaults=DATA_256)
class Swin(nnx.Module, UMMAEHooks, Backbone):
    """UM-MAE's Swin fine-tuning classifier (``models_swin.py:23-135``).

    Args (official names and defaults): img_size, num_classes, patch_size, in_chans, embed_dim,
    depths, num_heads, mlp_ratio, window_size (16 at 256 px: the pre-training window 8 on the
    half-resolution image spans the same extent), posmlp_dim (32; 64 for Swin-L), drop_path_rate
    (linear over the flat blocks; FINETUNE.md: 0.1 T, 0.2 L), norm_eps (eps of ``patch_embed.norm``,
    ``downsample.norm`` and ``fc_norm``: the factory's ``norm_layer``, 1e-6), head_init_std
    (``head.kernel`` std; bias 0), block_norm_eps (eps of every block's ``norm1`` / ``norm2``: 1e-5,
    ``models_swin.py:57-75`` never passes ``norm_layer`` to ``SwinBlock``), attn_implementation
    (:data:`jaxmim.ops.ATTN_IMPLEMENTATIONS`, jaxmim argument), remat (per block,
    :data:`jaxmim.layers.REMAT_POLICIES`, jaxmim argument), rngs.

    Call: ``model(images, train=False, rng=None)`` -> logits ``(B, num_classes)``: patch embed (+ norm),
    blocks with the integer coordinate grid ``pos_hw`` shared by the batch, mean over tokens,
    ``fc_norm``, ``head``.

    Raises:
      ValueError: sizes that do not fit the windows; a bad ``attn_implementation``.
    """

    def __init__(self, img_size: int = 256, num_classes: int = 1000, patch_size: int = 4, in_chans: int = 3,
                 embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 mlp_ratio: float = 4.0, window_size: int = 16, posmlp_dim: int = 32, drop_path_rate: float = 0.1,
                 norm_eps: float = 1e-6, head_init_std: float = 2e-5, block_norm_eps: float = 1e-5,
                 attn_implementation: str | None = None, remat: str = 'none', *, rngs: nnx.Rngs):
        self.img_size, self.patch_size, self.in_chans, self.num_classes = img_size, patch_size, in_chans, num_classes
        self.num_features, self.remat = embed_dim * 2 ** (len(depths) - 1), L.check_remat(remat)
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, norm_eps, 'conv', rngs=rngs)
        self.grid_size = img_size // patch_size
        dpr = [float(r) for r in np.linspace(0, drop_path_rate, sum(depths), dtype=np.float32)]
        self.blocks = swin_blocks(embed_dim, depths, num_heads, window_size, mlp_ratio, posmlp_dim, dpr,
                                  block_norm_eps, norm_eps, self.grid_size, rngs)
        self.fc_norm = L.layer_norm(self.num_features, norm_eps, rngs)
        self.head = (dense(self.num_features, num_classes, rngs, jax.nn.initializers.normal(head_init_std),
                           axes=('embed', 'classes')) if num_classes > 0 else None)
        ops.set_attn_implementation(self, attn_implementation)

    def forward_features(self, x: jax.Array, *, train: bool = False, rng: jax.Array | None = None) -> jax.Array:
        """Images -> pooled, normalised features ``(B, num_features)``."""
        x = sharding.constrain(self.patch_embed(x), 'batch', None, None, None)
        x = run_blocks(self.blocks, x, jnp.asarray(pos_grid(self.grid_size), x.dtype), train, rng, self.remat)
        return self.fc_norm(x.mean(axis=(1, 2)))

    def __call__(self, x: jax.Array, *, train: bool = False, rng: jax.Array | None = None) -> jax.Array:
        x = self.forward_features(x, train=train, rng=rng)
        return self.head(x) if self.head is not None else x

    def features(self, x: jax.Array, *, train: bool = False, out_indices: Sequence[int] | None = None,
                 rng: jax.Array | None = None) -> dict[str, jax.Array]:
        """Stage outputs of UM-MAE's Swin detection / segmentation backbone, for other input sizes
        (:meth:`jaxmim.registry.Backbone.features`).

        As ``implus/UM-MAE@cb7776b DET/swin.py`` ``SwinDet.forward_features`` :346-366: patch embedding
        (+ norm), the blocks by :meth:`SwinBlock.forward_padded` (windows of ``window_size`` padded
        at any size, shifted by half a window on odd blocks, window-local position bias), and the
        **raw** output of each stage's last block (``out_indices=[1, 3, 9, 11]`` for Swin-T), no norm.
        The LayerNorm epsilons are this model's (the detection code builds ``patch_embed.norm`` /
        ``downsample.norm`` with PyTorch's default 1e-5 where the classifier has 1e-6). UM-MAE's
        ``up{i}`` / ``fpn{i}`` adapters are fresh neck layers, not built here.

        Args:
          x: images ``(B, H, W, in_chans)``, H and W multiples of ``patch_size * 2^(S-1)`` (32 for
            4 stages of patch 4).
          train, rng: drop path switch and key.
          out_indices: stage indices, default all.

        Returns:
          ``{'stage{i}': (B, H / (p 2^i), W / (p 2^i), embed_dim * 2^i)}``: strides 4, 8, 16, 32.
          Swin-T at 256: ``{'stage0': (B, 64, 64, 96), 'stage1': (B, 32, 32, 192), 'stage2': (B, 16,
          16, 384), 'stage3': (B, 8, 8, 768)}``; at 320 x 480: 80x120, 40x60, 20x30, 10x15.

        Raises:
          ValueError: bad images or ``out_indices``.
        """
        n_stages = 1 + sum(blk.downsample is not None for blk in self.blocks)
        idx = check_out_indices(out_indices, n_stages, range(n_stages), 'stage')
        check_feature_images(x, self.in_chans, self.patch_size * 2 ** (n_stages - 1), type(self).__name__)
        x = self.patch_embed.norm(self.patch_embed.proj(L.images_to(x, self.patch_embed.proj)))
        x = sharding.constrain(x, 'batch', None, None, None)
        return stage_outputs(self.blocks, x, lambda blk, y, key: blk.forward_padded(y, train=train, rng=key),
                             idx, rng)

    def no_weight_decay(self) -> tuple[str, ...]:
        """``()``: the official ``{'pos_embed'}`` names no parameter of this model (1-D tensors and
        biases escape decay by the universal rule; posmlp conv kernels are decayed)."""
        return ()

    def pretrained_fresh(self) -> tuple[str, ...]:
        """``head`` and ``fc_norm`` (``main_finetune.py`` asserts exactly these are missing)."""
        return ('head.*', 'fc_norm.*')
