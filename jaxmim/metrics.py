"""Training metrics averaged over the logging window, accumulated on device.

The loop logs, at every ``log_every`` boundary, the mean of each metric over the steps since the
previous boundary (as big_vision and the flax examples report train metrics), not the value of
the boundary step alone. The sums stay on device: one small jitted add per step, dispatched
asynchronously like the step itself, and one host read per window.

Why not ``clu.metrics.Average``: it does the same (a ``total`` and a ``count`` per metric,
merged per step), but clu is not a dependency of jaxmim and brings its own (``etils``,
``ml_collections`` pins); the arithmetic is four lines here, and the finite-step weighting
below is not one of its metrics.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

__all__ = ['LAST_VALUE', 'WindowMean']

LAST_VALUE = ('lr', 'nonfinite_steps')
"""Metrics reported at their value of the boundary step, not averaged: the learning rate of
the schedule and the running count of non-finite steps."""


@jax.jit
def _add(sums: dict, count: jax.Array, metrics: dict) -> tuple[dict, jax.Array]:
    finite = jnp.isfinite(metrics['loss']) & jnp.isfinite(metrics.get('grad_norm', 0.0))
    w = finite.astype(jnp.float32)
    sums = {k: sums[k] + jnp.where(finite, jnp.asarray(v, jnp.float32), 0.0) for k, v in metrics.items()}
    return sums, count + w


class WindowMean:
    """Mean of each scalar metric over the finite steps of a window, summed on device.

    A step whose loss or gradient norm is not finite (skipped with ``config.nonfinite='skip'``)
    is left out of the means, so one bad step does not turn a window's logged loss into NaN;
    :data:`LAST_VALUE` metrics are taken from the last step of the window whatever it was.

    Usage: ``update(metrics)`` after every step (``metrics``: dict of float32 scalar arrays,
    with ``'loss'`` and usually ``'grad_norm'``); ``compute()`` at a boundary returns
    ``{name: float}`` and starts a new window. A window with no finite step reports the last
    step's values.
    """

    def __init__(self):
        self._sums: dict | None = None
        self._count = None
        self._last: Mapping[str, Any] | None = None

    def update(self, metrics: Mapping[str, Any]) -> None:
        """Adds one step's ``metrics`` (scalar arrays; no host transfer)."""
        metrics = dict(metrics)
        if self._sums is None:
            # zeros_like keeps the metrics' sharding (global arrays in a multi-process job)
            self._sums = {k: jnp.zeros_like(v, jnp.float32) for k, v in metrics.items()}
            self._count = jnp.zeros_like(metrics['loss'], jnp.float32)
        self._sums, self._count = _add(self._sums, self._count, metrics)
        self._last = metrics

    def compute(self) -> dict[str, float]:
        """The window's means (one host read) and a reset.

        Raises:
          ValueError: no step was added since the last ``compute``.
        """
        if self._last is None:
            raise ValueError('WindowMean.compute() before any update()')
        sums, count, last = jax.device_get((self._sums, self._count, self._last))
        self._sums = self._count = self._last = None
        count = float(count)
        out = {}
        for k, v in last.items():
            out[k] = float(v) if (k in LAST_VALUE or count == 0) else float(sums[k]) / count
        return out
