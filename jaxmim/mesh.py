"""The device mesh, the shardings of batches and train state, and the batch-size check.

Today's layout is pure data parallelism: a 1-D mesh whose ``data`` axis spans every device of
every process, batches split on their leading axis over ``data``, parameters and optimizer
state replicated. Everything that places arrays on devices goes through this module, so a
different layout changes here, not in the loops.

Sources: ``jax.make_mesh`` with explicit ``axis_types`` and ``NamedSharding`` / ``PartitionSpec``
(JAX's "Distributed arrays and automatic parallelization" guide);
``jax.make_array_from_process_local_data`` for multi-process batches (JAX multi-process guide).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxmim import ops
from jaxmim.ops import CPU_COMPILER_OPTIONS  # noqa: F401  (re-exported)

__all__ = ['make_mesh', 'CPU_COMPILER_OPTIONS', 'step_compiler_options', 'batch_sharding', 'replicated',
           'global_batch', 'check_batch_sizes']


def make_mesh(devices=None) -> jax.sharding.Mesh:
    """A 1-D mesh whose ``data`` axis spans ``devices`` (default: all devices of every process),
    axis type ``Auto``."""
    devices = devices if devices is not None else jax.devices()
    return jax.make_mesh((len(devices),), ('data',), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=devices)


def step_compiler_options(mesh) -> dict[str, str] | None:
    """The ``compiler_options`` of the jitted train / eval steps on ``mesh``:
    ``jaxmim.ops.compiler_options(jaxmim.ops.mesh_platform(mesh))``, i.e. a copy of
    :data:`jaxmim.ops.CPU_COMPILER_OPTIONS` (re-exported here) on a CPU mesh, unless ``XLA_FLAGS``
    sets the option itself or ``JAXMIM_PORTABLE_OPS=1``; None on accelerators. The same predicate
    (:func:`jaxmim.ops.form`) picks the ops' forms in the step."""
    return ops.compiler_options(ops.mesh_platform(mesh))


def batch_sharding(mesh) -> NamedSharding:
    """Batch arrays ``(B, ...)`` are split on their leading axis over ``data``."""
    return NamedSharding(mesh, P('data'))


def replicated(mesh) -> NamedSharding:
    """Parameters and optimizer state are replicated (pure data parallelism)."""
    return NamedSharding(mesh, P())


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Assembles the per-process NumPy batch ``{name: (B / processes, ...)}`` into global arrays
    ``(B, ...)`` sharded as ``sharding``."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def check_batch_sizes(config, mesh) -> None:
    """``config.batch_size`` (and ``eval_batch_size`` when fine-tuning) split evenly over the
    devices of ``mesh`` and over the processes; ``batch_size`` also over ``accum_steps``
    micro-batches, each split evenly over the devices.

    Raises:
      ValueError: naming the field, its value and the device count.
    """
    n = mesh.devices.size
    fields = [('batch_size', config.batch_size)] + (
        [('eval_batch_size', config.eval_batch_size)] if config.mode == 'finetune' else [])
    for field, value in fields:
        if value < 1 or value % n or value % jax.process_count():
            raise ValueError(f'config.{field}={value} must be a positive multiple of the device count {n} '
                             f'(batches are split evenly over the data axis)')
    accum = int(config.get('accum_steps', 1))
    if config.batch_size % (accum * n):
        raise ValueError(f'config.batch_size={config.batch_size} must be a multiple of config.accum_steps={accum} '
                         f'times the device count {n} (each micro-batch is split evenly over the data axis)')
