"""Argument checks shared by the optimizer modules (schedules, lr scaling, the optimizer).

Each check raises ``ValueError`` naming the config field, so a bad optimizer config is reported
by the field the user wrote. No optax, no model: plain numbers in, plain numbers out.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

__all__ = ['is_concrete_number', 'check_nonneg', 'as_int']


def is_concrete_number(x: Any) -> bool:
    """Whether ``x`` holds a value known at trace time (anything but a ``jax.core.Tracer``).

    Args:
        x: a Python / NumPy number or array, or a traced JAX value.

    Returns:
        ``False`` for a tracer (its value cannot be checked while tracing), else ``True``.

    Source: jaxmim helper (lets the schedules be built inside ``jax.jit``).
    """
    return not isinstance(x, jax.core.Tracer)


def check_nonneg(field: str, value: Any) -> None:
    """Checks that every element of ``value`` is finite and ``>= 0`` (skipped for tracers).

    Args:
        field: the config field's name, quoted in the error.
        value: a number or array-like (checked in float64), or a JAX tracer (not checked).

    Raises:
        ValueError: ``'<field> must be finite and >= 0, got <value>'`` for a NaN, an infinity
            or a negative element.

    Source: jaxmim helper.
    """
    if is_concrete_number(value):
        arr = np.asarray(value, dtype=np.float64)
        if not np.all(np.isfinite(arr)) or np.any(arr < 0):
            raise ValueError(f'{field} must be finite and >= 0, got {value!r}')


def as_int(field: str, value: Any, minimum: int = 0) -> int:
    """``value`` as a Python ``int`` when it is an integral number ``>= minimum``.

    Args:
        field: the config field's name, quoted in the error.
        value: a Python / NumPy int, or a float with an integral value (``100.0``); ``bool`` is
            refused.
        minimum: the smallest accepted value.

    Returns:
        ``int(value)``.

    Raises:
        ValueError: for a bool, a non-number, a fractional float or a value below ``minimum``.

    Source: jaxmim helper.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, float, np.floating)):
        raise ValueError(f'{field} must be an integer, got {value!r}')
    if float(value) != int(value) or int(value) < minimum:
        raise ValueError(f'{field} must be an integer >= {minimum}, got {value!r}')
    return int(value)
