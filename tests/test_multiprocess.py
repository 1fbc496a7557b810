"""Two local processes (jax.distributed + gloo on 127.0.0.1) train like one process.

* Each process owns 2 fake CPU devices and half of the global batch; the global arrays are
  assembled with ``jax.make_array_from_process_local_data``. Two steps must give the losses
  and parameters of a single process that holds all 4 devices and the whole batch.
* Both processes read a pre-trained checkpoint as fine-tuning does, each into its own host
  memory (``rundir.read_checkpoint_variables``), and get the tensors one process reads.
* Tensor parallelism across processes (one device each, ``fsdp_tp`` with ``model=2``): the two
  processes hold the same rows of the batch, so both load the whole batch (part 0 of 1,
  :func:`jaxmim.mesh.data_shards`), and two steps equal one process holding both devices.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (devices per process, config.mesh) of each case
CASES = {'dp': (2, {}), 'model_across': (1, {'layout': 'fsdp_tp', 'data': 1, 'fsdp': 1, 'model': 2})}


def GLOBAL_BATCH():
    return np.random.default_rng(0).normal(size=(8, 32, 32, 3)).astype(np.float32)


def _tiny_model():
    """``(demo SimMIM Swin config, its model with embed_dim 16)``: what every process trains and
    the pre-trained checkpoint holds."""
    from jaxmim.config import load_config_file
    from jaxmim.methods import create_mim_model
    cfg = load_config_file(os.path.join(ROOT, 'configs/demo/simmim_swin_fmnist.py'))
    return cfg, create_mim_model(cfg.method.to_dict(), cfg.model.name, overrides=dict(embed_dim=16, num_heads=(1, 2, 4)))


def run_steps(devices, images, mesh_config=None, steps=2):
    """Runs ``steps`` SimMIM steps of a tiny demo Swin on a mesh over ``devices``, each process
    feeding its part (:func:`jaxmim.mesh.data_shards`) of the global batch ``images``; returns the
    losses, a checksum of the final parameters and ``(part, parts, global batch shape)``."""
    import jax

    from jaxmim import mesh as mesh_lib
    from jaxmim import steps as steps_lib

    cfg, model = _tiny_model()
    cfg.batch_size, cfg.total_steps, cfg.optim.warmup_steps = 8, 10, 2
    cfg.mesh.update(mesh_config or {})
    mesh = mesh_lib.make_mesh(devices, cfg.mesh)
    mesh_lib.check_batch_sizes(cfg, mesh)
    part, parts = mesh_lib.data_shards(mesh)
    rows = images.shape[0] // parts
    batch = mesh_lib.global_batch({'image': images[part * rows:(part + 1) * rows]}, mesh_lib.batch_sharding(mesh))
    trainer, state = steps_lib.make_trainer(model, steps_lib.mim_loss, cfg, mesh)
    losses = []
    for _ in range(steps):
        state, metrics = trainer.train_step(state, batch)
        losses.append(float(metrics['loss']))
    from jax.experimental import multihost_utils    # parameters split over processes (model axis)
    leaves = jax.tree.leaves(multihost_utils.process_allgather(state['params'], tiled=True))
    checksum = float(sum(np.abs(np.asarray(x, np.float64)).sum() for x in leaves))
    return losses, checksum, (part, parts, list(batch['image'].shape))


def pretrained_sums(workdir):
    """``{dotted name: sum of |x|}`` of the run's checkpoint read as fine-tuning reads it."""
    from jaxmim import rundir
    return {k: float(np.abs(np.asarray(v, np.float64)).sum())
            for k, v in rundir.read_checkpoint_variables(workdir, None).items()}


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.parametrize('case', sorted(CASES))
def test_two_processes_match_one_process(tmp_path, case):
    import jax
    per_process, mesh_config = CASES[case]
    out = str(tmp_path / 'result')
    from jaxmim import rundir
    cfg, model = _tiny_model()
    rundir.save_model_checkpoint(model, str(tmp_path / 'pre'), cfg, step=5)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
    worker = os.path.join(ROOT, 'tests', '_multiprocess_worker.py')
    procs = [subprocess.Popen([sys.executable, worker, str(port), str(pid), out, case,
                              str(tmp_path / 'pre')], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for pid in range(2)]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=420)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    assert all(p.returncode == 0 for p in procs), '\n'.join(log[-3000:] for log in logs)
    multi = [json.load(open(f'{out}.{pid}.json')) for pid in range(2)]
    # which part of the batch each process loaded, and the global batch both assembled
    expected_parts = [[0, 2], [1, 2]] if case == 'dp' else [[0, 1], [0, 1]]
    assert [m['part'][:2] for m in multi] == expected_parts
    assert all(m['part'][2] == [8, 32, 32, 3] for m in multi)
    losses, checksum, _ = run_steps(jax.devices()[:2 * per_process], GLOBAL_BATCH(), mesh_config)
    for m in multi:
        np.testing.assert_allclose(m['losses'], losses, rtol=1e-5)
        np.testing.assert_allclose(m['checksum'], checksum, rtol=1e-5)
    # the pre-trained encoder's tensors as written (every one, exact; SimMIM keeps its encoder
    # under 'encoder.', which fine-tuning unwraps), read by each process on its own
    from jaxmim import tree_util
    written = tree_util.flatten_names(nnx.to_pure_dict(nnx.state(model)))
    expected = {k[len('encoder.'):]: float(np.abs(np.asarray(v, np.float64)).sum())
                for k, v in written.items() if k.startswith('encoder.')}
    assert len(expected) > 20
    for m in multi:
        assert m['pretrained'] == expected
