"""Two local processes (jax.distributed + gloo on 127.0.0.1) train like one process.

Each process owns 2 fake CPU devices and half of the global batch; the global arrays are
assembled with ``jax.make_array_from_process_local_data``. Two steps must give the losses
and parameters of a single process that holds all 4 devices and the whole batch.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def GLOBAL_BATCH():
    return np.random.default_rng(0).normal(size=(8, 32, 32, 3)).astype(np.float32)


def run_steps(devices, local_images, steps=2):
    """Runs ``steps`` SimMIM steps of a tiny demo Swin on a mesh over ``devices``; returns the
    losses and a checksum of the final parameters."""
    import jax

    from jaxmim import mesh as mesh_lib
    from jaxmim import steps as steps_lib
    from jaxmim.methods import create_mim_model

    from jaxmim.config import load_config_file
    cfg = load_config_file(os.path.join(ROOT, 'configs/demo/simmim_swin_fmnist.py'))
    cfg.batch_size, cfg.total_steps, cfg.optim.warmup_steps = 8, 10, 2
    mesh = mesh_lib.make_mesh(devices)
    model = create_mim_model(cfg.method.to_dict(), cfg.model.name,
                             overrides=dict(embed_dim=16, num_heads=(1, 2, 4)))
    trainer, state = steps_lib.make_trainer(model, steps_lib.mim_loss, cfg, mesh)
    losses = []
    for _ in range(steps):
        state, metrics = trainer.train_step(state, mesh_lib.global_batch({'image': local_images},
                                                                      mesh_lib.batch_sharding(mesh)))
        losses.append(float(metrics['loss']))
    leaves = jax.tree.leaves(jax.device_get(state['params']))
    return losses, float(sum(np.abs(np.asarray(x, np.float64)).sum() for x in leaves))


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
    import jax
    out = str(tmp_path / 'result.json')
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
    worker = os.path.join(ROOT, 'tests', '_multiprocess_worker.py')
    procs = [subprocess.Popen([sys.executable, worker, str(port), str(pid), out], cwd=ROOT, env=env,
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
    multi = json.load(open(out))
    losses, checksum = run_steps(jax.devices()[:4], GLOBAL_BATCH())
    np.testing.assert_allclose(multi['losses'], losses, rtol=1e-5)
    np.testing.assert_allclose(multi['checksum'], checksum, rtol=1e-5)
