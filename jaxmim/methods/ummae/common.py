"""What every UM-MAE pre-training model shares: argument checks, masking inputs, norm-pix targets.

Li et al., "Uniform Masking: Enabling MAE Pre-training for Pyramid-based Vision Transformers with
Locality" (arXiv 2205.10063); follows ``implus/UM-MAE@cb7776b``: the masks of
``mask_transform.py:7-53`` made in the data loader (here :class:`MaskingInputs`, from
:mod:`jaxmim.methods.ummae.masking`), the pyramid geometry of ``models_mae_pvt.py:162`` /
``models_mae_swin.py:296`` (tokens per unit side) and the norm-pix target of
``models_mae_pvt.py:398-401``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxmim.methods.ummae import masking as U

__all__ = ['check_pyramid_strides', 'check_um_pretrain_args', 'norm_pix_target', 'MaskingInputs']


def check_pyramid_strides(img_size: int, patch_size: int, stride: int, num_stages: int) -> tuple[int, int]:
    """Checks the pyramid geometry and returns ``(M, k)``: ``M = img_size / stride`` mask units per side,
    ``k = stride / patch_size`` tokens per unit side, which must equal ``2^(stages - 2)`` so that the
    encoder's output grid, after the decoders' PixelShuffle(2), is one token per (compact) unit.

    Raises:
      ValueError: naming the sizes that do not fit.
    """
    if img_size % stride or stride % patch_size:
        raise ValueError(f'stride {stride} must divide img_size {img_size} and be a multiple of patch_size '
                         f'{patch_size}')
    k = stride // patch_size
    if k != 2 ** (num_stages - 2):
        raise ValueError(f'stride/patch_size = {k} tokens per mask unit must equal 2^(stages-2) = '
                         f'{2 ** (num_stages - 2)} so the decoder\'s PixelShuffle(2) lands on the unit grid')
    return img_size // stride, k


def check_um_pretrain_args(model: str, img_size: int, patch_size: int, stride: int, num_stages: int,
                           mask_ratio: float, sampling: str, vis_mask_ratio: float) -> tuple[int, int]:
    """The checks every UM-MAE pyramid pre-training model makes on its arguments; returns
    ``(M, k)`` of :func:`check_pyramid_strides`.

    Raises:
      ValueError: ``sampling='random'`` (random masks cannot be compacted), a sampling / ratio
        pair :func:`jaxmim.methods.ummae.masking.check_sampling` refuses, ``vis_mask_ratio`` outside
        [0, 1), strides that do not fit, or an odd unit grid; each naming ``model`` and the field.
    """
    if sampling == 'random':
        raise ValueError(f"{model} needs one visible unit per 2x2 block: sampling must be 'uniform' or "
                         "'uniform_block', not 'random'")
    U.check_sampling(mask_ratio, sampling)
    if not 0.0 <= vis_mask_ratio < 1.0:
        raise ValueError(f'vis_mask_ratio must be in [0, 1), got {vis_mask_ratio}')
    grid, k = check_pyramid_strides(img_size, patch_size, stride, num_stages)
    if grid % 2:
        raise ValueError(f'the unit grid {grid} must be even for Uniform Sampling')
    return grid, k


def norm_pix_target(t: jax.Array) -> jax.Array:
    """``(t - mean) / sqrt(var + 1e-6)`` over the last axis, unbiased variance (torch ``var``):
    patchified ``(N, L, p*p*C)`` -> same shape. Source: ``models_mae_pvt.py:398-401``."""
    mean = t.mean(axis=-1, keepdims=True)
    var = t.var(axis=-1, keepdims=True, ddof=1)
    return (t - mean) / (var + 1.0e-6) ** 0.5


class MaskingInputs:
    """Mixin: the masking inputs of a UM-MAE model (``jaxmim.methods`` protocol).

    Needs ``self.grid`` (mask units per side M), ``self.mask_ratio``, ``self.sampling`` and
    ``self.noise_len`` (0: no noise input). Masks are ``(B, M*M)`` bool, 1 = masked.
    """

    @property
    def input_keys(self) -> tuple[str, ...]:
        """``('mask', 'noise')``, or ``('mask',)`` for models without Secondary Masking noise."""
        return ('mask', 'noise') if self.noise_len else ('mask',)

    def sample_inputs(self, key: jax.Array, batch_size: int) -> dict[str, jax.Array]:
        """Masks ``(B, M*M)`` bool (:func:`jaxmim.methods.ummae.masking.make_mask`) and U[0, 1) noise
        ``(B, noise_len)`` float32, drawn on device."""
        k_mask, k_noise = jax.random.split(key)
        out = {'mask': U.make_mask(k_mask, batch_size, self.grid, self.mask_ratio, self.sampling)}
        if self.noise_len:
            out['noise'] = jax.random.uniform(k_noise, (batch_size, self.noise_len), jnp.float32)
        return out

    def host_inputs(self, rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
        """The same arrays made by the input pipeline (the official masks come from the data loader)."""
        out = {'mask': U.make_mask_numpy(rng, batch_size, self.grid, self.mask_ratio, self.sampling)}
        if self.noise_len:
            out['noise'] = rng.random((batch_size, self.noise_len), dtype=np.float32)
        return out

    def _check_mask(self, images: jax.Array, mask: jax.Array, noise: jax.Array | None = None) -> jax.Array:
        b = images.shape[0]
        if images.ndim != 4 or images.shape[1:] != (self.img_size, self.img_size, self.in_chans):
            raise ValueError(f'expected images (B, {self.img_size}, {self.img_size}, {self.in_chans}) NHWC, '
                             f'got {images.shape}')
        if mask.shape != (b, self.grid * self.grid):
            raise ValueError(f'mask must be (B, L) = {(b, self.grid * self.grid)} (units of {self.stride} px, '
                             f'raster order, 1 = masked), got {mask.shape}')
        if self.noise_len and (noise is None or noise.shape != (b, self.noise_len)):
            raise ValueError(f'noise must be (B, {self.noise_len}) float, got '
                             f'{None if noise is None else noise.shape}')
        return mask.astype(bool)
