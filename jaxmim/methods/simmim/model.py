"""SimMIM: masked image modeling with a one-layer decoder and an L1 loss on masked pixels.

Xie et al., "SimMIM: A Simple Framework for Masked Image Modeling", CVPR 2022; follows
``microsoft/SimMIM@d3e29bc models/simmim.py:98-133`` (``SimMIM``: decoder :98-112, loss
:114-121) and ``data/data_simmim.py:21-45`` (``MaskGenerator``, here
:class:`jaxmim.methods.simmim.masking.SimMIMMaskGenerator`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmim import layers as L
from jaxmim import sharding
from jaxmim.layers import patchify, unpatchify  # noqa: F401  (re-exported: the pred layout)
from jaxmim.methods.registry import register_method
from jaxmim.methods.simmim.masking import SimMIMMaskGenerator
from jaxmim.registry import Backbone, create_model


def pixel_shuffle(x: jax.Array, r: int) -> jax.Array:
    """``torch.nn.PixelShuffle(r)`` in NHWC: ``(B, h, w, C*r*r)`` -> ``(B, h*r, w*r, C)``, any dtype.

    Input channel ``c*r^2 + i*r + j`` goes to output pixel ``(h*r + i, w*r + j)``, colour c
    (colour-major, unlike TensorFlow's ``depth_to_space``). Source: the decoder's
    ``nn.PixelShuffle(encoder_stride)``, ``microsoft/SimMIM@d3e29bc models/simmim.py:104-109``.
    """
    b, h, w, crr = x.shape
    c = crr // (r * r)
    x = x.reshape(b, h, w, c, r, r).transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(b, h * r, w * r, c)


def masked_l1_loss(target: jax.Array, x_rec: jax.Array, mask: jax.Array, patch_size: int) -> jax.Array:
    """SimMIM's reconstruction loss: mean absolute error over the masked pixels.

    ``sum(|target - x_rec| * M) / (sum(M) + 1e-5) / C`` where M is the patch-grid mask repeated
    ``patch_size`` times along H and W (nearest upsampling), summed over the whole batch.
    Source: ``microsoft/SimMIM@d3e29bc models/simmim.py:114-121``.

    Args:
      target: ``(B, H, W, C)`` the normalised input images.
      x_rec: ``(B, H, W, C)`` the reconstruction.
      mask: ``(B, H/patch_size, W/patch_size)``, 1 = masked.
      patch_size: model patch side in pixels.

    Returns:
      Scalar float32 loss.
    """
    m = jnp.repeat(jnp.repeat(mask.astype(jnp.float32), patch_size, axis=1), patch_size, axis=2)[..., None]
    err = jnp.abs(target.astype(jnp.float32) - x_rec.astype(jnp.float32))
    return (err * m).sum() / (m.sum() + 1e-5) / target.shape[-1]


@register_method('simmim')
class SimMIM(nnx.Module, Backbone):
    """SimMIM model: encoder with a mask token, 1x1-conv + pixel-shuffle decoder, masked L1 loss.

    Args:
      encoder: a masked-input encoder called ``encoder(images, mask, train=, rng=)`` that
        returns the final feature map ``(B, H/stride, W/stride, num_features)`` and exposes
        ``num_features``, ``in_chans``, ``patch_size``, ``img_size``
        (e.g. :class:`jaxmim.models.swin.SwinTransformerForSimMIM`).
      encoder_stride: total downsampling of the encoder (32 for 4-stage Swin with patch 4).
      mask_patch_size: mask-unit side in pixels (32 in the paper).
      mask_ratio: fraction of mask units masked (0.6 in the paper).
      rngs: NNX RNG streams for the decoder initialisation (PyTorch default conv init).

    Call: ``model(images, mask=mask, train=False, rng=None)`` with images ``(B, H, W, C)``
    (the ImageNet-normalised input, which is also the target) and mask
    ``(B, H/patch, W/patch)`` (1 = masked). Returns a dict:
      ``loss``: scalar float32, ``sum(|x - x_rec| * M) / (sum(M) + 1e-5) / C`` with M the mask
        upsampled to pixels (the official normalisation, ``models/simmim.py:114-121``);
      ``x_rec``: ``(B, H, W, C)`` reconstruction;
      ``pred``: ``x_rec`` cut into ``encoder_stride``-pixel units, ``(B, L, stride*stride*C)``,
        units in raster order, pixels in ``(p, q, c)`` order;
      ``mask``: ``(B, L)`` float32, 1 where any patch of the ``encoder_stride`` unit is masked.

    Raises:
      ValueError: incompatible sizes (see :class:`SimMIMMaskGenerator`), or a mask of the
        wrong shape.
    """

    def __init__(self, encoder: nnx.Module, encoder_stride: int, mask_patch_size: int = 32,
                 mask_ratio: float = 0.6, *, rngs: nnx.Rngs):
        self.encoder = encoder
        self.encoder_stride = encoder_stride
        self.img_size, self.in_chans, self.patch_size = encoder.img_size, encoder.in_chans, encoder.patch_size
        out = encoder_stride ** 2 * self.in_chans
        self.decoder = L.PointwiseConv(encoder.num_features, out, (1, 1), kernel_init=L.torch_default_kernel_init,
                                       bias_init=L.torch_default_bias_init(encoder.num_features), rngs=rngs,
                                       kernel_metadata=sharding.axes(None, None, 'embed', 'pixels'),
                                       bias_metadata=sharding.axes('bias'))
        self.mask_generator = SimMIMMaskGenerator(encoder.img_size, mask_patch_size, self.patch_size,
                                                  mask_ratio)

    # -- method protocol (jaxmim.methods.registry) ------------------------------------------

    input_keys = ('mask',)
    """The per-batch masking input: ``mask`` int32 ``(B, H/patch, W/patch)``, 1 = masked."""

    @classmethod
    def config_defaults(cls) -> dict[str, Any]:
        """The ``config.method`` block: SimMIM's paper settings at 192 px (``encoder_stride`` 32,
        ``microsoft/SimMIM@d3e29bc models/simmim.py:138-156``; ``MaskGenerator`` defaults 32 px
        units, ratio 0.6, ``data/data_simmim.py:21-45``)."""
        return {'encoder_stride': 32, 'mask_patch_size': 32, 'mask_ratio': 0.6}

    @classmethod
    def build(cls, model_name: str, *, overrides: dict[str, Any], seed: int, encoder_stride: int,
              mask_patch_size: int, mask_ratio: float) -> 'SimMIM':
        """SimMIM around the registered masked-input encoder ``model_name`` (e.g.
        ``simmim_swin_base_patch4_window6_192``); the encoder is initialised from ``seed`` and the
        decoder from ``seed + 1``."""
        enc = create_model(model_name, seed=seed, **overrides)
        return cls(enc, encoder_stride, mask_patch_size=mask_patch_size, mask_ratio=mask_ratio,
                   rngs=nnx.Rngs(seed + 1))

    def sample_inputs(self, key: jax.Array, batch_size: int) -> dict[str, jax.Array]:
        """``{'mask': (B, H/patch, W/patch) int32}`` drawn on device (see :class:`SimMIMMaskGenerator`)."""
        return {'mask': self.mask_generator(key, batch_size)}

    def host_inputs(self, rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
        """The same masks made in NumPy by the input pipeline (official ``MaskGenerator`` runs in
        the data loader)."""
        return {'mask': self.mask_generator.numpy(rng, batch_size)}

    # -- hooks: the encoder's, under ``encoder.`` -------------------------------------------

    def no_weight_decay(self) -> tuple[str, ...]:
        """The encoder's patterns under ``encoder.`` (the decoder conv kernel is decayed).

        Differs from the official pre-training in one respect, kept on purpose: official
        ``SimMIM.no_weight_decay_keywords`` prefixes Swin's keyword into
        ``'encoder.relative_position_bias_table'`` (``microsoft/SimMIM@d3e29bc
        models/simmim.py:129-133``), which the substring test of ``get_pretrain_param_groups``
        (``optimizer.py:47-66``) never finds in a real name, so the official run decays the
        relative-position tables (Swin-B 192: 45,496 parameters) while fine-tuning does not. Here
        they get no decay in both stages, as the Swin hook (and the paper's intent) says."""
        return tuple(f'encoder.{p}' for p in self.encoder.no_weight_decay())

    def layer_id(self, name: str) -> int:
        """The encoder's layer id for ``encoder.*``; the decoder gets the last id."""
        if name.startswith('encoder.'):
            return self.encoder.layer_id(name[len('encoder.'):])
        return self.num_layer_ids - 1

    @property
    def num_layer_ids(self) -> int:
        """The encoder's number of layer ids."""
        return self.encoder.num_layer_ids

    def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool = False,
                 rng: jax.Array | None = None) -> dict[str, Any]:
        z = self.encoder(x, mask, train=train, rng=rng)
        y = sharding.constrain(self.decoder(z), 'batch', None, None, None)
        x_rec = pixel_shuffle(y, self.encoder_stride).astype(jnp.float32)
        loss = masked_l1_loss(x, x_rec, mask, self.patch_size)
        g = mask.shape[1] * self.patch_size // self.encoder_stride
        unit_mask = mask.reshape(mask.shape[0], g, mask.shape[1] // g, g, mask.shape[2] // g).max(axis=(2, 4))
        return {'loss': loss, 'x_rec': x_rec, 'pred': patchify(x_rec, self.encoder_stride),
                'mask': unit_mask.reshape(mask.shape[0], -1).astype(jnp.float32)}
