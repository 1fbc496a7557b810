r"""The accelerator measurement in one command: every pre-training step the papers compare, at
float32 and at bfloat16 with fused attention, beside its PyTorch twin, with MFU and the speed
ratios the papers claim.

    python -m launch.accelerator_bench --out_dir=OUT                    # a GPU or TPU machine
    python -m launch.accelerator_bench --plan=smoke --out_dir=OUT \
        --batch_size=8 --steps=1 --warmup=0                              # the same path on a CPU
    launch/accelerator_bench.sh                                          # on a lent GPU machine ($OUT)

What it measures (``--plan=accelerator``, batch 128 each, synthetic device-resident batches, the
real jitted train step of :mod:`jaxmim.benchmark`), in this order of priority:

1. bfloat16 compute (``config.compute_dtype``; float32 master weights, loss and optimizer) with
   cuDNN's fused attention (``attn_implementation='cudnn'``; XLA's attention where cuDNN refuses a
   shape, e.g. Swin's 49-token windows with a bias, recorded in the row's ``attention``) for the
   five target steps: MAE ViT-B, HiViT-B MAE, SimMIM Swin-B 192, GreenMIM Swin-B, UM-MAE Swin-T 256;
2. the same for the four steps the papers' speed claims compare them with: SimMIM Swin-B 224
   (window 7), SimMIM Swin-T 256, UM-MAE PVT-S 256, SimMIM PVT-S 256;
3. float32 (XLA's attention) for the five targets;
4. the targets at bfloat16 again, each round one JAX step, one eager PyTorch step and one
   ``torch.compile``-d step of the twin (``--compare_torch``: ``torch.autocast`` to bfloat16): MAE
   ViT-B, HiViT-B MAE, SimMIM Swin-B 192 and UM-MAE Swin-T 256 (:data:`NO_TORCH`: GreenMIM's twin
   attends window by window in a Python loop, a correctness reference, not a speed comparator);
5. the deep targets (:data:`SCANNED`) at bfloat16 with ``scan_blocks=True``: their compile time and
   memory against group 1's unrolled steps;
6. two targets (:data:`FAST_OPS_TARGETS`) at bfloat16 with every op's fast form
   (``JAXMIM_FAST_OPS=all``: the hand-written backward passes, reductions as matrix products,
   GELU's ``erf`` form, measured to help on XLA:CPU and unmeasured elsewhere) against group 1's
   portable forms: whether a fast form should be enabled for the device's platform.

Each row: images/s (batch / median step time), the compiled step's device memory, the cold compile
time, model FLOPs per image (:mod:`jaxmim.model_flops`: the reference form counted on one CPU
device) and MFU over the device's bf16 dense peak (``--peak_tflops``, else from the device kind:
:data:`jaxmim.model_flops.PEAK_BF16_TFLOPS`). Then the ratios (:data:`RATIOS`): GreenMIM / SimMIM
Swin-B, UM-MAE / SimMIM Swin-T and PVT-S, HiViT-B MAE / SimMIM Swin-B at 224 (images/s, and memory).

To fit a short lease the compilations run first, in parallel processes (``--compile_workers``, 3/4 of
the cores), into JAX's persistent compilation cache under ``--cache_dir``, and (with ``--warm_torch``) the
``torch.compile`` of each twin, one at a time beside them, into inductor's cache; the timed phase
then runs every step in this process, one after the other, loading its executable from the cache.
A row's ``compile_s_cold`` is its compile time in that first phase (several compilations share the
host's cores then), ``compile_s`` the cached load. Rows are written to
``OUT/accelerator_bench.json`` after every step, so a run stopped at its time limit keeps what it
measured; a step not started before ``--deadline_minutes`` is listed as skipped. At the end
``OUT/accelerator_bench.md`` holds the table and the ratios.

``--groups=1,2,4`` (or ``--only=NAME,...``) measures part of the plan, e.g. to split it over two
short leases.

Exit statuses: 0 done (skipped or failed steps are rows, not errors); 2 a bad flag.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from unittest import mock

from absl import app, flags

# jaxmim.benchmark also defines --steps, --warmup, --batch_size, --peak_tflops and --torch_compile
from jaxmim import benchmark, benchmark_report, files, model_flops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Variant:
    """One measured step: ``spec`` (``configs/...py[:variant]``, relative to the repository root) at
    ``compute_dtype`` with ``attention`` (None: XLA's; ``'cudnn'``) and further model ``overrides``
    (``(key, value)`` pairs, e.g. ``(('scan_blocks', True),)``) and environment variables ``env``
    (pairs, set while the step is built, traced and timed), optionally timed beside the twin
    (``torch``); ``group`` orders the timed phase."""
    name: str
    spec: str
    compute_dtype: str
    attention: str | None
    torch: bool
    group: int
    overrides: tuple = ()
    env: tuple = ()


TARGETS = {
    'mae_vit_b': 'configs/pretrain/mae_vit_base_800ep.py',
    'hivit_b_mae': 'configs/pretrain/mae_hivit_base.py:1600ep',
    'simmim_swin_b_192': 'configs/pretrain/simmim_swin_base_img192_window6.py:100ep',
    'greenmim_swin_b': 'configs/pretrain/greenmim.py:swin_base_win7',
    'ummae_swin_t_256': 'configs/pretrain/ummae.py:swin_tiny_200ep',
}
"""The five pre-training steps whose MFU is the target (issue 26)."""

BASELINES = {
    'simmim_swin_b_224': 'configs/pretrain/simmim_swin_base_img224_window7.py:100ep',
    'simmim_swin_t_256': 'configs/pretrain/ummae_simmim_256.py:swin_tiny_200ep',
    'ummae_pvt_s_256': 'configs/pretrain/ummae.py:pvt_small_200ep',
    'simmim_pvt_s_256': 'configs/pretrain/ummae_simmim_256.py:pvt_small_200ep',
}
"""The steps the papers' speed claims compare the targets with."""

NO_TORCH = {'greenmim_swin_b': "the twin (convert/greenmim.py) loops over windows in Python: a correctness "
                               "reference, not the official grouped kernel, so no speed comparator"}
"""Targets whose PyTorch twin is not timed, with the reason."""

SCANNED = ('mae_vit_b', 'hivit_b_mae', 'simmim_swin_b_192', 'greenmim_swin_b')
"""Targets measured once more with ``scan_blocks=True`` (12 to 20 blocks in their deepest stack)."""

FAST_OPS_TARGETS = ('mae_vit_b', 'simmim_swin_b_192')
"""Targets measured once more with the CPU-measured fast forms of :mod:`jaxmim.ops` on."""

RATIOS = {
    'accelerator': (
        ('GreenMIM / SimMIM, Swin-B 224 (paper: 2.7x)', 'greenmim_swin_b', 'simmim_swin_b_224'),
        ('UM-MAE / SimMIM, Swin-T 256 (paper: ~2x)', 'ummae_swin_t_256', 'simmim_swin_t_256'),
        ('UM-MAE / SimMIM, PVT-S 256 (paper: ~2x)', 'ummae_pvt_s_256', 'simmim_pvt_s_256'),
        ('HiViT-B MAE / SimMIM Swin-B 224 (paper: 1.9x)', 'hivit_b_mae', 'simmim_swin_b_224'),
    ),
    'smoke': (('demo MAE ViT / demo SimMIM Swin', 'mae_vit_demo', 'simmim_swin_demo'),),
}
"""Per plan, ``(label, numerator, denominator)`` of the speed ratios, over the bfloat16 rows: the
claims of the papers' abstracts (GreenMIM 2.7x faster than SimMIM on hierarchical ViTs; UM-MAE about
2x faster and 2x less memory than SimMIM; HiViT 1.9x faster than Swin-B under MIM)."""


def plan(which: str) -> list[Variant]:
    """The variants of a plan, in the order they are timed.

    ``'accelerator'``: the six groups of the module docstring. ``'smoke'``: the same groups on
    the demo MAE ViT and SimMIM Swin configs (a CPU check of the whole path; cuDNN is asked for and
    refused there, so the fall-back to XLA's attention runs too).

    Raises:
      ValueError: an unknown plan.
    """
    if which == 'accelerator':
        targets, baselines = TARGETS, BASELINES
    elif which == 'smoke':
        targets = {'mae_vit_demo': 'configs/demo/mae_vit_fmnist.py'}
        baselines = {'simmim_swin_demo': 'configs/demo/simmim_swin_fmnist.py'}
    else:
        raise ValueError(f"--plan must be 'accelerator' or 'smoke', got {which!r}")
    out = [Variant(f'{n}/bf16', s, 'bfloat16', 'cudnn', False, 1) for n, s in targets.items()]
    out += [Variant(f'{n}/bf16', s, 'bfloat16', 'cudnn', False, 2) for n, s in baselines.items()]
    out += [Variant(f'{n}/fp32', s, 'float32', None, False, 3) for n, s in targets.items()]
    out += [Variant(f'{n}/bf16+torch', s, 'bfloat16', 'cudnn', True, 4) for n, s in targets.items()
            if n not in NO_TORCH]
    scanned = SCANNED if which == 'accelerator' else tuple(targets)
    out += [Variant(f'{n}/bf16+scan', s, 'bfloat16', 'cudnn', False, 5, (('scan_blocks', True),))
            for n, s in targets.items() if n in scanned]
    fast = FAST_OPS_TARGETS if which == 'accelerator' else tuple(targets)
    out += [Variant(f'{n}/bf16+fast_ops', s, 'bfloat16', 'cudnn', False, 6, env=(('JAXMIM_FAST_OPS', 'all'),))
            for n, s in targets.items() if n in fast]
    return out


def variant_config(v: Variant, attention: str | None, batch_size: int):
    """The config of ``v`` with its compute dtype, ``attention`` and batch (a fresh copy)."""
    from jaxmim.config import load_config_file

    config = load_config_file(os.path.join(ROOT, v.spec))
    config.compute_dtype = v.compute_dtype
    config.batch_size = batch_size
    if attention is not None:
        config.model.overrides.attn_implementation = attention
    for key, value in v.overrides:
        config.model.overrides[key] = value
    return config


def ratios(rows: list[dict], plan_name: str, dtype: str = 'bfloat16') -> list[dict]:
    """The speed and memory ratios of ``RATIOS[plan_name]`` from the timed rows at ``dtype`` (the first
    timed row of each name among the plain steps: not beside the twin, without further overrides or
    environment, so a scanned or fast-form row never stands in for a missing plain one):
    ``{'label', 'numerator', 'denominator', 'img_s_ratio', 'memory_ratio'}``, a ratio None where a
    side is missing."""
    by_name = {}
    for r in rows:
        plain = not (r.get('with_torch') or r.get('overrides') or r.get('env'))
        if plain and r.get('compute_dtype') == dtype and r.get('img_s'):
            by_name.setdefault(r['variant'].split('/')[0], r)
    out = []
    for label, num, den in RATIOS[plan_name]:
        a, b = by_name.get(num), by_name.get(den)
        mem = a and b and a.get('device_memory_gib') and b.get('device_memory_gib')
        out.append({'label': label, 'numerator': num, 'denominator': den,
                    'img_s_ratio': a['img_s'] / b['img_s'] if a and b else None,
                    'memory_ratio': a['device_memory_gib'] / b['device_memory_gib'] if mem else None})
    return out


def markdown(report: dict) -> str:
    """The report as Markdown: one table row per variant (images/s, memory, compile, model
    GFLOPs/img, TFLOP/s, MFU, the twin's images/s and the JAX / PyTorch ratios) and the ratios."""
    num = benchmark_report.format_value
    lines = [f"{report['num_devices']} x {report['device_kind']} ({report['platform']}), jax "
             f"{report['jax_version']}, torch {report.get('torch_version')}; batch {report['batch_size']}, "
             f"img/s = batch / median of {report['steps']} steps after {report['warmup']} warm-up; MFU over "
             f"{num(report.get('peak_tflops'), '.1f')} TFLOP/s (bf16 dense peak)", '',
             '| step | dtype | attention | img/s | memory GiB | compile s (cold) | GFLOPs/img | TFLOP/s | MFU '
             '| torch eager img/s | JAX/eager | torch.compile img/s | JAX/compile |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    for r in report['rows']:
        if r.get('status') != 'ok':
            lines.append(f"| {r['variant']} | {r.get('compute_dtype', '')} | | {r.get('status')} | | | | | | | | | |")
            continue
        fpi = r.get('model_flops_per_image')
        lines.append('| ' + ' | '.join([
            r['variant'], r['compute_dtype'], str(r.get('attention')),
            'OOM' if r.get('out_of_memory') else num(r.get('img_s'), ',.1f'),
            num(r.get('device_memory_gib'), '.2f'), num(r.get('compile_s_cold'), '.1f'),
            num(fpi / 1e9 if fpi else None, '.1f'), num(r.get('achieved_tflops'), '.1f'),
            num(100 * r['mfu'] if r.get('mfu') is not None else None, '.1f', ' %'),
            num(r.get('torch_eager_img_s'), ',.1f'), num(r.get('jax_over_torch_eager'), '.2f', 'x'),
            num(r.get('torch_compile_img_s'), ',.1f'), num(r.get('jax_over_torch_compile'), '.2f', 'x')]) + ' |')
    lines += ['', '| ratio (bfloat16 rows) | images/s | step memory |', '|---|---|---|']
    for q in report['ratios']:
        lines.append(f"| {q['label']} | {num(q['img_s_ratio'], '.2f', 'x')} | {num(q['memory_ratio'], '.2f', 'x')} |")
    return '\n'.join(lines) + '\n'


def _write_json(path: str, obj) -> None:
    files.write_json(path, obj, default=str)   # never a half-written file


def _enable_cache(cache_dir: str) -> None:
    import jax

    jax.config.update('jax_compilation_cache_dir', os.path.join(cache_dir, 'jax'))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


# ----------------------------------------------------------------------------------------
# Phase 1, in worker processes: compile into the cache, count model FLOPs, warm torch.compile.
# ----------------------------------------------------------------------------------------

def compile_one(v: Variant, batch_size: int, cache_dir: str, warm_torch: bool) -> dict:
    """Builds and compiles ``v``'s train step into the persistent cache (cuDNN first when asked,
    XLA's attention when cuDNN refuses) and counts its model FLOPs; with ``warm_torch`` (and a
    twin) runs the ``torch.compile``-d twin's first step instead, filling inductor's cache.
    Returns ``{'attention', 'compile_s', 'lower_s', 'model_flops_per_image'}`` or
    ``{'torch_first_step_s'}``, with ``'error'`` on failure."""
    import jax
    import numpy as np

    from jaxmim import benchmark_steps, mesh as mesh_lib, profiling, rundir, torch_compare
    from jaxmim.config import resolve_data_config

    _enable_cache(cache_dir)
    mesh = mesh_lib.make_mesh(jax.devices())
    if warm_torch:   # the twin's step exactly as the timed phase builds it (weights aside)
        config = variant_config(v, None, batch_size)
        model = rundir.build_model(config)
        twin = torch_compare.torch_twin(model)
        if twin is None:
            return {'error': 'no PyTorch twin'}
        size, chans = int(resolve_data_config(config).image_size), getattr(model, 'in_chans', 3)
        images = np.random.default_rng(0).standard_normal((batch_size, size, size, chans)).astype(np.float32)
        inputs = model.host_inputs(np.random.default_rng(config.seed), batch_size)
        step = torch_compare.TorchStep(twin[0], config, images, np.zeros(batch_size, np.int64), inputs, compile=True,
                                       device=torch_compare.device_for(mesh))
        t = time.perf_counter()
        step()
        return {'torch_first_step_s': time.perf_counter() - t}
    result, tried = {}, [v.attention] + ([None] if v.attention else [])
    for attention in tried:
        try:
            config = variant_config(v, attention, batch_size)
            # built eagerly, as the timed phase builds it: the model's initialisers then come from the
            # persistent cache there too (Swin-B on one CPU: 32 s cold, 8 s from the cache)
            _, trainer, state, _, in_chans, _ = benchmark_steps.build_step('pretrain', config, mesh)
            size = int(resolve_data_config(config).image_size)
            batch = benchmark_steps.synthetic_batch(mesh, batch_size, size, in_chans, 1, seed=config.seed)
            t0 = time.perf_counter()
            lowered = trainer.train_step.lower(state, batch)
            t1 = time.perf_counter()
            lowered.compile()
            t2 = time.perf_counter()
        except Exception as e:  # noqa: BLE001  (cuDNN refusing a shape: fall back, say why)
            result.setdefault('refused', []).append(f'{attention}: {type(e).__name__}: {str(e).splitlines()[0][:300]}')
            continue
        step_flops = profiling.total_flops(profiling.safe_analysis(lowered.cost_analysis))
        fpi, _ = benchmark_steps.model_flops_per_image('pretrain', config, mesh, step_flops)
        result.update(attention=attention or 'xla', compile_s=t2 - t0, lower_s=t1 - t0, model_flops_per_image=fpi)
        return result
    result['error'] = '; '.join(result.pop('refused'))
    return result


def _job_id(v: Variant, torch_job: bool) -> str:
    base = f'{v.spec}|{v.compute_dtype}|{v.attention}' + ''.join(f'|{k}={val}' for k, val in v.overrides + v.env)
    return ('torch|' if torch_job else 'jax|') + base


def _safe(job: str) -> str:
    return ''.join(c if c.isalnum() or c in '._-' else '_' for c in job)


def compile_phase(variants: list[Variant], *, plan_name: str, batch_size: int, cache_dir: str, workers: int,
                  warm_torch: bool, limit_s: float, log) -> dict[str, dict]:
    """Phase 1: one worker process per distinct JAX step (``workers`` at a time) and, with
    ``warm_torch``, one per twin to ``torch.compile`` (one at a time, beside them). Returns
    ``{job id: result of compile_one}``; a job still running after ``limit_s`` seconds is stopped
    and missing from the result (the timed phase then compiles it itself)."""
    os.makedirs(os.path.join(cache_dir, 'phase1'), exist_ok=True)
    queues = {'jax': [], 'torch': []}
    seen = set()
    for v in variants:
        for torch_job in ([False] + ([True] if warm_torch and v.torch else [])):
            job = _job_id(v, torch_job)
            if job not in seen:
                seen.add(job)
                queues['torch' if torch_job else 'jax'].append((job, v))
    slots = {'jax': max(1, workers), 'torch': 1}
    running, results, start = {}, {}, time.time()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')])))
    while (queues['jax'] or queues['torch'] or running) and time.time() - start < limit_s:
        for lane, queue in queues.items():
            while queue and sum(1 for r in running.values() if r[1] == lane) < slots[lane]:
                job, v = queue.pop(0)
                path = os.path.join(cache_dir, 'phase1', _safe(job))
                cmd = [sys.executable, '-m', 'launch.accelerator_bench', f'--worker={v.name}', f'--plan={plan_name}',
                       f'--batch_size={batch_size}', f'--cache_dir={cache_dir}', f'--worker_out={path}.json',
                       f'--worker_torch={lane == "torch"}']
                with open(path + '.log', 'w') as logf:
                    running[job] = (subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=logf, stderr=subprocess.STDOUT),
                                    lane, path, time.time())
        time.sleep(0.2)
        for job, (proc, lane, path, t0) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[job]
            try:
                with open(path + '.json') as f:
                    results[job] = json.load(f)
            except (OSError, ValueError):
                try:
                    with open(path + '.log') as f:
                        tail = ' | '.join(line.strip() for line in f.readlines()[-6:])
                except OSError:
                    tail = ''
                results[job] = {'error': f'worker exited with status {proc.returncode}: {tail[-1500:]}'}
            log(f'[phase 1] {job}: {time.time() - t0:.1f}s {json.dumps(results[job])[:300]}')
    for job, (proc, *_rest) in running.items():
        proc.kill()
        proc.wait()
        log(f'[phase 1] {job}: stopped at the phase limit ({limit_s:.0f}s); the timed phase compiles it')
    return results


# ----------------------------------------------------------------------------------------
# Phase 2, in this process: time every step from the cache.
# ----------------------------------------------------------------------------------------

def timed_phase(variants: list[Variant], phase1: dict[str, dict], *, batch_size: int, steps: int, warmup: int,
                peak: float | None, deadline: float, report: dict, out_dir: str, log,
                torch_compile: bool = True) -> dict:
    """Phase 2: each variant in order through :func:`jaxmim.benchmark.run_benchmark` (the twin's
    steps interleaved for ``v.torch``), with phase 1's model FLOPs and attention; a row per
    variant appended to ``report['rows']`` and written out after each. A variant is skipped when
    fewer than 30 s (JAX alone) or 120 s (with the twin) are left before ``deadline``."""
    json_path = os.path.join(out_dir, 'accelerator_bench.json')
    for v in variants:
        base = {'variant': v.name, 'spec': v.spec, 'compute_dtype': v.compute_dtype, 'with_torch': v.torch,
                'group': v.group, 'overrides': dict(v.overrides), 'env': dict(v.env)}
        left = deadline - time.time()
        p1 = phase1.get(_job_id(v, False), {})
        if left < (120 if v.torch else 30):
            row = dict(base, status=f'skipped: {left:.0f}s left before the deadline')
        elif 'error' in p1:
            row = dict(base, status='failed to compile', error=p1['error'])
        else:
            chosen = (None if p1['attention'] == 'xla' else p1['attention']) if p1 else v.attention
            attempts = [chosen] + ([None] if chosen else [])    # XLA's attention if cuDNN fails at run time
            row, errors = None, []
            counted = {'pretrain': p1['model_flops_per_image']} if p1.get('model_flops_per_image') else None
            with mock.patch.dict(os.environ, dict(v.env)):      # the variant's environment, restored after
                for attention in attempts:
                    try:
                        (got,) = benchmark.run_benchmark(
                            variant_config(v, attention, batch_size), steps=steps, warmup=warmup, kinds=['pretrain'],
                            peak_tflops=peak, compare_torch=v.torch, torch_compile=v.torch and torch_compile,
                            model_flops=counted, log=log)
                    except Exception as e:  # noqa: BLE001  (a failed step is a row; the run goes on)
                        errors.append(f'{attention}: {type(e).__name__}: {str(e).splitlines()[0][:300]}')
                        continue
                    warm = phase1.get(_job_id(v, True), {})
                    row = dict(got, **base, status='ok', attention=attention or 'xla',
                               compile_s_cold=p1.get('compile_s'),
                               attention_refused=p1.get('refused') or errors or None,
                               torch_compile_first_step_s_cold=warm.get('torch_first_step_s'))
                    break
            if row is None:
                row = dict(base, status='failed', error='; '.join(errors))
        report['rows'].append(row)
        report['ratios'] = ratios(report['rows'], report['plan'])
        _write_json(json_path, report)
        with open(os.path.join(out_dir, 'accelerator_bench.md'), 'w') as f:
            f.write(markdown(report))
        log(f"[timed] {v.name}: {row['status']}" + (f", {row['img_s']:.1f} img/s" if row.get('img_s') else ''))
    return report


# ----------------------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------------------

# --steps, --warmup, --batch_size, --peak_tflops and --[no]torch_compile are the benchmark's flags
# (jaxmim.benchmark defines them), with this script's defaults.
FLAGS = flags.FLAGS
for _name, _value in (('steps', 5), ('warmup', 2), ('batch_size', 128)):
    FLAGS.set_default(_name, _value)
_OUT = flags.DEFINE_string('out_dir', None, 'Where accelerator_bench.json / .md go.')
_PLAN = flags.DEFINE_enum('plan', 'accelerator', ['accelerator', 'smoke'], 'Which steps (see plan()).')
_ONLY = flags.DEFINE_list('only', [], 'Measure only these variant names (e.g. mae_vit_b/bf16).')
_GROUPS = flags.DEFINE_list('groups', [], 'Measure only these groups (1-6, see the module docstring).')
_DEADLINE = flags.DEFINE_float('deadline_minutes', 8.5, 'No variant starts after this many minutes.')
_COMPILE_MIN = flags.DEFINE_float('compile_minutes', 3.5, 'Phase 1 stops after this many minutes.')
_WORKERS = flags.DEFINE_integer('compile_workers', max(1, (os.cpu_count() or 1) * 3 // 4),
                                'Parallel compilations in phase 1 (0: no phase 1); default 3/4 of the cores.')
_WARM_TORCH = flags.DEFINE_bool('warm_torch', True, 'Phase 1 also runs each twin\'s torch.compile.')
_CACHE = flags.DEFINE_string('cache_dir', '/tmp/jaxmim_accelerator_bench', 'Compilation caches, phase-1 logs.')
_WORKER = flags.DEFINE_string('worker', None, 'Internal: compile this variant (phase 1 worker).')
_WORKER_OUT = flags.DEFINE_string('worker_out', None, 'Internal: the worker\'s JSON result.')
_WORKER_TORCH = flags.DEFINE_bool('worker_torch', False, 'Internal: the worker warms torch.compile.')


def _environment() -> dict:
    import jax

    devices = jax.devices()
    env = {'device_kind': devices[0].device_kind, 'num_devices': len(devices), 'platform': jax.default_backend(),
           'jax_version': jax.__version__, 'cpu_count': os.cpu_count()}
    try:
        import torch
        env['torch_version'] = torch.__version__
    except ImportError:
        env['torch_version'] = None
    try:
        smi = subprocess.run(['nvidia-smi', '-L'], capture_output=True, text=True, timeout=20)
        env['nvidia_smi'] = smi.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        env['nvidia_smi'] = None
    return env


def main(argv: list[str]) -> None:
    """absl main: phase 1, phase 2, the Markdown table (see the module docstring).

    Exits with status 2 and one ``error:`` line when ``--only`` or ``--groups`` names something not in the plan.

    Raises:
      app.UsageError: unexpected arguments, ``--worker`` not a variant of ``--plan``, or no ``--out_dir``.
    """
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')   # JAX and PyTorch share the device
    start = time.time()
    variants = plan(_PLAN.value)
    if _WORKER.value:
        by_name = {v.name: v for v in variants}
        if _WORKER.value not in by_name:
            raise app.UsageError(f'--worker={_WORKER.value!r} is not a variant of --plan={_PLAN.value}; '
                                 f'the plan has {list(by_name)}')
        v = by_name[_WORKER.value]
        os.environ.update(dict(v.env))
        _write_json(_WORKER_OUT.value, compile_one(v, FLAGS.batch_size, _CACHE.value, _WORKER_TORCH.value))
        return
    if not _OUT.value:
        raise app.UsageError('--out_dir is required')
    unknown = sorted(set(_ONLY.value) - {v.name for v in variants})
    if unknown:
        print(f'error: --only names {unknown}; the plan has {[v.name for v in variants]}', file=sys.stderr)
        sys.exit(2)
    bad_groups = sorted(set(_GROUPS.value) - {str(v.group) for v in variants})
    if bad_groups:
        print(f'error: --groups names {bad_groups}; the plan has groups {sorted({v.group for v in variants})}',
              file=sys.stderr)
        sys.exit(2)
    if _ONLY.value:
        variants = [v for v in variants if v.name in _ONLY.value]
    if _GROUPS.value:
        variants = [v for v in variants if str(v.group) in _GROUPS.value]
    os.makedirs(_OUT.value, exist_ok=True)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    phase1 = {}
    if _WORKERS.value > 0:
        phase1 = compile_phase(variants, plan_name=_PLAN.value, batch_size=FLAGS.batch_size, cache_dir=_CACHE.value,
                               workers=_WORKERS.value, warm_torch=_WARM_TORCH.value and FLAGS.torch_compile,
                               limit_s=_COMPILE_MIN.value * 60, log=log)
    _enable_cache(_CACHE.value)
    env = _environment()
    peak = FLAGS.peak_tflops or model_flops.peak_tflops(env['device_kind'])
    report = dict(env, plan=_PLAN.value, batch_size=FLAGS.batch_size, steps=FLAGS.steps, warmup=FLAGS.warmup,
                  peak_tflops=peak, phase1_s=time.time() - start, rows=[], ratios=[])
    log(f"[timed] {env['num_devices']} x {env['device_kind']}; phase 1 took {report['phase1_s']:.0f}s")
    timed_phase(variants, phase1, batch_size=FLAGS.batch_size, steps=FLAGS.steps, warmup=FLAGS.warmup, peak=peak,
                deadline=start + _DEADLINE.value * 60, report=report, out_dir=_OUT.value, log=log,
                torch_compile=FLAGS.torch_compile)
    report['total_s'] = time.time() - start
    _write_json(os.path.join(_OUT.value, 'accelerator_bench.json'), report)
    table = markdown(report)
    with open(os.path.join(_OUT.value, 'accelerator_bench.md'), 'w') as f:
        f.write(table)
    print(table)
    print(f"{sum(r['status'] == 'ok' for r in report['rows'])} of {len(report['rows'])} steps measured in "
          f"{report['total_s']:.0f}s; wrote {_OUT.value}/accelerator_bench.json and .md")


if __name__ == '__main__':
    app.run(main)
