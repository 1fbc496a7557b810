"""The one predicate of :mod:`jaxmim.ops`: which form of an op runs.

An op runs its *fast* form when the platform it is traced for is one where that fast form was
measured to help (:data:`FAST_PLATFORMS`) and ``JAXMIM_PORTABLE_OPS`` is not set; otherwise its
*portable* form. The platform is the innermost :func:`platform_scope` around the tracing, else
``jax.default_backend()``. The train and eval steps (:mod:`jaxmim.steps`) and the benchmark's
forward trace their jitted functions under ``platform_scope(mesh_platform(mesh))``, so the
platform is the one of the devices the step runs on: a CPU mesh on a GPU host takes the CPU
forms, as it takes the CPU compiler options (:func:`jaxmim.ops.compiler_options`).

Everything here is read when a function is *traced*: a jitted function already compiled keeps
the forms it was traced with (jit caches do not see the scope or the environment).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from typing import Callable, Iterator

import jax

__all__ = ['PORTABLE_ENV', 'FAST_OPS_ENV', 'FAST_PLATFORMS', 'FORMS', 'platform_scope', 'traced_on',
           'mesh_platform', 'current_platform', 'portable_forced', 'fast_forced', 'form']

PORTABLE_ENV = 'JAXMIM_PORTABLE_OPS'
"""Environment variable: ``1`` (or ``true`` / ``yes`` / ``on``) runs every op on its portable
form; unset, empty, ``0`` (or ``false`` / ``no`` / ``off``) leaves the choice to the platform."""

FAST_OPS_ENV = 'JAXMIM_FAST_OPS'
"""Environment variable, for measuring a fast form where it is not yet known to help (e.g. on a
GPU): a comma-separated list of op names (or ``all``) whose fast form runs on every platform.
``compiler_options`` cannot be named (its options are XLA:CPU flags). ``JAXMIM_PORTABLE_OPS``
wins over it."""

_TRUE = ('1', 'true', 'yes', 'on')
_FALSE = ('', '0', 'false', 'no', 'off')

FORMS = ('fast', 'portable')

FAST_PLATFORMS: dict[str, tuple[str, ...]] = {
    'sum_rows': ('cpu',),
    'sum_squares': ('cpu',),
    'linear_apply': ('cpu',),
    'layer_norm_last': ('cpu',),
    'gelu': ('cpu',),
    'pointwise_conv': ('cpu',),
    'compiler_options': ('cpu',),
}
"""``{op name: platforms where its fast form runs}``: each fast form only where it was measured
to help (see :mod:`jaxmim.ops`). Every figure so far is from XLA's CPU backend; the one
accelerator run (H200, float32) predates the fast forms, so accelerators take the portable
forms until a measurement adds them here."""

_ALIASES = {'cuda': 'gpu', 'rocm': 'gpu'}
_platform: contextvars.ContextVar[str | None] = contextvars.ContextVar('jaxmim_ops_platform', default=None)


def _normalise(platform: str) -> str:
    if not isinstance(platform, str) or not platform:
        raise ValueError(f'platform must be a non-empty string such as "cpu", "gpu" or "tpu", got {platform!r}')
    p = platform.lower()
    return _ALIASES.get(p, p)


@contextlib.contextmanager
def platform_scope(platform: str) -> Iterator[str]:
    """Within the block, ops are traced for ``platform`` (``'cpu'``, ``'gpu'``, ``'tpu'``;
    ``'cuda'`` / ``'rocm'`` read as ``'gpu'``): :func:`current_platform` returns it. Scopes nest
    (the innermost wins) and are per thread / asyncio task (a ``contextvars.ContextVar``).
    Yields the normalised platform name.

    Raises:
      ValueError: ``platform`` is not a non-empty string.
    """
    token = _platform.set(_normalise(platform))
    try:
        yield _platform.get()
    finally:
        _platform.reset(token)


def traced_on(platform: str, fn: Callable) -> Callable:
    """``fn`` wrapped so that every call (in particular ``jax.jit``'s tracing of it) runs inside
    ``platform_scope(platform)``; name, docstring and signature are ``fn``'s
    (``functools.wraps``)."""
    platform = _normalise(platform)

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with platform_scope(platform):
            return fn(*args, **kwargs)

    return wrapped


def mesh_platform(mesh) -> str:
    """The platform of the devices of ``mesh`` (``jax.sharding.Mesh``): that of its first
    device, normalised as in :func:`platform_scope`."""
    return _normalise(mesh.devices.flat[0].platform)


def current_platform() -> str:
    """The platform ops are traced for: the innermost :func:`platform_scope`, else
    ``jax.default_backend()``."""
    p = _platform.get()
    return p if p is not None else _normalise(jax.default_backend())


def portable_forced() -> bool:
    """Whether ``JAXMIM_PORTABLE_OPS`` asks for the portable forms (read at each call).

    Raises:
      ValueError: a value outside the accepted ones (named, with them).
    """
    value = os.environ.get(PORTABLE_ENV, '').strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f'{PORTABLE_ENV} must be one of {list(_TRUE)} or {list(_FALSE[1:])} (or unset), got {value!r}')


def fast_forced() -> frozenset[str]:
    """The ops ``JAXMIM_FAST_OPS`` puts on their fast form everywhere (read at each call).

    Raises:
      ValueError: an unknown op name, or ``compiler_options`` (named, with the accepted ones).
    """
    value = os.environ.get(FAST_OPS_ENV, '').strip().lower()
    if not value:
        return frozenset()
    allowed = sorted(op for op in FAST_PLATFORMS if op != 'compiler_options')
    names = {n.strip() for n in value.split(',') if n.strip()}
    if 'all' in names:
        return frozenset(allowed)
    bad = sorted(names - set(allowed))
    if bad:
        raise ValueError(f'{FAST_OPS_ENV} names {bad}; accepted: all or a comma-separated list of {allowed} '
                         '(compiler_options holds XLA:CPU flags and stays on the CPU)')
    return frozenset(names)


def form(op: str, platform: str | None = None) -> str:
    """``'fast'`` or ``'portable'``: the form ``op`` takes on ``platform`` (default
    :func:`current_platform`). The one predicate of the library: the dispatching ops, the
    layers' fall-backs and the step's compiler options all ask it. ``JAXMIM_PORTABLE_OPS`` first,
    then ``JAXMIM_FAST_OPS`` (:func:`fast_forced`), then :data:`FAST_PLATFORMS`.

    Raises:
      KeyError: ``op`` is not in :data:`FAST_PLATFORMS`.
      ValueError: a bad ``JAXMIM_PORTABLE_OPS``, ``JAXMIM_FAST_OPS`` or ``platform``.
    """
    if op not in FAST_PLATFORMS:
        raise KeyError(f'unknown op {op!r}; the ops with a fast form are {sorted(FAST_PLATFORMS)}')
    if portable_forced():
        return 'portable'
    if op in fast_forced():
        return 'fast'
    p = current_platform() if platform is None else _normalise(platform)
    return 'fast' if p in FAST_PLATFORMS[op] else 'portable'
