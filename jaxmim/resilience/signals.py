"""Preemption: SIGTERM / SIGINT finish the current step, save it and exit with status 75.

:class:`StopSignals` turns SIGTERM and SIGINT into a request to stop after the current step:
the loop saves that step, waits for the save to commit and raises :class:`Preempted` (a
``SystemExit`` with status 75). A second SIGINT aborts at once. With several processes
(``jax.distributed``), SIGTERM is left to JAX's preemption service (the coordination service
propagates the notice and every process agrees on the step:
``multihost_utils.reached_preemption_sync_point``, polled every step without communication),
and a local SIGINT is OR-reduced over processes at the loop's log / checkpoint boundaries with
one ``process_allgather`` of a flag (a collective per boundary, not per step), so every process
stops, and saves, at the same step.

Sources: exit status 75 is ``EX_TEMPFAIL`` of BSD ``sysexits.h``; the preemption protocol is
``jax.experimental.multihost_utils.reached_preemption_sync_point`` (and orbax's
``PreemptionCheckpointingPolicy``, which polls it).
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

import jax
import numpy as np

__all__ = ['EXIT_PREEMPTED', 'Preempted', 'StopSignals']

EXIT_PREEMPTED = 75
"""Exit status after SIGTERM / SIGINT once the current step is saved (``EX_TEMPFAIL``: requeue)."""


class Preempted(SystemExit):
    """Raised by the loop after a stop signal once the current step is saved and committed.

    A ``SystemExit`` with ``code`` :data:`EXIT_PREEMPTED` (75), so any entry point exits with
    the requeue status; ``step`` is the saved step, ``message`` the line printed."""

    def __init__(self, message: str, step: int):
        super().__init__(EXIT_PREEMPTED)
        self.message, self.step = message, step

    def __str__(self) -> str:
        return self.message


def _preemption_service():
    """JAX's preemption sync manager when this is a multi-process job that runs it, else None."""
    if jax.process_count() == 1:
        return None
    try:
        from jax._src import distributed
        return distributed.global_state.preemption_sync_manager
    except Exception:  # pylint: disable=broad-except
        return None


class StopSignals:
    """Context manager: SIGTERM and SIGINT request a stop after the current step.

    Handlers are installed only from the main thread and restored on exit. In a multi-process
    job whose JAX preemption service is running, SIGTERM is left to that service (see the module
    docstring). A second SIGINT raises ``KeyboardInterrupt`` at once.

    Attributes:
      signal_name: the name of the first signal received (``'SIGTERM'``), or None.
    """

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame):
        del frame
        name = signal.Signals(signum).name
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt(f'second {name}: aborting without saving')
        if self.signal_name is None:
            self.signal_name = name
            if jax.process_index() == 0:
                print(f'{name} received: finishing the current step and saving it '
                      '(Ctrl-C again aborts without saving)', file=sys.stderr, flush=True)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        sigs = [signal.SIGINT]
        if _preemption_service() is None:
            sigs.append(signal.SIGTERM)
        for s in sigs:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()

    def should_stop(self, step: int, boundary: bool) -> bool:
        """Whether the loop stops after ``step`` (the same answer on every process).

        One process: the local flag, every step. Several: JAX's preemption sync point every step
        (no communication) or, at a ``boundary`` (log / checkpoint step), the local flags
        OR-reduced over processes."""
        if jax.process_count() == 1:
            return self.signal_name is not None
        service = _preemption_service()
        if service is not None:
            from jax.experimental import multihost_utils
            if multihost_utils.reached_preemption_sync_point(step):
                self.signal_name = self.signal_name or 'SIGTERM'
                return True
        if boundary:
            from jax.experimental import multihost_utils
            flags = multihost_utils.process_allgather(np.int32(self.signal_name is not None))
            if np.any(flags):
                self.signal_name = self.signal_name or 'a stop signal on another process'
                return True
        return False


# ----------------------------------------------------------------------------------------
# One run per workdir.
