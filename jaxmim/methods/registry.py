"""The registry of masked-image-modeling methods and the method protocol.

A method is a class registered with :func:`register_method` in its own package of
:mod:`jaxmim.methods` (every module and subpackage there is imported automatically). It declares:

* ``config_defaults() -> dict`` (classmethod): its ``config.method`` block (besides ``name`` and
  ``inputs_from``, which every block has), e.g. SimMIM ``{'encoder_stride': 32,
  'mask_patch_size': 32, 'mask_ratio': 0.6}``; the config is validated against it;
* ``build(model_name, *, overrides, seed, **block) -> nnx.Module`` (classmethod): the
  pre-training model for registry model ``model_name`` and the method block's values.

The model it builds provides the masking protocol the pre-training loop relies on:

* ``input_keys``: names of the per-batch masking arrays (SimMIM ``('mask',)``, MAE ``('noise',)``);
* ``sample_inputs(key, batch_size) -> dict`` those arrays drawn on device from the step key
  (static shapes), used when ``config.method.inputs_from == 'step'``;
* ``host_inputs(rng, batch_size) -> dict`` the same arrays as NumPy, made by the input pipeline
  when ``inputs_from == 'pipeline'`` (e.g. UM-MAE's official masks);
* ``__call__(images, *, train, rng, **inputs) -> dict`` with a scalar float32 ``loss``;
* ``img_size`` and ``in_chans``: the input it takes (checked against the data config);
* the backbone hooks of :class:`jaxmim.registry.Backbone` over its whole parameter tree.
"""

from __future__ import annotations

import difflib
from typing import Any

from flax import nnx

__all__ = ['register_method', 'get_method', 'list_methods', 'method_config_defaults',
           'create_mim_model', 'INPUTS_FROM']

INPUTS_FROM = ('step', 'pipeline')
"""Where masking inputs come from: drawn inside the jitted step from the step key, or made by
the input pipeline and carried in the batch."""

_METHODS: dict[str, type] = {}


def register_method(name: str):
    """Class decorator registering a MIM method under ``name`` (see the module docstring).

    Raises:
      ValueError: ``name`` is taken, or the class lacks ``config_defaults`` / ``build``.
    """
    def register(cls):
        if name in _METHODS:
            raise ValueError(f'MIM method {name!r} is already registered')
        for attr in ('config_defaults', 'build'):
            if not callable(getattr(cls, attr, None)):
                raise ValueError(f'method {name!r}: class {cls.__name__} must define classmethod {attr}()')
        reserved = {'name', 'inputs_from'} & set(cls.config_defaults())
        if reserved:
            raise ValueError(f'method {name!r}: config keys {sorted(reserved)} are reserved')
        _METHODS[name] = cls
        return cls

    return register


def list_methods() -> list[str]:
    """Sorted names of the registered methods."""
    return sorted(_METHODS)


def get_method(name: str) -> type:
    """The class registered as method ``name``.

    Raises:
      KeyError: unknown name (accepted and close names listed).
    """
    if name not in _METHODS:
        close = difflib.get_close_matches(str(name), list(_METHODS), n=3)
        raise KeyError(f'unknown MIM method {name!r}; accepted: {list_methods()}; close: {close}')
    return _METHODS[name]


def method_config_defaults(name: str) -> dict[str, Any]:
    """The full ``config.method`` block of method ``name``: ``name``, ``inputs_from='step'`` and
    the method's own defaults.

    Raises:
      KeyError: unknown method.
    """
    return {'name': name, 'inputs_from': 'step', **get_method(name).config_defaults()}


def create_mim_model(block: dict[str, Any], model_name: str, *, overrides: dict[str, Any] | None = None,
                     seed: int = 0) -> nnx.Module:
    """Builds the pre-training model a ``config.method`` block describes.

    Args:
      block: the method block as a dict (``name``, ``inputs_from`` and the method's keys).
      model_name: the registry model the method wraps or instantiates (``config.model.name``).
      overrides: constructor overrides for that model (``config.model.overrides``).
      seed: initialisation seed.

    Raises:
      KeyError: unknown method or model. ValueError: a key the method does not accept, or a bad
      ``inputs_from``. TypeError: an unknown model override.
    """
    block = dict(block)
    name = block.pop('name')
    inputs_from = block.pop('inputs_from', 'step')
    if inputs_from not in INPUTS_FROM:
        raise ValueError(f'config.method.inputs_from must be one of {INPUTS_FROM}, got {inputs_from!r}')
    cls = get_method(name)
    accepted = cls.config_defaults()
    for key in block:
        if key not in accepted:
            close = difflib.get_close_matches(key, list(accepted), n=3)
            raise ValueError(f'config.method.{key} is not a key of method {name!r}; close: {close}; '
                             f'accepted: {sorted(accepted)}')
    return cls.build(model_name, overrides=dict(overrides or {}), seed=seed, **{**accepted, **block})

