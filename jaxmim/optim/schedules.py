"""Learning-rate schedules of the SimMIM and MAE recipes, chosen by name.

* ``'cosine'`` / ``'multistep'``: microsoft/SimMIM@d3e29bc ``lr_scheduler.py`` (timm 0.5
  ``CosineLRScheduler`` and SimMIM's ``MultiStepLRScheduler``), linear warm-up from
  ``warmup_lr``, stepped after each optimizer update (one-update lag);
* ``'mae_cosine'``: facebookresearch/mae@be47fef ``util/lr_sched.py``, linear warm-up from 0 and
  a half cosine re-based after the warm-up, set before each update (no lag).

All schedules are optax schedules ``step -> lr`` (float32, jit-friendly) built from
``optax.cosine_decay_schedule``, ``optax.piecewise_constant_schedule``,
``optax.constant_schedule`` and ``optax.join_schedules``. Two pieces are hand-written:

* the linear warm-up (:func:`_linear_warmup`): ``optax.linear_schedule`` evaluates
  ``(init - end) * (1 - t / T) + end`` in float32, which cancels at the start of a long warm-up
  (relative error 5e-5 at MAE ViT-B's 3120-step warm-up, 8e-4 at 100k steps, and
  ``lr(0) != warmup_lr`` by ~1 ulp of ``base_lr``); ``init + t (end - init) / T`` stays within
  2e-7. The same applies to ``optax.warmup_cosine_decay_schedule`` (built on it), which in
  addition returns 0 instead of ``min_lr * (1 - c)`` (``c`` the cosine factor) when the peak
  is 0, and raises when ``warmup_steps == total_steps``;
* the step remapping (the schedulers' one-update lag, epoch holding): ``t -> f(t)`` wrappers,
  which optax has no transformation for.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmim.optim.checks import as_int, check_nonneg

Schedule = Callable[[Any], jax.Array]

__all__ = [
    'SCHEDULES',
    'SCHEDULE_UNITS',
    'Schedule',
    'simmim_lr_schedule',
    'mae_lr_schedule',
    'lr_schedule',
]


SCHEDULES = ('cosine', 'multistep', 'mae_cosine')
"""Accepted ``config.schedule`` names (see :func:`lr_schedule`)."""

SCHEDULE_UNITS = ('step', 'epoch')
"""Accepted ``config.schedule_unit`` values (see :func:`lr_schedule`)."""

_SIMMIM_SCHEDULES = ('cosine', 'multistep')


def _linear_warmup(init_value: float, peak_value, warmup_steps: int) -> Schedule:
    """``init + t (peak - init) / Tw`` in float32, as SimMIM/timm and MAE write it.

    Hand-written rather than ``optax.linear_schedule``: optax computes
    ``(init - peak) * (1 - t / Tw) + peak``, whose float32 cancellation gives relative errors of
    5e-5 .. 1e-3 early in realistic warm-ups (3k .. 100k steps) and ``lr(0) != init``; this form
    stays within ~2e-7 of the float64 value. Only called for ``t < Tw`` (``optax.join_schedules``
    switches to the decay segment at ``Tw``).
    """
    def schedule(t):
        t = jnp.asarray(t).astype(jnp.float32)
        peak = jnp.asarray(peak_value, jnp.float32)
        return init_value + t * (peak - init_value) / warmup_steps

    return schedule


def _shifted(schedule: Schedule, offset: int) -> Schedule:
    # optax.join_schedules hands later segments ``t - boundary``; SimMIM's cosine and milestones
    # are functions of the global ``t`` (not re-based after the warm-up), so add it back.
    return lambda s: schedule(s + offset)


def _check_steps(total_steps, warmup_steps) -> tuple[int, int]:
    total_steps = as_int('total_steps', total_steps, minimum=1)
    warmup_steps = as_int('warmup_steps', warmup_steps, minimum=0)
    if warmup_steps > total_steps:
        raise ValueError(
            f'warmup_steps ({warmup_steps}) must be <= total_steps ({total_steps})')
    return total_steps, warmup_steps


def simmim_lr_schedule(
    base_lr,
    warmup_lr: float,
    min_lr: float,
    total_steps: int,
    warmup_steps: int,
    name: str = 'cosine',
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    lag: bool = True,
) -> Schedule:
    """Per-iteration lr of SimMIM (timm ``CosineLRScheduler``, SimMIM ``MultiStepLRScheduler``).

    With ``t`` the global iteration, ``T = total_steps``, ``Tw = warmup_steps``, the scheduler
    value is

    * ``t < Tw``: ``warmup_lr + t (base_lr - warmup_lr) / Tw`` (linear warmup);
    * cosine, ``Tw <= t < T``: ``min_lr + 0.5 (base_lr - min_lr)(1 + cos(pi t / T))``; the cosine is
      *not* re-based after the warmup, so the lr jumps at ``t = Tw`` (to ``0.905 base_lr`` for
      ``Tw / T = 0.2``); ``t >= T``: ``min_lr`` (timm's ``cycle_limit=1``);
    * multistep, ``t >= Tw``: ``base_lr * gamma ** (number of milestones <= t)`` (bisect_right);
      ``min_lr`` is unused.

    SimMIM calls ``lr_scheduler.step_update(t)`` *after* ``optimizer.step()`` and the scheduler's
    constructor already set the lr to ``warmup_lr``, so the lr used by iteration ``t`` is
    ``value(max(t - 1, 0))``: iterations 0 and 1 both run at ``warmup_lr``. ``lag=True`` returns
    that (the lr actually applied at optimizer step ``t``); ``lag=False`` returns ``value(t)``.

    ``warmup_lr`` and ``min_lr`` are absolute while ``base_lr`` is the parameter group's own base
    lr (layer-decayed in fine-tuning, see :func:`jaxmim.optim.groups.layer_decay_scales`), so a
    group whose ``base_lr`` is below ``warmup_lr`` sees its lr fall during warmup, as in the
    official code.

    Built from ``optax.join_schedules`` of the hand-written warm-up (see
    :func:`_linear_warmup`) and ``min_lr + optax.cosine_decay_schedule(base_lr - min_lr, T)``
    (the offset form also covers ``base_lr = 0`` and ``base_lr < min_lr``, where optax's
    ``alpha = min_lr / base_lr`` is undefined or > 1) or ``optax.piecewise_constant_schedule``
    (repeated milestones multiply ``gamma`` once per repetition, as bisect_right counts them).

    Args:
        base_lr: peak lr of the group (already batch-scaled), a float.
        warmup_lr: lr at iteration 0 (absolute).
        min_lr: final cosine lr (absolute; unused by multistep).
        total_steps: T, total number of optimizer steps (> 0).
        warmup_steps: Tw in ``[0, T]``; 0 disables warmup.
        name: ``'cosine'`` or ``'multistep'``.
        milestones: multistep boundaries in steps, ascending, each ``>= warmup_steps``
            (required, non-empty, for multistep).
        gamma: multistep decay factor (> 0).
        lag: apply SimMIM's one-iteration lag.

    Returns:
        An optax schedule: ``step`` (int scalar or array, the optimizer step count starting at 0)
        -> lr as a float32 ``jax.Array`` of the step's shape. Jit-friendly.

    Raises:
        ValueError: naming the argument, for an unknown ``name``, a negative or non-finite lr,
            ``total_steps < 1``, ``warmup_steps`` outside ``[0, total_steps]``, bad milestones or
            ``gamma <= 0``.

    Source: microsoft/SimMIM@d3e29bc ``lr_scheduler.py:18-35``, ``:119-141``,
    ``main_simmim.py:156-171``; timm 0.5 ``scheduler/cosine_lr.py``.
    """
    if name not in _SIMMIM_SCHEDULES:
        raise ValueError(f'schedule name must be one of {_SIMMIM_SCHEDULES}, got {name!r}')
    check_nonneg('base_lr', base_lr)
    check_nonneg('warmup_lr', warmup_lr)
    check_nonneg('min_lr', min_lr)
    total_steps, warmup_steps = _check_steps(total_steps, warmup_steps)
    milestones = tuple(as_int('milestones', m) for m in (milestones or ()))
    if name == 'multistep':
        if not milestones:
            raise ValueError('milestones must be non-empty for the multistep schedule')
        if list(milestones) != sorted(milestones):
            raise ValueError(f'milestones must be ascending, got {milestones}')
        if warmup_steps > milestones[0]:
            raise ValueError(
                f'warmup_steps ({warmup_steps}) must be <= the first milestone ({milestones[0]})')
        if not (np.isfinite(float(gamma)) and gamma > 0):
            raise ValueError(f'gamma must be > 0, got {gamma!r}')
    warmup_lr, min_lr, gamma = float(warmup_lr), float(min_lr), float(gamma)

    if name == 'cosine':
        cosine = optax.cosine_decay_schedule(init_value=base_lr - min_lr, decay_steps=total_steps)
        after = lambda t: min_lr + cosine(t)  # noqa: E731
    else:
        counts = collections.Counter(milestones)
        after = optax.piecewise_constant_schedule(
            init_value=base_lr, boundaries_and_scales={m: gamma ** c for m, c in counts.items()})
    if warmup_steps:
        value = optax.join_schedules(
            [_linear_warmup(warmup_lr, base_lr, warmup_steps), _shifted(after, warmup_steps)],
            [warmup_steps])
    else:
        value = after
    return _remap_steps(value, unit=1, lag=1 if lag else 0)


def mae_lr_schedule(base_lr, min_lr: float, total_steps: int, warmup_steps: int) -> Schedule:
    """MAE's per-iteration lr: linear warm-up from 0, then a half cosine re-based after warm-up.

    facebookresearch/mae ``adjust_learning_rate`` is called at the *start* of every iteration
    with the fractional epoch ``it / len(loader) + epoch``; in steps (``T = total_steps``,
    ``Tw = warmup_steps``) it is

    * ``t < Tw``: ``base_lr * t / Tw`` (so ``lr(0) = 0``);
    * ``Tw <= t <= T``: ``min_lr + (base_lr - min_lr) * 0.5 * (1 + cos(pi (t - Tw) / (T - Tw)))``
      (``base_lr`` at ``t = Tw``, ``min_lr`` at ``t = T``);
    * ``t > T`` (never evaluated by MAE, whose loop stops at ``T - 1``): held at ``min_lr``.

    There is no lag. Built as ``optax.join_schedules`` of the hand-written warm-up (see
    :func:`_linear_warmup` for why not ``optax.linear_schedule``) and
    ``min_lr + optax.cosine_decay_schedule(base_lr - min_lr, T - Tw)`` (``optax.
    warmup_cosine_decay_schedule`` is the same formula but inherits the warm-up cancellation,
    returns 0 instead of the cosine when ``base_lr = 0 < min_lr`` and rejects ``Tw = T``);
    ``Tw = T`` gives the warm-up followed by ``min_lr``.

    Args:
        base_lr: peak lr (MAE's ``args.lr = blr * eff_batch / 256``; times the group's
            ``lr_scale`` for a layer-decayed group, see :func:`lr_schedule`).
        min_lr: final lr (MAE ``--min_lr``, absolute; times ``lr_scale`` for a group).
        total_steps: ``T = epochs * iters_per_epoch`` (> 0).
        warmup_steps: ``Tw = warmup_epochs * iters_per_epoch`` in ``[0, T]``.

    Returns:
        An optax schedule ``step -> lr`` (float32 ``jax.Array`` of the step's shape).

    Raises:
        ValueError: naming the argument, for a negative or non-finite lr, ``total_steps < 1``
            or ``warmup_steps`` outside ``[0, total_steps]``.

    Source: facebookresearch/mae@be47fef ``util/lr_sched.py:9-21``, ``engine_pretrain.py:32-33``,
    ``engine_finetune.py`` (same call); the same file drives zhangxiaosong18/hivit@2718339
    ``self_supervised/util/lr_sched.py:9-21`` and LayneH/GreenMIM@b981012
    ``util/lr_sched.py:9-21``.
    """
    check_nonneg('base_lr', base_lr)
    check_nonneg('min_lr', min_lr)
    total_steps, warmup_steps = _check_steps(total_steps, warmup_steps)
    min_lr = float(min_lr)
    if warmup_steps < total_steps:
        cosine = optax.cosine_decay_schedule(init_value=base_lr - min_lr,
                                             decay_steps=total_steps - warmup_steps)
        after = lambda s: min_lr + cosine(s)  # noqa: E731
    else:
        after = optax.constant_schedule(min_lr)
    if warmup_steps:
        value = optax.join_schedules([_linear_warmup(0.0, base_lr, warmup_steps), after],
                                     [warmup_steps])
    else:
        value = after
    return _remap_steps(value, unit=1, lag=0)


def _remap_steps(schedule: Schedule, unit: int, lag: int) -> Schedule:
    """``t -> schedule(max(t // unit - lag, 0) * unit)`` as float32 (hand-written: optax has
    no step-remapping transformation)."""
    def remapped(step) -> jax.Array:
        t = jnp.asarray(step, jnp.int32)
        if unit != 1 or lag:
            t = jnp.maximum(t // unit - lag, 0) * unit
        return jnp.broadcast_to(jnp.asarray(schedule(t), jnp.float32), jnp.shape(t))

    return remapped


def lr_schedule(
    name: str,
    *,
    base_lr: float,
    warmup_lr: float,
    min_lr: float,
    total_steps: int,
    warmup_steps: int,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    scale: float = 1.0,
    unit: str = 'step',
    steps_per_epoch: int | None = None,
) -> Schedule:
    """The lr of one parameter group at optimizer step ``t``, for a schedule chosen by name.

    Names (:data:`SCHEDULES`):

    * ``'cosine'``: SimMIM/timm linear warm-up from ``warmup_lr`` + cosine that is not re-based
      after the warm-up, with the scheduler's one-update lag (:func:`simmim_lr_schedule`);
    * ``'multistep'``: the same warm-up + ``gamma ** (milestones <= t)``, same lag
      (:func:`simmim_lr_schedule`);
    * ``'mae_cosine'``: MAE's warm-up from 0 + re-based half cosine, no lag
      (:func:`mae_lr_schedule`); ``warmup_lr`` is unused.

    Per-group semantics for a group whose layer-decay multiplier is ``scale``:

    * SimMIM (``'cosine'``, ``'multistep'``): the group's *base* lr is ``base_lr * scale``
      while ``warmup_lr`` and ``min_lr`` stay absolute (timm keeps ``initial_lr`` per group);
    * MAE (``'mae_cosine'``): ``param_group['lr'] = lr * param_group['lr_scale']``, i.e. the
      whole schedule, ``min_lr`` included, is multiplied by ``scale``.

    Units (:data:`SCHEDULE_UNITS`): ``'step'`` updates the lr every iteration. ``'epoch'`` is a
    timm scheduler stepped once per epoch (DeiT-style supervised recipes): the lr is evaluated at
    the start of each epoch and held constant within it. The schedule is then a function of the
    epoch index ``e = t // steps_per_epoch``: ``'mae_cosine'`` gives ``raw(e * spe)``; for
    ``'cosine'``/``'multistep'`` the one-update lag becomes one epoch (the constructor sets
    ``raw(0)``, and DeiT's ``lr_scheduler.step(epoch)`` after epoch ``e`` sets ``raw(e)``), so
    epoch ``e`` runs at ``raw(max(e - 1, 0) * spe)``, where ``raw`` is the un-lagged step
    schedule. ``warmup_steps``, ``total_steps`` and ``milestones`` stay in steps and must be
    multiples of ``steps_per_epoch`` (then ``raw(e * spe)`` equals timm's ``t_in_epochs=True``
    value at epoch ``e``).

    Args:
        name: one of :data:`SCHEDULES`.
        base_lr, warmup_lr, min_lr: lrs (already batch-scaled; see :func:`scaled_optim_config`).
        total_steps: total optimizer steps (> 0).
        warmup_steps: warm-up steps in ``[0, total_steps]``.
        milestones: multistep boundaries in steps (ascending, ``>= warmup_steps``).
        gamma: multistep factor (> 0).
        scale: the group's lr multiplier (> 0), 1 for the un-decayed group.
        unit: one of :data:`SCHEDULE_UNITS`.
        steps_per_epoch: iterations per epoch (int >= 1), required when ``unit == 'epoch'``.

    Returns:
        An optax schedule ``step -> lr`` (float32 ``jax.Array``; jit-friendly).

    Raises:
        ValueError: naming the argument and the accepted values, for an unknown name or unit, a
            missing/non-positive ``steps_per_epoch``, step counts that are not multiples of it,
            and everything :func:`simmim_lr_schedule` / :func:`mae_lr_schedule` reject.

    Source: microsoft/SimMIM@d3e29bc ``lr_scheduler.py``; facebookresearch/mae@be47fef
    ``util/lr_sched.py:9-21``;
    facebookresearch/deit ``main.py`` (``lr_scheduler.step(epoch)`` after each epoch).
    """
    if name not in SCHEDULES:
        raise ValueError(f'schedule name must be one of {SCHEDULES}, got {name!r}')
    if unit not in SCHEDULE_UNITS:
        raise ValueError(f'schedule_unit must be one of {SCHEDULE_UNITS}, got {unit!r}')
    if isinstance(scale, bool) or not (np.isfinite(float(scale)) and scale > 0):
        raise ValueError(f'scale must be finite and > 0, got {scale!r}')
    spe = 1
    if unit == 'epoch':
        if steps_per_epoch is None:
            raise ValueError("steps_per_epoch (an integer >= 1) is required when schedule_unit "
                             "is 'epoch'")
        spe = as_int('steps_per_epoch', steps_per_epoch, minimum=1)
        for field, value in (('total_steps', total_steps), ('warmup_steps', warmup_steps)):
            if as_int(field, value) % spe:
                raise ValueError(
                    f"{field} ({value}) must be a multiple of steps_per_epoch ({spe}) when "
                    f"schedule_unit is 'epoch'")
        if name == 'multistep' and any(as_int('milestones', m) % spe for m in milestones):
            raise ValueError(
                f"milestones {tuple(milestones)} must be multiples of steps_per_epoch ({spe}) "
                f"when schedule_unit is 'epoch'")
    scale = float(scale)
    if name == 'mae_cosine':
        check_nonneg('base_lr', base_lr)
        check_nonneg('min_lr', min_lr)
        raw = mae_lr_schedule(base_lr * scale, min_lr * scale, total_steps, warmup_steps)
        lag = 0
    else:
        raw = simmim_lr_schedule(base_lr * scale, warmup_lr, min_lr, total_steps, warmup_steps,
                                 name=name, milestones=milestones, gamma=gamma, lag=False)
        lag = 1
    return _remap_steps(raw, unit=spe, lag=lag)
