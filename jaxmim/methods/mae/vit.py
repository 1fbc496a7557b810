"""MAE on ViT: a ViT encoder on the visible patches and a light ViT decoder, plus MAE's masking and loss.

He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022 (§3); follows
``facebookresearch/mae@efb2a80 models_mae.py`` (``MaskedAutoencoderViT`` and its factories) and
``main_pretrain.py``. The method block that builds it is :class:`jaxmim.methods.mae.method.MAEMethod`.

Masking is the official per-sample shuffle by argsort of uniform noise; the noise is an input
(``input_keys = ('noise',)``), drawn in the step (:meth:`MaskedAutoencoderViT.sample_inputs`) or
by the input pipeline (:meth:`MaskedAutoencoderViT.host_inputs`), so the same noise keeps exactly
the patches the official code keeps, in the same order.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmim import layers as L
from jaxmim import sharding
from jaxmim.layers import patchify, unpatchify  # noqa: F401  (re-exported: MAE's pixel layout)
from jaxmim.models.pos_embed import get_2d_sincos_pos_embed
from jaxmim.models.stacking import check_scan, run_blocks
from jaxmim.models.vit import Block, PatchEmbed, dense, vit_layer_id, xavier_uniform
from jaxmim.registry import Backbone, register_model

__all__ = ['patchify', 'unpatchify', 'random_masking', 'norm_pix_target', 'mae_loss', 'MaskedAutoencoderViT']


def random_masking(x: jax.Array, noise: jax.Array, mask_ratio: float
                   ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-sample random masking by argsort of noise (official ``random_masking``).

    ``ids_shuffle = argsort(noise)`` (ascending, stable: small noise is kept),
    ``ids_restore = argsort(ids_shuffle)``; the first ``len_keep = int(L * (1 - mask_ratio))``
    entries of ``ids_shuffle`` are gathered in that order; the mask is ones with the first
    ``len_keep`` zeroed, unshuffled by ``ids_restore``. Source: ``models_mae.py:123-148``.

    Args:
      x: ``(B, L, D)`` tokens.
      noise: ``(B, L)`` float noise (uniform [0, 1) in training).
      mask_ratio: fraction removed.

    Returns:
      ``x_masked (B, len_keep, D)``, ``mask (B, L)`` float32 (0 keep, 1 remove),
      ``ids_restore (B, L)`` int32.

    Raises:
      ValueError: ``noise`` is not ``(B, L)``.
    """
    b, n, d = x.shape
    if noise.shape != (b, n):
        raise ValueError(f'noise must have shape (B, L) = {(b, n)}, got {noise.shape}')
    len_keep = int(n * (1 - mask_ratio))
    ids_shuffle = jnp.argsort(noise, axis=1, stable=True).astype(jnp.int32)
    ids_restore = jnp.argsort(ids_shuffle, axis=1, stable=True).astype(jnp.int32)
    ids_keep = ids_shuffle[:, :len_keep]
    x_masked = jnp.take_along_axis(x, ids_keep[:, :, None], axis=1)
    mask = jnp.ones((b, n), jnp.float32).at[:, :len_keep].set(0.0)
    mask = jnp.take_along_axis(mask, ids_restore, axis=1)
    return x_masked, mask, ids_restore


def norm_pix_target(target: jax.Array) -> jax.Array:
    """Per-patch normalised target ``(t - mean) / sqrt(var + 1e-6)`` over the last axis with the
    *unbiased* variance (torch ``Tensor.var`` default, ddof=1): patchified ``(N, L, p*p*C)`` -> same shape.
    Source: ``models_mae.py:203-206``."""
    mean = target.mean(axis=-1, keepdims=True)
    var = target.var(axis=-1, keepdims=True, ddof=1)
    return (target - mean) / (var + 1.0e-6) ** 0.5


def mae_loss(imgs: jax.Array, pred: jax.Array, mask: jax.Array, patch_size: int,
             norm_pix_loss: bool = False) -> jax.Array:
    """MAE loss: mean over removed patches of the per-patch mean squared error.

    ``sum_{b,l} mean_k (pred - t)^2 * mask / sum(mask)`` with ``t = patchify(imgs)`` (normalised
    per patch when ``norm_pix_loss``), in float32. Source: ``models_mae.py:195-212`` (``forward_loss``).

    Args:
      imgs: ``(B, H, W, C)`` input images (the normalised model input).
      pred: ``(B, L, p*p*C)`` predictions in raster / ``(p, q, c)`` order.
      mask: ``(B, L)``, 1 = removed.
      patch_size: p.
      norm_pix_loss: normalise the target per patch (:func:`norm_pix_target`).

    Returns:
      Scalar float32 loss.
    """
    target = patchify(imgs.astype(jnp.float32), patch_size)
    if norm_pix_loss:
        target = norm_pix_target(target)
    loss = ((pred.astype(jnp.float32) - target) ** 2).mean(axis=-1)     # (B, L)
    mask = mask.astype(jnp.float32)
    return (loss * mask).sum() / mask.sum()


@register_model('mae_vit_base_patch16_dec512d8b', classifier='vit_base_patch16_224', patch_size=16,
                embed_dim=768, depth=12, num_heads=12)
@register_model('mae_vit_large_patch16_dec512d8b', classifier='vit_large_patch16_224', patch_size=16,
                embed_dim=1024, depth=24, num_heads=16)
@register_model('mae_vit_huge_patch14_dec512d8b', classifier='vit_huge_patch14_224', patch_size=14,
                embed_dim=1280, depth=32, num_heads=16)
@register_model('mae_vit_demo_patch4_32_dec128d2b', classifier='vit_demo_patch4_32',
                data_defaults=dict(image_size=32, eval_crop_ratio=1.0), img_size=32, patch_size=4,
                embed_dim=128, depth=6, num_heads=4, decoder_embed_dim=128, decoder_depth=2,
                decoder_num_heads=4)
class MaskedAutoencoderViT(nnx.Module, Backbone):
    """MAE pre-training model (official ``MaskedAutoencoderViT``, decoder 512-d x 8 blocks by default).

    Args (official names and defaults, ``models_mae.py:24-28``, plus the forward's ``mask_ratio``):
      img_size, patch_size, in_chans: square input side and patch side in pixels, channels.
      embed_dim, depth, num_heads: encoder width, blocks, heads.
      decoder_embed_dim, decoder_depth, decoder_num_heads: decoder width, blocks, heads.
      mlp_ratio: MLP hidden width / width (encoder and decoder).
      norm_eps: LayerNorm epsilon (1e-6 in every MAE factory).
      norm_pix_loss: normalise the target per patch (``main_pretrain.py`` default False; the
        PRETRAIN.md recipe passes ``--norm_pix_loss``).
      mask_ratio: fraction of patches removed (0.75).
      attn_implementation: see :class:`jaxmim.models.vit.Attention`.
      remat: what each encoder / decoder block keeps for the backward pass
        (:data:`jaxmim.layers.REMAT_POLICIES`; same numbers, less memory).
      scan_blocks: run the encoder blocks and the decoder blocks each as one ``jax.lax.scan``
        (same parameters and numbers, :func:`jaxmim.models.stacking.run_blocks`).
      rngs: NNX RNG streams for initialisation.

    Variables (official keys): ``patch_embed.proj``, ``cls_token`` (1,1,D), ``pos_embed``
    (1,1+L,D) and ``decoder_pos_embed`` (1,1+L,Dd) fixed 2-D sin-cos :class:`jaxmim.layers.Buffer`
    s, ``blocks.{i}.*``, ``norm``, ``decoder_embed``, ``mask_token`` (1,1,Dd), ``decoder_blocks.{i}.*``,
    ``decoder_norm``, ``decoder_pred`` (Dd -> p*p*C). No dropout or drop path.

    Init (``initialize_weights`` / ``_init_weights``): Dense kernels xavier-uniform, biases 0;
    LayerNorm 1/0; patch conv xavier-uniform on its flattened view, bias PyTorch default;
    ``cls_token``, ``mask_token`` N(0, .02).

    Call: ``model(images, *, noise, train=False, rng=None)`` with images ``(B, img_size,
    img_size, in_chans)`` float NHWC (normalised; also the target) and ``noise`` ``(B, L)`` float32.
    ``train``/``rng`` are accepted for the protocol and unused (no stochastic layers). Returns:
      ``loss``: scalar float32 (:func:`mae_loss`);
      ``pred``: ``(B, L, p*p*C)`` float32 reconstruction, patches in raster order;
      ``mask``: ``(B, L)`` float32, 1 = removed;
      ``latent``: ``(B, 1 + len_keep, D)`` encoder output (class token first);
      ``ids_restore``: ``(B, L)`` int32.

    Raises:
      ValueError: ``mask_ratio`` outside [0, 1), bad image or noise shapes.
    """

    input_keys: tuple[str, ...] = ('noise',)

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 1024,
                 depth: int = 24, num_heads: int = 16, decoder_embed_dim: int = 512, decoder_depth: int = 8,
                 decoder_num_heads: int = 16, mlp_ratio: float = 4.0, norm_eps: float = 1e-6,
                 norm_pix_loss: bool = False, mask_ratio: float = 0.75,
                 attn_implementation: str | None = None, remat: str = 'none', scan_blocks: bool = False, *,
                 rngs: nnx.Rngs):
        self.remat, self.scan_blocks = L.check_remat(remat), check_scan(scan_blocks)
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f'mask_ratio must be in [0, 1), got {mask_ratio}')
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.embed_dim, self.depth, self.decoder_embed_dim = embed_dim, depth, decoder_embed_dim
        self.norm_pix_loss, self.mask_ratio = norm_pix_loss, mask_ratio

        # encoder
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, 'mae', rngs=rngs)
        self.grid_size, self.num_patches = self.patch_embed.grid_size, self.patch_embed.num_patches
        self.len_keep = int(self.num_patches * (1 - mask_ratio))
        self.cls_token = nnx.Param(L.trunc_normal_02(rngs.params(), (1, 1, embed_dim)),
                                   **sharding.axes(None, None, 'embed'))
        self.pos_embed = L.Buffer(jnp.asarray(get_2d_sincos_pos_embed(embed_dim, self.grid_size, True))[None],
                                  **sharding.axes(None, 'tokens', 'embed'))
        self.blocks = nnx.List([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_eps=norm_eps,
                  kernel_init=xavier_uniform, attn_implementation=attn_implementation, rngs=rngs)
            for _ in range(depth)])
        self.norm = L.layer_norm(embed_dim, norm_eps, rngs)

        # decoder
        self.decoder_embed = dense(embed_dim, decoder_embed_dim, rngs, xavier_uniform, axes=('embed', 'embed'))
        self.mask_token = nnx.Param(L.trunc_normal_02(rngs.params(), (1, 1, decoder_embed_dim)),
                                    **sharding.axes(None, None, 'embed'))
        self.decoder_pos_embed = L.Buffer(
            jnp.asarray(get_2d_sincos_pos_embed(decoder_embed_dim, self.grid_size, True))[None],
            **sharding.axes(None, 'tokens', 'embed'))
        self.decoder_blocks = nnx.List([
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_eps=norm_eps,
                  kernel_init=xavier_uniform, attn_implementation=attn_implementation, rngs=rngs)
            for _ in range(decoder_depth)])
        self.decoder_norm = L.layer_norm(decoder_embed_dim, norm_eps, rngs)
        self.decoder_pred = dense(decoder_embed_dim, patch_size ** 2 * in_chans, rngs, xavier_uniform,
                                  axes=('embed', 'pixels'))

    # -- masking inputs --------------------------------------------------------------------

    def sample_inputs(self, key: jax.Array, batch_size: int) -> dict[str, jax.Array]:
        """``{'noise': U[0, 1) (batch_size, L) float32}`` drawn on device from ``key``."""
        return {'noise': jax.random.uniform(key, (batch_size, self.num_patches), jnp.float32)}

    def host_inputs(self, rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
        """The same noise made by the input pipeline: ``{'noise': (batch_size, L) float32}``."""
        return {'noise': rng.random((batch_size, self.num_patches), dtype=np.float32)}

    # -- forward ---------------------------------------------------------------------------

    def forward_encoder(self, imgs: jax.Array, noise: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Embeds, adds positions, keeps the visible patches, prepends the class token and runs the
        encoder. Returns ``latent (B, 1 + len_keep, D)``, ``mask (B, L)``, ``ids_restore (B, L)``.
        Source: ``models_mae.py:150-170``."""
        x = sharding.constrain(self.patch_embed(imgs), 'batch', None, None)
        x = x + self.pos_embed[...][:, 1:, :].astype(x.dtype)
        x, mask, ids_restore = random_masking(x, noise, self.mask_ratio)
        cls = (self.cls_token[...] + self.pos_embed[...][:, :1, :]).astype(x.dtype)
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, x.shape[-1])), x], axis=1)
        x = run_blocks(self.blocks, x, train=False, rng=None, remat=self.remat, scan=self.scan_blocks)
        return sharding.constrain(self.norm(x), 'batch', None, None), mask, ids_restore

    def forward_decoder(self, latent: jax.Array, ids_restore: jax.Array) -> jax.Array:
        """Appends mask tokens, unshuffles to raster order, adds positions and decodes.
        Returns ``(B, L, p*p*C)`` (class token removed). Source: ``models_mae.py:172-193``."""
        x = self.decoder_embed(latent)
        b, n1, d = x.shape
        mask_tokens = jnp.broadcast_to(self.mask_token[...].astype(x.dtype),
                                       (b, ids_restore.shape[1] + 1 - n1, d))
        x_ = jnp.concatenate([x[:, 1:, :], mask_tokens], axis=1)
        x_ = jnp.take_along_axis(x_, ids_restore[:, :, None], axis=1)
        x = jnp.concatenate([x[:, :1, :], x_], axis=1) + self.decoder_pos_embed[...].astype(x.dtype)
        x = run_blocks(self.decoder_blocks, x, train=False, rng=None, remat=self.remat, scan=self.scan_blocks)
        x = sharding.constrain(x, 'batch', None, None)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:, :]

    def __call__(self, images: jax.Array, *, noise: jax.Array, train: bool = False,
                 rng: jax.Array | None = None) -> dict[str, Any]:
        del train, rng   # no dropout / drop path in MAE pre-training
        latent, mask, ids_restore = self.forward_encoder(images, noise)
        pred = self.forward_decoder(latent, ids_restore).astype(jnp.float32)
        loss = mae_loss(images, pred, mask, self.patch_size, self.norm_pix_loss)
        return {'loss': loss, 'pred': pred, 'mask': mask, 'latent': latent, 'ids_restore': ids_restore}

    # -- hooks -----------------------------------------------------------------------------

    def no_weight_decay(self) -> tuple[str, ...]:
        """``()``: official pre-training builds its groups with timm 0.3.2
        ``optim_factory.add_weight_decay(model, wd)`` and no skip list (``main_pretrain.py:179``;
        ``MaskedAutoencoderViT`` defines no ``no_weight_decay``), so only 1-D tensors and biases
        escape decay: ``cls_token`` and ``mask_token`` (3-D) **are** decayed. The sin-cos tables
        are Buffers (``requires_grad=False`` there), never optimised."""
        return ()

    def layer_id(self, name: str) -> int:
        """ViT ids over the encoder (:func:`jaxmim.models.vit.vit_layer_id`); every decoder
        variable and ``mask_token`` -> depth + 1 (official pre-training uses no layer decay)."""
        return vit_layer_id(name, self.depth)

    @property
    def num_layer_ids(self) -> int:
        """``depth + 2``."""
        return self.depth + 2

