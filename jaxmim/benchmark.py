r"""Training-speed benchmark: compile time, images/s, XLA FLOPs per image, TFLOP/s and MFU.

Usage::

    python -m jaxmim.benchmark --config=configs/demo/simmim_swin_fmnist.py \
        --config.batch_size=16 --steps=3 --warmup=1 [--peak_tflops=989 --json_out=bench.json]
    # MAE ViT-B (224, mask 0.75) against SimMIM Swin-B (192) in one run:
    python -m jaxmim.benchmark --config=configs/pretrain/mae_vit_base_800ep.py --kinds=pretrain \
        --also=configs/pretrain/simmim_swin_base_img192_window6.py:100ep --batch_size=8

``--config=path[:variant]`` and ``--config.a.b=value`` work as in ``jaxmim.main``; ``--also``
adds further configs (``path[:variant]``, repeatable) measured in the same run with the same
flags. Any registered method and backbone works: the steps are built by the training loop's
own functions. For a pre-training config (``mode='pretrain'``) two steps are measured:

* ``pretrain``: the model built exactly as :func:`jaxmim.train.pretrain` builds it (the MIM
  method's model, with the config's overrides) and its loss;
* ``finetune``: the classifier the pre-training model registered (``classifier=`` of
  :func:`jaxmim.registry.register_model`; each backbone file names its own pair) with
  ``--num_classes`` classes, the config's optimizer and batch
  size, and layer-wise lr decay ``--finetune_layer_decay`` (as a real fine-tuning run).

A fine-tuning config (``mode='finetune'``) measures the ``finetune`` step only (built as
:func:`jaxmim.train.finetune` builds it, without loading pre-trained weights).

Every step is the real jitted train step of :func:`jaxmim.steps.make_trainer` (optimizer,
replicated state, ``data``-sharded batch, donated state), fed one synthetic device-resident
batch of the config's ``image_size`` (standard-normal images, uniform integer labels): no data
pipeline is involved, so the figures are the accelerator's upper bound for a real run.

Measured per step kind:

* ``compile_s``: ``lower`` + ``compile`` of the train step (``lower_s`` alone in the JSON);
* per-step wall time over ``--steps`` timed steps after ``--warmup`` untimed ones, each step
  waited for (``block_until_ready``); ``img/s`` = batch / median step time (the table's
  headline, robust to a busy host) and ``img/s overall`` = steps x batch / total time;
* ``GFLOPs/img``: the step's model FLOPs per image (:func:`model_flops_per_image`, the JSON's
  ``model_flops_per_image``): XLA's count of the lowered train step in its reference form (no
  remat, blocks unrolled, XLA's attention) on one CPU device, so the figure is the same on every
  backend and for every remat / scan / attention setting. They include the backward pass and
  the optimizer update. The JSON also keeps the compiled step's own count
  (``flops_per_image``: ``compiled.cost_analysis()`` of the per-device program over the
  per-device batch; it grows with remat, counts a scanned stage's body once and, on GPU, leaves
  the cuBLAS / cuDNN calls out) and the unpartitioned program's (``lowered.cost_analysis()``);
* ``memory GiB``: the compiled step's device memory from XLA's memory analysis (arguments +
  outputs + temporaries - aliased donations), per device (:func:`jaxmim.profiling.memory_gib`);
* ``achieved TFLOP/s`` = model GFLOPs/img x img/s over all devices, and ``MFU`` = achieved /
  (``--peak_tflops`` per device x devices; by default the bf16 dense peak of a known device kind,
  :data:`jaxmim.model_flops.PEAK_BF16_TFLOPS`: H100 / H200 SXM 989.4, A100 312, TPU v4 275, v5p 459;
  none on a CPU).

``--kinds=inference`` adds the classifier's evaluation forward timed the official way
(50 warm-up then 30 timed passes of one batch, as GroupMixFormer's and Swin's ``throughput``),
next to the training steps.

``--compare_torch`` also times the PyTorch twin of each step's model (:mod:`jaxmim.torch_compare`:
the conversion family in ``convert/`` that describes it, holding the same weights): eager and, unless
``--notorch_compile``, ``torch.compile``-d, each train step (AdamW, ``clip_grad_norm_``) timed
in the same loop as the JAX step, one of each per round; the table adds their images/s and the
JAX / PyTorch ratios. Run it from the repository root (``convert`` is imported from there)::

    python -m jaxmim.benchmark --config=configs/demo/simmim_swin_fmnist.py --kinds=pretrain \
        --config.batch_size=128 --steps=10 --compare_torch

``--profile=DIR`` then profiles each training step (:mod:`jaxmim.profiling`): a JAX trace
under ``DIR/<kind>`` (TensorBoard's profile plugin reads it) and the ``--profile_top`` largest
per-op costs of the JAX step and, with ``--compare_torch``, of the eager PyTorch step.

``--json_out=path`` writes ``{'device_kind', 'num_devices', ..., 'rows': [...]}``.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any, Callable, Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from jaxmim import config as config_lib
from jaxmim import files
from jaxmim import mesh as mesh_lib
from jaxmim import model_flops, ops, profiling, rundir, torch_compare
from jaxmim.benchmark_report import format_table
from jaxmim.benchmark_steps import (build_model_shape, build_step, finetune_config_from_pretrain,
                                    model_flops_per_image, synthetic_batch)
from jaxmim.profiling import counted, host_counter_means

# The file's ConfigDict is locked except model.overrides, which takes new keys (constructor arguments
# checked by create_model), e.g. --config.model.overrides.drop_path_rate=0.2.
_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file, path[:variant].', lock_config=False,
                                          accept_new_attributes=True)
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed train steps per step kind.')
_WARMUP = flags.DEFINE_integer('warmup', 3, 'Untimed train steps after compilation.')
_BATCH = flags.DEFINE_integer('batch_size', None, 'Global batch size (default: config.batch_size).')
_NUM_CLASSES = flags.DEFINE_integer('num_classes', 1000,
                                    'Classes of the fine-tuning classifier built for a pre-training config.')
_FT_LAYER_DECAY = flags.DEFINE_float('finetune_layer_decay', 0.9,
                                     'Layer decay of the fine-tuning step built for a pre-training config.')
_PEAK = flags.DEFINE_float('peak_tflops', None, 'Peak TFLOP/s of ONE device, for MFU (default: the bf16 dense '
                           'peak of a known device kind, jaxmim.model_flops.PEAK_BF16_TFLOPS; none on a CPU).')
_KINDS = flags.DEFINE_list('kinds', None, 'Step kinds to run (pretrain, finetune, inference); default: the '
                          'training steps the config has (inference: 50 + 30 forward passes, opt-in).')
_NUM_DEVICES = flags.DEFINE_integer('num_devices', 0, 'Use the first N devices only (0: all).')
_JSON = flags.DEFINE_string('json_out', None, 'Write the rows (and device info) as JSON to this path.')
_ALSO = flags.DEFINE_multi_string('also', [], 'Further configs path[:variant] measured in the same run.')
_DTYPES = flags.DEFINE_list('compute_dtypes', [], 'Each config at each compute_dtype (float32,bfloat16); default: its own.')
_DISTRIBUTED = flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize() first (multi-host).')
_COMPARE_TORCH = flags.DEFINE_bool('compare_torch', False,
                                   'Also time the PyTorch twin of each model (convert/), interleaved with JAX.')
_TORCH_COMPILE = flags.DEFINE_bool('torch_compile', True, 'With --compare_torch: also time torch.compile(twin).')
_PROFILE = flags.DEFINE_string('profile', None, 'Trace each timed step into this directory; per-op cost tables.')
_PROFILE_TOP = flags.DEFINE_integer('profile_top', 10, 'With --profile: rows of each cost table printed.')

KINDS = ('pretrain', 'finetune')
INFERENCE = 'inference'
"""Opt-in kind (``--kinds=inference``): the classifier's evaluation forward timed the way the
GroupMixFormer / Swin repositories measure throughput (``throughput()`` in their ``main.py`` /
``train.py``): ``INFERENCE_WARMUP`` untimed then ``INFERENCE_STEPS`` timed forward passes of one
fixed batch, images/s = passes x batch / total time."""
INFERENCE_WARMUP, INFERENCE_STEPS = 50, 30


def _wait(out):
    """Blocks until the step output ``(state, metrics)`` is computed; returns ``out``."""
    import jax

    state, metrics = out
    jax.block_until_ready((state['step'], metrics['loss']))
    return out


# ----------------------------------------------------------------------------------------
# Measuring.
# ----------------------------------------------------------------------------------------

def benchmark_step(kind: str, config, mesh, *, steps: int, warmup: int, peak_tflops: float | None = None,
                   compare_torch: bool = False, torch_compile: bool = True, profile_dir: str | None = None,
                   profile_steps: int = 5, profile_top: int = 10, model_flops: float | None = None,
                   log: Callable[[str], None] = lambda s: None) -> dict:
    """Compiles and times one step kind; returns its row (see :func:`run_benchmark`).

    With ``profile_dir`` the timed loop is followed by ``profile_steps`` profiled JAX steps
    (trace under ``profile_dir/<kind>``) and as many profiled eager PyTorch steps when a twin is
    timed (:mod:`jaxmim.profiling`); the row gains ``profile_jax`` / ``profile_torch`` (per-op
    cost rows, largest first) and the ``profile_top`` largest of each are logged.

    With ``compare_torch`` the PyTorch twin of the same model and weights (eager, and
    ``torch.compile`` when ``torch_compile``) is timed in the same loop: each timed round runs
    one JAX step, one eager step, one compiled step, so a busy host slows all of them alike.

    ``model_flops`` (FLOPs per image) is the MFU numerator when the caller counted it already;
    otherwise :func:`model_flops_per_image` counts it."""
    import jax
    import numpy as np


    name, trainer, state, num_classes, in_chans, twin = build_step(kind, config, mesh, with_twin=compare_torch)
    num_params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(state['params'])))
    n_dev = mesh.devices.size
    batch_size = int(config.batch_size)
    image_size = int(config_lib.resolve_data_config(config).image_size)
    batch = synthetic_batch(mesh, batch_size, image_size, in_chans, num_classes, seed=config.seed)

    log(f'[{kind}] {name}: {num_params / 1e6:.2f}M params; compiling the train step ...')
    t0 = time.perf_counter()
    lowered = trainer.train_step.lower(state, batch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    step_flops_device = profiling.total_flops(profiling.safe_analysis(compiled.cost_analysis))
    step_flops_global = profiling.total_flops(profiling.safe_analysis(lowered.cost_analysis))
    per_device_batch = batch_size // n_dev
    flops_per_image = step_flops_device / per_device_batch if step_flops_device else None
    if model_flops is not None:
        model_fpi, model_src = float(model_flops), 'given'
    else:
        model_fpi, model_src = model_flops_per_image(kind, config, mesh, step_flops_global)

    torch_steps, torch_first, torch_memory = {}, {}, {}
    if twin is not None:
        host = jax.device_get(batch)
        inputs = {}
        if kind == 'pretrain':
            model = build_model_shape(config)
            inputs = model.host_inputs(np.random.default_rng(config.seed), batch_size)
        variants = ['eager'] + (['compile'] if torch_compile else [])
        for v in variants:
            try:
                step = torch_compare.TorchStep(twin[0], config, np.asarray(host['image']),
                                               np.asarray(host['label']), inputs, compile=v == 'compile',
                                               device=torch_compare.device_for(mesh))
                t = time.perf_counter()
                step()   # first call: torch.compile compiles here
                torch_first[v] = time.perf_counter() - t
                torch_memory[v] = step.peak_memory_gib()
                log(f'[{kind}] torch {v} ({twin[1]}): first step {torch_first[v]:.1f}s')
                torch_steps[v] = step
            except Exception as e:  # noqa: BLE001  (torch.compile is optional: report, go on)
                log(f'[{kind}] torch {v}: unavailable ({type(e).__name__}: {str(e).splitlines()[0][:200]})')
    torch_times = {v: [] for v in torch_steps}
    host, torch_host = [], {v: [] for v in torch_steps}

    log(f'[{kind}] compiled in {t2 - t0:.1f}s; {warmup} warm-up + {steps} timed steps ...')
    times, out, oom = [], None, None
    try:
        for _ in range(warmup):
            out = compiled(state, batch)
            _wait(out)
            state = out[0]
            for step in torch_steps.values():
                step()
        for _ in range(steps):
            t = time.perf_counter()
            out = counted(lambda: _wait(compiled(state, batch)), host)
            times.append(time.perf_counter() - t)
            state = out[0]
            for v, step in torch_steps.items():
                t = time.perf_counter()
                counted(step, torch_host[v])
                torch_times[v].append(time.perf_counter() - t)
    except jax.errors.JaxRuntimeError as e:
        if 'RESOURCE_EXHAUSTED' not in str(e):
            raise
        oom = str(e).splitlines()[0][:200]
        times, torch_times, profile_dir = [], {}, None
        log(f'[{kind}] {name}: out of memory at batch {batch_size} ({oom}); the compiled step needs '
            f'{profiling.memory_gib(compiled) or float("nan"):.2f} GiB; the row keeps FLOPs and memory, no timings')
    loss = float(out[1]['loss']) if times else None
    profile = {}
    if profile_dir:
        import os

        profile['profile_jax'], state = profiling.profile_jax_step(
            compiled, state, batch, steps=profile_steps, trace_dir=os.path.join(profile_dir, kind))
        log(profiling.format_costs(f'[{kind}] JAX {name}: the {profile_top} largest costs (thread time per step)',
                                   profile['profile_jax'], profile_top))
        if 'eager' in torch_steps:
            profile['profile_torch'] = profiling.profile_torch_step(torch_steps['eager'], steps=profile_steps)
            log(profiling.format_costs(f'[{kind}] PyTorch eager {twin[1]}: the {profile_top} largest costs '
                                       '(self CPU time per step)', profile['profile_torch'], profile_top))
    del state, out

    median = statistics.median(times) if times else None
    img_s = batch_size / median if times else None
    img_s_overall = steps * batch_size / sum(times) if times else None
    achieved = model_fpi * img_s if model_fpi and img_s else None
    row = {
        'kind': kind, 'model': name, 'image_size': image_size, 'batch_size': batch_size,
        'per_device_batch': per_device_batch, 'devices': n_dev,
        'device_kind': mesh.devices.flat[0].device_kind, 'num_params': num_params,
        'lower_s': t1 - t0, 'compile_s': t2 - t0, 'steps': steps, 'warmup': warmup,
        'step_time_median_s': median, 'step_time_mean_s': statistics.fmean(times) if times else None,
        'step_time_min_s': min(times, default=None), 'step_time_max_s': max(times, default=None),
        'img_s': img_s, 'img_s_overall': img_s_overall,
        'step_flops_per_device': step_flops_device,
        'flops_per_image': flops_per_image,
        'flops_per_image_unpartitioned': step_flops_global / batch_size if step_flops_global else None,
        'model_flops_per_image': model_fpi, 'model_flops_source': model_src,
        'achieved_tflops': achieved / 1e12 if achieved else None,
        'achieved_tflops_per_device': achieved / 1e12 / n_dev if achieved else None,
        'peak_tflops_per_device': peak_tflops,
        'mfu': achieved / (peak_tflops * 1e12 * n_dev) if achieved and peak_tflops else None,
        'device_memory_gib': profiling.memory_gib(compiled),
        'host_per_step': host_counter_means(host) if times else None,
        'final_loss': loss, 'out_of_memory': oom,
        **profile,
    }
    if compare_torch:
        row['torch_source'] = twin[1] if twin else None
        for v in ('eager', 'compile'):
            ts = torch_times.get(v)
            row[f'torch_{v}_img_s'] = batch_size / statistics.median(ts) if ts else None
            row[f'jax_over_torch_{v}'] = img_s / row[f'torch_{v}_img_s'] if ts else None
            row[f'torch_{v}_host_per_step'] = host_counter_means(torch_host.get(v, [])) if ts else None
            row[f'torch_{v}_first_step_s'] = torch_first.get(v)
            row[f'torch_{v}_memory_gib'] = torch_memory.get(v)
    if times:
        log(f'[{kind}] {img_s:.1f} img/s (median step {median * 1e3:.1f} ms'
            f'{profiling.format_host(row["host_per_step"])})'
            + ''.join(f'; torch {v} {batch_size / statistics.median(ts):.1f} img/s'
                      f'{profiling.format_host(row[f"torch_{v}_host_per_step"], " (", ")")}'
                      for v, ts in torch_times.items()))
    return row


def benchmark_inference(config, mesh, *, warmup: int = INFERENCE_WARMUP, steps: int = INFERENCE_STEPS,
                        peak_tflops: float | None = None, log: Callable[[str], None] = lambda s: None) -> dict:
    """Throughput of the classifier's evaluation forward (``train=False``: BatchNorm on its
    running statistics), measured as the official repositories do: ``warmup`` untimed passes,
    then ``steps`` passes of the same batch dispatched back to back and waited for once at the
    end; ``img/s = steps * batch / elapsed``. The row has the keys of :func:`benchmark_step`
    (``kind='inference'``; the per-step statistics are the mean over the timed passes)."""
    import jax
    import numpy as np


    model = rundir.build_model(config)
    graphdef, params, model_state = rundir.split_variables(model)
    num_params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
    rep = mesh_lib.replicated(mesh)
    variables = jax.device_put({'params': params, 'model_state': model_state}, rep)
    batch_size, n_dev = int(config.batch_size), mesh.devices.size
    image_size = int(config_lib.resolve_data_config(config).image_size)
    images = synthetic_batch(mesh, batch_size, image_size, getattr(model, 'in_chans', 3), 1, seed=config.seed)['image']

    def forward(v, x):
        return rundir.merge_variables(graphdef, v['params'], v['model_state'])(x, train=False)

    log(f'[inference] {config.model.name}: {num_params / 1e6:.2f}M params; compiling the forward ...')
    t0 = time.perf_counter()
    forward = ops.traced_on(ops.mesh_platform(mesh), forward)   # the ops' forms of the mesh's platform
    lowered = jax.jit(forward, in_shardings=(rep, mesh_lib.batch_sharding(mesh))).lower(variables, images)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    for _ in range(warmup):
        out = compiled(variables, images)
    jax.block_until_ready(out)
    t = time.perf_counter()
    for _ in range(steps):
        out = compiled(variables, images)
    jax.block_until_ready(out)
    elapsed = time.perf_counter() - t
    flops = profiling.total_flops(profiling.safe_analysis(compiled.cost_analysis))
    fpi = flops / (batch_size // n_dev) if flops else None
    img_s = steps * batch_size / elapsed
    achieved = fpi * img_s if fpi else None
    log(f'[inference] {img_s:.1f} img/s ({warmup} warm-up + {steps} timed forward passes)')
    return {
        'kind': INFERENCE, 'model': config.model.name, 'image_size': image_size, 'batch_size': batch_size,
        'per_device_batch': batch_size // n_dev, 'devices': n_dev, 'device_kind': mesh.devices.flat[0].device_kind,
        'num_params': num_params, 'lower_s': t1 - t0, 'compile_s': t2 - t0, 'steps': steps, 'warmup': warmup,
        'step_time_median_s': elapsed / steps, 'step_time_mean_s': elapsed / steps,
        'step_time_min_s': None, 'step_time_max_s': None, 'img_s': img_s, 'img_s_overall': img_s,
        'step_flops_per_device': flops, 'flops_per_image': fpi,
        'flops_per_image_unpartitioned': None,
        'achieved_tflops': achieved / 1e12 if achieved else None,
        'achieved_tflops_per_device': achieved / 1e12 / n_dev if achieved else None,
        'peak_tflops_per_device': peak_tflops,
        'mfu': achieved / (peak_tflops * 1e12 * n_dev) if achieved and peak_tflops else None,
        'device_memory_gib': profiling.memory_gib(compiled), 'final_loss': None,
    }


def run_benchmark(config, *, steps: int = 20, warmup: int = 3, batch_size: int | None = None,
                  num_classes: int = 1000, finetune_layer_decay: float = 0.9,
                  peak_tflops: float | None = None, kinds: Sequence[str] | None = None,
                  devices: Sequence[Any] | None = None, compare_torch: bool = False,
                  torch_compile: bool = True, profile_dir: str | None = None, profile_top: int = 10,
                  model_flops: dict[str, float] | None = None,
                  log: Callable[[str], None] = lambda s: None) -> list[dict]:
    """Benchmarks the train step(s) of ``config`` on synthetic device-resident batches.

    Args:
      config: a pre-training or fine-tuning config (``jaxmim.config``); not modified.
      steps: timed steps per step kind (>= 1).
      warmup: untimed steps after compilation (>= 0).
      batch_size: global batch; default ``config.batch_size``.
      num_classes: classes of the fine-tuning classifier built for a pre-training config.
      finetune_layer_decay: layer decay of that fine-tuning step.
      peak_tflops: peak TFLOP/s of one device, for MFU.
      kinds: subset of ``('pretrain', 'finetune', 'inference')``; default the training steps the
        config's mode allows (``'inference'``, :func:`benchmark_inference`, is opt-in).
      devices: the devices of the ``data`` mesh; default all.
      compare_torch: also time the PyTorch twin (``convert/``) of each step's model, eager and
        (``torch_compile``) compiled, interleaved with the JAX steps; adds ``torch_eager_img_s``,
        ``torch_compile_img_s``, ``jax_over_torch_eager``, ``jax_over_torch_compile`` (None where
        unavailable), ``torch_source`` and ``torch_eager_host_per_step`` /
        ``torch_compile_host_per_step`` (as ``host_per_step``, for the twin's steps).
      profile_dir: profile each training step kind after timing it (JAX trace under
        ``profile_dir/<kind>``; the eager twin too with ``compare_torch``), see
        :func:`benchmark_step`; ``profile_top`` rows of each side are logged.
      model_flops: ``{kind: model FLOPs per image}`` counted already (e.g. by an earlier process
        of the same config); the kinds it lacks are counted (:func:`model_flops_per_image`).
      log: progress callback (one line per call).

    Returns:
      One dict per step kind with, among others, ``kind``, ``model``, ``image_size``,
      ``batch_size``, ``devices``, ``device_kind``, ``compile_s``, ``img_s`` (batch / median
      step time), ``img_s_overall``, ``model_flops_per_image`` (the MFU numerator) and
      ``flops_per_image`` (the compiled step's count; each None when XLA reports no FLOPs),
      ``achieved_tflops``, ``mfu``, ``device_memory_gib``, ``host_per_step`` (the timed steps'
      mean host page faults and kernel / user CPU seconds, :func:`jaxmim.profiling.host_counter_means`; None
      without timings) and ``out_of_memory`` (None, or the
      device's message when the compiled step did not fit: that row keeps its FLOPs and the
      compiled memory, its timings are None, and the run goes on with the next config).

    Raises:
      ValueError: a bad config, a batch not divisible by the device count, an unknown kind.
    """
    import jax


    config_lib.check_config(config)
    if steps < 1 or warmup < 0:
        raise ValueError(f'need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}')
    config = config.copy_and_resolve_references()
    if batch_size is not None:
        config.batch_size = int(batch_size)
    devices = list(devices) if devices is not None else jax.devices()
    n_dev = len(devices)
    if config.batch_size < 1 or config.batch_size % n_dev:
        raise ValueError(f'batch_size {config.batch_size} must be a positive multiple of the device count '
                         f'{n_dev} (the batch is split evenly over the data axis)')
    default = KINDS if config.mode == 'pretrain' else ('finetune',)
    allowed = default + (INFERENCE,)
    kinds = tuple(kinds) if kinds else default
    bad = [k for k in kinds if k not in allowed]
    if bad:
        raise ValueError(f'step kinds {bad} not available for a {config.mode!r} config; choose from {list(allowed)}')
    mesh = mesh_lib.make_mesh(devices)
    rows = []
    for kind in kinds:
        if kind in ('finetune', INFERENCE) and config.mode == 'pretrain':
            cfg = finetune_config_from_pretrain(config, num_classes, finetune_layer_decay)
        else:
            cfg = config
        if kind == INFERENCE:
            rows.append(benchmark_inference(cfg, mesh, peak_tflops=peak_tflops, log=log))
            continue
        rows.append(benchmark_step(kind, cfg, mesh, steps=steps, warmup=warmup, peak_tflops=peak_tflops,
                                   compare_torch=compare_torch, torch_compile=torch_compile,
                                   profile_dir=profile_dir, profile_top=profile_top,
                                   model_flops=(model_flops or {}).get(kind), log=log))
    return rows


def _parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with one clear error line instead of a traceback (an unknown
    ``--config.x`` field surfaces from ml_collections as an AttributeError/KeyError)."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        cause = e.__cause__ or e.__context__ if isinstance(e, flags.Error) else e
        text = str(cause if cause is not None else e)
        text = text.replace("\\'", "'").replace('\\n', ' ').replace('\n', ' ').strip()
        if len(text) > 1 and text[0] == text[-1] and text[0] in '\'"':
            text = text[1:-1]
        print(f'error: {text}', file=sys.stderr)
        sys.exit(2)


def main(argv: list[str]) -> None:
    """absl main: benchmarks the config's steps, prints the table, optionally writes JSON.

    Raises:
      app.UsageError: unexpected positional arguments, or ``--config`` is missing.
    """
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    if _CONFIG.value is None:
        raise app.UsageError('--config is required')
    from jaxmim import host
    malloc = host.tune_malloc_or_exit()   # JAXMIM_MALLOC=tuned, before JAX's first computation
    import jax

    if not flags.FLAGS['verbosity'].present:
        logging.set_verbosity(logging.WARNING)
    if _DISTRIBUTED.value:
        jax.distributed.initialize()
    devices = jax.devices()
    if _NUM_DEVICES.value:
        if not 0 < _NUM_DEVICES.value <= len(devices):
            print(f'error: --num_devices={_NUM_DEVICES.value} but {len(devices)} devices exist', file=sys.stderr)
            sys.exit(2)
        devices = devices[:_NUM_DEVICES.value]
    peak = _PEAK.value or model_flops.peak_tflops(devices[0].device_kind)
    is_main = jax.process_index() == 0
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if is_main else (lambda s: None)
    log(f'devices: {len(devices)} x {devices[0].device_kind} ({jax.default_backend()}), '
        f'{jax.process_count()} process(es); jax {jax.__version__}; host malloc: '
        f'{"tuned (jaxmim.host: one arena, no mmap, no trim)" if malloc else "default"}')
    try:
        from jaxmim.config import load_config_file, with_compute_dtypes
        specs = [config_flags.get_config_filename(flags.FLAGS['config'])] + list(_ALSO.value)
        configs = [_CONFIG.value] + [load_config_file(spec) for spec in _ALSO.value]
        specs, configs = with_compute_dtypes(specs, configs, _DTYPES.value, '--compute_dtypes') if _DTYPES.value \
            else (specs, configs)
        rows = []
        for spec, config in zip(specs, configs):
            new = run_benchmark(config, steps=_STEPS.value, warmup=_WARMUP.value, batch_size=_BATCH.value,
                                num_classes=_NUM_CLASSES.value, finetune_layer_decay=_FT_LAYER_DECAY.value,
                                peak_tflops=peak, kinds=_KINDS.value, devices=devices,
                                compare_torch=_COMPARE_TORCH.value, torch_compile=_TORCH_COMPILE.value,
                                profile_dir=_PROFILE.value, profile_top=_PROFILE_TOP.value, log=log)
            rows += [dict(r, config=spec) for r in new]
    except (ValueError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
    if not is_main:
        return
    print(f'\n{len(devices)} x {devices[0].device_kind}; img/s = batch / median step time over '
          f'{_STEPS.value} steps ({_WARMUP.value} warm-up); TFLOP/s over all devices from XLA cost analysis')
    print(format_table(rows))
    if _JSON.value:
        report = {'device_kind': devices[0].device_kind, 'num_devices': len(devices),
                  'platform': jax.default_backend(), 'process_count': jax.process_count(),
                  'jax_version': jax.__version__, 'host_malloc': malloc, 'config': _CONFIG.value.to_dict(),
                  'steps': _STEPS.value, 'warmup': _WARMUP.value, 'rows': rows}
        files.write_json(_JSON.value, report, default=str)
        print(f'wrote {_JSON.value}')


def run() -> None:
    """Console entry: ``python -m jaxmim.benchmark``."""
    app.run(main, flags_parser=_parse_flags)


if __name__ == '__main__':
    run()
