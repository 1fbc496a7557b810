"""MAE pre-training of HiViT (the official ``HiViTMaskedAutoencoder``), trained by the ``'mae'`` method.

Follows ``zhangxiaosong18/hivit@2718339 self_supervised/models/models_hivit_mae.py:39-180`` and
``self_supervised/models/masked_autoencoder.py:79-95`` (loss). The model plugs into the existing
``'mae'`` method (:class:`jaxmim.methods.mae.method.MAEMethod`: ``mask_ratio``, ``norm_pix_loss``; noise
input ``('noise',)``): only the model is new, registered here as ``mae_hivit_*`` with its
fine-tuning classifier (``classifier=``).

Official quirks (all in ``zhangxiaosong18/hivit@2718339 self_supervised/``) and what jaxmim does
with them:

* the encoder ``absolute_pos_embed`` is built as ``nn.Parameter(zeros(..., requires_grad=False))``
  (``models/models_hivit_mae.py:39-43, 110-111``), which is trainable anyway, then set to the 2-D
  sin-cos table: here an ``nnx.Param`` with the sin-cos init (column half first), trained and
  weight-decayed (timm ``add_weight_decay`` with no skip list) -- reproduced, checkpoints carry
  the trained table;
* the decoder appends ``L + 1 - len_keep`` mask tokens (one more than needed) before the gather
  by ``ids_restore`` (``models/models_hivit_mae.py:153-172``); index ``L`` is never gathered, so
  the extra token has no effect -- reproduced (same tensor shapes);
* ``norm_pix_loss = True`` is hard-coded and the ``--norm_pix_loss`` flag is swallowed
  (``models/masked_autoencoder.py:18``): here ``norm_pix_loss`` is an argument (default True, the
  official behaviour); the ``'mae'`` method block passes its own value, so HiViT configs set
  ``method.norm_pix_loss = True``;
* ``hifeat=False`` gives the encoder output no final norm (``models/models_hivit_mae.py:148-149``),
  although ``norm`` (width C) is built and saved (kept: same state_dict, ``norm`` unused without
  hifeat);
* the LR-schedule shift by one epoch (``main_pretrain.py:190``) is a training-loop quirk, not
  reproduced (documented in the configs).

mmpretrain's ``MAEHiViT`` differs (no hifeat, frozen APE re-interpolated every step, a decoder
that assumes a class token, sin-cos halves swapped: ``open-mmlab/mmpretrain@ee7f2e8
mmpretrain/models/selfsup/mae.py:273-315, 403``, ``mmpretrain/models/necks/mae_neck.py:71-73, 128-153``,
``mmpretrain/models/utils/position_encoding.py:123-174``). No mmpretrain MAE-HiViT weights
are released, so no flag reproduces it.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmim import layers as L
from jaxmim import ops, sharding
from jaxmim.methods.mae.vit import mae_loss
from jaxmim.models.hivit import BlockWithRPE, HiViT
from jaxmim.models.pos_embed import get_2d_sincos_pos_embed
from jaxmim.models.stacking import run_blocks
from jaxmim.models.vit import dense
from jaxmim.registry import register_model

__all__ = ['masking_ids', 'HiViTMaskedAutoencoder']


def masking_ids(noise: jax.Array, mask_ratio: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-sample random unit masking from noise (official ``masking_id``,
    ``models_hivit_mae.py:119-137``, with the noise passed in instead of drawn).

    ``ids_shuffle = argsort(noise)`` (ascending: small noise is kept), ``ids_restore =
    argsort(ids_shuffle)``, ``ids_keep = ids_shuffle[:, :len_keep]`` with ``len_keep = int(L * (1 -
    mask_ratio))``; ``mask`` is 1 for removed units, 0 for kept ones, in the original order.

    Args:
      noise: ``(B, L)`` float (uniform [0, 1) in training).
      mask_ratio: fraction of units removed, in [0, 1).

    Returns:
      ``ids_keep (B, len_keep)`` int32, ``ids_restore (B, L)`` int32, ``mask (B, L)`` float32.

    Raises:
      ValueError: ``noise`` not 2-D, or ``mask_ratio`` outside [0, 1).
    """
    if noise.ndim != 2:
        raise ValueError(f'noise must be (B, L), got shape {noise.shape}')
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f'mask_ratio must be in [0, 1), got {mask_ratio}')
    b, n = noise.shape
    len_keep = int(n * (1 - mask_ratio))
    ids_shuffle = jnp.argsort(noise, axis=1, stable=True).astype(jnp.int32)
    ids_restore = jnp.argsort(ids_shuffle, axis=1, stable=True).astype(jnp.int32)
    mask = jnp.ones((b, n), jnp.float32).at[:, :len_keep].set(0.0)
    return ids_shuffle[:, :len_keep], ids_restore, jnp.take_along_axis(mask, ids_restore, axis=1)


@register_model('mae_hivit_base_dec512d6b', classifier='hivit_base', data_defaults=dict(image_size=224))
@register_model('mae_hivit_demo_patch4_32_dec128d2b', classifier='hivit_demo_patch4_32',
                data_defaults=dict(image_size=32, eval_crop_ratio=1.0), img_size=32, patch_size=4,
                embed_dim=128, depths=(1, 1, 6), num_heads=4, decoder_embed_dim=128, decoder_depth=2,
                decoder_num_heads=4)
class HiViTMaskedAutoencoder(HiViT):
    """HiViT MAE (official ``mae_hivit_base_dec512d6b``; defaults are that factory's).

    The encoder is :class:`jaxmim.models.hivit.HiViT` without ``fc_norm`` / ``head`` (same
    variable names, so its checkpoint fine-tunes the classifier by name). On top:

    * ``norm``: LayerNorm over the hifeat features (``hifeat``: the inputs of the PatchMerge
      layers flattened per unit, row-major over (i, j, c), concatenated with the main output:
      2048 + 1024 + 512 = 3584 for base); without ``hifeat`` it is LayerNorm(C), built and
      saved but unused (the official model does the same);
    * decoder: ``decoder_embed`` Dense(F -> Dd), ``mask_token`` (1, 1, Dd) N(0, .02),
      ``decoder_pos_embed`` (1, N, Dd) fixed sin-cos (a :class:`jaxmim.layers.Buffer`),
      ``decoder_blocks`` (``decoder_depth`` x BlockWithRPE(Dd, ``decoder_num_heads``), no RPE, no
      drop path), ``decoder_norm``, ``decoder_pred`` Dense(Dd -> p*p*C).

    Args (official constructor names; defaults of the factory):
      img_size, patch_size, inner_patches, in_chans, embed_dim, depths, num_heads,
      stem_mlp_ratio, mlp_ratio, qkv_bias, qk_scale, drop_path_rate, norm_eps, ape, rpe, rpe_init,
      patch_norm: as :class:`jaxmim.models.hivit.HiViT` (``rpe=False`` and eps 1e-6 in the
      official model; ``rpe_init`` defaults to zeros, the self-supervised copy's).
      hifeat: the multi-scale encoder output (True).
      decoder_embed_dim, decoder_depth, decoder_num_heads: 512, 6, 16.
      norm_pix_loss: per-unit normalised targets (True: hard-coded officially).
      mask_ratio: fraction of units removed (0.75).
      attn_implementation: of the encoder's and the decoder's attention,
        :data:`jaxmim.ops.ATTN_IMPLEMENTATIONS` (jaxmim argument).
      remat: per encoder and decoder block, :data:`jaxmim.layers.REMAT_POLICIES` (same numbers).
      scan_blocks: the encoder's main stage and the decoder each as one ``jax.lax.scan`` (same
        parameters and numbers, :func:`jaxmim.models.stacking.run_blocks`).
      rngs: NNX RNG streams.

    Init: as HiViT (Dense N(0, .02), LN 1/0, conv PyTorch default), ``absolute_pos_embed`` and
    ``decoder_pos_embed`` 2-D sin-cos, ``mask_token`` N(0, .02).

    Call: ``model(images, *, noise, train=False, rng=None)``: images ``(B, img_size, img_size,
    in_chans)`` float NHWC (normalised; also the target), ``noise`` ``(B, N)`` float. ``rng``
    feeds drop path when ``train`` (0 by default). Returns ``loss`` (scalar float32, mean
    squared error over removed units, :func:`jaxmim.methods.mae.vit.mae_loss`), ``pred`` ``(B, N,
    p*p*C)`` float32 in raster order with pixels in (row, col, channel) order, ``mask`` ``(B, N)``
    (1 = removed), ``latent`` ``(B, len_keep, F)``, ``ids_restore`` ``(B, N)``.

    Raises:
      ValueError: bad sizes, ``mask_ratio`` outside [0, 1), a bad ``attn_implementation``, a wrong noise
        shape.
    """

    input_keys: tuple[str, ...] = ('noise',)

    def __init__(self, img_size: int = 224, patch_size: int = 16, inner_patches: int = 4, in_chans: int = 3,
                 embed_dim: int = 512, depths: Sequence[int] = (2, 2, 20), num_heads: int = 8,
                 stem_mlp_ratio: float = 3.0, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: float | None = None, drop_path_rate: float = 0.0, norm_eps: float = 1e-6,
                 ape: bool = True, rpe: bool = False, rpe_init: str = 'zeros', patch_norm: bool = True,
                 hifeat: bool = True, decoder_embed_dim: int = 512, decoder_depth: int = 6,
                 decoder_num_heads: int = 16, norm_pix_loss: bool = True, mask_ratio: float = 0.75,
                 attn_implementation: str | None = None, remat: str = 'none', scan_blocks: bool = False, *,
                 rngs: nnx.Rngs):
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f'mask_ratio must be in [0, 1), got {mask_ratio}')
        super().__init__(img_size=img_size, patch_size=patch_size, inner_patches=inner_patches,
                         in_chans=in_chans, num_classes=0, embed_dim=embed_dim, depths=depths,
                         num_heads=num_heads, stem_mlp_ratio=stem_mlp_ratio, mlp_ratio=mlp_ratio,
                         qkv_bias=qkv_bias, qk_scale=qk_scale, drop_path_rate=drop_path_rate,
                         norm_eps=norm_eps, ape=ape, rpe=rpe, rpe_init=rpe_init, patch_norm=patch_norm,
                         fc_norm=False, ape_init='sincos', attn_implementation=attn_implementation,
                         remat=remat, scan_blocks=scan_blocks, rngs=rngs)
        self.hifeat, self.norm_pix_loss, self.mask_ratio = hifeat, norm_pix_loss, mask_ratio
        self.len_keep = int(self.num_patches * (1 - mask_ratio))
        # hifeat width: each early-stage merge input flattened per unit (inner^2 * c = C * 2^(S-1-s)),
        # plus the main output: 7C for three stages.
        n_merge = len(self.depths) - 1
        feat = embed_dim * (1 + sum(2 ** (n_merge - s) for s in range(n_merge))) if hifeat else embed_dim
        self.num_features = feat
        self.norm = L.layer_norm(feat, norm_eps, rngs)   # built (unused) without hifeat too, as officially

        self.decoder_embed = dense(feat, decoder_embed_dim, rngs, axes=('embed', 'embed'))
        self.mask_token = nnx.Param(L.trunc_normal_02(rngs.params(), (1, 1, decoder_embed_dim)),
                                    **sharding.axes(None, None, 'embed'))
        self.decoder_pos_embed = L.Buffer(
            jnp.asarray(get_2d_sincos_pos_embed(decoder_embed_dim, self.grid_size))[None],
            **sharding.axes(None, 'tokens', 'embed'))
        self.decoder_blocks = nnx.List([
            BlockWithRPE(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias, qk_scale, norm_eps=norm_eps,
                         rngs=rngs)
            for _ in range(decoder_depth)])
        self.decoder_norm = L.layer_norm(decoder_embed_dim, norm_eps, rngs)
        self.decoder_pred = dense(decoder_embed_dim, patch_size ** 2 * in_chans, rngs, axes=('embed', 'pixels'))
        ops.set_attn_implementation(self, attn_implementation)

    # -- masking inputs --------------------------------------------------------------------

    def sample_inputs(self, key: jax.Array, batch_size: int) -> dict[str, jax.Array]:
        """``{'noise': U[0, 1) (batch_size, N) float32}`` drawn on device from ``key``."""
        return {'noise': jax.random.uniform(key, (batch_size, self.num_patches), jnp.float32)}

    def host_inputs(self, rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
        """The same noise made by the input pipeline: ``{'noise': (batch_size, N) float32}``."""
        return {'noise': rng.random((batch_size, self.num_patches), dtype=np.float32)}

    # -- forward ---------------------------------------------------------------------------

    def forward_encoder(self, imgs: jax.Array, noise: jax.Array, *, train: bool = False,
                        rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Masks units, runs the encoder on the kept ones (``models_hivit_mae.py:139-151``).

        Returns ``latent (B, len_keep, F)``, ``mask (B, N)``, ``ids_restore (B, N)``.

        Raises:
          ValueError: ``noise`` not ``(B, N)``.
        """
        if noise.shape != (imgs.shape[0], self.num_patches):
            raise ValueError(f'noise must have shape (B, N) = {(imgs.shape[0], self.num_patches)}, '
                             f'got {noise.shape}')
        ids_keep, ids_restore, mask = masking_ids(noise, self.mask_ratio)
        if self.hifeat:
            feats = self.forward_features(imgs, ids_keep, return_hifeat=True, train=train, rng=rng)
            b, n = feats[-1].shape[:2]
            x = self.norm(jnp.concatenate([f.reshape(b, n, -1) for f in feats], axis=-1))
        else:
            x = self.forward_features(imgs, ids_keep, train=train, rng=rng)
        return sharding.constrain(x, 'batch', None, None), mask, ids_restore

    def forward_decoder(self, latent: jax.Array, ids_restore: jax.Array) -> jax.Array:
        """``models_hivit_mae.py:153-172``: embed, append ``N + 1 - len_keep`` mask tokens,
        unshuffle, add positions, decode. Returns ``(B, N, p*p*C)`` in raster order."""
        x = self.decoder_embed(latent)
        b, n_vis, d = x.shape
        mask_tokens = jnp.broadcast_to(self.mask_token[...].astype(x.dtype),
                                       (b, ids_restore.shape[1] + 1 - n_vis, d))
        x = jnp.concatenate([x, mask_tokens], axis=1)
        x = jnp.take_along_axis(x, ids_restore[:, :, None], axis=1)
        x = x + self.decoder_pos_embed[...].astype(x.dtype)
        x = run_blocks(self.decoder_blocks, x, train=False, rng=None, remat=self.remat, scan=self.scan_blocks)
        x = sharding.constrain(x, 'batch', None, None)
        return self.decoder_pred(self.decoder_norm(x))

    def __call__(self, images: jax.Array, *, noise: jax.Array, train: bool = False,
                 rng: jax.Array | None = None) -> dict[str, Any]:
        latent, mask, ids_restore = self.forward_encoder(images, noise, train=train, rng=rng)
        pred = self.forward_decoder(latent, ids_restore).astype(jnp.float32)
        loss = mae_loss(images, pred, mask, self.patch_size, self.norm_pix_loss)
        return {'loss': loss, 'pred': pred, 'mask': mask, 'latent': latent, 'ids_restore': ids_restore}

    # -- hooks -----------------------------------------------------------------------------

    def no_weight_decay(self) -> tuple[str, ...]:
        """``()``: official pre-training decays everything but 1-D tensors and biases
        (timm 0.5.4 ``add_weight_decay`` with an empty skip list, ``main_pretrain.py:180``), so
        ``absolute_pos_embed`` and ``mask_token`` are decayed; ``decoder_pos_embed`` is a Buffer."""
        return ()

    def pretrained_fresh(self) -> tuple[str, ...]:
        """Nothing may start fresh when loading into the pre-training model itself."""
        return ()
