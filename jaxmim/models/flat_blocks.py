"""Pieces shared by the flat-block pyramid backbones of the UM-MAE repository (PVT and Swin variants).

Both variants (:mod:`jaxmim.models.pvt`, :mod:`jaxmim.models.ummae_swin`) keep one flat ``blocks``
list (block 0 of stages 2-4 owns the stage's ``downsample``) and initialise convolutions with
``normal(0, sqrt(2 / fan_out))``; their classifiers and their pre-training models
(:mod:`jaxmim.methods.ummae`) share the conv helpers and the layer-decay hooks below. Follows
``implus/UM-MAE@cb7776b models_mae_pvt.py:224-260`` (``_init_weights``) and
``util/lr_decay.py`` (``get_layer_id_for_vit``).
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmim import sharding
from jaxmim.models.vit import vit_layer_id

__all__ = ['conv_fan_out_init', 'conv', 'UMMAEHooks']


def conv_fan_out_init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    """UM-MAE's Conv2d init ``normal(0, sqrt(2 / fan_out))``, ``fan_out = kh * kw * C_out`` (groups 1),
    for a Flax kernel ``(kh, kw, C_in, C_out)``. Source: ``models_mae_pvt.py:254-258``."""
    fan_out = shape[0] * shape[1] * shape[-1]
    return jax.random.normal(key, shape, dtype) * math.sqrt(2.0 / fan_out)


def conv(din: int, dout: int, kernel: int, rngs: nnx.Rngs, kernel_init=conv_fan_out_init) -> nnx.Conv:
    """``nn.Conv2d(din, dout, kernel, stride=kernel)`` (no padding) in NHWC with UM-MAE's init (bias 0):
    ``(B, H, W, din)`` -> ``(B, H/kernel, W/kernel, dout)``. Kernel ``(k, k, din, dout)`` named
    ``(None, None, 'conv_in', 'conv_out')``, bias ``('bias',)`` (:mod:`jaxmim.sharding`).
    Source: ``models_mae_pvt.py:254-258``."""
    return nnx.Conv(din, dout, (kernel, kernel), strides=kernel, padding='VALID', kernel_init=kernel_init,
                    bias_init=jax.nn.initializers.zeros, rngs=rngs,
                    kernel_metadata=sharding.axes(None, None, 'conv_in', 'conv_out'),
                    bias_metadata=sharding.axes('bias'))


class UMMAEHooks:
    """Backbone hooks of the UM-MAE pre-training models and classifiers (flat ``blocks`` list).

    Layer ids follow ``util/lr_decay.py`` ``get_layer_id_for_vit`` with ``num_layers =
    len(blocks) + 1``: ``cls_token`` / ``pos_embed`` / ``patch_embed.*`` -> 0, ``blocks.i.*`` -> i + 1
    (a stage's ``downsample`` belongs to its block), everything else -> ``len(blocks) + 1``.
    """

    def layer_id(self, name: str) -> int:
        """See the class docstring."""
        return vit_layer_id(name, len(self.blocks))

    @property
    def num_layer_ids(self) -> int:
        """``len(blocks) + 2``."""
        return len(self.blocks) + 2
