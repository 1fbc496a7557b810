"""Pre-flight: every input of a run checked before anything is built or compiled.

The checks live next to what they check (:mod:`jaxmim.config`, :mod:`jaxmim.rundir`,
:mod:`jaxmim.mesh`, :mod:`jaxmim.data.checks`); :func:`preflight` runs them in order and takes
the workdir lock (:mod:`jaxmim.resilience.lock`), so a bad input costs one ``error:`` line and
no compilation.
"""

from __future__ import annotations

import jax
from flax import nnx

from jaxmim import config as config_lib
from jaxmim import mesh as mesh_lib
from jaxmim import rundir
from jaxmim.data import checks as data_checks
from jaxmim.resilience.lock import WorkdirLock, release_workdir

__all__ = ['preflight']


def preflight(config, workdir: str) -> tuple[jax.sharding.Mesh, nnx.Module]:
    """Checks every input of a run before anything is built or compiled, then takes the
    workdir lock; returns the device mesh and the model built abstractly (``nnx.eval_shape``),
    which the loops reuse rather than trace the model again.

    In order: config keys and values (:func:`jaxmim.config.check_config`), model name, workdir
    writable, workdir lock, ``total_steps`` against the newest checkpoint, ``pretrained``,
    batch sizes against the device count, the dataset and its splits, and the model built
    abstractly (``nnx.eval_shape``: no arrays, no compilation) for its constructor overrides
    and image size.

    Raises:
      ValueError: one message naming the config field (or ``--workdir``) and what is accepted.
      jaxmim.resilience.WorkdirLocked: another process runs in ``workdir``.
    """
    config_lib.check_config(config)
    rundir.check_model_name(config)
    rundir.check_workdir(workdir)
    if jax.process_index() == 0:
        WorkdirLock.acquire(workdir)
    try:
        rundir.check_resume(config, workdir)
        if config.mode == 'finetune':
            rundir.check_pretrained(config)
        mesh = mesh_lib.make_mesh(mesh_config=config.get('mesh'))
        mesh_lib.check_batch_sizes(config, mesh)
        data_checks.check_data(config)
        try:
            abstract = nnx.eval_shape(lambda: rundir.build_model(config))
        except TypeError as e:
            raise ValueError(f'config.model.overrides: {e}') from None
        except KeyError as e:
            raise ValueError(e.args[0] if e.args else str(e)) from None
        rundir.check_image_size(abstract, config)
    except BaseException:
        release_workdir(workdir)
        raise
    return mesh, abstract
