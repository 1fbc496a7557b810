"""The PVT-S variant of UM-MAE: fine-tuning classifier, UM-MAE pre-training model, SimMIM baseline.

Follows ``implus/UM-MAE@cb7776b`` ``models_pvt.py`` (``PVT``, ``pvt_small_256``),
``models_mae_pvt.py`` (``MaskedAutoencoderPVT``, ``mae_pvt_small_256``) and ``models_simmim_pvt.py``
(``SimMIMPVT``, ``simmim_pvt_small_256``). Spec: ``ummae.md`` §4, §5.1, §8, §9, §12.1.

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
downsample.proj}``, ``norm`` / ``fc_norm``, ``head`` and the decoder keys of
:mod:`jaxmim.models.ummae_common`). Layout: images ``(B, H, W, C)``; tokens kept as maps
``(B, h, w, C)`` (the official ``(B, h*w, C)`` in raster order).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmim import layers as L
from jaxmim import masking_ummae as U
from jaxmim.models.ummae_common import (MaskingInputs, PyramidMAEDecoder, SimMIMHead, UMMAEHooks,
                                        check_pyramid_strides, check_um_pretrain_args, conv, conv_fan_out_init)
from jaxmim.models.vit import Mlp, dense, get_2d_sincos_pos_embed, interpolate_pos_embed, xavier_uniform, \
    xavier_uniform_flat
from jaxmim.registry import Backbone, register_model

__all__ = ['PVTAttention', 'PatchMerge', 'PVTBlock', 'PatchEmbed', 'PVT', 'MaskedAutoencoderPVT', 'SimMIMPVT']


class PVTAttention(nnx.Module):
    """Spatial-reduction attention (``models_mae_pvt.py:43-79``).

    ``q = Linear(x)``; keys/values from ``LayerNorm_1e-5(Conv1x1(avg_pool(x, sr)))`` through ``kv``
    (output channel ``s*C + h*head_dim + d``, s = 0 for k, 1 for v); logits ``(q @ kᵀ) * scale``,
    softmax in float32; ``proj``. Input/output ``(B, H, W, C)``; ``sr_ratio`` must divide H and W.

    Raises:
      ValueError: ``dim`` not divisible by ``num_heads``; (call) a map not divisible by ``sr_ratio``.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, qk_scale: float | None = None,
                 sr_ratio: int = 1, *, rngs: nnx.Rngs):
        if dim % num_heads:
            raise ValueError(f'dim {dim} must be divisible by num_heads {num_heads}')
        self.num_heads, self.sr_ratio = num_heads, sr_ratio
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.q = dense(dim, dim, rngs, xavier_uniform, use_bias=qkv_bias)
        self.kv = dense(dim, 2 * dim, rngs, xavier_uniform, use_bias=qkv_bias)
        self.proj = dense(dim, dim, rngs, xavier_uniform)
        self.sr = conv(dim, dim, 1, rngs)
        self.norm = L.layer_norm(dim, 1e-5, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        nh, s = self.num_heads, self.sr_ratio
        if h % s or w % s:
            raise ValueError(f'sr_ratio {s} must divide the stage resolution {h}x{w}')
        q = self.q(x).reshape(b, h * w, nh, c // nh)
        y = x if s == 1 else x.reshape(b, h // s, s, w // s, s, c).mean(axis=(2, 4))
        y = self.norm(self.sr(y)).reshape(b, -1, c)
        kv = self.kv(y).reshape(b, -1, 2, nh, c // nh)
        k, v = kv[:, :, 0], kv[:, :, 1]
        logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) * jnp.asarray(self.scale, q.dtype)
        attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        out = jnp.einsum('bhqk,bkhd->bqhd', attn, v).reshape(b, h, w, c)
        return self.proj(out)


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
    sqrt(2/fan_out)) (classifier). Bias 0. Source: ``models_mae_pvt.py:126-146``."""

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
        return self.proj(x)


def _check_lists(embed_dims, depths, num_heads, mlp_ratios, sr_ratios) -> None:
    n = len(depths)
    for name, v in (('embed_dims', embed_dims), ('num_heads', num_heads), ('mlp_ratios', mlp_ratios),
                    ('sr_ratios', sr_ratios)):
        if len(v) != n:
            raise ValueError(f'{name} {tuple(v)} must have one entry per stage (depths {tuple(depths)})')


def _pvt_blocks(embed_dims, depths, num_heads, mlp_ratios, sr_ratios, qkv_bias, dpr, block_norm_eps, resolution,
                rngs) -> nnx.List:
    """The flat block list (``models_mae_pvt.py:181-197``), checking each stage's sr against its
    resolution (stage 1 at ``resolution``, halved per stage); ``block_norm_eps`` is the eps of every
    block's ``norm1`` / ``norm2``."""
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


def _run_blocks(blocks, x, train, rng):
    for blk, key in zip(blocks, L.split_key(rng, len(blocks))):
        x = blk(x, train=train, rng=key)
    return x


_S = dict(embed_dims=(64, 128, 320, 512), depths=(3, 4, 6, 3), num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4))
_DEMO = dict(img_size=32, patch_size=4, embed_dims=(64, 128, 256), depths=(2, 2, 2), num_heads=(1, 2, 4),
             mlp_ratios=(4, 4, 4))
_DATA_256 = dict(image_size=256, eval_crop_ratio=1.0)     # util/datasets.py:77-86: crop_pct 1.0 at 256
_DATA_DEMO = dict(image_size=32, eval_crop_ratio=1.0)


@register_model('pvt_small_256', **_S, img_size=256, sr_ratios=(8, 4, 2, 1), num_classes=1000,
                drop_path_rate=0.1, data_defaults=_DATA_256)
@register_model('pvt_demo_32', **_DEMO, sr_ratios=(4, 2, 1), num_classes=10, drop_path_rate=0.1,
                data_defaults=_DATA_DEMO)
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
      rngs: NNX RNG streams.

    Variables: ``patch_embed.proj``, ``pos_embed`` (1, (img/patch)^2, embed_dims[0]) learnable, zero
    init (loaded from the pre-trained sin-cos table), ``blocks.{i}``, ``fc_norm``, ``head``.

    Call: ``model(images, train=False, rng=None)``, images ``(B, img, img, C)`` -> logits ``(B, classes)``:
    patch embed + pos_embed -> blocks -> mean over tokens -> ``fc_norm`` -> ``head``.

    Raises:
      ValueError: lists of different lengths, or an sr ratio that does not divide its stage.
    """

    def __init__(self, img_size: int = 224, num_classes: int = 1000, patch_size: int = 4, in_chans: int = 3,
                 embed_dims: Sequence[int] = (64, 128, 320, 512), depths: Sequence[int] = (3, 4, 6, 3),
                 num_heads: Sequence[int] = (1, 2, 5, 8), mlp_ratios: Sequence[float] = (8, 8, 4, 4),
                 sr_ratios: Sequence[int] = (8, 4, 2, 1), qkv_bias: bool = True, drop_path_rate: float = 0.1,
                 norm_eps: float = 1e-6, head_init_std: float = 2e-5, block_norm_eps: float = 1e-5, *,
                 rngs: nnx.Rngs):
        _check_lists(embed_dims, depths, num_heads, mlp_ratios, sr_ratios)
        self.img_size, self.patch_size, self.in_chans, self.num_classes = img_size, patch_size, in_chans, num_classes
        self.num_features = embed_dims[-1]
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dims[0], 'conv', rngs=rngs)
        g = img_size // patch_size
        self.grid_size = g
        self.pos_embed = nnx.Param(jnp.zeros((1, g * g, embed_dims[0])))
        dpr = [float(r) for r in np.linspace(0, drop_path_rate, sum(depths), dtype=np.float32)]
        self.blocks = _pvt_blocks(embed_dims, depths, num_heads, mlp_ratios, sr_ratios, qkv_bias, dpr,
                                  block_norm_eps, g, rngs)
        self.fc_norm = L.layer_norm(embed_dims[-1], norm_eps, rngs)
        self.head = (dense(embed_dims[-1], num_classes, rngs, jax.nn.initializers.normal(head_init_std))
                     if num_classes > 0 else None)

    def forward_features(self, x: jax.Array, *, train: bool = False, rng: jax.Array | None = None) -> jax.Array:
        """Images -> pooled, normalised features ``(B, embed_dims[-1])``."""
        x = self.patch_embed(x)
        x = x + self.pos_embed[...].reshape(1, *x.shape[1:]).astype(x.dtype)
        x = _run_blocks(self.blocks, x, train, rng)
        return self.fc_norm(x.mean(axis=(1, 2)))

    def __call__(self, x: jax.Array, *, train: bool = False, rng: jax.Array | None = None) -> jax.Array:
        x = self.forward_features(x, train=train, rng=rng)
        return self.head(x) if self.head is not None else x

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


@register_model('mae_pvt_small_256', **_S, img_size=256, stride=16, sr_ratios=(4, 2, 1, 1),
                classifier='pvt_small_256', data_defaults=_DATA_256)
@register_model('mae_pvt_demo_32', **_DEMO, stride=8, sr_ratios=(2, 1, 1), decoder_embed_dim=128,
                decoder_depth=2, decoder_num_heads=4, classifier='pvt_demo_32', data_defaults=_DATA_DEMO)
class MaskedAutoencoderPVT(nnx.Module, MaskingInputs, PyramidMAEDecoder, UMMAEHooks, Backbone):
    """UM-MAE pre-training of the PVT variant (``models_mae_pvt.py:149-417``).

    Args (official names and defaults, plus the masking settings the official passes elsewhere):
      img_size, patch_size, in_chans: input side, patch side (px), channels.
      stride: mask-unit side in pixels (16); ``stride / patch_size`` tokens per unit side.
      embed_dims, depths, num_heads, mlp_ratios, sr_ratios: encoder; pre-training sr (4, 2, 1, 1)
        because the encoder runs on the half-resolution compact image (spec §4).
      decoder_embed_dim, decoder_depth, decoder_num_heads, decoder_mlp_ratio: decoder (512, 2, 16, 4).
      norm_eps: LayerNorm epsilon of ``norm``, ``decoder_blocks`` and ``decoder_norm`` (the factory's
        ``norm_layer``: 1e-6).
      block_norm_eps: LayerNorm epsilon of every encoder block's ``norm1`` / ``norm2`` (1e-5:
        ``models_mae_pvt.py:185-196`` never passes ``norm_layer`` to ``PVTBlock``; ``attn.norm`` 1e-5).
      norm_pix_loss: per-unit normalised targets (``--norm_pix_loss``).
      vis_mask_ratio: Secondary Masking ratio; ``vis_mask_token`` exists only when > 0 (as official).
      mask_ratio: 0.75 (``--mask_ratio``); sampling: ``'uniform'`` or ``'uniform_block'``
        (:data:`jaxmim.masking_ummae.SAMPLINGS`; random masks cannot be compacted).
      official_decoder_pos: reproduce the official visible pos-embed order (spec §17 #1).
      rngs: NNX RNG streams.

    Variables: ``vis_mask_token`` (1,1,C0), ``patch_embed.proj``, ``pos_embed`` (1, G*G, C0) fixed
    sin-cos Buffer (G = img/patch), ``blocks.{i}``, ``norm``, and the decoder of
    :class:`jaxmim.models.ummae_common.PyramidMAEDecoder`.

    Forward (``forward_encoder``, ``models_mae_pvt.py:292-356``): patch embed; Secondary Masking
    (:func:`jaxmim.masking_ummae.secondary_visible_pyramid`); compaction of the visible units
    (secondary-masked ones as the raw ``vis_mask_token``) and of the masked sin-cos table, added
    after compaction; blocks on the half-resolution map; ``norm``; decoder and loss.

    Call: ``model(images, *, mask, noise, train=False, rng=None)``; see ``/work/notes`` API and
    :meth:`PyramidMAEDecoder.mae_outputs` for the returned dict.

    Raises:
      ValueError: bad sizes, a sampling that is not uniform, bad input shapes.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 4, in_chans: int = 3, stride: int = 16,
                 embed_dims: Sequence[int] = (64, 128, 320, 512), depths: Sequence[int] = (3, 4, 6, 3),
                 num_heads: Sequence[int] = (1, 2, 5, 8), mlp_ratios: Sequence[float] = (8, 8, 4, 4),
                 sr_ratios: Sequence[int] = (4, 2, 1, 1), decoder_embed_dim: int = 512, decoder_depth: int = 2,
                 decoder_num_heads: int = 16, decoder_mlp_ratio: float = 4.0, norm_eps: float = 1e-6,
                 norm_pix_loss: bool = False, vis_mask_ratio: float = 0.0, mask_ratio: float = 0.75,
                 sampling: str = 'uniform', official_decoder_pos: bool = False, block_norm_eps: float = 1e-5, *,
                 rngs: nnx.Rngs):
        _check_lists(embed_dims, depths, num_heads, mlp_ratios, sr_ratios)
        self.grid, self.k = check_um_pretrain_args('MaskedAutoencoderPVT', img_size, patch_size, stride,
                                                   len(depths), mask_ratio, sampling, vis_mask_ratio)
        self.img_size, self.patch_size, self.in_chans, self.stride = img_size, patch_size, in_chans, stride
        self.embed_dims = tuple(embed_dims)
        self.mask_ratio, self.sampling, self.vis_mask_ratio = mask_ratio, sampling, vis_mask_ratio
        self.norm_pix_loss, self.official_decoder_pos = norm_pix_loss, official_decoder_pos
        self.noise_len = self.grid * self.grid
        self.n_visible = U.num_visible(self.noise_len, mask_ratio)
        if vis_mask_ratio > 0:
            self.vis_mask_token = nnx.Param(L.trunc_normal_02(rngs.params(), (1, 1, embed_dims[0])))
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dims[0], 'mae', rngs=rngs)
        g = img_size // patch_size
        self.pos_embed = L.Buffer(jnp.asarray(get_2d_sincos_pos_embed(embed_dims[0], g))[None])
        self.blocks = _pvt_blocks(embed_dims, depths, num_heads, mlp_ratios, sr_ratios, True,
                                  [0.0] * sum(depths), block_norm_eps, g // 2, rngs)
        self.norm = L.layer_norm(embed_dims[-1], norm_eps, rngs)
        self.build_decoder(embed_dims[-1], decoder_embed_dim, decoder_depth, decoder_num_heads, decoder_mlp_ratio,
                           norm_eps, rngs)

    def forward_encoder(self, images: jax.Array, mask: jax.Array, noise: jax.Array
                        ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Returns the encoder map ``(B, M/4, M/4, C_last)``, the block choices ``(B, M/2, M/2)`` and the
        secondary mask ``(B, L)`` bool (True = visible unit replaced by ``vis_mask_token``)."""
        x = self.patch_embed(images)                                       # (B, G, G, C0)
        b, g, _, c = x.shape
        choice = U.block_choice(mask, self.grid)
        x = U.compact(x, choice, self.k)                                   # (B, G/2, G/2, C0)
        if self.vis_mask_ratio > 0:
            still = U.secondary_visible_pyramid(mask, noise, self.n_visible, self.vis_mask_ratio)
            secondary = jnp.logical_and(~mask, ~still)
            sec_c = U.compact(U.upsample_units(secondary.reshape(b, self.grid, self.grid), self.k)[..., None],
                              choice, self.k)
            x = jnp.where(sec_c, self.vis_mask_token[...].astype(x.dtype), x)
        else:
            secondary = jnp.zeros_like(mask)
        pos = jnp.broadcast_to(self.pos_embed[...].reshape(1, g, g, c), (b, g, g, c)).astype(x.dtype)
        x = x + U.compact(pos, choice, self.k)
        x = _run_blocks(self.blocks, x, False, None)
        return self.norm(x), choice, secondary

    def __call__(self, images: jax.Array, *, mask: jax.Array, noise: jax.Array, train: bool = False,
                 rng: jax.Array | None = None) -> dict[str, Any]:
        del train, rng    # no dropout / drop path in pre-training
        mask = self._check_mask(images, mask, noise)
        latent, choice, secondary = self.forward_encoder(images, mask, noise)
        pred_seq, order = self.forward_decoder(latent, mask, choice)
        return self.mae_outputs(images, pred_seq, order, mask, secondary)

    def no_weight_decay(self) -> tuple[str, ...]:
        """``()``: timm 0.3.2 ``add_weight_decay`` without a skip list (``main_pretrain.py:198-199``):
        ``mask_token`` and ``vis_mask_token`` are decayed (spec §17 #5)."""
        return ()


@register_model('simmim_pvt_small_256', **_S, img_size=256, stride=16, sr_ratios=(8, 4, 2, 1),
                classifier='pvt_small_256', data_defaults=_DATA_256)
@register_model('simmim_pvt_demo_32', **_DEMO, stride=8, sr_ratios=(4, 2, 1), classifier='pvt_demo_32',
                data_defaults=_DATA_DEMO)
class SimMIMPVT(nnx.Module, MaskingInputs, SimMIMHead, UMMAEHooks, Backbone):
    """UM-MAE's SimMIM baseline on the PVT variant (``models_simmim_pvt.py:27-217``).

    Full-resolution encoder (sr 8/4/2/1): masked tokens (the unit mask upsampled to tokens) become
    ``mask_token`` (``x * (1 - w) + mask_token * w``), then the fixed sin-cos ``pos_embed`` is added
    to every token; blocks; ``norm``; ``decoder_pred`` Linear -> PixelShuffle(2) -> one prediction per
    unit; L1 on masked units (:class:`jaxmim.models.ummae_common.SimMIMHead`).

    Args: as :class:`MaskedAutoencoderPVT` without decoder / Secondary Masking arguments;
    ``sampling`` defaults to ``'random'`` (the Makefile runs the baseline without ``--mask_regular``);
    ``norm_eps`` (1e-6 in the factory) is the eps of ``norm`` only, ``block_norm_eps`` (1e-5:
    ``models_simmim_pvt.py:59-70`` never passes ``norm_layer`` to ``PVTBlock``) that of every block's
    ``norm1`` / ``norm2``.

    Call: ``model(images, *, mask, train=False, rng=None)`` -> ``{'loss', 'pred' (B, L, stride^2*C)
    raster, 'mask', 'secondary_mask' (zeros)}``.

    Raises:
      ValueError: bad sizes or input shapes.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 4, in_chans: int = 3, stride: int = 16,
                 embed_dims: Sequence[int] = (64, 128, 320, 512), depths: Sequence[int] = (3, 4, 6, 3),
                 num_heads: Sequence[int] = (1, 2, 5, 8), mlp_ratios: Sequence[float] = (8, 8, 4, 4),
                 sr_ratios: Sequence[int] = (8, 4, 2, 1), norm_eps: float = 1e-6, norm_pix_loss: bool = False,
                 mask_ratio: float = 0.75, sampling: str = 'random', block_norm_eps: float = 1e-5, *,
                 rngs: nnx.Rngs):
        _check_lists(embed_dims, depths, num_heads, mlp_ratios, sr_ratios)
        U.check_sampling(mask_ratio, sampling)
        self.grid, self.k = check_pyramid_strides(img_size, patch_size, stride, len(depths))
        self.img_size, self.patch_size, self.in_chans, self.stride = img_size, patch_size, in_chans, stride
        self.mask_ratio, self.sampling, self.norm_pix_loss = mask_ratio, sampling, norm_pix_loss
        self.noise_len = 0
        self.mask_token = nnx.Param(L.trunc_normal_02(rngs.params(), (1, 1, embed_dims[0])))
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dims[0], 'mae', rngs=rngs)
        g = img_size // patch_size
        self.pos_embed = L.Buffer(jnp.asarray(get_2d_sincos_pos_embed(embed_dims[0], g))[None])
        self.blocks = _pvt_blocks(embed_dims, depths, num_heads, mlp_ratios, sr_ratios, True,
                                  [0.0] * sum(depths), block_norm_eps, g, rngs)
        self.norm = L.layer_norm(embed_dims[-1], norm_eps, rngs)
        self.decoder_pred = dense(embed_dims[-1], 4 * stride ** 2 * in_chans, rngs, xavier_uniform)

    def __call__(self, images: jax.Array, *, mask: jax.Array, train: bool = False,
                 rng: jax.Array | None = None) -> dict[str, Any]:
        del train, rng
        mask = self._check_mask(images, mask)
        x = self.patch_embed(images)
        b, g, _, c = x.shape
        w = U.upsample_units(mask.reshape(b, self.grid, self.grid), self.k)[..., None].astype(x.dtype)
        x = x * (1.0 - w) + self.mask_token[...].astype(x.dtype) * w
        x = x + self.pos_embed[...].reshape(1, g, g, c).astype(x.dtype)
        x = self.norm(_run_blocks(self.blocks, x, False, None))
        return self.simmim_outputs(images, x, mask)

    def no_weight_decay(self) -> tuple[str, ...]:
        """``()`` (``mask_token`` decayed, as timm 0.3.2 ``add_weight_decay`` does)."""
        return ()
