"""Host memory allocator settings for CPU runs (glibc ``malloc``), opt-in with
``JAXMIM_MALLOC=tuned``; the command-line entry points (``jaxmim.main``, ``jaxmim.benchmark``,
``launch.demo``) apply it before JAX starts.

XLA's CPU runtime allocates each step's temporaries from its worker threads. glibc gives every
such thread its own arena, built from 64 MiB ``mmap``'d heaps, and serves any request above 32 MiB
with a fresh ``mmap``; both go back to the kernel when the step frees them, so the next step
faults the pages in again. On the 2-core machine the Swin-B SimMIM step (192 px, batch 8) took
473,000 page faults and 0.89 s of kernel time per step that way (3.92 s per step); with the
settings below it takes none and runs in 3.59 s (docs/performance.md, "Session 7").

The settings (``mallopt``, the same knobs as ``MALLOC_ARENA_MAX``, ``MALLOC_MMAP_MAX_`` and
``MALLOC_TRIM_THRESHOLD_``): one arena for all threads, no ``mmap`` for large requests, no
trimming of the heap top. Freed memory stays in the process and is reused by the next step, so
the resident size stays at its peak. They act on the whole process, PyTorch included, and only on
allocations made after they are set: :func:`tune_malloc` must run before the first JAX
computation (``mallopt`` cannot change the arena of a thread that already allocated).

They are off by default: the single arena serialises every thread's ``malloc``, and in the full
training loop tf.data's threads pay for it. ``make demo``'s UM-MAE pre-training ran at about
1,210 images/s tuned against 1,430 with glibc's defaults, although its jitted step alone is
faster tuned (69 against 73 ms). Use it for large models whose step dominates (Swin-B: +8 %).
``JAXMIM_MALLOC``: ``default`` (unset) keeps glibc's behaviour, ``tuned`` applies the settings.
Non-glibc systems are left alone.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ['MALLOC_MODES', 'malloc_mode', 'tune_malloc', 'tune_malloc_or_exit']

MALLOC_MODES = ('default', 'tuned')
"""Accepted values of the ``JAXMIM_MALLOC`` environment variable."""

# glibc <malloc.h> parameter numbers
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

_applied: dict[str, int] | None = None


def malloc_mode() -> str:
    """The ``JAXMIM_MALLOC`` setting (``'default'`` when unset or empty).

    Raises:
      ValueError: a value outside :data:`MALLOC_MODES` (named, with the accepted ones).
    """
    mode = os.environ.get('JAXMIM_MALLOC', 'default').strip().lower() or 'default'
    if mode not in MALLOC_MODES:
        raise ValueError(f'JAXMIM_MALLOC must be one of {list(MALLOC_MODES)}, got {mode!r}')
    return mode


def tune_malloc(mode: str | None = None) -> dict[str, int] | None:
    """Applies the CPU allocator settings of this module's docstring once per process.

    Args:
      mode: one of :data:`MALLOC_MODES`; None reads ``JAXMIM_MALLOC`` (:func:`malloc_mode`).

    Returns:
      The settings applied, ``{'M_ARENA_MAX': 1, 'M_MMAP_MAX': 0, 'M_TRIM_THRESHOLD': -1}``
      (-1 = never trim), or None when nothing was changed (mode ``default``, not glibc, or
      ``mallopt`` refused a value). Once applied, later calls return the same settings.

    Raises:
      ValueError: an unknown mode.
    """
    global _applied
    mode = malloc_mode() if mode is None else mode
    if mode not in MALLOC_MODES:
        raise ValueError(f'malloc mode must be one of {list(MALLOC_MODES)}, got {mode!r}')
    if _applied is not None:
        return _applied
    if mode == 'default':
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  (glibc only: musl and others have other knobs)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    settings = {'M_ARENA_MAX': (_M_ARENA_MAX, 1), 'M_MMAP_MAX': (_M_MMAP_MAX, 0),
                'M_TRIM_THRESHOLD': (_M_TRIM_THRESHOLD, -1)}
    if not all(mallopt(param, value) == 1 for param, value in settings.values()):
        return None
    _applied = {k: v for k, (_, v) in settings.items()}
    return _applied


def tune_malloc_or_exit(exit_status: int = 2) -> dict[str, int] | None:
    """:func:`tune_malloc` from ``JAXMIM_MALLOC`` for a command-line entry point: an unknown
    value prints one ``error:`` line (the variable and the accepted values) to stderr and exits
    with ``exit_status`` instead of raising. Returns what :func:`tune_malloc` returns."""
    try:
        return tune_malloc()
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(exit_status)
