"""The divergence guard: non-finite loss / gradient norm counted on device, inside the step.

:func:`guard_step` runs inside the jitted step: it tests the loss and the global gradient norm
for finiteness on device and counts non-finite steps in the state item ``guard``
(``{'nonfinite': int32 count, 'first_nonfinite': int32 step, 0 if none}``), so no step syncs
with the host. With ``config.nonfinite='skip'`` a non-finite step leaves every variable and the
optimizer state unchanged (only ``step`` advances, as large-scale trainers skip bad updates);
with ``'stop'`` the loop reads the counter at its log / checkpoint / eval boundaries, never
saves a state that went through a non-finite step, and stops naming the step and the last good
checkpoint (always the newest one, since nothing non-finite is ever saved; keep-N only removes
older steps).

Source: skipping non-finite updates follows ``optax.apply_if_finite`` (here the loss, the
gradient norm, every variable collection and the EMA are covered).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ['EXIT_DIVERGED', 'NONFINITE_MODES', 'guard_init', 'guard_step', 'Diverged', 'all_finite']

EXIT_DIVERGED = 3
"""Exit status of the CLI when the run stops on a non-finite loss or gradient norm."""

NONFINITE_MODES = ('stop', 'skip')
"""Accepted values of ``config.nonfinite``."""


def guard_init() -> dict[str, jax.Array]:
    """The ``guard`` item of a fresh train state: no non-finite step yet (int32 scalars)."""
    return {'nonfinite': jnp.zeros((), jnp.int32), 'first_nonfinite': jnp.zeros((), jnp.int32)}


def guard_step(new: dict, old: dict, metrics: dict, mode: str) -> tuple[dict, dict]:
    """Checks one step's loss and gradient norm on device (call inside ``jit``).

    Args:
      new: the state after the step (``'step'`` already advanced, ``'guard'`` carried over).
      old: the state before the step.
      metrics: the step's metrics; must hold scalar ``'loss'`` and ``'grad_norm'``.
      mode: ``'stop'`` (apply the update anyway; the loop stops at its next boundary and saves
        nothing) or ``'skip'`` (a non-finite step keeps every item of ``old`` except ``step``).

    Returns:
      ``(state, metrics)``: ``state['guard']`` counts non-finite steps (``nonfinite``) and keeps
      the first one's number (``first_nonfinite``, 1-based step, 0 while none); ``metrics``
      gains ``nonfinite_steps`` (the running count, float32).

    Raises:
      ValueError: an unknown ``mode``.
    """
    if mode not in NONFINITE_MODES:
        raise ValueError(f'config.nonfinite must be one of {list(NONFINITE_MODES)}, got {mode!r}')
    finite = jnp.isfinite(metrics['loss']) & jnp.isfinite(metrics['grad_norm'])
    g = old['guard']
    bad = (~finite).astype(jnp.int32)
    guard = {'nonfinite': g['nonfinite'] + bad,
             'first_nonfinite': jnp.where((g['first_nonfinite'] == 0) & ~finite, new['step'],
                                          g['first_nonfinite'])}
    if mode == 'skip':
        new = {k: (v if k in ('step', 'guard') else
                   jax.tree.map(lambda a, b: jnp.where(finite, a, b), v, old[k]))
               for k, v in new.items()}
    new = dict(new, guard=guard)
    return new, dict(metrics, nonfinite_steps=guard['nonfinite'].astype(jnp.float32))


class Diverged(FloatingPointError):
    """The loss or the gradient norm was not finite (``config.nonfinite='stop'``); attributes
    ``step`` (the first non-finite step) and ``last_good`` (newest checkpoint step or None)."""

    def __init__(self, message: str, step: int, last_good: int | None):
        super().__init__(message)
        self.step, self.last_good = step, last_good


def all_finite(tree) -> bool:
    """Whether every floating-point leaf of ``tree`` is finite (one host read of a device
    reduction; for checkpoints being restored, never per step)."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)]
    if not leaves:
        return True
    return bool(jax.device_get(jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))))
