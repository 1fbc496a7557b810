"""The demo's equal-wall-clock budget: how many steps a from-scratch run gets so that it trains
as long as pre-training plus fine-tuning did. Kept free of absl flags so tests and other
launchers can import it beside ``jaxmim.benchmark`` or ``jaxmim.main``."""

from __future__ import annotations


def step_seconds(history: list[dict], batch_size: int) -> float:
    """Seconds per training step from a run's logged ``images_per_sec`` (evaluation excluded):
    ``batch_size`` / the median over the log points after the first (which includes compilation),
    or over all of them when there is one.

    Raises:
      ValueError: no log point carries ``images_per_sec``.
    """
    ips = [h['images_per_sec'] for h in history if h.get('images_per_sec')]
    if not ips:
        raise ValueError('the run logged no images_per_sec; cannot time its steps')
    ips = sorted(ips[1:] if len(ips) > 1 else ips)
    return batch_size / ips[len(ips) // 2]


def equal_time_steps(finetune_steps: int, pretrain_seconds: float, step_s: float) -> int:
    """Steps of a from-scratch run given the same wall-clock time as pre-training + fine-tuning:
    the ``finetune_steps`` plus ``round(pretrain_seconds / step_s)`` more, ``step_s`` being the
    fine-tuning step time in seconds (same classifier, batch and machine as the scratch run).

    Raises:
      ValueError: a non-positive step time or a negative duration.
    """
    if step_s <= 0 or pretrain_seconds < 0:
        raise ValueError(f'need step_s > 0 and pretrain_seconds >= 0, got {step_s}, {pretrain_seconds}')
    return int(finetune_steps) + int(round(pretrain_seconds / step_s))
