"""Masked-image-modeling methods.

A method wraps an encoder from the model registry. Its module follows one protocol, which
is all the pre-training loop relies on:

* ``model.sample_mask(key, batch_size)`` draws a fixed-shape mask for a batch;
* ``model(images, mask=mask, train=..., rng=...)`` returns a dict with a scalar ``loss``.

Adding a method is one new file here plus one line in ``METHODS``.
"""

from __future__ import annotations

import difflib
from typing import Any

from flax import nnx

from jaxmim.methods.simmim import SimMIM
from jaxmim.registry import create_model

METHODS: dict[str, type[nnx.Module]] = {'simmim': SimMIM}


def create_mim_model(method: str, encoder: str, *, encoder_overrides: dict[str, Any] | None = None,
                     seed: int = 0, **method_kwargs: Any) -> nnx.Module:
    """Builds a pre-training model: a registered encoder wrapped by a MIM method.

    Args:
      method: a key of :data:`METHODS` (``'simmim'``).
      encoder: a registered encoder name, e.g. ``'simmim_swin_base_patch4_window6_192'``.
      encoder_overrides: constructor overrides for the encoder.
      seed: initialisation seed (encoder and method get independent streams).
      **method_kwargs: the method's arguments (SimMIM: ``encoder_stride``,
        ``mask_patch_size``, ``mask_ratio``).

    Raises:
      KeyError: unknown method or encoder name (close names are listed).
      TypeError: unknown override.
    """
    if method not in METHODS:
        close = difflib.get_close_matches(method, list(METHODS), n=3)
        raise KeyError(f'unknown MIM method {method!r}; accepted: {sorted(METHODS)}; close: {close}')
    enc = create_model(encoder, seed=seed, **(encoder_overrides or {}))
    return METHODS[method](enc, **method_kwargs, rngs=nnx.Rngs(seed + 1))
