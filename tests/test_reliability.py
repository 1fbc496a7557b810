"""Reliability of a run (issue 11): preemption signals, divergence, damaged checkpoints, the
workdir lock, one clear line for every bad input, history across resumes, the converter's
non-finite refusal.

Everything runs through the real loop (``train.pretrain`` / ``train.finetune``) or the real CLI
(``python -m jaxmim.main``) on the MAE demo config with a one-block ViT of width 16. A persistent
compilation cache (module fixture) lets the repeated runs of one step function compile once.
"""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmim import checkpoint as ckpt_lib
from jaxmim import resilience, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = 'configs/demo/mae_vit_fmnist.py'
TINY = dict(embed_dim=16, depth=1, num_heads=1, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=1)
STEPS = 40          # the reference run; the signal tests stop it part-way


@pytest.fixture(scope='module')
def compile_cache(tmp_path_factory):
    """A persistent compilation cache for this module (restored afterwards)."""
    from jax._src import compilation_cache as cc
    d = str(tmp_path_factory.mktemp('jax_cache'))
    names = ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs',
             'jax_persistent_cache_min_entry_size_bytes')
    old = {n: getattr(jax.config, n) for n in names}
    jax.config.update('jax_compilation_cache_dir', d)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
    cc.reset_cache()
    yield d
    for n, v in old.items():
        jax.config.update(n, v)
    cc.reset_cache()


def make_cfg(data_dir, steps=STEPS, **fields):
    from jaxmim.config import load_config_file
    cfg = load_config_file(os.path.join(ROOT, CONFIG))
    cfg.data.data_dir = data_dir
    cfg.data.cache = False
    cfg.data.shuffle_buffer = 200
    cfg.model.overrides = type(cfg.model.overrides)(TINY)
    cfg.batch_size = 16
    cfg.total_steps = steps
    cfg.optim.warmup_steps = 2
    cfg.log_every = 1
    cfg.checkpoint_every = 100
    cfg.keep_checkpoints = 3
    cfg.progress_bar = False
    for k, v in fields.items():
        cfg[k] = v
    return cfg


def cli_args(data_dir, workdir, steps=STEPS):
    """The command line that builds the same config as :func:`make_cfg` (overrides included)."""
    args = [sys.executable, '-m', 'jaxmim.main', f'--config={CONFIG}', f'--workdir={workdir}',
            f'--config.data.data_dir={data_dir}', '--config.data.cache=False',
            '--config.data.shuffle_buffer=200', '--config.batch_size=16', f'--config.total_steps={steps}',
            '--config.optim.warmup_steps=2', '--config.log_every=1', '--config.checkpoint_every=100',
            '--config.keep_checkpoints=3', '--config.progress_bar=False']
    return args + [f'--config.model.overrides.{k}={v}' for k, v in TINY.items()]


def flat(tree):
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def assert_bit_equal(a, b):
    fa, fb = flat(a), flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        assert fa[k].dtype == fb[k].dtype and fa[k].tobytes() == fb[k].tobytes(), k


def steps_on_disk(workdir):
    return sorted(int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints')) if n.isdigit())


def data_hook(monkeypatch, on_batch):
    """Wraps the loop's input stream: ``on_batch(step, batch)`` sees (and may change) the batch
    of every step (1-based) before the loop gets it."""
    real = train._data_fn

    def hooked(config, mesh, model=None, *, train):
        make = real(config, mesh, model, train=train)

        def gen(start):
            for step, batch in enumerate(make(start), start=start + 1):
                yield on_batch(step, batch)
        return gen

    monkeypatch.setattr(train, '_data_fn', hooked)
    return real


@pytest.fixture(scope='module')
def reference(data_dir, compile_cache, tmp_path_factory):
    """The uninterrupted run: ``(final state, summary)``."""
    workdir = str(tmp_path_factory.mktemp('reference'))
    return train.pretrain(make_cfg(data_dir), workdir)


def _params(state):
    return {k: state[k] for k in ('params', 'opt_state', 'step')}


# ----------------------------------------------------------------------------------------
# Preemption.
# ----------------------------------------------------------------------------------------

def test_sigterm_cli_saves_current_step_exits_75_and_resume_is_bit_equal(data_dir, reference, compile_cache,
                                                                          tmp_path):
    workdir = str(tmp_path / 'run')
    env = dict(os.environ, PYTHONUNBUFFERED='1', JAX_COMPILATION_CACHE_DIR=compile_cache,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0', JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
    proc = subprocess.Popen(cli_args(data_dir, workdir), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:                     # the loop's metric lines
        if 'train step 2:' in line:
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == resilience.EXIT_PREEMPTED, err[-2000:]
    saved = steps_on_disk(workdir)
    assert len(saved) == 1 and 2 <= saved[0] < STEPS, saved
    assert f'stopped by SIGTERM after step {saved[0]}: checkpoint {saved[0]} saved' in err
    assert 'Traceback' not in err
    # The restart (same config) continues exactly where the uninterrupted run would be.
    state, summary = train.pretrain(make_cfg(data_dir), workdir)
    assert summary['start_step'] == saved[0]
    assert_bit_equal(_params(state), _params(reference[0]))


def test_sigint_and_damaged_checkpoint_resumes_are_bit_equal_and_history_kept(data_dir, reference, tmp_path,
                                                                               monkeypatch, capsys):
    workdir = str(tmp_path / 'run')
    stop_at = 7

    def send(step, batch):
        if step == stop_at:       # a real SIGINT to this process while step 7's batch is read
            os.kill(os.getpid(), signal.SIGINT)
        return batch

    real = data_hook(monkeypatch, send)
    with pytest.raises(resilience.Preempted) as info:
        train.pretrain(make_cfg(data_dir), workdir)
    assert info.value.code == 75 and info.value.step == stop_at
    assert steps_on_disk(workdir) == [stop_at]
    monkeypatch.setattr(train, '_data_fn', real)
    state, summary = train.pretrain(make_cfg(data_dir), workdir)
    assert summary['start_step'] == stop_at
    assert_bit_equal(_params(state), _params(reference[0]))
    # History of the whole run, in the summary JSON and in TensorBoard.
    saved = json.load(open(os.path.join(workdir, 'pretrain_summary.json')))
    assert [h['step'] for h in saved['history']] == list(range(1, STEPS + 1))
    want = {h['step']: h['loss'] for h in reference[1]['history']}
    assert all(h['loss'] == want[h['step']] for h in saved['history'])
    import tensorflow as tf
    tb_steps = set()
    for path in glob.glob(os.path.join(workdir, 'tensorboard', 'events.*')):
        for ev in tf.compat.v1.train.summary_iterator(path):
            if any(v.tag == 'train/loss' for v in ev.summary.value):
                tb_steps.add(ev.step)
    assert tb_steps == set(range(1, STEPS + 1))

    # Damage the newest checkpoint (every data file of its params cut in half): the restart says
    # so, sets it aside, resumes from the previous step and still ends bit-equal.
    assert steps_on_disk(workdir) == [stop_at, STEPS]
    victims = glob.glob(os.path.join(workdir, 'checkpoints', str(STEPS), 'params', '**', 'd', '*'), recursive=True)
    assert victims
    for victim in victims:
        with open(victim, 'r+b') as f:
            f.truncate(os.path.getsize(victim) // 2)
    capsys.readouterr()
    state, summary = train.pretrain(make_cfg(data_dir), workdir)
    err = capsys.readouterr().err
    assert f'checkpoint step {STEPS}' in err and 'cannot be read' in err and f'resuming from step {stop_at}' in err
    assert summary['start_step'] == stop_at
    assert_bit_equal(_params(state), _params(reference[0]))
    assert os.path.isdir(os.path.join(workdir, 'checkpoints', f'{STEPS}.damaged'))   # kept, not deleted
    assert steps_on_disk(workdir) == [stop_at, STEPS]
    saved = json.load(open(os.path.join(workdir, 'pretrain_summary.json')))
    assert [h['step'] for h in saved['history']] == list(range(1, STEPS + 1))


def test_two_processes_agree_on_the_stop_step(tmp_path):
    """jax.distributed with 2 processes: a signal on process 1 at step 7 stops both after the
    same step (SIGINT: OR-reduced at the next boundary, step 10; SIGTERM: JAX's preemption sync
    point, a step >= 8 that both processes report)."""
    import socket
    procs = {}
    for sig in ('SIGINT', 'SIGTERM'):
        with socket.socket() as sock:
            sock.bind(('127.0.0.1', 0))
            port = sock.getsockname()[1]
        procs[sig] = [subprocess.Popen([sys.executable, os.path.join(ROOT, 'tests', '_reliability_worker.py'),
                                        str(port), str(pid), sig, str(tmp_path / f'{sig}.{pid}.json')],
                                       cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                      for pid in (0, 1)]
    for sig, pair in procs.items():
        logs = [p.communicate(timeout=300)[0] for p in pair]
        assert all(p.returncode == 0 for p in pair), logs
        got = [json.load(open(tmp_path / f'{sig}.{pid}.json')) for pid in (0, 1)]
        assert got[0]['stopped'] == got[1]['stopped'], got
        if sig == 'SIGINT':
            assert got[0]['stopped'] == 10 and got[1]['signal'] == 'SIGINT', got
        else:
            assert got[0]['stopped'] >= 8 and got[0]['signal'] == got[1]['signal'] == 'SIGTERM', got


# ----------------------------------------------------------------------------------------
# Divergence.
# ----------------------------------------------------------------------------------------

def _poison(steps):
    def on_batch(step, batch):
        if step in steps:
            batch = dict(batch, image=np.full_like(batch['image'], np.nan))
        return batch
    return on_batch


def test_nonfinite_step_stops_and_last_good_checkpoint_is_kept(data_dir, compile_cache, tmp_path, monkeypatch):
    workdir = str(tmp_path / 'run')
    data_hook(monkeypatch, _poison({5}))
    # total_steps as the reference run: the same step function, compiled once (cache).
    cfg = make_cfg(data_dir, STEPS, checkpoint_every=2, log_every=3, keep_checkpoints=1)
    with pytest.raises(resilience.Diverged) as info:
        train.pretrain(cfg, workdir)
    msg = str(info.value)
    assert info.value.step == 5 and info.value.last_good == 4
    assert 'at step 5' in msg and 'last good checkpoint is step 4' in msg and "nonfinite='skip'" in msg
    assert steps_on_disk(workdir) == [4]          # step 6 (a boundary after the NaN) not saved
    state = ckpt_lib.restore_params(os.path.join(workdir, 'checkpoints'), 4, key_path=('params',))
    assert resilience.all_finite(state)
    opt = ckpt_lib.restore_params(os.path.join(workdir, 'checkpoints'), 4, key_path=('opt_state',))
    assert resilience.all_finite(opt)


def test_nonfinite_skip_counts_and_keeps_the_state(data_dir, compile_cache, tmp_path, monkeypatch):
    workdir = str(tmp_path / 'run')
    data_hook(monkeypatch, _poison({2, 4}))
    cfg = make_cfg(data_dir, 4, checkpoint_every=1, keep_checkpoints=None, nonfinite='skip')
    state, summary = train.pretrain(cfg, workdir)
    counts = {h['step']: h['nonfinite_steps'] for h in summary['history']}
    assert counts == {1: 0, 2: 1, 3: 1, 4: 2}
    assert int(state['guard']['nonfinite']) == 2 and int(state['guard']['first_nonfinite']) == 2
    assert int(state['step']) == 4
    # A skipped step leaves every variable and the optimizer state as the step before left them.
    d = os.path.join(workdir, 'checkpoints')
    for item in ('params', 'opt_state'):
        s3 = ckpt_lib.restore_params(d, 3, key_path=(item,))
        assert_bit_equal(ckpt_lib.restore_params(d, 4, key_path=(item,)), s3)
        assert_bit_equal(ckpt_lib.restore_params(d, 2, key_path=(item,)), ckpt_lib.restore_params(d, 1, key_path=(item,)))
        assert not all(np.array_equal(a, b) for a, b in zip(
            flat(s3).values(), flat(ckpt_lib.restore_params(d, 2, key_path=(item,))).values()))
        assert resilience.all_finite(s3)


# ----------------------------------------------------------------------------------------
# Damaged checkpoints.
# ----------------------------------------------------------------------------------------

def _largest_file(step_dir):
    files = [p for p in glob.glob(os.path.join(step_dir, '**', '*'), recursive=True) if os.path.isfile(p)]
    return max(files, key=os.path.getsize)


@pytest.mark.parametrize('damage', ['truncate', 'delete'])
def test_checkpointer_falls_back_past_a_damaged_step(tmp_path, damage):
    rng = np.random.default_rng(0)
    states = {s: {'params': {'w': jnp.asarray(rng.normal(size=(64, 64)).astype(np.float32))},
                  'step': jnp.asarray(s, jnp.int32)} for s in (1, 2, 3)}
    with ckpt_lib.Checkpointer(tmp_path, save_interval_steps=1) as ckpt:
        for s, st in states.items():
            ckpt.save(s, st)
    victim = _largest_file(tmp_path / '3')
    if damage == 'truncate':
        with open(victim, 'r+b') as f:
            f.truncate(os.path.getsize(victim) // 2)
    else:
        os.remove(victim)
    with ckpt_lib.Checkpointer(tmp_path, save_interval_steps=1) as ckpt:
        step, restored, damaged = ckpt.restore_newest_readable(ckpt_lib.abstract_like(states[1]))
        assert step == 2 and [d[0] for d in damaged] == [3]
        assert_bit_equal(restored, states[2])
        assert ckpt.all_steps() == [1, 2]
        ckpt.save(3, states[3])          # the run can save step 3 again
    assert os.path.isdir(tmp_path / '3.damaged')     # kept for inspection, not deleted
    assert sorted(os.listdir(tmp_path)) == ['1', '2', '3', '3.damaged']


# ----------------------------------------------------------------------------------------
# One run per workdir.
# ----------------------------------------------------------------------------------------

def test_locked_workdir_stops_a_second_process_and_a_crash_leaves_no_stale_lock(data_dir, tmp_path):
    workdir = str(tmp_path / 'run')
    os.makedirs(workdir)
    holder = subprocess.Popen(
        [sys.executable, '-c', 'import sys, time; from jaxmim.resilience import WorkdirLock; '
         'WorkdirLock.acquire(sys.argv[1]); print("locked", flush=True); time.sleep(300)', workdir],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'locked'
        t = time.perf_counter()
        with pytest.raises(resilience.WorkdirLocked, match=f'"pid": {holder.pid}'):
            train.pretrain(make_cfg(data_dir, 2), workdir)
        assert time.perf_counter() - t < 10
    finally:
        holder.kill()                    # a crash: no clean-up runs
        holder.wait()
    lock = resilience.WorkdirLock.acquire(workdir)   # the kernel dropped the dead holder's lock
    lock.release()


# ----------------------------------------------------------------------------------------
# Bad inputs: one line naming the field, before any compilation.
# ----------------------------------------------------------------------------------------

class _Compilations:
    def __init__(self):
        self.count = 0

    def __call__(self, event, duration, **kw):
        if event == '/jax/core/compile/backend_compile_duration':
            self.count += 1


def _bad_input_cases(data_dir, tmp_path):
    from jaxmim.config import load_config_file

    def _ft(variant):
        c = load_config_file(os.path.join(ROOT, 'configs/demo/finetune_vit_fmnist.py') + f':{variant}')
        c.data.data_dir = data_dir
        c.batch_size, c.eval_batch_size, c.total_steps = 16, 16, 4
        return c

    def with_(c, fn):
        fn(c)
        return c

    a_file = tmp_path / 'a_file'
    a_file.write_text('x')
    done = str(tmp_path / 'done')       # a workdir whose checkpoint is at step 7
    with ckpt_lib.Checkpointer(os.path.join(done, 'checkpoints'), async_save=False) as ck:
        ck.save(7, {'step': np.int32(7)}, force=True)
    broken = str(tmp_path / 'tfds_truncated')
    shutil.copytree(data_dir, broken)
    shard = glob.glob(os.path.join(broken, 'fashion_mnist_local', '*', '*train.tfrecord*'))[0]
    with open(shard, 'r+b') as f:
        f.truncate(os.path.getsize(shard) - 100)
    work = str(tmp_path / 'w')
    return [
        ('model.name', lambda: with_(make_cfg(data_dir), lambda c: setattr(c.model, 'name', 'mae_vit_tiniest')), work),
        ('method.name', lambda: with_(make_cfg(data_dir), lambda c: setattr(c.method, 'name', 'mea')), work),
        ('data.dataset', lambda: with_(make_cfg(data_dir), lambda c: setattr(c.data, 'dataset', 'fashion_mnistt')), work),
        ('data.train_split', lambda: with_(make_cfg(data_dir), lambda c: setattr(c.data, 'train_split', 'trian')), work),
        ('log_every', lambda: make_cfg(data_dir, log_every=0), work),
        ('checkpoint_every', lambda: make_cfg(data_dir, checkpoint_every=0), work),
        ('eval_every', lambda: with_(_ft('scratch'), lambda c: setattr(c, 'eval_every', 0)), work),
        ('nonfinite', lambda: make_cfg(data_dir, nonfinite='sometimes'), work),
        ('batch_size', lambda: make_cfg(data_dir, batch_size=12), work),
        ('data.image_size', lambda: with_(make_cfg(data_dir), lambda c: setattr(c.data, 'image_size', 48)), work),
        ('model.overrides', lambda: with_(make_cfg(data_dir), lambda c: c.model.overrides.update(bogus_arg=1)), work),
        ('pretrained.workdir', lambda: _ft('pretrained'), work),                       # ':pretrained' without it
        ('pretrained.workdir', lambda: with_(_ft('pretrained'), lambda c: setattr(c.pretrained, 'workdir', str(tmp_path / 'nope'))), work),
        ('pretrained.workdir', lambda: with_(_ft('pretrained'), lambda c: setattr(c.pretrained, 'workdir', work)), work),
        ('--workdir', lambda: make_cfg(data_dir), str(a_file / 'sub')),
        ('total_steps', lambda: make_cfg(data_dir, 4), done),
        ('tfrecord', lambda: with_(make_cfg(data_dir), lambda c: setattr(c.data, 'data_dir', broken)), work),
    ]


def test_every_bad_input_gets_one_line_naming_the_field_before_compilation(data_dir, tmp_path):
    from jax import monitoring
    compiles = _Compilations()
    monitoring.register_event_duration_secs_listener(compiles)
    try:
        for field, make, workdir in _bad_input_cases(data_dir, tmp_path):
            cfg = make()
            before, t = compiles.count, time.perf_counter()
            with pytest.raises(ValueError) as info:
                train.run(cfg, workdir)
            seconds = time.perf_counter() - t
            msg = str(info.value)
            assert field in msg, (field, msg)
            assert compiles.count == before, (field, 'compiled before failing')
            assert seconds < 30, (field, seconds)     # contended 2-core machine; ~0.1-3 s idle
            assert 'config.' in msg or field == '--workdir', msg
        before = compiles.count            # the probe sees compilations: a new function compiles once
        jax.jit(lambda x: x * 3.25 + 1.5)(jnp.arange(7.0)).block_until_ready()
        assert compiles.count > before
    finally:
        from jax._src import monitoring as jax_monitoring
        jax_monitoring.unregister_event_duration_listener(compiles)
    if os.path.exists(str(tmp_path / 'w' / '.lock')):
        resilience.WorkdirLock.acquire(str(tmp_path / 'w')).release()   # nothing leaked


def test_cli_bad_inputs_print_one_line_and_exit_2(data_dir, tmp_path):
    env = dict(os.environ, JAX_LOG_COMPILES='1')
    base = cli_args(data_dir, str(tmp_path / 'w'))
    cases = {
        'does not exist': [sys.executable, '-m', 'jaxmim.main', '--config=configs/demo/nope.py',
                           f'--workdir={tmp_path}/w'],
        "variant 'pretrainedd'": [sys.executable, '-m', 'jaxmim.main',
                                  '--config=configs/demo/finetune_vit_fmnist.py:pretrainedd', f'--workdir={tmp_path}/w'],
        'bogus_arg': base + ['--config.model.overrides.bogus_arg=1'],
    }
    procs = {k: subprocess.Popen(v, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k, v in cases.items()}
    for needle, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        errors = [l for l in err.splitlines() if l.startswith('error:')]
        assert proc.returncode == 2, (needle, err[-1500:])
        assert len(errors) == 1 and needle in errors[0], (needle, err[-1500:])
        assert 'Traceback' not in err and 'Compiling' not in err, (needle, err[-1500:])


def test_corrupt_tfrecord_record_names_the_file(data_dir, compile_cache, tmp_path):
    broken = str(tmp_path / 'tfds')
    shutil.copytree(data_dir, broken)
    shards = sorted(glob.glob(os.path.join(broken, 'fashion_mnist_local', '*', '*train.tfrecord*')))
    for shard in shards:   # flip payload bytes of every record (framing intact): any block read hits one
        data = bytearray(open(shard, 'rb').read())
        pos = 0
        while pos < len(data):
            length = int.from_bytes(data[pos:pos + 8], 'little')
            start = pos + 12 + 8
            data[start:pos + 12 + length - 8] = bytes(b ^ 0xFF for b in data[start:pos + 12 + length - 8])
            pos += 12 + length + 4
        open(shard, 'wb').write(bytes(data))
    cfg = make_cfg(data_dir, 2)
    cfg.data.data_dir = broken
    with pytest.raises(ValueError) as info:
        train.pretrain(cfg, str(tmp_path / 'run'))
    msg = str(info.value)
    assert any(f'corrupt tfrecord {shard}' in msg for shard in shards) and 'config.data.data_dir' in msg, msg


# ----------------------------------------------------------------------------------------
# Converter.
# ----------------------------------------------------------------------------------------

def test_converter_refuses_nonfinite_tensors(tmp_path):
    from convert import _cli
    sd = {'a.weight': np.ones((2, 2), np.float32), 'b.bias': np.array([1.0, np.nan], np.float32),
          'c.inf': np.array([np.inf], np.float32), 'n': np.array([3], np.int64)}
    with pytest.raises(ValueError, match=r"2 tensors: \['b.bias', 'c.inf'\].*--allow_nonfinite"):
        _cli.check_finite(sd, 'x.pth', allow=False)
    assert _cli.check_finite(sd, 'x.pth', allow=True) == ['b.bias', 'c.inf']
    import importlib
    import torch
    path = str(tmp_path / 'bad.pth')
    torch.save({'model': {'w': torch.tensor([1.0, float('nan')])}}, path)
    importer = importlib.import_module('convert.import')
    with pytest.raises(ValueError, match=r"bad.pth holds non-finite .* 1 tensors: \['w'\].*--allow_nonfinite"):
        importer.import_checkpoint(path, 'mae_vit_cls', str(tmp_path / 'imp'), 'vit_demo_patch4_32', verbose=False)
    assert not os.path.exists(tmp_path / 'imp' / 'checkpoints')      # nothing written
