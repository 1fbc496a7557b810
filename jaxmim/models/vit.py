"""Vision Transformer (Dosovitskiy et al., 2021) in Flax NNX, as fine-tuned by MAE.

Follows ``facebookresearch/mae@efb2a80 models_vit.py`` (``VisionTransformer``: timm 0.3.2's
``vision_transformer.VisionTransformer`` plus ``global_pool``); its position tables
(``util/pos_embed.py``: 2-D sin-cos tables, ``interpolate_pos_embed``) are in
:mod:`jaxmim.models.pos_embed`. The building blocks (:class:`PatchEmbed`, :class:`Block`) are
shared with the MAE pre-training model (``jaxmim.methods.mae``).

Attribute names mirror the official PyTorch keys (``patch_embed.proj``, ``cls_token``,
``pos_embed``, ``blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm`` /
``fc_norm``, ``head``) so a state-dict maps onto the NNX state by name (the PyTorch <-> Flax
layout rules are in :mod:`convert.official`).

Layout: images ``(B, H, W, C)`` (NHWC); tokens ``(B, N, D)`` with patches in raster (row-major)
order after the class token. Numerical details: LayerNorm eps 1e-6 (MAE's ``models_vit.py``
factories pass ``partial(nn.LayerNorm, eps=1e-6)``), biased variance; exact erf GELU; attention
logits ``(q @ kᵀ) * head_dim^-0.5`` with the softmax in float32 (timm 0.3.2 ``Attention``).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmim import layers as L
from jaxmim import ops, sharding
from jaxmim.models.pos_embed import get_2d_sincos_pos_embed, interpolate_pos_embed, resample_abs_pos_embed
from jaxmim.models.stacking import check_scan, run_blocks
from jaxmim.registry import Backbone, check_feature_images, check_out_indices, register_model

__all__ = ['default_vit_out_indices',
           'xavier_uniform', 'xavier_uniform_flat', 'dense', 'Attention', 'Mlp',
           'Block', 'PatchEmbed', 'VisionTransformer']


# ----------------------------------------------------------------------------------------
# Initialisers.
# ----------------------------------------------------------------------------------------

xavier_uniform = jax.nn.initializers.xavier_uniform()
"""``torch.nn.init.xavier_uniform_`` for a Dense kernel ``(in, out)``: U(+-sqrt(6 / (in + out))).
The bound is symmetric in fan-in/fan-out, so PyTorch's ``(out, in)`` layout gives the same law.
MAE uses it for every ``nn.Linear`` (``models_mae.py`` ``_init_weights``)."""


def xavier_uniform_flat(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    """Xavier-uniform on the flattened ``(out, in*kh*kw)`` view of a conv kernel.

    For a Flax kernel ``(kh, kw, in, out)`` the bound is ``sqrt(6 / (kh*kw*in + out))``: MAE
    initialises the patch-embedding conv "like nn.Linear"
    (``torch.nn.init.xavier_uniform_(w.view([w.shape[0], -1]))``, ``models_mae.py``
    ``initialize_weights``), unlike ``jax.nn.initializers.xavier_uniform`` whose conv fans both
    include the receptive field.
    """
    fan_out = shape[-1]
    fan_in = math.prod(shape[:-1])
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def dense(din: int, dout: int, rngs: nnx.Rngs, kernel_init: Callable = L.trunc_normal_02,
          use_bias: bool = True, *, axes: tuple[str | None, str | None]) -> L.Linear:
    """``nn.Linear(din, dout)`` as a Flax Dense (kernel ``(in, out)``) with ``kernel_init`` and
    bias 0 (timm ``_init_weights``: trunc_normal .02; MAE ``_init_weights``: xavier_uniform);
    a :class:`jaxmim.layers.Linear` (``nnx.Linear`` with the faster backward pass).

    ``axes``: the logical names of the kernel's ``(in, out)`` dimensions (:mod:`jaxmim.sharding`,
    see :func:`jaxmim.layers.linear`); the bias is named ``bias``.

    Raises:
      ValueError: an unknown logical name.
    """
    return L.linear(din, dout, rngs, use_bias=use_bias, kernel_init=kernel_init, axes=axes)


# ----------------------------------------------------------------------------------------
# Modules (timm 0.3.2 names).
# ----------------------------------------------------------------------------------------

class Attention(nnx.Module):
    """Multi-head self-attention with a fused qkv projection (timm 0.3.2 ``Attention``).

    Input and output ``(B, N, D)``. ``qkv`` output channel ``s*D + h*head_dim + d`` holds
    q/k/v (s = 0/1/2) of head h. Logits ``(q @ kᵀ) * scale`` then softmax in float32
    (:func:`jaxmim.ops.attention`: the operation order of timm).
    Source: ``timm@v0.3.3 models/vision_transformer.py:98-123``.

    Args:
      dim: channels D.
      num_heads: heads; ``head_dim = D // num_heads``.
      qkv_bias: bias in ``qkv``.
      qk_scale: overrides ``head_dim ** -0.5``.
      attn_drop: dropout on attention probabilities.
      proj_drop: dropout after ``proj``.
      kernel_init: init of both Dense kernels (biases 0).
      attn_implementation: :data:`jaxmim.ops.ATTN_IMPLEMENTATIONS` (None / ``'xla'``: XLA;
        ``'cudnn'``: cuDNN's fused kernel, GPU and bf16 / fp16 only).
      rngs: NNX RNG streams.

    Raises:
      ValueError: ``dim`` not divisible by ``num_heads``; a bad ``attn_implementation``.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, qk_scale: float | None = None,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, *, kernel_init: Callable = L.trunc_normal_02,
                 attn_implementation: str | None = None, rngs: nnx.Rngs):
        if dim % num_heads:
            raise ValueError(f'dim {dim} must be divisible by num_heads {num_heads}')
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.qkv = dense(dim, 3 * dim, rngs, kernel_init, use_bias=qkv_bias, axes=('embed', 'heads'))
        self.proj = dense(dim, dim, rngs, kernel_init, axes=('heads', 'embed'))
        self.attn_drop, self.proj_drop = attn_drop, proj_drop
        self.attn_implementation = ops.check_attn_implementation(attn_implementation)

    def __call__(self, x: jax.Array, *, train: bool = False, rng: jax.Array | None = None) -> jax.Array:
        b, n, c = x.shape
        nh = self.num_heads
        k_attn, k_proj = L.split_key(rng, 2)
        qkv = self.qkv(x).reshape(b, n, 3, nh, c // nh)
        out = ops.attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], scale=self.scale,      # (B, N, nH, hd)
                            implementation=self.attn_implementation,
                            dropout_rate=self.attn_drop if train else 0.0, dropout_rng=k_attn)
        return L.dropout(self.proj(out.reshape(b, n, c)), self.proj_drop, train, k_proj)


class Mlp(nnx.Module):
    """timm ``Mlp``: fc1 -> exact GELU -> dropout -> fc2 -> dropout; ``(..., D)`` -> ``(..., D)``.
    Kernels use ``kernel_init``, biases 0. Source: ``timm@v0.3.3 models/vision_transformer.py:79-95``."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0, *,
                 kernel_init: Callable = L.trunc_normal_02, rngs: nnx.Rngs):
        self.fc1 = dense(dim, hidden_dim, rngs, kernel_init, axes=('embed', 'mlp'))
        self.fc2 = dense(hidden_dim, dim, rngs, kernel_init, axes=('mlp', 'embed'))
        self.drop = drop

    def __call__(self, x: jax.Array, *, train: bool = False, rng: jax.Array | None = None) -> jax.Array:
        k1, k2 = L.split_key(rng, 2)
        x = L.dropout(L.gelu(self.fc1(x)), self.drop, train, k1)
        return L.dropout(self.fc2(x), self.drop, train, k2)


class Block(nnx.Module):
    """Pre-norm transformer block (timm 0.3.2 ``Block``): ``x + dp(attn(norm1(x)))`` then
    ``x + dp(mlp(norm2(x)))``; ``(B, N, D)`` -> ``(B, N, D)``. LayerNorm eps ``norm_eps``
    (1e-6 in every MAE model). Source: ``timm@v0.3.3 models/vision_transformer.py:126-143``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: float | None = None, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0, norm_eps: float = 1e-6, *, kernel_init: Callable = L.trunc_normal_02,
                 attn_implementation: str | None = None, rngs: nnx.Rngs):
        self.norm1 = L.layer_norm(dim, norm_eps, rngs)
        self.attn = Attention(dim, num_heads, qkv_bias, qk_scale, attn_drop, drop, kernel_init=kernel_init,
                              attn_implementation=attn_implementation, rngs=rngs)
        self.drop_path = drop_path
        self.norm2 = L.layer_norm(dim, norm_eps, rngs)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop, kernel_init=kernel_init, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False, rng: jax.Array | None = None) -> jax.Array:
        k_attn, k_dp1, k_mlp, k_dp2 = L.split_key(rng, 4)
        x = x + L.drop_path(self.attn(self.norm1(x), train=train, rng=k_attn), self.drop_path, train, k_dp1)
        return x + L.drop_path(self.mlp(self.norm2(x), train=train, rng=k_mlp), self.drop_path, train, k_dp2)


class PatchEmbed(nnx.Module):
    """Patch embedding: conv k = s = ``patch_size``; ``(B, H, W, C)`` -> ``(B, L, D)`` with
    ``L = (H/p) * (W/p)`` patches in raster order (the official ``proj(x).flatten(2).transpose(1, 2)``).

    Init: ``'torch'`` = PyTorch's default Conv2d init (timm classifier, whose ``_init_weights``
    leaves convs alone); ``'mae'`` = xavier-uniform on the flattened kernel
    (:func:`xavier_uniform_flat`, ``models_mae.py`` ``initialize_weights``); the bias keeps
    PyTorch's default U(+-1/sqrt(C*p*p)) in both. Source: ``timm@v0.3.3 vision_transformer.py:146-166``.

    Raises:
      ValueError: (call) images not ``(B, img_size, img_size, in_chans)``.
    """

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int, init: str = 'torch',
                 *, rngs: nnx.Rngs):
        if init not in ('torch', 'mae'):
            raise ValueError(f"PatchEmbed init must be 'torch' or 'mae', got {init!r}")
        if img_size % patch_size:
            raise ValueError(f'patch_size {patch_size} must divide img_size {img_size}')
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size ** 2
        fan_in = in_chans * patch_size * patch_size
        kernel_init = xavier_uniform_flat if init == 'mae' else L.torch_default_kernel_init
        self.proj = nnx.Conv(in_chans, embed_dim, (patch_size, patch_size), strides=patch_size,
                             padding='VALID', kernel_init=kernel_init,
                             bias_init=L.torch_default_bias_init(fan_in), rngs=rngs,
                             kernel_metadata=sharding.axes(None, None, 'conv_in', 'conv_out'),
                             bias_metadata=sharding.axes('bias'))

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[1:] != (self.img_size, self.img_size, self.in_chans):
            raise ValueError(f'expected images (B, {self.img_size}, {self.img_size}, {self.in_chans}) in '
                             f'NHWC layout, got shape {x.shape}')
        x = self.proj(L.images_to(x, self.proj))
        return x.reshape(x.shape[0], -1, x.shape[-1])


_IMAGENET_DATA = dict(image_size=224, eval_crop_ratio=224 / 256)
"""Data defaults of the ImageNet variants (mean/std: ImageNet, from ``DEFAULT_DATA``)."""


# Registered variants: MAE FINETUNE.md recipes (drop path 0.1 / 0.2 / 0.3, global pooling); the demo
# variant fits 32x32 Fashion-MNIST.
def vit_layer_id(name: str, depth: int) -> int:
    """MAE ``util/lr_decay.py`` ``get_layer_id_for_vit`` for a ViT of ``depth`` blocks:
    ``cls_token`` / ``pos_embed`` / ``patch_embed.*`` -> 0, ``blocks.i.*`` -> i + 1, anything else
    (``fc_norm``, ``norm``, ``head``; MAE's decoder and ``mask_token``) -> depth + 1. Ids run over
    ``0 .. depth + 1`` (``depth + 2`` ids; MAE's ``num_layers + 1`` with ``num_layers = depth + 1``)."""
    if name in ('cls_token', 'pos_embed') or name.startswith('patch_embed.'):
        return 0
    if name.startswith('blocks.'):
        return int(name.split('.')[1]) + 1
    return depth + 1


def default_vit_out_indices(depth: int) -> tuple[int, ...]:
    """The blocks a plain ViT gives to dense heads by default: ``(round(d/3) - 1, d//2 - 1,
    round(2d/3) - 1, d - 1)`` de-duplicated, the BEiT / MAE semantic-segmentation choice
    ((3, 5, 7, 11) for ViT-B: ``open-mmlab/mmsegmentation
    configs/mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py``; (7, 11, 15, 23) for ViT-L:
    ``microsoft/unilm beit/semantic_segmentation`` large configs)."""
    d = int(depth)
    return tuple(sorted({max(round(d / 3) - 1, 0), max(d // 2 - 1, 0), max(round(2 * d / 3) - 1, 0), d - 1}))


@register_model('vit_base_patch16_224', data_defaults=_IMAGENET_DATA, patch_size=16, embed_dim=768,
                depth=12, num_heads=12, global_pool=True, num_classes=1000, drop_path_rate=0.1)
@register_model('vit_large_patch16_224', data_defaults=_IMAGENET_DATA, patch_size=16, embed_dim=1024,
                depth=24, num_heads=16, global_pool=True, num_classes=1000, drop_path_rate=0.2)
@register_model('vit_huge_patch14_224', data_defaults=_IMAGENET_DATA, patch_size=14, embed_dim=1280,
                depth=32, num_heads=16, global_pool=True, num_classes=1000, drop_path_rate=0.3)
@register_model('vit_demo_patch4_32', data_defaults=dict(image_size=32, eval_crop_ratio=1.0), img_size=32,
                patch_size=4, embed_dim=128, depth=6, num_heads=4, global_pool=True, num_classes=10,
                drop_path_rate=0.1)
class VisionTransformer(nnx.Module, Backbone):
    """ViT classifier of MAE fine-tuning (``models_vit.VisionTransformer``).

    Args (official names; defaults of the MAE factories ``vit_*_patch*``):
      img_size: input side in pixels (square images).
      patch_size: patch side in pixels.
      in_chans: input channels.
      num_classes: classes of the linear ``head``; 0 gives no head (features only).
      embed_dim: token channels D.
      depth: number of blocks.
      num_heads: attention heads.
      mlp_ratio: MLP hidden width / D.
      qkv_bias: bias in the fused qkv projection (True in every MAE factory).
      qk_scale: overrides ``head_dim ** -0.5``.
      drop_rate: dropout after the position embedding, in MLPs and after ``attn.proj``.
      attn_drop_rate: dropout on attention probabilities.
      drop_path_rate: stochastic depth, ``linspace(0, rate, depth)`` over the blocks.
      norm_eps: LayerNorm epsilon (1e-6 in MAE).
      global_pool: average the patch tokens (class token excluded) then ``fc_norm``; the
        final ``norm`` does not exist (``models_vit`` deletes it). False: final ``norm`` and
        the class token.
      fixed_pos_embed: ``pos_embed`` is a :class:`jaxmim.layers.Buffer` holding the 2-D sin-cos
        table (never trained) instead of a learnable ``nnx.Param``.
      head_init_std: std of the normal init of ``head.kernel`` (bias 0). Default 2e-5, what
        MAE fine-tuning sets after loading the checkpoint (``main_finetune.py:257``
        ``trunc_normal_(model.head.weight, std=2e-5)``); timm's from-scratch init is 0.02.
      attn_implementation: see :class:`Attention`.
      remat: what each block keeps for the backward pass (:data:`jaxmim.layers.REMAT_POLICIES`:
        ``'none'``, ``'block'``, ``'dots_saveable'``, ``'dots_with_no_batch_dims_saveable'``; same
        numbers, less activation memory).
      scan_blocks: run the blocks as one ``jax.lax.scan`` (compiled once, whatever ``depth``;
        same parameters and numbers, :func:`jaxmim.models.stacking.run_blocks`).
      rngs: NNX RNG streams for initialisation.

    Init (timm 0.3.2 ``VisionTransformer.__init__`` / ``_init_weights``): Dense kernels
    N(0, .02) (timm's ``trunc_normal_`` cuts at +-2 absolute = +-100 sigma), biases 0,
    LayerNorm 1/0, ``cls_token`` and learnable ``pos_embed`` N(0, .02), patch conv PyTorch
    default. All but ``head``/``fc_norm`` are overwritten when an MAE checkpoint is loaded.

    Call: ``model(images, train=False, rng=None)`` with images ``(B, img_size, img_size,
    in_chans)`` float NHWC; returns logits ``(B, num_classes)`` (``(B, embed_dim)`` features
    when ``num_classes == 0``). ``rng`` feeds dropout / drop path when ``train``.

    Raises:
      ValueError: bad sizes (see :class:`PatchEmbed`, :class:`Attention`).
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, qk_scale: float | None = None, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0, norm_eps: float = 1e-6,
                 global_pool: bool = False, fixed_pos_embed: bool = False, head_init_std: float = 2e-5,
                 attn_implementation: str | None = None, remat: str = 'none', scan_blocks: bool = False, *,
                 rngs: nnx.Rngs):
        self.remat, self.scan_blocks = L.check_remat(remat), check_scan(scan_blocks)
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.num_classes, self.embed_dim, self.num_features = num_classes, embed_dim, embed_dim
        self.depth, self.num_heads = depth, num_heads
        self.global_pool, self.drop_rate = global_pool, drop_rate
        self.num_extra_tokens = 1

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, 'torch', rngs=rngs)
        self.grid_size, self.num_patches = self.patch_embed.grid_size, self.patch_embed.num_patches
        self.cls_token = nnx.Param(L.trunc_normal_02(rngs.params(), (1, 1, embed_dim)),
                                   **sharding.axes(None, None, 'embed'))
        if fixed_pos_embed:
            table = get_2d_sincos_pos_embed(embed_dim, self.grid_size, cls_token=True)
            self.pos_embed = L.Buffer(jnp.asarray(table)[None], **sharding.axes(None, 'tokens', 'embed'))
        else:
            self.pos_embed = nnx.Param(L.trunc_normal_02(rngs.params(), (1, self.num_patches + 1, embed_dim)),
                                       **sharding.axes(None, 'tokens', 'embed'))
        dpr = [float(r) for r in np.linspace(0, drop_path_rate, depth, dtype=np.float32)]
        self.blocks = nnx.List([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate, dpr[i],
                  norm_eps, attn_implementation=attn_implementation, rngs=rngs)
            for i in range(depth)])
        self.norm = None if global_pool else L.layer_norm(embed_dim, norm_eps, rngs)
        self.fc_norm = L.layer_norm(embed_dim, norm_eps, rngs) if global_pool else None
        self.head = (dense(embed_dim, num_classes, rngs, jax.nn.initializers.normal(head_init_std),
                           axes=('embed', 'classes'))
                     if num_classes > 0 else None)

    # -- forward ---------------------------------------------------------------------------

    def forward_features(self, x: jax.Array, *, train: bool = False,
                         rng: jax.Array | None = None) -> jax.Array:
        """Images ``(B, H, W, C)`` -> pooled features ``(B, embed_dim)`` (``models_vit.forward_features``)."""
        k_pos, k_blocks = L.split_key(rng, 2)
        x = sharding.constrain(self.patch_embed(x), 'batch', None, None)
        cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1) + self.pos_embed[...].astype(x.dtype)
        x = L.dropout(x, self.drop_rate, train, k_pos)
        x = run_blocks(self.blocks, x, train=train, rng=k_blocks, remat=self.remat, scan=self.scan_blocks)
        x = sharding.constrain(x, 'batch', None, None)
        if self.global_pool:
            return self.fc_norm(x[:, 1:, :].mean(axis=1))
        return self.norm(x)[:, 0]

    def __call__(self, x: jax.Array, *, train: bool = False, rng: jax.Array | None = None) -> jax.Array:
        x = self.forward_features(x, train=train, rng=rng)
        return self.head(x) if self.head is not None else x

    def features(self, x: jax.Array, *, train: bool = False, out_indices: Sequence[int] | None = None,
                 rng: jax.Array | None = None) -> dict[str, jax.Array]:
        """Selected block outputs as maps, for dense heads (:meth:`jaxmim.registry.Backbone.features`).

        As the BEiT / MAE semantic-segmentation backbones and ViTDet take them: images of any size
        that is a multiple of ``patch_size``; ``pos_embed`` resampled bicubically to the new patch
        grid with the class token kept (:func:`~jaxmim.models.pos_embed.resample_abs_pos_embed`, timm
        semantics); class token prepended; the blocks run; after block i (``i in out_indices``) the patch tokens
        (class token dropped), **without** a norm, reshaped to a map. The feature-pyramid
        necks (BEiT's ``fpn1..4`` deconvolutions, ViTDet's simple pyramid) are head-side and not
        built here. Sources: ``microsoft/unilm beit/semantic_segmentation/backbone/beit.py``
        ``forward_features``; ``facebookresearch/detectron2 modeling/backbone/vit.py``.

        Args:
          x: images ``(B, H, W, in_chans)`` float, H and W multiples of ``patch_size``.
          train, rng: dropout / drop path switch and key.
          out_indices: block indices in ``[0, depth)``; default :func:`default_vit_out_indices`
            ((3, 5, 7, 11) for depth 12).

        Returns:
          ``{'block{i}': (B, H/p, W/p, embed_dim)}`` in increasing i, all at stride p = ``patch_size``.
          ViT-B/16 at 224: ``{'block3': (B, 14, 14, 768), 'block5': ..., 'block7': ..., 'block11': ...}``.

        Raises:
          ValueError: bad images or ``out_indices``.
        """
        idx = check_out_indices(out_indices, self.depth, default_vit_out_indices(self.depth), 'block')
        check_feature_images(x, self.in_chans, self.patch_size, type(self).__name__)
        k_pos, k_blocks = L.split_key(rng, 2)
        x = self.patch_embed.proj(L.images_to(x, self.patch_embed.proj))
        b, h, w, d = x.shape
        x = sharding.constrain(x.reshape(b, h * w, d), 'batch', None, None)
        pos = resample_abs_pos_embed(self.pos_embed[...], (h, w), (self.grid_size, self.grid_size),
                                     self.num_extra_tokens)
        cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (b, 1, d))
        x = jnp.concatenate([cls, x], axis=1) + pos.astype(x.dtype)
        x = L.dropout(x, self.drop_rate, train, k_pos)
        outs = {}
        for i, (blk, key) in enumerate(zip(list(self.blocks)[:idx[-1] + 1], L.split_key(k_blocks, len(self.blocks)))):
            x = L.call_block(blk, x, train=train, rng=key, remat=self.remat)
            if i in idx:
                outs[f'block{i}'] = x[:, self.num_extra_tokens:].reshape(b, h, w, d)
        return outs

    # -- hooks -----------------------------------------------------------------------------

    def no_weight_decay(self) -> tuple[str, ...]:
        """``('pos_embed', 'cls_token', 'dist_token')``: MAE fine-tuning passes
        ``model.no_weight_decay()`` to ``param_groups_lrd`` (``main_finetune.py:283-285``); timm
        0.3.2 returns ``{'pos_embed', 'cls_token'}`` (later timm adds ``dist_token``, absent here)."""
        return ('pos_embed', 'cls_token', 'dist_token')

    def layer_id(self, name: str) -> int:
        """See :func:`vit_layer_id`."""
        return vit_layer_id(name, self.depth)

    @property
    def num_layer_ids(self) -> int:
        """``depth + 2`` (ids 0 .. depth + 1; MAE's ``num_layers + 1`` with ``num_layers = depth + 1``)."""
        return self.depth + 2

    def pretrained_fresh(self) -> tuple[str, ...]:
        """Missing keys MAE fine-tuning accepts (``main_finetune.py:251-254``): ``head`` and, with
        global pooling, ``fc_norm``."""
        return ('head.*', 'fc_norm.*') if self.global_pool else ('head.*',)

    def adapt_pretrained(self, name: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """Resizes a pre-trained ``pos_embed`` of another grid with
        :func:`~jaxmim.models.pos_embed.interpolate_pos_embed` (class token kept). Raises ValueError (naming the tensor and both shapes) otherwise."""
        value = np.asarray(value)
        shape = tuple(shape)
        if (name == 'pos_embed' and value.ndim == 3 and len(shape) == 3 and value.shape[0] == shape[0]
                and value.shape[2] == shape[2]):
            grid = math.isqrt(shape[1] - self.num_extra_tokens)
            if grid * grid == shape[1] - self.num_extra_tokens:
                try:
                    return interpolate_pos_embed(value, grid, self.num_extra_tokens)
                except ValueError:
                    pass
        return super().adapt_pretrained(name, value, shape)
