"""Model registry: ``create_model(name, **overrides)`` and ``list_models()``.

A backbone file registers named variants with :func:`register_model`; each variant is a
dict of constructor arguments for one model class. ``create_model`` merges the caller's
overrides into those defaults, rejects unknown arguments with the close valid names, and
builds the Flax NNX module. Adding a backbone is one new file in ``jaxmim/models/`` that
calls :func:`register_model`.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from typing import Any, Callable

from flax import nnx

_REGISTRY: dict[str, tuple[Callable[..., nnx.Module], dict[str, Any]]] = {}


def register_model(name: str, cls: Callable[..., nnx.Module], **defaults: Any) -> None:
    """Registers a named model variant.

    Args:
        name: registry name, e.g. ``'swin_base_patch4_window7_224'``.
        cls: the NNX module class (or builder function) to call.
        **defaults: constructor arguments that define the variant.

    Raises:
        ValueError: if ``name`` is already registered or a default is not an argument of ``cls``.
    """
    if name in _REGISTRY:
        raise ValueError(f'model {name!r} is already registered')
    _check_kwargs(name, cls, defaults)
    _REGISTRY[name] = (cls, dict(defaults))


def _accepted_kwargs(cls: Callable[..., Any]) -> list[str]:
    """Keyword arguments of ``cls``; follows ``**kwargs`` up the class hierarchy."""
    names: list[str] = []
    targets = [c.__init__ for c in cls.__mro__] if inspect.isclass(cls) else [cls]
    for fn in targets:
        params = inspect.signature(fn).parameters.values()
        names += [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                  and p.name not in ('self', 'rngs') and p.name not in names]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return names


def _check_kwargs(name: str, cls: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    accepted = _accepted_kwargs(cls)
    for key in kwargs:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=3)
            hint = f'; did you mean {close}?' if close else ''
            raise TypeError(f'{name}: unknown argument {key!r}{hint} Accepted: {sorted(accepted)}')


def list_models(pattern: str = '*') -> list[str]:
    """Returns the sorted registered model names matching a shell-style ``pattern``."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def model_defaults(name: str) -> dict[str, Any]:
    """Returns a copy of the constructor arguments that define variant ``name``.

    Raises:
        KeyError: if ``name`` is not registered (the message lists close names).
    """
    return dict(_lookup(name)[1])


def _lookup(name: str):
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.4)
        raise KeyError(f'unknown model {name!r}; close matches: {close}. '
                                      f'See jaxmim.list_models() for all {len(_REGISTRY)} names.')
    return _REGISTRY[name]


def create_model(name: str, *, rngs: nnx.Rngs | None = None, seed: int = 0,
                                  **overrides: Any) -> nnx.Module:
    """Builds a registered model.

    Args:
        name: a name from :func:`list_models`.
        rngs: the ``nnx.Rngs`` used for parameter initialisation; default ``nnx.Rngs(seed)``.
        seed: the seed used when ``rngs`` is not given.
        **overrides: constructor arguments replacing the variant's defaults, e.g.
            ``num_classes=10, drop_path_rate=0.2``.

    Returns:
        The NNX module, parameters initialised.

    Raises:
        KeyError: unknown ``name``.
        TypeError: an override is not an argument of the model (close names are listed).
    """
    cls, defaults = _lookup(name)
    _check_kwargs(name, cls, overrides)
    kwargs = {**defaults, **overrides}
    return cls(**kwargs, rngs=rngs if rngs is not None else nnx.Rngs(seed))
