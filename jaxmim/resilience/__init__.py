"""What keeps a long run alive: the divergence guard, the preemption stop, the workdir lock.

One concern per module: :mod:`jaxmim.resilience.guard` (non-finite steps counted on device),
:mod:`jaxmim.resilience.signals` (SIGTERM / SIGINT -> save and exit 75),
:mod:`jaxmim.resilience.lock` (one run per workdir). The pre-flight checks of a run's inputs
live next to what they check (:mod:`jaxmim.rundir`, :mod:`jaxmim.mesh`, :mod:`jaxmim.data.checks`)
and are composed by :func:`jaxmim.preflight.preflight`. Nothing here names a model or a method.

**Exit statuses** of ``python -m jaxmim.main`` (documented for launchers):

==== ==========================================================================================
0    the run finished
2    bad input (config field, config file, dataset, workdir, locked workdir): one ``error:`` line
3    the run diverged (non-finite loss or gradient norm with ``config.nonfinite='stop'``)
75   stopped by SIGTERM / SIGINT after saving the current step (``EX_TEMPFAIL``: requeue it)
==== ==========================================================================================
"""

from jaxmim.resilience.guard import (EXIT_DIVERGED, NONFINITE_MODES, Diverged, all_finite, guard_init,
                                     guard_step)
from jaxmim.resilience.lock import WorkdirLock, WorkdirLocked, release_workdir
from jaxmim.resilience.signals import EXIT_PREEMPTED, Preempted, StopSignals

EXIT_BAD_INPUT = 2
"""Exit status of the CLI for a bad input (one ``error:`` line)."""

__all__ = ['EXIT_BAD_INPUT', 'EXIT_DIVERGED', 'EXIT_PREEMPTED', 'NONFINITE_MODES', 'guard_init', 'guard_step',
           'Diverged', 'all_finite', 'Preempted', 'StopSignals', 'WorkdirLocked', 'WorkdirLock',
           'release_workdir']
