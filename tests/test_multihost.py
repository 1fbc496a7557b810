"""Two hosts rehearsed on one machine: ``launch.local_multiprocess`` runs ``python -m jaxmim.main``
as 2 processes of 4 CPU devices (gloo collectives on 127.0.0.1) on a hybrid FSDP mesh
(``data=2`` as ``dcn_data=2`` process granules x ``fsdp=4`` within each), and the run equals one
process holding all 8 devices.

* Exit status 0, and the logged losses of the 2-process run (its ``pretrain_summary.json``) equal
  (rtol 1e-4) those of a single-process run of the same config (this pytest process: 8 devices,
  the same mesh without ``dcn_data``) whose global batch is process 0's batch followed by process
  1's (``create_split(process_index=p, process_count=2)``, the per-process streams of
  :mod:`jaxmim.data.pipeline`). Masks and drop-path are drawn in the step for the global batch,
  the same in both runs, so equal losses mean each process fed exactly its own stream.
* Those two streams read disjoint halves of the training split: checked on one batch per
  process with the augmentation switched off (every image is found, byte for byte, in the half of
  the raw idx training images its process owns).
* The 2-process checkpoint restores in one process (replicated over its 8 devices) and equals the
  single-process run's final parameters (rtol 1e-5).

A tiny Swin (``embed_dim=16``, one block per stage) for 4 steps of batch 16: about 140 s of CPU
time in all (the two processes ~85 s, the single-process run ~37 s, the data check ~13 s, mostly
XLA compilation), so about 2 minutes of wall time on 2 otherwise idle cores.
"""

import gzip
import io
import json
import os
import struct

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, 'configs/demo/simmim_swin_fmnist.py')
FMNIST_DIR = '/usr/share/datasets/fashion-mnist'
STEPS, BATCH, PROCESSES, DEVICES_PER_PROCESS = 4, 16, 2, 4


def _overrides(data_dir):
    """The config fields both runs set, as ``{dotted path: value}``."""
    return {
        'data.data_dir': data_dir, 'data.cache': False, 'data.shuffle_buffer': 1000,
        'model.overrides.embed_dim': 16, 'model.overrides.depths': (1, 1, 1),
        'model.overrides.num_heads': (1, 2, 4),
        'batch_size': BATCH, 'total_steps': STEPS, 'optim.warmup_steps': 2, 'log_every': 1,
        'checkpoint_every': STEPS, 'progress_bar': False, 'visualize_every': 0,
        'mesh.layout': 'fsdp', 'mesh.data': 2, 'mesh.fsdp': 4, 'mesh.model': 1,
    }


def _flags(overrides):
    return [f'--config.{k}={v}' for k, v in overrides.items()]


def _config(overrides):
    import ml_collections

    from jaxmim.config import load_config_file
    cfg = load_config_file(CONFIG)
    for path, value in overrides.items():
        *parents, leaf = path.split('.')
        node = cfg
        for p in parents:
            node = node[p]
        if isinstance(node, ml_collections.ConfigDict) and leaf not in node:
            with node.unlocked():
                node[leaf] = value
        else:
            node[leaf] = value
    return cfg


def _two_process_split(original):
    """``create_split`` for one process that yields, as its batch, process 0's batch of a
    2-process run followed by process 1's."""
    def create_split(config, *, train, batch_size, seed=0, process_index=None, process_count=None, start_step=0):
        assert train and (process_index, process_count) == (0, 1)   # the single process's data_shards
        streams = [original(config, train=train, batch_size=batch_size, seed=seed, process_index=p,
                            process_count=PROCESSES, start_step=start_step) for p in range(PROCESSES)]
        for parts in zip(*streams):
            yield {k: np.concatenate([b[k] for b in parts]) for k in parts[0]}
    return create_split


def _idx_images(name):
    """Raw idx images (an independent parser: big-endian header via struct)."""
    with gzip.open(os.path.join(FMNIST_DIR, name), 'rb') as f:
        raw = f.read()
    ndim = raw[3]
    dims = struct.unpack('>' + 'i' * ndim, raw[4:4 + 4 * ndim])
    return np.frombuffer(raw[4 + 4 * ndim:], np.uint8).reshape(dims)


def test_two_processes_read_disjoint_halves(data_dir):
    """The per-process streams of the run's data config, augmentation off (full-image crop, no
    flip, 28 px): each image of process p lies in its half of the ordered training split."""
    from jaxmim import config as config_lib
    from jaxmim.data import pipeline

    cfg = _config(_overrides(data_dir))
    data_cfg = config_lib.resolve_data_config(cfg)
    data_cfg.update(dict(image_size=28, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=False))
    raw = _idx_images('train-images-idx3-ubyte.gz')
    half = len(raw) // PROCESSES
    owner = {img.tobytes(): i // half for i, img in enumerate(raw)}
    for p in range(PROCESSES):
        it = pipeline.create_split(data_cfg, train=True, batch_size=64, seed=cfg.seed, process_index=p,
                                   process_count=PROCESSES)
        images = next(it)['image']
        assert images.shape == (64 // PROCESSES, 28, 28, 3)
        pixels = np.round((images[..., 0] * data_cfg.std[0] + data_cfg.mean[0]) * 255).astype(np.uint8)
        assert {owner.get(img.tobytes()) for img in pixels} == {p}


def test_two_processes_train_like_one(data_dir, tmp_path, monkeypatch):
    import jax

    from jaxmim import checkpoint as ckpt_lib
    from jaxmim import train, tree_util
    from jaxmim.data import pipeline
    from launch.local_multiprocess import launch

    assert jax.process_count() == 1 and jax.device_count() == PROCESSES * DEVICES_PER_PROCESS

    overrides = _overrides(data_dir)
    multi = tmp_path / 'multi'
    log = io.StringIO()
    status = launch(['jaxmim.main', f'--config={CONFIG}', f'--workdir={multi}',
                     *_flags({**overrides, 'mesh.dcn_data': PROCESSES})],
                    num_processes=PROCESSES, devices_per_process=DEVICES_PER_PROCESS, timeout_s=480, out=log)
    text = log.getvalue()
    assert status == 0, text[-6000:]
    assert '[0] [pretrain] train step 4' in text, text[-3000:]

    summary = json.loads((multi / 'pretrain_summary.json').read_text())
    assert summary['finished'] and summary['compilations'] == 1
    multi_losses = [h['loss'] for h in summary['history']]
    assert [h['step'] for h in summary['history']] == list(range(1, STEPS + 1))

    # One process, all 8 devices, the same mesh without dcn_data, both processes' streams.
    monkeypatch.setattr(pipeline, 'create_split', _two_process_split(pipeline.create_split))
    state, single = train.run(_config({**overrides, 'mesh.dcn_data': 1}), str(tmp_path / 'single'))
    single_losses = [h['loss'] for h in single['history']]
    np.testing.assert_allclose(multi_losses, single_losses, rtol=1e-4)

    # The 2-process checkpoint, restored in this one process, holds the single run's parameters.
    restored = tree_util.flatten_names(jax.device_get(
        ckpt_lib.restore_params(str(multi / 'checkpoints'), STEPS, key_path=('params',))))
    expected = tree_util.flatten_names(jax.device_get(state['params']))
    assert sorted(restored) == sorted(expected) and len(expected) > 20
    for name, value in expected.items():
        np.testing.assert_allclose(np.asarray(restored[name]), np.asarray(value), rtol=1e-5, atol=1e-7,
                                   err_msg=name)
