"""Training loops: loss goes down, resume reproduces, 1 vs 8 devices, pretrained loading, eval.

Runs on real Fashion-MNIST (prepared once into a temporary tfds data dir) with a very small
Swin so the whole file stays within a few minutes on 2 CPU cores.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import run_interrupted
from jaxmim import train
from jaxmim import rundir, steps
from jaxmim import mesh as mesh_lib
from jaxmim.config import check_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_ENC = dict(embed_dim=16, num_heads=(1, 2, 4))


def _load_config(path, arg=None):
    from jaxmim.config import load_config_file
    return load_config_file(os.path.join(ROOT, path) + (f':{arg}' if arg is not None else ''))


def _tiny(cfg, data_dir, steps):
    cfg.data.data_dir = data_dir
    cfg.data.cache = False
    cfg.data.shuffle_buffer = 1000
    cfg.model.overrides = type(cfg.model.overrides)(TINY_ENC)
    cfg.batch_size = 16
    cfg.total_steps = steps
    cfg.optim.warmup_steps = 2
    cfg.log_every = 1
    cfg.checkpoint_every = 3
    cfg.progress_bar = False
    return cfg


def pretrain_cfg(data_dir, steps):
    cfg = _tiny(_load_config('configs/demo/simmim_swin_fmnist.py'), data_dir, steps)
    cfg.optim.lr_scale_batch = 0          # lrs as given, not scaled by batch/512
    cfg.optim.base_lr = 2e-3
    cfg.optim.min_lr = 1e-5
    return cfg


def test_pretrain_lowers_loss_and_compiles_once(data_dir, tmp_path):
    cfg = pretrain_cfg(data_dir, 40)
    cfg.optim.base_lr = 4e-3
    cfg.checkpoint_every = 20
    _, summary = train.pretrain(cfg, str(tmp_path))
    losses = [h['loss'] for h in summary['history']]
    assert len(losses) == 40
    # batches differ from step to step, so compare averages over 5 steps
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    assert summary['compilations'] == 1
    assert sorted(int(s) for s in os.listdir(tmp_path / 'checkpoints')) == [20, 40]
    assert os.listdir(tmp_path / 'tensorboard')
    saved = json.load(open(tmp_path / 'pretrain_summary.json'))
    assert saved['history'][-1]['step'] == 40
    # images/s per device always; a CPU has no known peak: no FLOPs counted, no MFU logged (a known
    # accelerator, where the suite runs on one, logs MFU over its bf16 peak)
    from jaxmim import model_flops
    n, last = jax.device_count(), saved['history'][-1]
    assert last['images_per_sec_per_device'] == pytest.approx(last['images_per_sec'] / n)
    known = model_flops.peak_tflops(jax.devices()[0].device_kind)
    if known is None:
        assert saved['throughput'] == {'devices': n, 'model_flops_per_image': None, 'peak_tflops_per_device': None}
        assert 'mfu' not in last
    else:
        assert saved['throughput']['peak_tflops_per_device'] == known and last['mfu'] > 0


def test_train_logs_mfu_over_the_given_peak(data_dir, tmp_path):
    """With ``config.peak_tflops`` the loop counts the step's model FLOPs once and logs
    ``tflops_per_device = FLOPs/image x images/s / devices`` and ``mfu = tflops_per_device / peak``;
    the count is within 2x of the analytic SimMIM-Swin count of tests/test_benchmark.py (written
    from the architecture alone, no XLA)."""
    from test_benchmark import swin_train_flops

    from jaxmim.registry import model_defaults
    cfg = pretrain_cfg(data_dir, 2)
    cfg.peak_tflops = 0.5
    _, summary = train.pretrain(cfg, str(tmp_path))
    tp = summary['throughput']
    n = jax.device_count()
    assert tp['devices'] == n and tp['peak_tflops_per_device'] == 0.5
    assert tp['flops_source'] == 'reference form, 1 CPU device'
    arch = {**model_defaults(cfg.model.name), **TINY_ENC}
    expected = swin_train_flops(**{**arch, 'in_chans': arch.get('in_chans', 3)},
                                decoder_stride=cfg.method.encoder_stride)
    fpi = tp['model_flops_per_image']
    assert 0.5 < fpi / expected < 2.0, (fpi, expected)
    assert [h['step'] for h in summary['history']] == [1, 2]
    for h in summary['history']:
        assert h['images_per_sec_per_device'] == pytest.approx(h['images_per_sec'] / n)
        assert h['tflops_per_device'] == pytest.approx(fpi * h['images_per_sec'] / n / 1e12)
        assert h['mfu'] == pytest.approx(h['tflops_per_device'] / 0.5)
    bad = pretrain_cfg(data_dir, 2)
    bad.peak_tflops = float('nan')
    with pytest.raises(ValueError, match='config.peak_tflops'):
        check_config(bad)


def test_resume_reproduces_uninterrupted_run(data_dir, tmp_path, monkeypatch):
    full = train.pretrain(pretrain_cfg(data_dir, 6), str(tmp_path / 'full'))[1]

    # Interrupt the second run at step 4 (its data iterator raises), then resume.
    run_interrupted(monkeypatch, train,
                    lambda: train.pretrain(pretrain_cfg(data_dir, 6), str(tmp_path / 'resumed')), 4)
    assert sorted(int(s) for s in os.listdir(tmp_path / 'resumed' / 'checkpoints')) == [3]
    # the resumed run frees its freshly initialised state before reading the checkpoint (one state at a time)
    made, freed = [], []
    real_make, real_restore = train.steps.make_trainer, train.ckpt_lib.Checkpointer.restore_newest_readable

    def make_trainer(*args, **kwargs):
        made.append(real_make(*args, **kwargs))
        return made[-1]

    def restore(self, *args, **kwargs):
        initial = made[-1][1]
        freed.append([all(x.is_deleted() for x in jax.tree.leaves(initial[k])) for k in ('params', 'opt_state')]
                     + [not x.is_deleted() for x in jax.tree.leaves(initial['guard'])])
        return real_restore(self, *args, **kwargs)

    monkeypatch.setattr(train.steps, 'make_trainer', make_trainer)
    monkeypatch.setattr(train.ckpt_lib.Checkpointer, 'restore_newest_readable', restore)
    resumed = train.pretrain(pretrain_cfg(data_dir, 6), str(tmp_path / 'resumed'))[1]
    assert freed and all(freed[0]), freed
    assert resumed['start_step'] == 3
    got = {h['step']: h['loss'] for h in resumed['history']}
    want = {h['step']: h['loss'] for h in full['history']}
    assert sorted(got) == [1, 2, 3, 4, 5, 6]   # the interrupted segment's history (1-3) is kept
    for step in got:
        np.testing.assert_allclose(got[step], want[step], rtol=1e-5)


def test_logged_train_metrics_are_window_means(data_dir, tmp_path):
    # Per-step values from a run that logs every step, against the same run logging every 4 steps:
    # each logged loss / grad_norm is the mean of its window's 4 steps; lr is the boundary step's.
    every = train.pretrain(pretrain_cfg(data_dir, 8), str(tmp_path / 'every'))[1]['history']
    cfg = pretrain_cfg(data_dir, 8)
    cfg.log_every = 4
    windows = train.pretrain(cfg, str(tmp_path / 'windows'))[1]['history']
    assert [h['step'] for h in windows] == [4, 8]
    for h in windows:
        steps_in = [e for e in every if h['step'] - 4 < e['step'] <= h['step']]
        for key in ('loss', 'grad_norm'):
            np.testing.assert_allclose(h[key], sum(e[key] for e in steps_in) / 4, rtol=1e-5)
        np.testing.assert_allclose(h['lr'], steps_in[-1]['lr'], rtol=1e-6)
    assert windows[0]['loss'] != pytest.approx(every[3]['loss'], rel=1e-4)   # not the last step's value


def test_step_is_identical_on_1_and_8_devices():
    cpu = jax.devices('cpu')   # explicit: the default backend may be an accelerator
    assert len(cpu) == 8, 'tests/conftest.py sets 8 fake CPU devices'
    from jaxmim.methods import create_mim_model
    cfg = pretrain_cfg(None, 10)
    rng = np.random.default_rng(0)
    batch = {'image': rng.normal(size=(16, 32, 32, 3)).astype(np.float32)}
    results = []
    for devices in (cpu[:1], cpu):
        mesh = mesh_lib.make_mesh(devices)
        model = create_mim_model(cfg.method.to_dict(), cfg.model.name, overrides=TINY_ENC)
        trainer, state = steps.make_trainer(model, steps.mim_loss, cfg, mesh)
        for _ in range(2):
            state, metrics = trainer.train_step(state, mesh_lib.global_batch(batch, mesh_lib.batch_sharding(mesh)))
        assert len(state['params']['encoder']['layers'][0]['blocks'][0]['attn']['qkv']['kernel'].sharding
                   .device_set) == len(devices)
        results.append((jax.device_get(metrics), jax.device_get(state['params'])))
    (m1, p1), (m8, p8) = results
    np.testing.assert_allclose(m1['loss'], m8['loss'], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), p1, p8)


def test_finetune_from_pretrained_checkpoint(data_dir, tmp_path, monkeypatch):
    pre_dir = str(tmp_path / 'pre')
    train.pretrain(pretrain_cfg(data_dir, 3), pre_dir)
    from jaxmim import checkpoint
    enc = checkpoint.restore_params(os.path.join(pre_dir, 'checkpoints'), key_path=('params', 'encoder'))

    cfg = _tiny(_load_config('configs/demo/finetune_swin_fmnist.py', 'pretrained'), data_dir, 2)
    cfg.pretrained.workdir = pre_dir
    cfg.eval_every = 2
    cfg.eval_batch_size = 1000
    cfg.data.eval_split = 'test[:2000]'
    model = rundir.build_model(cfg)
    head_before = np.asarray(model.head.kernel[...])
    # The checkpoint is read into host memory: one CPU device of this process, not replicated
    # over the 8 devices (which, on an accelerator host, are the accelerators).
    placed, restore = [], checkpoint.restore_params
    monkeypatch.setattr(checkpoint, 'restore_params', lambda *a, **k: placed.append(restore(*a, **k)) or placed[-1])
    report = rundir.load_pretrained(model, pre_dir)
    monkeypatch.undo()
    devices = {d for tree in placed for leaf in jax.tree.leaves(tree) for d in leaf.sharding.device_set}
    assert placed and devices == {jax.local_devices(backend='cpu')[0]}, devices   # params (no model_state here)
    loaded = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    np.testing.assert_array_equal(loaded['layers'][1]['blocks'][1]['attn']['qkv']['kernel'],
                                  enc['layers'][1]['blocks'][1]['attn']['qkv']['kernel'])
    np.testing.assert_array_equal(loaded['patch_embed']['proj']['kernel'], enc['patch_embed']['proj']['kernel'])
    np.testing.assert_array_equal(loaded['head']['kernel'], head_before)
    assert sorted(report['fresh']) == ['head.bias', 'head.kernel'] and report['unused'] == ['mask_token']

    _, summary = train.finetune(cfg, str(tmp_path / 'ft'))
    final = summary['final_eval']
    assert final['count'] == 2000
    # The reported accuracy is the fine-tuned model's, recomputed here on the same 2000 images.
    from jaxmim.config import resolve_data_config
    from jaxmim.data import pipeline
    tuned = rundir.build_model(cfg)
    rundir.restore_model(tuned, str(tmp_path / 'ft'))
    hits = count = 0
    for b in pipeline.create_split(resolve_data_config(cfg), train=False, batch_size=1000, seed=0):
        pred = np.asarray(tuned(jnp.asarray(b['image']))).argmax(-1)
        hits += int(((pred == b['label']) * b['mask']).sum())
        count += int(b['mask'].sum())
    assert count == 2000
    np.testing.assert_allclose(final['top1'], 100.0 * hits / count, atol=1e-3)


def test_eval_step_counts_against_numpy():
    from jaxmim.registry import create_model
    mesh = mesh_lib.make_mesh()
    model = create_model('swin_demo_patch4_window4_32', **TINY_ENC)
    graphdef, params, model_state = rundir.split_variables(model)
    step = steps.make_eval_step(graphdef, mesh)
    rng = np.random.default_rng(0)
    batch = {'image': rng.normal(size=(16, 32, 32, 3)).astype(np.float32),
             'label': rng.integers(0, 10, 16).astype(np.int32),
             'mask': np.array([1.0] * 13 + [0.0] * 3, np.float32)}
    out = steps.evaluate(step, {'params': params, 'model_state': model_state}, [batch],
                         mesh_lib.batch_sharding(mesh))
    logits = np.asarray(model(jnp.asarray(batch['image'])))
    order = np.argsort(-logits, axis=1)
    real = batch['mask'] == 1
    top1 = (order[:, 0] == batch['label'])[real].mean() * 100
    top5 = np.array([batch['label'][i] in order[i, :5] for i in range(16)])[real].mean() * 100
    assert out['count'] == 13
    np.testing.assert_allclose([out['top1'], out['top5']], [top1, top5], atol=1e-4)


def test_unknown_config_keys_are_rejected():
    cfg = _load_config('configs/demo/simmim_swin_fmnist.py')
    with pytest.raises(AttributeError, match='base_lr'):
        cfg.optim.base_lrr = 1.0                      # locked config: no new keys
    import ml_collections
    loose = ml_collections.ConfigDict(cfg.to_dict())
    loose.optim.warmup_step = 3
    with pytest.raises(ValueError, match=r"unknown config key 'config.optim.warmup_step'.*warmup_steps"):
        check_config(loose)


def test_cli_reports_unknown_override():
    proc = subprocess.run(
        [sys.executable, '-m', 'jaxmim.main', '--config=configs/demo/simmim_swin_fmnist.py',
         '--workdir=/tmp/unused', '--config.optim.base_lrr=1'],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert 'base_lrr' in proc.stderr and 'base_lr' in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_profile_window_traces_the_chosen_steps(data_dir, tmp_path):
    """``profile_from=2, profile_steps=2`` of a 4-step run: one trace under
    ``<workdir>/tensorboard/plugins/profile`` whose step annotations are steps 2 and 3 only."""
    import glob

    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    cfg = pretrain_cfg(data_dir, 4)
    cfg.profile_from, cfg.profile_steps = 2, 2
    train.pretrain(cfg, str(tmp_path))
    paths = glob.glob(str(tmp_path / 'tensorboard' / 'plugins' / 'profile' / '*' / '*.xplane.pb'))
    assert len(paths) == 1, paths
    space = xplane_pb2.XSpace()
    space.ParseFromString(open(paths[0], 'rb').read())
    steps_seen = set()
    for plane in space.planes:
        stat_names = {k: m.name for k, m in plane.stat_metadata.items()}
        for line in plane.lines:
            for e in line.events:
                if plane.event_metadata[e.metadata_id].name != 'train':
                    continue
                for s in e.stats:
                    if stat_names.get(s.metadata_id) == 'step_num':
                        steps_seen.add(int(s.int64_value or s.uint64_value or s.str_value))
    assert steps_seen == {2, 3}, steps_seen
    bad = pretrain_cfg(data_dir, 2)
    bad.profile_steps = 0
    with pytest.raises(ValueError, match='config.profile_steps'):
        check_config(bad)


def test_data_wait_share_measures_a_slow_pipeline(data_dir, tmp_path, monkeypatch):
    """Each batch arrives 0.4 s late (a sleep in the per-process iterator): every window after the
    first (which also holds the compilation) logs ``data_wait_share`` such that the seconds waited,
    ``share x window time`` (window time = batch / images_per_sec), hold the 0.4 s sleep and no more
    than the window."""
    import time as time_lib
    real = train._data_fn

    def slow_data_fn(*args, **kwargs):
        make = real(*args, **kwargs)

        def slow(start):
            for batch in make(start):
                time_lib.sleep(0.4)
                yield batch
        return slow

    monkeypatch.setattr(train, '_data_fn', slow_data_fn)
    cfg = pretrain_cfg(data_dir, 4)
    cfg.checkpoint_every = 100      # no save inside a window (the final one comes after the last log)
    _, summary = train.pretrain(cfg, str(tmp_path))
    for h in summary['history'][1:]:
        window = cfg.batch_size / h['images_per_sec']
        assert 0.4 <= h['data_wait_share'] * window <= window + 1e-6, (h, window)
        assert h['data_wait_share'] > 0.5, h          # a tiny step on 8 fake devices takes far less than 0.4 s
