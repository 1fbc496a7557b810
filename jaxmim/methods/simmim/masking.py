"""SimMIM's masking: a fixed-size random subset of square mask units, on the model patch grid.

Every mask has a fixed shape and a fixed number of masked units, so it can be drawn inside a
jitted step without recompilation. Masks use 1 = masked, 0 = visible.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class SimMIMMaskGenerator:
    """SimMIM random masking of square mask units (Xie et al. 2022, §3.1).

    A uniform random subset of exactly ``ceil(num_units * mask_ratio)`` of the
    ``(input_size / mask_patch_size)^2`` mask units is masked per image; the unit mask is
    then repeated to the model's patch grid. Source: ``microsoft/SimMIM@d3e29bc
    data/data_simmim.py:21-45`` (``MaskGenerator``).

    Attributes:
      input_size: image side in pixels (e.g. 192).
      mask_patch_size: mask-unit side in pixels (32 at 192 px).
      model_patch_size: the backbone's patch side in pixels (4 for Swin).
      mask_ratio: fraction of units to mask, in (0, 1).

    Raises:
      ValueError: if ``mask_patch_size`` does not divide ``input_size`` or
        ``model_patch_size`` does not divide ``mask_patch_size``, or the ratio is out of range.
    """

    input_size: int
    mask_patch_size: int
    model_patch_size: int
    mask_ratio: float = 0.6

    def __post_init__(self):
        if self.input_size % self.mask_patch_size:
            raise ValueError(f'mask_patch_size {self.mask_patch_size} must divide the input size '
                             f'{self.input_size}')
        if self.mask_patch_size % self.model_patch_size:
            raise ValueError(f'model_patch_size {self.model_patch_size} must divide mask_patch_size '
                             f'{self.mask_patch_size}')
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f'mask_ratio must be in (0, 1), got {self.mask_ratio}')

    @property
    def rand_size(self) -> int:
        """Mask units per side."""
        return self.input_size // self.mask_patch_size

    @property
    def scale(self) -> int:
        """Model patches per mask unit side."""
        return self.mask_patch_size // self.model_patch_size

    @property
    def mask_count(self) -> int:
        """Masked units per image: ``ceil(rand_size^2 * mask_ratio)`` (22 of 36 at 192/32)."""
        return int(math.ceil(self.rand_size ** 2 * self.mask_ratio))

    def unit_mask(self, key: jax.Array, batch_size: int) -> jax.Array:
        """Draws unit masks ``(B, rand_size, rand_size)`` int32 with exactly ``mask_count`` ones.

        Jit-friendly: the rank of i.i.d. uniform noise selects the masked units, which gives
        a uniformly random subset of fixed size per image.
        """
        n = self.rand_size ** 2
        noise = jax.random.uniform(key, (batch_size, n))
        ranks = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)
        return (ranks < self.mask_count).astype(jnp.int32).reshape(batch_size, self.rand_size,
                                                                   self.rand_size)

    def __call__(self, key: jax.Array, batch_size: int) -> jax.Array:
        """Draws masks on the model patch grid: int32 ``(B, input/model_patch, input/model_patch)``."""
        unit = self.unit_mask(key, batch_size)
        return jnp.repeat(jnp.repeat(unit, self.scale, axis=1), self.scale, axis=2)

    def numpy(self, rng: np.random.Generator, batch_size: int) -> np.ndarray:
        """NumPy twin of :meth:`__call__` for data loaders and tests: int32 ``(B, G, G)``."""
        n = self.rand_size ** 2
        out = np.zeros((batch_size, n), np.int32)
        for b in range(batch_size):
            out[b, rng.permutation(n)[:self.mask_count]] = 1
        out = out.reshape(batch_size, self.rand_size, self.rand_size)
        return out.repeat(self.scale, axis=1).repeat(self.scale, axis=2)
