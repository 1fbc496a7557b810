"""The PVT-S variant of UM-MAE: its building blocks and fine-tuning classifier ``PVT``.

Follows ``implus/UM-MAE@cb7776b`` ``models_pvt.py:24-119`` (``PVT``, ``pvt_small_256``) and the
blocks of ``models_mae_pvt.py:43-146``. The pre-training models built from these blocks
(``MaskedAutoencoderPVT``, ``SimMIMPVT``) are in :mod:`jaxmim.methods.ummae.pvt`.

Unlike PVT v1 (Wang et al., 2021) this variant has a flat ``blocks`` list whose first block of
stages 2-4 owns a ``downsample`` (2x2 conv, stride 2, no norm) applied before attention, no
per-stage position embedding, no class token and no per-stage norm. Spatial reduction of the
keys/values: ``avg_pool(sr)`` -> 1x1 conv ``sr`` -> LayerNorm (eps **1e-5**, hard-coded in the
official ``Attention``); the conv and norm exist even for ``sr_ratio = 1``.

LayerNorm eps: the official constructors never pass ``norm_layer`` to ``PVTBlock``
(``models_mae_pvt.py:185-196``, ``models_pvt.py:53-64``, ``models_simmim_pvt.py:59-70``), so every
block's ``norm1`` / ``norm2`` is ``nn.LayerNorm(dim)`` with eps **1e-5** (``block_norm_eps``); the
factories' ``partial(nn.LayerNorm, eps=1e-6)`` (``norm_eps``) reaches only ``norm`` / ``fc_norm`` and
the MAE decoder (``decoder_blocks``, ``decoder_norm``).

Attribute names are the official state-dict keys (``patch_embed.proj``, ``pos_embed``,
``blocks.{i}.{norm1, attn.q, attn.kv, attn.sr, attn.norm, attn.proj, norm2, mlp.fc1, mlp.fc2,
downsample.proj}``, ``norm`` / ``fc_norm``, ``head``). Layout: images ``(B, H, W, C)``; tokens kept as maps
``(B, h, w, C)`` (the official ``(B, h*w, C)`` in raster order).
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmim import layers as L
from jaxmim import ops, sharding
from jaxmim.models.flat_blocks import UMMAEHooks, conv, conv_fan_out_init
from jaxmim.models.pos_embed import interpolate_pos_embed, resample_abs_pos_embed
from jaxmim.models.vit import Mlp, dense, xavier_uniform, xavier_uniform_flat
from jaxmim.registry import Backbone, check_feature_images, check_out_indices, register_model

__all__ = ['PVTAttention', 'PatchMerge', 'PVTBlock', 'PatchEmbed', 'check_stage_lists', 'pvt_blocks', 'run_blocks',
           'stage_outputs', 'PVT', 'PVT_SMALL', 'PVT_DEMO', 'DATA_256', 'DATA_DEMO']


class PVTAttention(nnx.Module):
    """Spatial-reduction attention (``models_mae_pvt.py:43-79``).

    ``q = Linear(x)``; keys/values from ``LayerNorm_1e-5(Conv1x1(avg_pool(x, sr)))`` through ``kv``
    (output channel ``s*C + h*head_dim + d``, s = 0 for k, 1 for v); logits ``(q @ kᵀ) * scale``,
    softmax in float32 (:func:`jaxmim.ops.attention`; ``attn_implementation``
    :data:`jaxmim.ops.ATTN_IMPLEMENTATIONS`); ``proj``. Input/output ``(B, H, W, C)``; ``sr_ratio``
    must divide H and W.

    Raises:
      ValueError: ``dim`` not divisible by ``num_heads``, a bad ``attn_implementation``; (call) a map
        not divisible by ``sr_ratio``.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, qk_scale: float | None = None,
                 sr_ratio: int = 1, *, attn_implementation: str | None = None, rngs: nnx.Rngs):
        if dim % num_heads:
            raise ValueError(f'dim {dim} must be divisible by num_heads {num_heads}')
        self.num_heads, self.sr_ratio = num_heads, sr_ratio
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.q = dense(dim, dim, rngs, xavier_uniform, use_bias=qkv_bias, axes=('embed', 'heads'))
        self.kv = dense(dim, 2 * dim, rngs, xavier_uniform, use_bias=qkv_bias, axes=('embed', 'kv'))
        self.proj = dense(dim, dim, rngs, xavier_uniform, axes=('heads', 'embed'))
        self.sr = conv(dim, dim, 1, rngs)
        self.norm = L.layer_norm(dim, 1e-5, rngs)
        self.attn_implementation = ops.check_attn_implementation(attn_implementation)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        nh, s = self.num_heads, self.sr_ratio
        if h % s or w % s:
            raise ValueError(f'sr_ratio {s} must divide the stage resolution {h}x{w}')
        q = self.q(x).reshape(b, h * w, nh, c // nh)
        y = x if s == 1 else x.reshape(b, h // s, s, w // s, s, c).mean(axis=(2, 4))
        y = self.norm(self.sr(y)).reshape(b, -1, c)
        kv = self.kv(y).reshape(b, -1, 2, nh, c // nh)
        out = ops.attention(q, kv[:, :, 0], kv[:, :, 1], scale=self.scale, implementation=self.attn_implementation)
        return self.proj(out.reshape(b, h, w, c))


class PatchMerge(nnx.Module):
    """PVT downsampling: ``proj`` Conv(C_in -> C_out, k2, s2, bias), no norm; ``(B, H, W, C_in)`` ->
    ``(B, H/2, W/2, C_out)``. Source: ``models_mae_pvt.py:105-123``."""

    def __init__(self, in_chans: int, embed_dim: int, *, rngs: nnx.Rngs):
        self.proj = conv(in_chans, embed_dim, 2, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.proj(x)


class PVTBlock(nnx.Module):
    """``[downsample ->] x + dp(attn(norm1(x)))`` then ``x + dp(mlp(norm2(x)))`` on ``(B, H, W, C)``.
    ``downsample_from``: input channels of the stage's PatchMerge (first block of stages 2-4).
    ``norm_eps``: eps of ``norm1`` / ``norm2`` (default 1e-5 = the official ``norm_layer=nn.LayerNorm``
    default, which the official models never override). Source: ``models_mae_pvt.py:82-102``."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0, norm_eps: float = 1e-5, downsample_from: int | None = None, *,
                 rngs: nnx.Rngs):
        self.norm1 = L.layer_norm(dim, norm_eps, rngs)
        self.attn = PVTAttention(dim, num_heads, qkv_bias, None, sr_ratio, rngs=rngs)
        self.drop_path = drop_path
        self.norm2 = L.layer_norm(dim, norm_eps, rngs)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), kernel_init=xavier_uniform, rngs=rngs)
        self.downsample = PatchMerge(downsample_from, dim, rngs=rngs) if downsample_from else None

    def __call__(self, x: jax.Array, *, train: bool = False, rng: jax.Array | None = None) -> jax.Array:
        k1, k2 = L.split_key(rng, 2)
        if self.downsample is not None:
            x = self.downsample(x)
        x = x + L.drop_path(self.attn(self.norm1(x)), self.drop_path, train, k1)
        return x + L.drop_path(self.mlp(self.norm2(x)), self.drop_path, train, k2)


class PatchEmbed(nnx.Module):
    """``proj`` Conv(C -> D, k = s = patch_size), no norm: ``(B, H, W, C)`` -> ``(B, H/p, W/p, D)``.
    ``init='mae'``: xavier on the flattened kernel (pre-training models); ``'conv'``: N(0,
    sqrt(2/fan_out)) (classifier). Bias 0. Source: ``models_mae_pvt.py:126-146``.

    Raises:
      ValueError: ``patch_size`` does not divide ``img_size``; on call, images not ``(B, img_size, img_size, C)``.
    """

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int, init: str = 'conv', *,
                 rngs: nnx.Rngs):
        if img_size % patch_size:
            raise ValueError(f'patch_size {patch_size} must divide img_size {img_size}')
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.proj = conv(in_chans, embed_dim, patch_size, rngs,
                         xavier_uniform_flat if init == 'mae' else conv_fan_out_init)

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[1:] != (self.img_size, self.img_size, self.in_chans):
            raise ValueError(f'expected images (B, {self.img_size}, {self.img_size}, {self.in_chans}) NHWC, '
                             f'got {x.shape}')
        return self.proj(L.images_to(x, self.proj))


def check_stage_lists(embed_dims, depths, num_heads, mlp_ratios, sr_ratios) -> None:
    """Checks that the per-stage lists all have one entry per stage (``len(depths)``).

    Raises:
      ValueError: naming the list whose length differs.
    """
    n = len(depths)
    for name, v in (('embed_dims', embed_dims), ('num_heads', num_heads), ('mlp_ratios', mlp_ratios),
                    ('sr_ratios', sr_ratios)):
        if len(v) != n:
            raise ValueError(f'{name} {tuple(v)} must have one entry per stage (depths {tuple(depths)})')


def pvt_blocks(embed_dims, depths, num_heads, mlp_ratios, sr_ratios, qkv_bias, dpr, block_norm_eps, resolution,
               rngs) -> nnx.List:
    """The flat block list (``models_mae_pvt.py:181-197``), checking each stage's sr against its
    resolution (stage 1 at ``resolution`` tokens per side, halved per stage); ``dpr`` the drop-path
    rate of each block; ``block_norm_eps`` is the eps of every block's ``norm1`` / ``norm2``.

    Raises:
      ValueError: an sr ratio that does not divide its stage's resolution.
    """
    blocks = []
    for i, depth in enumerate(depths):
        res = resolution // 2 ** i
        if res < 1 or resolution % 2 ** i or res % sr_ratios[i]:
            raise ValueError(f'stage {i + 1} runs at {res}x{res} tokens: sr_ratios[{i}]={sr_ratios[i]} must divide '
                             f'it (check img_size, patch_size and sr_ratios)')
        for j in range(depth):
            blocks.append(PVTBlock(embed_dims[i], num_heads[i], sr_ratios[i], mlp_ratios[i], qkv_bias,
                                   dpr[len(blocks)], block_norm_eps,
                                   embed_dims[i - 1] if i > 0 and j == 0 else None,
                                   rngs=rngs))
    return nnx.List(blocks)


def run_blocks(blocks, x: jax.Array, train: bool, rng: jax.Array | None, remat: str = 'none') -> jax.Array:
    """Runs the flat block list on a token map ``(B, H, W, C)``, one drop-path key per block, each
    block under the ``remat`` policy (:func:`jaxmim.layers.call_block`); returns the last stage's
    map ``(B, H / 2^(stages-1), W / 2^(stages-1), C_last)``. Each stage's output (before the next
    ``downsample``, and the last) keeps the batch sharded (:func:`jaxmim.sharding.constrain`)."""
    for i, (blk, key) in enumerate(zip(blocks, L.split_key(rng, len(blocks)))):
        x = L.call_block(blk, x, train=train, rng=key, remat=remat)
        if i + 1 == len(blocks) or blocks[i + 1].downsample is not None:
            x = sharding.constrain(x, 'batch', None, None, None)
    return x


def stage_outputs(blocks, x: jax.Array, run, idx: Sequence[int], rng: jax.Array | None) -> dict[str, jax.Array]:
    """Runs a flat block list (stage i starts at a block that owns a ``downsample``) and collects
    the output of the last block of every stage in ``idx`` as ``'stage{i}'`` (UM-MAE's detection /
    segmentation ``out_indices``, e.g. blocks (2, 6, 12, 15) of PVT-S, ``implus/UM-MAE@cb7776b
    DET/pvt.py:152-173``); stops after the last requested stage. ``run(block, x, key)`` calls one
    block; one drop-path key per block as :func:`run_blocks`."""
    outs, stage = {}, 0
    for i, (blk, key) in enumerate(zip(blocks, L.split_key(rng, len(blocks)))):
        x = run(blk, x, key)
        if i + 1 == len(blocks) or blocks[i + 1].downsample is not None:
            if stage in idx:
                outs[f'stage{stage}'] = sharding.constrain(x, 'batch', None, None, None)
            if stage == idx[-1]:
                break
            stage += 1
    return outs


PVT_SMALL = dict(embed_dims=(64, 128, 320, 512), depths=(3, 4, 6, 3), num_heads=(1, 2, 5, 8),
                 mlp_ratios=(8, 8, 4, 4))
"""PVT-S stage settings shared by ``pvt_small_256`` and its pre-training models (``models_pvt.py``)."""
PVT_DEMO = dict(img_size=32, patch_size=4, embed_dims=(64, 128, 256), depths=(2, 2, 2), num_heads=(1, 2, 4),
                mlp_ratios=(4, 4, 4))
"""The 32-px three-stage demo variant (jaxmim's own, no official counterpart)."""
DATA_256 = dict(image_size=256, eval_crop_ratio=1.0)     # util/datasets.py:77-86: crop_pct 1.0 at 256
DATA_DEMO = dict(image_size=32, eval_crop_ratio=1.0)


@register_model('pvt_small_256', **PVT_SMALL, img_size=256, sr_ratios=(8, 4, 2, 1), num_classes=1000,
                drop_path_rate=0.1, data_defaults=DATA_256)
@register_model('pvt_demo_32', **PVT_DEMO, sr_ratios=(4, 2, 1), num_classes=10, drop_path_rate=0.1,
                data_defaults=DATA_DEMO)
class PVT(nnx.Module, UMMAEHooks, Backbone):
    """UM-MAE's PVT fine-tuning classifier (``models_pvt.py:24-119``).

    Args (official names and defaults):
      img_size, patch_size, in_chans: square input side and patch side in pixels, channels.
      num_classes: classes of ``head``; 0 gives no head (pooled features).
      embed_dims, depths, num_heads, mlp_ratios, sr_ratios: per stage (PVT-S: 64/128/320/512,
        3/4/6/3, 1/2/5/8, 8/8/4/4, sr 8/4/2/1).
      qkv_bias: bias in ``q`` / ``kv``.
      drop_path_rate: stochastic depth, ``linspace(0, rate, sum(depths))`` over the flat blocks.
      norm_eps: LayerNorm epsilon of ``fc_norm`` (the factory's ``norm_layer``: 1e-6).
      block_norm_eps: LayerNorm epsilon of every block's ``norm1`` / ``norm2`` (1e-5: ``models_pvt.py:53-64``
        never passes ``norm_layer`` to ``PVTBlock``; ``attn.norm`` is always 1e-5).
      head_init_std: std of ``head.kernel`` (MAE-style fine-tuning re-initialises it with
        ``trunc_normal_(std=2e-5)``, ``main_finetune.py``); bias 0.
      attn_implementation: :data:`jaxmim.ops.ATTN_IMPLEMENTATIONS` (jaxmim argument).
      remat: per block, :data:`jaxmim.layers.REMAT_POLICIES` (jaxmim argument; same numbers).
      rngs: NNX RNG streams.

    Variables: ``patch_embed.proj``, ``pos_embed`` (1, (img/patch)^2, embed_dims[0]) learnable, zero
    init (loaded from the pre-trained sin-cos table), ``blocks.{i}``, ``fc_norm``, ``head``.

    Call: ``model(images, train=False, rng=None)``, images ``(B, img, img, C)`` -> logits ``(B, classes)``:
    patch embed + pos_embed -> blocks -> mean over tokens -> ``fc_norm`` -> ``head``.

    Raises:
      ValueError: lists of different lengths, an sr ratio that does not divide its stage, a bad
        ``attn_implementation``.
    """

    def __init__(self, img_size: int = 224, num_classes: int = 1000, patch_size: int = 4, in_chans: int = 3,
                 embed_dims: Sequence[int] = (64, 128, 320, 512), depths: Sequence[int] = (3, 4, 6, 3),
                 num_heads: Sequence[int] = (1, 2, 5, 8), mlp_ratios: Sequence[float] = (8, 8, 4, 4),
                 sr_ratios: Sequence[int] = (8, 4, 2, 1), qkv_bias: bool = True, drop_path_rate: float = 0.1,
                 norm_eps: float = 1e-6, head_init_std: float = 2e-5, block_norm_eps: float = 1e-5,
                 attn_implementation: str | None = None, remat: str = 'none', *, rngs: nnx.Rngs):
        check_stage_lists(embed_dims, depths, num_heads, mlp_ratios, sr_ratios)
        self.img_size, self.patch_size, self.in_chans, self.num_classes = img_size, patch_size, in_chans, num_classes
        self.remat = L.check_remat(remat)
        self.num_features = embed_dims[-1]
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dims[0], 'conv', rngs=rngs)
        g = img_size // patch_size
        self.grid_size = g
        self.pos_embed = nnx.Param(jnp.zeros((1, g * g, embed_dims[0])), **sharding.axes(None, 'tokens', 'embed'))
        dpr = [float(r) for r in np.linspace(0, drop_path_rate, sum(depths), dtype=np.float32)]
        self.blocks = pvt_blocks(embed_dims, depths, num_heads, mlp_ratios, sr_ratios, qkv_bias, dpr,
                                 block_norm_eps, g, rngs)
        self.fc_norm = L.layer_norm(embed_dims[-1], norm_eps, rngs)
        self.head = (dense(embed_dims[-1], num_classes, rngs, jax.nn.initializers.normal(head_init_std),
                           axes=('embed', 'classes')) if num_classes > 0 else None)
        ops.set_attn_implementation(self, attn_implementation)

    def forward_features(self, x: jax.Array, *, train: bool = False, rng: jax.Array | None = None) -> jax.Array:
        """Images -> pooled, normalised features ``(B, embed_dims[-1])``."""
        x = sharding.constrain(self.patch_embed(x), 'batch', None, None, None)
        x = x + self.pos_embed[...].reshape(1, *x.shape[1:]).astype(x.dtype)
        x = run_blocks(self.blocks, x, train, rng, self.remat)
        return self.fc_norm(x.mean(axis=(1, 2)))

    def __call__(self, x: jax.Array, *, train: bool = False, rng: jax.Array | None = None) -> jax.Array:
        x = self.forward_features(x, train=train, rng=rng)
        return self.head(x) if self.head is not None else x

    @property
    def feature_multiple(self) -> int:
        """The side multiple :meth:`features` accepts: every stage's map divisible by its sr ratio and
        halvable before each merge, ``lcm(patch * 2^(S-1), patch * 2^i * sr_i)`` (32 for PVT-S)."""
        sr = [blk.attn.sr_ratio for i, blk in enumerate(self.blocks) if i == 0 or blk.downsample is not None]
        p = self.patch_size
        return math.lcm(p * 2 ** (len(sr) - 1), *(p * 2 ** i * r for i, r in enumerate(sr)))

    def features(self, x: jax.Array, *, train: bool = False, out_indices: Sequence[int] | None = None,
                 rng: jax.Array | None = None) -> dict[str, jax.Array]:
        """Stage outputs of UM-MAE's PVT detection / segmentation backbone, for other input sizes
        (:meth:`jaxmim.registry.Backbone.features`).

        As ``implus/UM-MAE@cb7776b DET/pvt.py`` ``PVTDet`` (``_get_pos_embed`` :146-150,
        ``forward_features`` :152-173; ``SEG/pvt.py`` :132-151 the same at the pre-training size):
        patch embedding, ``pos_embed`` resampled bicubically to the patch grid
        (:func:`jaxmim.models.pos_embed.resample_abs_pos_embed`: ``F.interpolate(mode='bicubic',
        align_corners=False)``, as ``_get_pos_embed``; PVT v1's own ``whai362/PVT detection/pvt.py``
        resizes its per-stage tables bilinearly), the blocks, and the **raw** output of each
        stage's last block (``out_indices=[2, 6, 12, 15]`` for PVT-S), un-normalised as PVT v1's
        detection backbone returns its stages. UM-MAE's ``up{i}`` (LayerNorm + Linear to 768) and
        ``fpn{i}`` (1x1 conv) adapters are freshly initialised neck layers, not backbone weights, and
        are not built here.

        Args:
          x: images ``(B, H, W, in_chans)``, H and W multiples of :attr:`feature_multiple` (32 for
            PVT-S: stage maps divisible by the sr ratios 8 / 4 / 2 / 1).
          train, rng: drop path switch and key.
          out_indices: stage indices, default all.

        Returns:
          ``{'stage{i}': (B, H / (p 2^i), W / (p 2^i), embed_dims[i])}``: strides 4, 8, 16, 32 for
          patch 4. PVT-S at 256: ``{'stage0': (B, 64, 64, 64), 'stage1': (B, 32, 32, 128), 'stage2':
          (B, 16, 16, 320), 'stage3': (B, 8, 8, 512)}``; at 320 x 480: 80x120, 40x60, 20x30, 10x15.

        Raises:
          ValueError: bad images or ``out_indices``.
        """
        n_stages = 1 + sum(blk.downsample is not None for blk in self.blocks)
        idx = check_out_indices(out_indices, n_stages, range(n_stages), 'stage')
        check_feature_images(x, self.in_chans, self.feature_multiple, type(self).__name__)
        x = sharding.constrain(self.patch_embed.proj(L.images_to(x, self.patch_embed.proj)), 'batch', None, None, None)
        b, h, w, c = x.shape
        pos = resample_abs_pos_embed(self.pos_embed[...], (h, w), (self.grid_size, self.grid_size), 0)
        x = x + pos.reshape(1, h, w, c).astype(x.dtype)
        return stage_outputs(self.blocks, x, lambda blk, y, key: L.call_block(blk, y, train=train, rng=key,
                                                                              remat=self.remat), idx, rng)

    def no_weight_decay(self) -> tuple[str, ...]:
        """``('pos_embed',)`` (``models_pvt.py`` ``no_weight_decay``)."""
        return ('pos_embed',)

    def pretrained_fresh(self) -> tuple[str, ...]:
        """``head`` and ``fc_norm`` (``main_finetune.py`` asserts exactly these are missing)."""
        return ('head.*', 'fc_norm.*')

    def adapt_pretrained(self, name: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """Resizes ``pos_embed`` of another grid with MAE's bicubic ``interpolate_pos_embed`` (no extra
        tokens; ``main_finetune.py`` calls it on every checkpoint).

        Raises:
          ValueError: any other tensor whose shape differs.
        """
        if name == 'pos_embed' and value.ndim == 3 and value.shape[-1] == shape[-1]:
            return interpolate_pos_embed(value, self.grid_size, num_extra_tokens=0)
        return Backbone.adapt_pretrained(self, name, value, shape)
