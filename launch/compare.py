r"""Every method on the same data at equal wall-clock time: pre-training, then k-NN, linear
probing and fine-tuning of the same encoder, beside each backbone trained from scratch.

    python -m launch.compare --budget_minutes=5 --dataset=fashion_mnist_local --workdir=work/compare
    python -m launch.compare --budget_minutes=5 --methods=mae_vit,ummae_pvt     # a subset

For each (method, backbone) pair of :data:`PAIRS` (at least SimMIM Swin, MAE ViT, UM-MAE PVT,
GreenMIM Swin, HiViT MAE, SimMIM GroupMixFormer), in order:

1. **pre-training** for ``--budget_minutes`` of wall-clock time: a short calibration run measures
   the step time of the pair's demo config on this machine (:func:`launch.budget.step_seconds`,
   compilation excluded), then the run gets ``budget / step time`` steps, so its learning-rate
   schedule ends where the budget does;
2. **k-NN** (``python -m jaxmim.knn``: DINO's weighted k-NN, k = 20, T = 0.07, on the pooled
   features of the train split, top-1 on the test split);
3. **linear probe** for ``--probe_minutes`` (``configs/demo/linprobe_fmnist.py``: frozen encoder,
   BatchNorm without affine + linear head, LARS; MAE's protocol scaled down);
4. **fine-tuning** for ``--finetune_minutes`` (the pair's demo fine-tuning config ``:pretrained``);
5. the same classifier **from scratch** for ``budget + finetune`` minutes (``:scratch``), once per
   backbone: the row a method has to beat.

Each stage is ``python -m jaxmim.main`` (or ``jaxmim.knn``) in its own process and directory
(``<workdir>/<pair>/<stage>``), showing its own progress bar after a ``[compare i/N] stage``
line; step counts,
measured wall-clock seconds and results go to ``<workdir>/comparison.json`` after every stage.
An interrupted comparison resumes when the same command runs again: finished stages are kept,
the interrupted one resumes from its last checkpoint (the step counts, fixed once, do not
change). At the end it writes ``comparison.md`` (the table) and ``comparison.png`` (top-1 per
protocol per method; scratch rows hatched). A pair whose pre-training would get fewer than
``--min_steps`` steps in the budget is reported as not fitting and skipped.

Exit statuses: 0 done; 2 a bad flag (one ``error:`` line); 75 a stage was stopped by SIGTERM /
SIGINT after saving (run the same command again); 1 a stage failed (its command is printed).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time

from absl import app, flags

from launch.budget import step_seconds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Pair:
    """A (method, backbone) pair of the comparison: its demo configs (relative to the repository
    root) and the variant of ``configs/demo/linprobe_fmnist.py`` for its backbone."""
    method: str
    pretrain: str
    finetune: str
    probe: str


PAIRS = {
    'simmim_swin': Pair('SimMIM', 'configs/demo/simmim_swin_fmnist.py', 'configs/demo/finetune_swin_fmnist.py', 'swin'),
    'mae_vit': Pair('MAE', 'configs/demo/mae_vit_fmnist.py', 'configs/demo/finetune_vit_fmnist.py', 'vit'),
    'ummae_pvt': Pair('UM-MAE', 'configs/demo/ummae_pvt_fmnist.py', 'configs/demo/finetune_pvt_fmnist.py', 'pvt'),
    'greenmim_swin': Pair('GreenMIM', 'configs/demo/greenmim_swin_fmnist.py',
                          'configs/demo/finetune_greenmim_fmnist.py', 'greenmim_swin'),
    'mae_hivit': Pair('MAE (HiViT)', 'configs/demo/mae_hivit_fmnist.py', 'configs/demo/finetune_hivit_fmnist.py',
                      'hivit'),
    'simmim_groupmixformer': Pair('SimMIM', 'configs/demo/simmim_groupmixformer_fmnist.py',
                                  'configs/demo/groupmixformer_fmnist.py', 'groupmixformer'),
}
"""The pairs ``--methods`` selects from, in the order they run."""

PROBE_CONFIG = 'configs/demo/linprobe_fmnist.py'
DATASETS = ('fashion_mnist_local',)
"""Datasets the comparison runs on (the demo configs' data; ImageNet pairs would need their own
configs and days of accelerator time)."""
EXIT_PREEMPTED = 75

_BUDGET = flags.DEFINE_float('budget_minutes', None, 'Wall-clock minutes of pre-training per pair.')
_DATASET = flags.DEFINE_string('dataset', 'fashion_mnist_local', f'One of {list(DATASETS)}.')
_METHODS = flags.DEFINE_list('methods', list(PAIRS), f'Pairs to compare, any of {list(PAIRS)}.')
_WORKDIR = flags.DEFINE_string('workdir', 'work/compare', 'Output directory.')
_FT_MIN = flags.DEFINE_float('finetune_minutes', None, 'Fine-tuning minutes (default: budget / 2).')
_PROBE_MIN = flags.DEFINE_float('probe_minutes', None, 'Linear-probe minutes (default: budget / 4).')
_CALIB = flags.DEFINE_integer('calibrate_steps', 60, 'Steps of each calibration run (6 log points).')
_MIN_STEPS = flags.DEFINE_integer('min_steps', 50, 'Fewest pre-training steps a pair must get to fit.')
_EVAL_EXAMPLES = flags.DEFINE_integer('eval_examples', 0, 'Evaluate on the first N test images (0: all).')
_K = flags.DEFINE_integer('knn_k', 20, 'k of the k-NN evaluation.')
_T = flags.DEFINE_float('knn_temperature', 0.07, 'Temperature of the k-NN weights.')
_KNN_TRAIN = flags.DEFINE_integer('knn_train_examples', 0, 'Train images the k-NN indexes (0: all).')


# ------------------------------------------------------------------------------------------
# Plan: flags -> what runs, checked before anything starts.


def check_flags(budget_minutes, dataset: str, methods: list[str], finetune_minutes, probe_minutes,
                min_steps: int) -> tuple[list[str], dict[str, float]]:
    """The pairs to run and the minutes of each kind of stage.

    Returns:
      ``(pairs, minutes)`` with ``minutes`` keys ``pretrain``, ``finetune``, ``probe``,
      ``scratch`` (= pretrain + finetune: the from-scratch run's equal wall-clock time).

    Raises:
      ValueError: a missing or non-positive budget, an unknown dataset or pair (accepted values
        named), no pair selected, or ``min_steps`` < 1.
    """
    if budget_minutes is None or budget_minutes <= 0:
        raise ValueError(f'--budget_minutes must be > 0 (wall-clock minutes of pre-training per pair), '
                         f'got {budget_minutes}')
    if dataset not in DATASETS:
        raise ValueError(f'--dataset={dataset!r} is not supported; accepted: {list(DATASETS)}')
    unknown = [m for m in methods if m not in PAIRS]
    if unknown:
        raise ValueError(f'--methods: unknown pair(s) {unknown}; accepted: {list(PAIRS)}')
    if not methods:
        raise ValueError(f'--methods is empty; accepted: {list(PAIRS)}')
    if min_steps < 1:
        raise ValueError(f'--min_steps must be >= 1, got {min_steps}')
    ft = budget_minutes / 2 if finetune_minutes is None else finetune_minutes
    probe = budget_minutes / 4 if probe_minutes is None else probe_minutes
    for name, value in (('--finetune_minutes', ft), ('--probe_minutes', probe)):
        if value <= 0:
            raise ValueError(f'{name} must be > 0, got {value}')
    ordered = [m for m in PAIRS if m in methods]
    return ordered, {'pretrain': budget_minutes, 'finetune': ft, 'probe': probe, 'scratch': budget_minutes + ft}


def steps_for(minutes: float, step_s: float) -> int:
    """Steps that fill ``minutes`` of wall-clock time at ``step_s`` seconds a step (at least 1).

    Raises:
      ValueError: a non-positive step time.
    """
    if step_s <= 0:
        raise ValueError(f'step time must be > 0 s, got {step_s}')
    return max(1, int(minutes * 60.0 / step_s))


def warmup_for(steps: int, warmup: int) -> int:
    """The config's warm-up, or a tenth of a run too short to hold it in its first quarter."""
    return warmup if warmup <= steps // 4 else max(1, steps // 10)


# ------------------------------------------------------------------------------------------
# State: comparison.json, rewritten atomically after every stage.


class State:
    """The comparison's record (``comparison.json``): per stage id (``'<pair>/<stage>'``,
    ``'scratch/<backbone>'``, ``'calibrate/<key>'``) a dict with ``done``, ``steps``,
    ``wall_seconds`` and the stage's results, plus the run's settings."""

    FIXED = ('dataset', 'minutes', 'knn', 'eval_examples')
    """Settings that the recorded stages were run with: a later run into the same record must
    repeat them, or its rows would not be comparable with the recorded ones."""

    def __init__(self, path: str, settings: dict):
        """Reads ``path`` when it exists, else starts an empty record.

        A later run may name other pairs (``--methods``): they are added to the recorded ones, in
        the order of :data:`PAIRS`, so a comparison can be completed one pair at a time.

        Raises:
          ValueError: a setting of :attr:`FIXED` differs from the recorded one (names both).
        """
        self.path = path
        self.data = {'settings': settings, 'stages': {}}
        if os.path.exists(path):
            with open(path) as f:
                old = json.load(f)
            recorded = old.get('settings', {})
            for key in self.FIXED:
                if key in recorded and key in settings and recorded[key] != settings[key]:
                    raise ValueError(f'{path} was recorded with {key}={recorded[key]}, this run has '
                                     f'{key}={settings[key]}; repeat the recorded flags or use another --workdir')
            pairs = set(recorded.get('pairs', [])) | set(settings.get('pairs', []))
            self.data['stages'] = old.get('stages', {})
            self.data['settings'] = {**recorded, **settings,
                                     'pairs': [n for n in PAIRS if n in pairs] + sorted(pairs - set(PAIRS))}

    def stage(self, key: str) -> dict:
        """The mutable record of stage ``key``, created as ``{'done': False, 'wall_seconds': 0.0}`` if new."""
        return self.data['stages'].setdefault(key, {'done': False, 'wall_seconds': 0.0})

    def save(self) -> None:
        """Writes the record to ``path`` atomically (:func:`jaxmim.files.write_json`)."""
        from jaxmim import files
        files.write_json(self.path, self.data)


# ------------------------------------------------------------------------------------------
# Running stages.


class StageFailed(RuntimeError):
    """A stage's process exited with an error (not a stop signal)."""


class Stopped(RuntimeError):
    """A stage's process was stopped by SIGTERM / SIGINT after saving (exit status 75)."""


def run_process(argv: list[str], log_path: str) -> None:
    """Runs ``argv`` from the repository root on this terminal (its progress bar and metric lines
    shown as they come); the command is appended to ``log_path``.

    Raises:
      Stopped: exit status 75 (the stage saved its step; rerunning resumes it).
      StageFailed: any other non-zero status, naming the command.
    """
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, 'a') as log:
        log.write(f'{time.strftime("%Y-%m-%d %H:%M:%S")} $ {" ".join(argv)}\n')
    sys.stdout.flush()
    rc = subprocess.call(argv, cwd=ROOT)
    with open(log_path, 'a') as log:
        log.write(f'{time.strftime("%Y-%m-%d %H:%M:%S")} exit status {rc}\n')
    if rc == EXIT_PREEMPTED:
        raise Stopped(f'stopped: {" ".join(argv)}')
    if rc != 0:
        raise StageFailed(f'exit status {rc}: {" ".join(argv)}')


def main_argv(config: str, workdir: str, overrides: dict) -> list[str]:
    """``python -m jaxmim.main --config=ROOT/config --workdir=... --config.k=v ...``."""
    return ([sys.executable, '-m', 'jaxmim.main', f'--config={os.path.join(ROOT, config)}', f'--workdir={workdir}']
            + [f'--config.{k}={v}' for k, v in overrides.items()])


class Runner:
    """Runs the stages of one comparison, recording each in :class:`State`."""

    def __init__(self, workdir: str, state: State, minutes: dict, data_dir: str, eval_examples: int,
                 total_stages: int = 0):
        self.workdir, self.state, self.minutes = workdir, state, minutes
        self.data_dir, self.eval_examples = data_dir, eval_examples
        self.total_stages, self.count = total_stages, 0

    def _common(self, steps: int, warmup: int | None, mode: str, *, eval_examples: int | None = None) -> dict:
        """Overrides of every run: data dir, steps, checkpoints, warm-up, the evaluated test
        images (also what k-NN evaluates on: it reads the pre-training run's config)."""
        n = self.eval_examples if eval_examples is None else eval_examples
        out = {'data.data_dir': self.data_dir, 'total_steps': steps, 'checkpoint_every': max(1, min(500, steps)),
               'progress_bar': True}
        if warmup is not None:   # None: the config's warm-up follows total_steps by itself
            out['optim.warmup_steps'] = warmup_for(steps, warmup)
        if n:
            out['data.eval_split'] = f'test[:{n}]'
        if mode == 'finetune':
            out['eval_every'] = steps
            if n:
                out['eval_batch_size'] = min(500, n)
        return out

    def timed(self, key: str, fn) -> dict:
        """Runs ``fn()`` once unless stage ``key`` is done; adds its wall-clock seconds (also of
        an interrupted attempt) and saves the state."""
        rec = self.state.stage(key)
        if rec['done']:
            return rec
        if not key.startswith('calibrate/'):
            self.count += 1
            print(f'[compare {self.count}/{self.total_stages}] {key}', flush=True)
        t0 = time.perf_counter()
        try:
            rec.update(fn() or {})
            rec['done'] = True
        finally:
            rec['wall_seconds'] = rec['wall_seconds'] + time.perf_counter() - t0
            self.state.save()
        return rec

    def calibrate(self, key: str, config: str, mode: str, warmup: int | None, extra: dict | None = None) -> float:
        """Seconds per step of ``config`` on this machine: a ``--calibrate_steps`` run with six
        log points, the median of those after the first (compilation excluded; with 30 steps and
        three points the median window still held warm-up and overestimated the step time by about
        10 %); its directory is removed afterwards. Recorded, so a resumed comparison does not
        measure again."""
        def run():
            n = max(6, _CALIB.value)
            d = os.path.join(self.workdir, 'calibrate', key.replace('/', '_'))
            shutil.rmtree(d, ignore_errors=True)
            overrides = {**self._common(n, warmup, mode, eval_examples=100), 'log_every': max(1, n // 6),
                         'progress_bar': False, **(extra or {})}
            run_process(main_argv(config, d, overrides), os.path.join(self.workdir, 'logs', f'calibrate_{key}.log'))
            with open(os.path.join(d, f'{mode}_summary.json')) as f:
                history = json.load(f)['history']
            batch = _config(config).batch_size
            shutil.rmtree(d, ignore_errors=True)
            return {'step_seconds': step_seconds(history, batch)}
        return self.timed(f'calibrate/{key}', run)['step_seconds']

    def train(self, key: str, config: str, mode: str, minutes: float, warmup: int | None, extra: dict | None = None,
              calibrate_key: str | None = None, min_steps: int = 1) -> dict:
        """Calibrates, fixes the steps that fill ``minutes`` (once), and runs ``config`` in
        ``<workdir>/<key>``; returns the stage record (``steps``, ``top1`` / ``top5`` of a
        fine-tuning run, ``final_loss`` of a pre-training run, or ``skipped``)."""
        rec = self.state.stage(key)
        if rec['done']:
            return rec
        step_s = self.calibrate(calibrate_key or key, config, mode, warmup, extra)
        if 'steps' not in rec:
            rec['steps'], rec['step_seconds'] = steps_for(minutes, step_s), step_s
            self.state.save()
        if rec['steps'] < min_steps:
            rec.update(done=True, skipped=f'{rec["steps"]} steps in {minutes:g} min (< --min_steps={min_steps})')
            self.state.save()
            return rec
        d = os.path.join(self.workdir, key)

        def run():
            overrides = {**self._common(rec['steps'], warmup, mode), **(extra or {})}
            run_process(main_argv(config, d, overrides), os.path.join(self.workdir, 'logs', key.replace('/', '_') + '.log'))
            with open(os.path.join(d, f'{mode}_summary.json')) as f:
                summary = json.load(f)
            if mode == 'pretrain':
                return {'final_loss': summary['history'][-1]['loss'] if summary['history'] else None, 'workdir': d}
            final = summary['final_eval']
            return {'top1': final['top1'], 'top5': final.get('top5'), 'workdir': d}
        return self.timed(key, run)

    def knn(self, key: str, pretrain_dir: str, k: int, temperature: float, train_examples: int) -> dict:
        """``python -m jaxmim.knn`` on the pre-training run; returns its ``knn.json``."""
        def run():
            argv = [sys.executable, '-m', 'jaxmim.knn', f'--workdir={pretrain_dir}', f'--k={k}',
                    f'--temperature={temperature}']   # data dir and eval split: the run's config
            if train_examples:
                argv.append(f'--train_examples={train_examples}')
            run_process(argv, os.path.join(self.workdir, 'logs', key.replace('/', '_') + '.log'))
            with open(os.path.join(pretrain_dir, 'knn.json')) as f:
                res = json.load(f)
            return {'top1': res['top1'], 'top5': res.get('top5')}
        return self.timed(key, run)


def _config(rel: str):
    from jaxmim.config import load_config_file
    return load_config_file(os.path.join(ROOT, rel))


def run_pair(runner: Runner, name: str, pair: Pair, *, min_steps: int, k: int, temperature: float,
             knn_train: int) -> None:
    """The four stages of one pair and the scratch run of its backbone (see the module doc)."""
    pre_cfg, ft_cfg = _config(pair.pretrain), _config(pair.finetune + ':scratch')
    backbone = ft_cfg.model.name
    m = runner.minutes
    for stage in ('pretrain', 'finetune'):
        runner.state.stage(f'{name}/{stage}').update(backbone=backbone, method=pair.method)
    pre = runner.train(f'{name}/pretrain', pair.pretrain, 'pretrain', m['pretrain'], pre_cfg.optim.warmup_steps,
                       min_steps=min_steps)
    if pre.get('skipped'):
        return
    pre_dir = pre['workdir']
    runner.knn(f'{name}/knn', pre_dir, k, temperature, knn_train)
    probe = f'{PROBE_CONFIG}:{pair.probe}'
    runner.train(f'{name}/linprobe', probe, 'finetune', m['probe'], None,   # warm-up: total_steps // 9
                 extra={'pretrained.workdir': pre_dir})
    runner.train(f'{name}/finetune', pair.finetune + ':pretrained', 'finetune', m['finetune'],
                 ft_cfg.optim.warmup_steps, extra={'pretrained.workdir': pre_dir},
                 calibrate_key=f'finetune_{backbone}')
    runner.train(f'scratch/{backbone}', pair.finetune + ':scratch', 'finetune', m['scratch'],
                 ft_cfg.optim.warmup_steps, calibrate_key=f'finetune_{backbone}')


def main(argv) -> None:
    """Checks the flags, prepares the data, runs every selected pair, writes the report."""
    del argv
    try:
        pairs, minutes = check_flags(_BUDGET.value, _DATASET.value, _METHODS.value, _FT_MIN.value,
                                     _PROBE_MIN.value, _MIN_STEPS.value)
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
    from jaxmim.data import prepare_fashion_mnist
    from launch import compare_report

    workdir = os.path.abspath(_WORKDIR.value)
    data_dir = os.path.join(workdir, 'tensorflow_datasets')
    os.makedirs(workdir, exist_ok=True)
    prepare_fashion_mnist(data_dir=data_dir)
    settings = {'dataset': _DATASET.value, 'minutes': minutes, 'pairs': pairs, 'knn': {'k': _K.value,
                'temperature': _T.value, 'train_examples': _KNN_TRAIN.value}, 'eval_examples': _EVAL_EXAMPLES.value,
                'machine': compare_report.machine()}
    try:
        state = State(os.path.join(workdir, 'comparison.json'), settings)
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
    state.save()
    backbones = {_config(PAIRS[n].finetune + ':scratch').model.name for n in pairs}
    runner = Runner(workdir, state, minutes, data_dir, _EVAL_EXAMPLES.value,
                    total_stages=4 * len(pairs) + len(backbones))
    runner.count = sum(1 for k, v in state.data['stages'].items() if v['done'] and not k.startswith('calibrate/'))
    try:
        for name in pairs:
            run_pair(runner, name, PAIRS[name], min_steps=_MIN_STEPS.value, k=_K.value, temperature=_T.value,
                     knn_train=_KNN_TRAIN.value)
    except Stopped as e:
        print(f'{e}\ncomparison stopped; run the same command again to resume (exit status {EXIT_PREEMPTED})',
              file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)
    except StageFailed as e:
        print(f'error: a stage failed: {e}', file=sys.stderr)
        sys.exit(1)
    paths = compare_report.write_report(state.data, workdir)
    print(open(paths['markdown']).read())
    print(f'comparison: {", ".join(paths.values())}')


if __name__ == '__main__':
    app.run(main)
