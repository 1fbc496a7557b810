"""The pre-training and fine-tuning loops.

Both loops share one shape (big_vision / flax-examples style): build the mesh, the model and
the optimizer; restore the latest checkpoint if one exists; run a jitted step over global
batches sharded on the mesh's ``data`` axis; log, checkpoint and evaluate every N steps. The
step is compiled once per run (static shapes: batches have a fixed size, masking inputs have
fixed shapes whether drawn inside the step or carried by the batch).

The loops know no backbone and no method: they call the model's hooks
(:class:`jaxmim.registry.Backbone`: weight-decay patterns, layer ids, pre-trained adaptation)
and the method protocol of :mod:`jaxmim.methods` (masking inputs, loss).

State is a plain pytree ``{'params', 'model_state', 'ema' (when ``ema_decay > 0``),
'opt_state', 'step', 'guard'}`` (``guard``: the on-device non-finite step counter of
:mod:`jaxmim.resilience`): ``params`` holds the trained ``nnx.Param`` variables, ``model_state``
every other variable of the model (BatchNorm statistics updated by the forward in training,
fixed buffers such as MAE's sin-cos tables), ``ema`` an exponential moving average of both. The
model structure (NNX graphdef) stays outside it, so the step is a pure function
``(state, batch) -> (state, metrics)``. Randomness for step t is ``fold_in(PRNGKey(seed), t)``,
so a resumed run reproduces the uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxmim import checkpoint as ckpt_lib
from jaxmim import config as config_lib
from jaxmim import optim
from jaxmim import resilience
from jaxmim import tree_util
from jaxmim.methods import create_mim_model
from jaxmim.registry import create_model, match_any

PyTree = Any
# ----------------------------------------------------------------------------------------
# Mesh and shardings.
# ----------------------------------------------------------------------------------------

def make_mesh(devices=None) -> jax.sharding.Mesh:
    """A 1-D mesh whose ``data`` axis spans all devices (of every process), axis type Auto."""
    devices = devices if devices is not None else jax.devices()
    return jax.make_mesh((len(devices),), ('data',), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=devices)


CPU_COMPILER_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_DOT'}
"""XLA options of the jitted steps on a CPU mesh: YNNPACK fuses matrix products only, and XLA's
own loop fusions compile the element-wise and reduction work. XLA's default in jax 0.10 also
routes element-wise and reduction fusions through YNNPACK, which on the 2-core reference
machine makes the demo Swin's SimMIM step 1.3x slower (401 against 523 images/s, batch 128;
``docs/performance.md``). Numbers are unchanged up to float rounding. An explicit
``--xla_cpu_experimental_ynn_fusion_type`` in ``XLA_FLAGS`` takes precedence."""


def step_compiler_options(mesh) -> dict[str, str] | None:
    """The ``compiler_options`` of the jitted train / eval steps on ``mesh``:
    :data:`CPU_COMPILER_OPTIONS` on CPU (unless ``XLA_FLAGS`` sets the option itself), None on
    accelerators."""
    if mesh.devices.flat[0].platform != 'cpu':
        return None
    if any(k in os.environ.get('XLA_FLAGS', '') for k in CPU_COMPILER_OPTIONS):
        return None
    return dict(CPU_COMPILER_OPTIONS)


def batch_sharding(mesh) -> NamedSharding:
    """Batch arrays are split on their leading axis over ``data``."""
    return NamedSharding(mesh, P('data'))


def replicated(mesh) -> NamedSharding:
    """Parameters and optimizer state are replicated (pure data parallelism)."""
    return NamedSharding(mesh, P())


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Assembles the per-process NumPy batch into global arrays sharded on ``data``."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


# ----------------------------------------------------------------------------------------
# Models and their variables.
# ----------------------------------------------------------------------------------------

def build_model(config: ml_collections.ConfigDict) -> nnx.Module:
    """The model a run trains: the MIM method's pre-training model (``mode='pretrain'``) or the
    registered classifier (``mode='finetune'``), with ``config.model.overrides`` and ``config.seed``.

    Raises:
      KeyError: unknown model or method. TypeError: an unknown model override.
      ValueError: a method key the method does not accept.
    """
    overrides = config.model.overrides.to_dict() if hasattr(config.model.overrides, 'to_dict') \
        else dict(config.model.overrides)
    if config.mode == 'pretrain':
        block = config.method.to_dict() if hasattr(config.method, 'to_dict') else dict(config.method)
        return create_mim_model(block, config.model.name, overrides=overrides, seed=config.seed)
    return create_model(config.model.name, seed=config.seed, **overrides)


def split_variables(model: nnx.Module) -> tuple[Any, dict, dict]:
    """``(graphdef, params, model_state)``: the structure, the trained ``nnx.Param`` values and
    every other variable (BatchNorm statistics, fixed buffers), both as nested pure dicts."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(rest)


def merge_variables(graphdef, params: PyTree, model_state: PyTree) -> nnx.Module:
    """Inverse of :func:`split_variables` (works on traced values inside ``jit``)."""
    return nnx.merge(graphdef, params, model_state)


def _nonempty(state: dict) -> dict:
    """Orbax items of a state: empty collections (a model without BatchNorm or buffers) are not saved."""
    return {k: v for k, v in state.items() if not (isinstance(v, dict) and not v)}


# ----------------------------------------------------------------------------------------
# Train state and step.
# ----------------------------------------------------------------------------------------

@dataclasses.dataclass
class Trainer:
    """Everything one run needs besides data: model structure, optimizer, jitted step.

    Attributes:
      graphdef: the NNX graph definition (static structure) of the model.
      tx: the optax optimizer.
      lr_fn: step -> learning rate (for logging; scale-1 group).
      mesh: the device mesh.
      train_step: jitted ``(state, batch) -> (state, metrics)``.
      state_sharding: sharding pytree of the state.
      ema_decay: decay of the weight EMA (0: none).
    """

    graphdef: Any
    tx: optax.GradientTransformation
    lr_fn: Callable[[Any], jax.Array]
    mesh: jax.sharding.Mesh
    train_step: Callable
    state_sharding: PyTree
    ema_decay: float = 0.0


def make_trainer(model: nnx.Module, loss_fn: Callable, config: ml_collections.ConfigDict,
                 mesh, batch_transform: Callable | None = None) -> tuple[Trainer, PyTree]:
    """Builds the optimizer, the initial state and the jitted train step.

    The optimizer takes the model's hooks: ``no_weight_decay()`` patterns, and, when
    ``config.optim.layer_decay != 1``, ``layer_id`` / ``num_layer_ids``.

    Args:
      model: the NNX model (parameters initialised).
      loss_fn: ``(model, batch, rng) -> (loss, metrics dict)``; the model it receives is
        merged from the state, and any non-parameter variable the forward updates (BatchNorm
        statistics) is carried to the next state.
      config: the run config (uses ``optim``, ``batch_size``, ``total_steps``, ``seed``,
        ``ema_decay``, ``accum_steps``: see :func:`accumulate_gradients`).
      mesh: the device mesh.
      batch_transform: optional ``(batch, key) -> batch`` run on device in the step over the
        whole global batch before it is split into micro-batches (fine-tuning: mixup / cutmix
        into soft targets, :mod:`jaxmim.mixup`); its key is ``fold_in(step key, 0x6d6978)``.

    Returns:
      ``(trainer, state)`` with the state placed on the mesh.

    Raises:
      ValueError: optimizer config errors (named field).
    """
    graphdef, params, model_state = split_variables(model)
    ocfg = optim.scaled_optim_config(config.optim.to_dict(), config.batch_size)
    layer_kw = {}
    if float(ocfg.get('layer_decay', 1.0)) != 1.0:
        try:
            layer_kw = dict(layer_id_fn=model.layer_id, num_layer_ids=model.num_layer_ids)
        except NotImplementedError as e:   # the Backbone default: no layer ids
            raise ValueError(f'config.optim.layer_decay={ocfg["layer_decay"]}: {e}') from e
    tx, lr_fn = optim.build_optimizer(ocfg, params, config.total_steps,
                                      no_weight_decay=model.no_weight_decay(), **layer_kw)
    ema_decay = float(config.get('ema_decay', 0.0))
    accum_steps = int(config.get('accum_steps', 1))
    compute_dtype = jnp.dtype(config.get('compute_dtype', 'float32'))
    nonfinite_mode = config.get('nonfinite', 'stop')
    state = {'params': params, 'model_state': model_state, 'opt_state': tx.init(params),
             'step': jnp.zeros((), jnp.int32), 'guard': resilience.guard_init()}
    if ema_decay > 0:
        state['ema'] = jax.tree.map(lambda x: jnp.array(x, copy=True),
                                    {'params': params, 'model_state': model_state})
    rep = replicated(mesh)
    state_sharding = jax.tree.map(lambda _: rep, state)
    state = jax.device_put(state, state_sharding)
    base_key = jax.random.key(config.seed)

    def step_fn(state, batch):
        rng = jax.random.fold_in(base_key, state['step'])

        if batch_transform is not None:   # mixup / cutmix over the whole batch, before any split
            batch = batch_transform(batch, jax.random.fold_in(rng, 0x6d6978))
        (loss, (metrics, model_state)), grads = accumulate_gradients(
            graphdef, loss_fn, state['params'], state['model_state'], batch, rng, accum_steps,
            compute_dtype=compute_dtype)
        updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
        params = optax.apply_updates(state['params'], updates)
        new = {'params': params, 'model_state': model_state, 'opt_state': opt_state, 'step': state['step'] + 1}
        if ema_decay > 0:
            # Polyak averaging of every variable: ema <- d * ema + (1 - d) * value (timm ModelEmaV2).
            new['ema'] = optax.incremental_update({'params': params, 'model_state': model_state},
                                                  state['ema'], step_size=1.0 - ema_decay)
        metrics = dict(metrics, loss=loss, grad_norm=optim.global_norm(grads), lr=lr_fn(state['step']))
        # Non-finite loss / gradient norm: counted on device; skipped with config.nonfinite='skip'.
        return resilience.guard_step(new, state, metrics, nonfinite_mode)

    train_step = jax.jit(step_fn, in_shardings=(state_sharding, batch_sharding(mesh)),
                         out_shardings=(state_sharding, rep), donate_argnums=(0,),
                         compiler_options=step_compiler_options(mesh))
    return Trainer(graphdef, tx, lr_fn, mesh, train_step, state_sharding, ema_decay), state


def cast_floating(tree: PyTree, dtype) -> PyTree:
    """``tree`` with every floating-point array cast to ``dtype`` (integers, booleans and keys
    untouched)."""
    def cast(x):
        return x.astype(dtype) if hasattr(x, 'dtype') and jnp.issubdtype(x.dtype, jnp.floating) else x
    return jax.tree.map(cast, tree)


def accumulate_gradients(graphdef, loss_fn: Callable, params: PyTree, model_state: PyTree, batch: dict,
                         rng: jax.Array, accum_steps: int = 1, *, compute_dtype=jnp.float32):
    """``((loss, (metrics, model_state)), grads)`` of ``loss_fn`` on ``batch``, over
    ``accum_steps`` micro-batches.

    ``accum_steps == 1``: one ``jax.value_and_grad`` with key ``rng`` (no change of behaviour).
    Otherwise every batch array ``(B, ...)`` is split into ``accum_steps`` micro-batches of
    ``B / accum_steps`` (micro-batch ``k`` holds examples ``k, k + a, k + 2a, ...``, so each stays
    spread evenly over the devices of the ``data`` axis), a ``lax.scan`` runs them in turn
    with key ``fold_in(rng, k)`` (carrying BatchNorm statistics from one to the next) and the
    losses, metrics and gradients are averaged. For a mean-reduced loss the gradient is the big
    batch's up to float rounding (dropout / drop-path keys and BatchNorm batch statistics differ
    per micro-batch), and the optimizer, with its global-norm clipping, runs ONCE on it; the
    step counter, lr schedule and checkpoints count optimizer updates.

    Why not ``optax.MultiSteps``: it would make every micro-batch a step of the loop (the step
    counter, the data position, the EMA and the logged lr would count micro-batches, and the EMA
    would need a guard), and a second jitted branch for the update; the scan keeps one step =
    one update and memory of one micro-batch's activations.

    Mixed precision (``compute_dtype=bfloat16``, ``config.compute_dtype``): the loss function
    sees a model holding bf16 copies of the float32 ``params`` and bf16 images (masking inputs and
    soft targets keep their dtype); the loss is returned in float32, and the gradient flows back through the
    casts, so the optimizer gets float32 gradients and updates the float32 master weights.
    Non-parameter state (BatchNorm statistics, fixed tables) stays float32.

    Raises:
      ValueError: ``B`` not a multiple of ``accum_steps``.
    """
    low = jnp.dtype(compute_dtype) != jnp.float32

    def objective(p, ms, b, key):
        if low:
            p = cast_floating(p, compute_dtype)
            b = {**b, 'image': b['image'].astype(compute_dtype)}   # masks, noise and targets keep their dtype
        m = merge_variables(graphdef, p, ms)
        loss, metrics = loss_fn(m, b, key)
        new_state = split_variables(m)[2]
        if low:   # statistics updated in bf16 go back to the float32 state they came from
            new_state = jax.tree.map(lambda new, old: new.astype(old.dtype), new_state, ms)
        return loss.astype(jnp.float32), (metrics, new_state)

    grad_fn = jax.value_and_grad(objective, has_aux=True)
    if accum_steps == 1:
        return grad_fn(params, model_state, batch, rng)
    sizes = {x.shape[0] for x in jax.tree.leaves(batch)}
    if any(b % accum_steps for b in sizes):
        raise ValueError(f'batch of {sorted(sizes)} examples is not divisible into accum_steps={accum_steps} '
                         'micro-batches')
    micro = jax.tree.map(lambda x: x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:])
                         .swapaxes(0, 1), batch)
    first = jax.tree.map(lambda x: x[0], micro)
    shapes = jax.eval_shape(grad_fn, params, model_state, first, rng)
    (_, (metric_shapes, _)), grad_shapes = shapes
    zeros = lambda t: jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), t)  # noqa: E731

    def body(carry, inp):
        ms, loss_sum, metric_sum, grad_sum = carry
        k, b = inp
        (loss, (metrics, ms)), grads = grad_fn(params, ms, b, jax.random.fold_in(rng, k))
        add = lambda acc, x: jax.tree.map(lambda u, v: u + v.astype(jnp.float32), acc, x)  # noqa: E731
        return (ms, loss_sum + loss.astype(jnp.float32), add(metric_sum, metrics), add(grad_sum, grads)), None

    init = (model_state, jnp.zeros((), jnp.float32), zeros(metric_shapes), zeros(grad_shapes))
    (model_state, loss_sum, metric_sum, grad_sum), _ = jax.lax.scan(
        body, init, (jnp.arange(accum_steps), micro))
    mean = lambda t: jax.tree.map(lambda x: x / accum_steps, t)  # noqa: E731
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), mean(grad_sum), params)
    return (loss_sum / accum_steps, (mean(metric_sum), model_state)), grads


def masking_inputs(model, batch: dict, key: jax.Array) -> dict[str, jax.Array]:
    """The method's masking inputs: taken from ``batch`` when the input pipeline supplied them
    (every key of ``model.input_keys`` present), else drawn on device with ``model.sample_inputs``.

    Raises:
      ValueError: the batch holds only some of the keys.
    """
    keys = tuple(model.input_keys)
    present = [k for k in keys if k in batch]
    if present and len(present) != len(keys):
        raise ValueError(f'the batch carries {present} but the method needs all of {list(keys)}')
    if present:
        return {k: batch[k] for k in keys}
    return model.sample_inputs(key, batch['image'].shape[0])


def mim_loss(model, batch, rng):
    """Pre-training objective for any method of the ``jaxmim.methods`` protocol: masking inputs
    from the batch or drawn in the step (:func:`masking_inputs`), then the method's loss."""
    k_mask, k_drop = jax.random.split(rng)
    inputs = masking_inputs(model, batch, k_mask)
    out = model(batch['image'], train=True, rng=k_drop, **inputs)
    return out['loss'], {}


def classification_loss(model, batch, rng, label_smoothing: float, num_classes: int):
    """Cross-entropy on ``(B, num_classes)`` logits against soft targets: ``batch['target']``
    (float32 ``(B, K)``, mixup / cutmix with smoothing, :func:`make_mixup_transform`) when the
    batch carries it, else the labels smoothed by ``label_smoothing`` (timm
    ``SoftTargetCrossEntropy`` / ``LabelSmoothingCrossEntropy``); also top-1 accuracy against
    ``batch['label']``."""
    logits = model(batch['image'], train=True, rng=rng).astype(jnp.float32)
    if 'target' in batch:
        targets = batch['target']
    else:
        targets = optax.smooth_labels(jax.nn.one_hot(batch['label'], num_classes), label_smoothing)
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    acc = (logits.argmax(-1) == batch['label']).mean()
    return loss, {'train_top1': acc}


def make_mixup_transform(config, num_classes: int, mesh) -> Callable | None:
    """The fine-tuning batch transform of ``config.mixup`` (None when mixup and cutmix are off):
    ``(batch, key) -> batch`` with mixed ``'image'`` and soft ``'target'`` (B, K) float32,
    partners paired within each device's shard (:func:`jaxmim.mixup.mix_batch`).

    Raises:
      ValueError: a bad ``config.mixup`` field (named).
    """
    from jaxmim import mixup

    cfg = mixup.MixupConfig(**config.mixup.to_dict(), label_smoothing=float(config.label_smoothing),
                            num_classes=int(num_classes)).check()
    if not cfg.enabled:
        return None
    groups = int(mesh.devices.size)

    def transform(batch, key):
        images, targets, _ = mixup.mix_batch(key, batch['image'], batch['label'], cfg, groups=groups)
        return {**batch, 'image': images, 'target': targets}

    return transform


def make_eval_step(graphdef, mesh):
    """Jitted ``(variables, batch) -> {'top1', 'top5', 'count', 'loss'}`` sums over the real
    (``batch['mask'] == 1``) examples of a padded evaluation batch; ``variables`` is
    ``{'params', 'model_state'}`` (raw or EMA weights). BatchNorm runs on its running statistics."""

    def eval_fn(variables, batch):
        model = merge_variables(graphdef, variables['params'], variables['model_state'])
        logits = model(batch['image'], train=False).astype(jnp.float32)
        w = batch['mask'].astype(jnp.float32)
        label = batch['label']
        top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, label)
        return {'top1': ((top5[:, 0] == label) * w).sum(), 'top5': ((top5 == label[:, None]).any(-1) * w).sum(),
                'loss': (ce * w).sum(), 'count': w.sum()}

    return jax.jit(eval_fn, in_shardings=(replicated(mesh), batch_sharding(mesh)),
                   out_shardings=replicated(mesh), compiler_options=step_compiler_options(mesh))


def evaluate(eval_step, variables, batches: Iterator[dict], sharding) -> dict[str, float]:
    """Runs ``eval_step`` over every batch; returns top-1 / top-5 accuracy (%), mean loss, count."""
    sums = None
    for local in batches:
        out = eval_step(variables, global_batch(local, sharding))
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    n = float(sums['count'])
    return {'top1': 100.0 * float(sums['top1']) / n, 'top5': 100.0 * float(sums['top5']) / n,
            'loss': float(sums['loss']) / n, 'count': int(n)}


# ----------------------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------------------

def _train_loop(config, workdir: str, trainer: Trainer, state: PyTree, data_fn: Callable[[int], Iterator],
                eval_fn: Callable[[PyTree, int], dict] | None = None,
                extra_summary: dict | None = None,
                step_hook: Callable[[PyTree, int], None] | None = None) -> tuple[PyTree, dict]:
    """Runs steps ``state.step .. total_steps`` with logging, checkpoints and evaluation
    (``step_hook(state, step)``, if given, runs after every step, e.g. reconstruction pictures).

    ``data_fn(start_step)`` returns the iterator of per-process batches positioned at
    ``start_step``; ``eval_fn(state, step)`` returns a dict of scalars. Writes
    ``<workdir>/config.json`` (read back by :func:`load_run_config`) and
    ``<workdir>/<mode>_summary.json`` (at every checkpoint and at the end; a resumed run keeps
    the earlier segments' history). Returns the final state and a summary dict.

    Reliability (:mod:`jaxmim.resilience`): resumes from the newest *readable* checkpoint
    (damaged newer ones are set aside with a message); reads the on-device non-finite counter
    only at log / checkpoint / eval boundaries and never saves a state that went through a
    non-finite step; SIGTERM / SIGINT finish the current step, save it and stop. Releases the
    workdir lock taken by :func:`jaxmim.resilience.preflight` on exit.

    Raises:
      jaxmim.resilience.Diverged: (a ``FloatingPointError``) a non-finite loss or gradient norm
        with ``config.nonfinite='stop'``; names the step and the last good checkpoint, which is
        kept.
      jaxmim.resilience.Preempted: (a ``SystemExit`` with status 75) after SIGTERM / SIGINT,
        once the current step is saved and committed.
      ValueError: ``config.total_steps`` below the checkpoint's step; a corrupt tfrecord (named).
    """
    from flax.metrics import tensorboard  # TF-backed writer; TF never takes an accelerator.
    import sys
    import tqdm

    is_main = jax.process_index() == 0
    mode = config.get('nonfinite', 'stop')
    summary_path = os.path.join(workdir, f'{config.mode}_summary.json')
    ckpt = writer = None
    try:
        ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                     save_interval_steps=config.checkpoint_every,
                                     max_to_keep=config.keep_checkpoints,
                                     async_save=config.async_checkpointing)

        def verify(step, restored):
            if not resilience.all_finite({k: v for k, v in restored.items() if k != 'guard'}):
                raise ValueError('it holds non-finite values')

        target = ckpt_lib.abstract_like(_nonempty(state), _nonempty(trainer.state_sharding))
        start, restored, damaged = ckpt.restore_newest_readable(target, verify=verify,
                                                                optional_items=('guard',))
        for bad_step, why, moved in damaged:
            if is_main:
                print(f'warning: checkpoint step {bad_step} in {ckpt.directory} cannot be read ({why}); '
                      f'set aside as {moved}; resuming from step {start}', file=sys.stderr, flush=True)
        if start is not None:
            logging.info('Resuming from %s at step %d', ckpt.directory, start)
            state = {**state, **restored}
        start = int(start or 0)
        if start > config.total_steps:
            raise ValueError(f'config.total_steps={config.total_steps} is below the step of the checkpoint '
                             f'in {workdir!r} ({start}); set config.total_steps >= {start}')
        if is_main:
            with open(os.path.join(workdir, 'config.json'), 'w') as f:
                f.write(config.to_json_best_effort(indent=1))
        writer = tensorboard.SummaryWriter(os.path.join(workdir, 'tensorboard')) if is_main else None
        sharding = batch_sharding(trainer.mesh)
        data = data_fn(start)
        # disable=None: no bar when stdout is not a terminal (CI logs keep the metric lines only).
        bar = tqdm.tqdm(total=config.total_steps, initial=start,
                        disable=None if is_main and config.progress_bar else True,
                        dynamic_ncols=True, mininterval=0.5, desc=config.mode)

        def report(kind: str, step: int, scalars: dict[str, float]) -> None:
            """Writes scalars to TensorBoard (``kind/name``), the log and the console."""
            if writer:
                for k, v in scalars.items():
                    writer.scalar(f'{kind}/{k}', v, step)
            line = f'[{config.mode}] {kind} step {step}: ' + ', '.join(f'{k}={v:.4g}' for k, v in scalars.items())
            logging.info(line)
            if is_main:
                bar.write(line)

        # The history of earlier segments (up to the checkpoint resumed from) is kept.
        history, evals = resilience.previous_history(summary_path, start) if start else ([], [])

        def summary(final: bool) -> dict:
            out = {'mode': config.mode, 'start_step': start, 'total_steps': config.total_steps,
                   'history': history, 'evals': evals, 'loop_seconds': train_time,
                   'compilations': trainer.train_step._cache_size(), 'nonfinite': mode,
                   'finished': final, **(extra_summary or {})}
            out['final_eval'] = evals[-1] if evals and final else None
            return out

        def write_summary(final: bool = False) -> dict:
            out = summary(final)
            if is_main:
                tmp = summary_path + '.tmp'
                with open(tmp, 'w') as f:
                    json.dump(out, f, indent=1)
                os.replace(tmp, summary_path)
            return out

        def next_batch():
            try:
                return next(data)
            except (StopIteration, KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:   # a corrupt tfrecord: name the file
                err = resilience.data_error(e, config)
                if err is e:
                    raise
                raise err from e

        guard0 = jax.device_get(state['guard'])
        base_bad = int(guard0['nonfinite'])    # non-finite steps skipped in earlier segments
        t0, n0, paused = time.perf_counter(), start, 0.0
        train_time = 0.0
        with resilience.StopSignals() as signals:
            for step in range(start + 1, config.total_steps + 1):
                t_step = time.perf_counter()
                state, metrics = trainer.train_step(state, global_batch(next_batch(), sharding))
                log_now = step % config.log_every == 0 or step == config.total_steps
                eval_now = eval_fn is not None and (step % config.eval_every == 0 or step == config.total_steps)
                save_now = ckpt.should_save(step) or step == config.total_steps
                stop_now = signals.should_stop(step, boundary=log_now or save_now)
                save_now = save_now or stop_now
                if log_now or save_now or eval_now:
                    # The only host reads of the divergence guard: at boundaries, before any save.
                    guard = jax.device_get(state['guard'])
                    if mode == 'stop' and int(guard['nonfinite']) > base_bad:
                        ckpt.wait_until_finished()
                        last = ckpt.latest_step()
                        bad = int(guard['first_nonfinite'])
                        bad_metrics = jax.device_get(metrics) if log_now else {}
                        where = (f'the last good checkpoint is step {last} in {ckpt.directory} (kept; a '
                                 'restart resumes from it)') if last is not None else 'no checkpoint was saved yet'
                        write_summary()
                        raise resilience.Diverged(
                            f'non-finite loss or gradient norm at step {bad}'
                            + (f' (loss={float(bad_metrics["loss"]):.4g} at step {step})' if bad_metrics else '')
                            + f'; stopped at step {step} without saving it; {where}. Lower optim.base_lr, '
                            "check the data, or set config.nonfinite='skip' to skip such steps", bad, last)
                if log_now:
                    metrics = jax.device_get(metrics)
                    dt = time.perf_counter() - t0 - paused
                    ips = (step - n0) * config.batch_size / max(dt, 1e-9)
                    t0, n0, paused = time.perf_counter(), step, 0.0
                    scalars = {k: float(v) for k, v in metrics.items()} | {'images_per_sec': ips}
                    history.append({'step': step, **scalars})
                    bar.set_postfix(loss=f"{scalars['loss']:.4f}", img_s=f'{ips:.0f}')
                    report('train', step, scalars)
                bar.update(1)
                if step_hook is not None:
                    step_hook(state, step)
                if save_now:
                    ckpt.save(step, _nonempty(state), force=True)
                    write_summary()
                if stop_now:
                    ckpt.wait_until_finished()
                    train_time += time.perf_counter() - t_step
                    write_summary()
                    msg = (f'[{config.mode}] stopped by {signals.signal_name} after step {step}: checkpoint '
                           f'{step} saved in {ckpt.directory}; run the same command again to resume '
                           f'(exit status {resilience.EXIT_PREEMPTED})')
                    if is_main:
                        print(msg, file=sys.stderr, flush=True)
                    raise resilience.Preempted(msg, step)
                if eval_now:
                    t_eval = time.perf_counter()
                    res = eval_fn(state, step)
                    paused += time.perf_counter() - t_eval       # throughput excludes evaluation
                    evals.append({'step': step, **res})
                    report('eval', step, res)
                train_time += time.perf_counter() - t_step
            if eval_fn is not None and not any(e['step'] == config.total_steps for e in evals):
                res = eval_fn(state, config.total_steps)      # resumed from a finished run: evaluate it
                evals.append({'step': config.total_steps, **res})
                report('eval', config.total_steps, res)
        bar.close()
        if writer:
            writer.flush()
        summary_out = write_summary(final=True)
    finally:
        # An interruption (preemption, Ctrl-C, an error) still commits every pending save:
        # orbax writes to a temporary directory and renames it when complete, so no
        # checkpoint is ever left half-written.
        if ckpt is not None:
            ckpt.wait_until_finished()
            ckpt.close()
        if writer:
            writer.close()
        resilience.release_workdir(workdir)
    return state, summary_out


def _data_fn(config, model=None, *, train: bool):
    """``start_step -> iterator`` of per-process batches for the run's (resolved) data config.

    With ``config.method.inputs_from == 'pipeline'`` each batch also carries the method's masking
    inputs made on the host by ``model.host_inputs`` from a NumPy generator seeded by
    ``(seed, process, step)``, so a resumed run draws the same masks.
    """
    from jaxmim.data import pipeline

    data_cfg = config_lib.resolve_data_config(config)
    from_pipeline = train and config.mode == 'pretrain' and config.method.inputs_from == 'pipeline'
    local_batch = config.batch_size // jax.process_count()

    def make(start_step: int):
        it = pipeline.create_split(data_cfg, train=train, batch_size=config.batch_size,
                                   seed=config.seed, start_step=start_step)
        if not from_pipeline:
            return it

        def with_inputs():
            for step, batch in enumerate(it, start=start_step):
                rng = np.random.default_rng((config.seed, jax.process_index(), step))
                yield {**batch, **model.host_inputs(rng, local_batch)}

        return with_inputs()

    return make


def _check_batch_sizes(config, mesh) -> None:
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


def _check_image_size(model, config) -> None:
    size = config_lib.resolve_data_config(config).image_size
    expected = getattr(model, 'img_size', None)
    if expected is not None and int(size) != int(expected):
        raise ValueError(f'config.data.image_size={size} but model {config.model.name!r} takes '
                         f'{expected} px images; set config.data.image_size={expected} or override the '
                         f'model\'s img_size')


def pretrain(config: ml_collections.ConfigDict, workdir: str) -> tuple[PyTree, dict]:
    """Masked pre-training with any method of ``jaxmim.methods`` (``config.method.name``).

    Args:
      config: a pre-training config (see ``jaxmim.config.pretrain_defaults``).
      workdir: output directory (checkpoints, TensorBoard logs, config and summary JSON).

    Returns:
      ``(state, summary)``.

    Raises:
      ValueError: config errors (unknown keys, sizes that do not fit).
    """
    mesh = resilience.preflight(config, workdir)   # every input checked, workdir locked
    model = build_model(config)
    _check_image_size(model, config)
    trainer, state = make_trainer(model, mim_loss, config, mesh)
    from jaxmim import visualize   # reconstruction grid to TensorBoard every config.visualize_every steps
    hook = visualize.tensorboard_hook(config, workdir, trainer.graphdef)
    return _train_loop(config, workdir, trainer, state, _data_fn(config, model, train=True), step_hook=hook)


def _read_checkpoint_variables(workdir: str, step: int | None) -> dict[str, np.ndarray]:
    """``{dotted name: array}`` of every model variable (params and model_state) of a run's
    checkpoint; a wrapper's ``encoder`` scope is unwrapped (see :func:`load_pretrained`)."""
    directory = os.path.join(workdir, 'checkpoints')
    flat = dict(tree_util.flatten_names(ckpt_lib.restore_params(directory, step, key_path=('params',))))
    try:
        flat.update(tree_util.flatten_names(ckpt_lib.restore_params(directory, step, key_path=('model_state',))))
    except FileNotFoundError:
        pass
    if any(k.startswith('encoder.') for k in flat):
        flat = {k[len('encoder.'):]: v for k, v in flat.items() if k.startswith('encoder.')}
    return {k: np.asarray(v) for k, v in flat.items()}


def load_pretrained(model: nnx.Module, pretrain_workdir: str, step: int = -1) -> dict[str, list[str]]:
    """Loads a pre-training (or imported) checkpoint into ``model`` in place, by variable name.

    Every variable of the model (parameters, BatchNorm statistics, buffers) takes the
    checkpoint's tensor of the same dotted name. A method that wraps its encoder (SimMIM) stores
    it under ``encoder``: that scope is unwrapped and the rest (decoder) dropped. The model's hooks
    decide the rest: ``adapt_pretrained`` turns tensors of another shape into the model's
    (relative-position tables of another window, position embeddings of another grid) and
    ``pretrained_fresh`` names what may keep its initial value (the head; ViT's ``fc_norm``).
    Sources: ``microsoft/SimMIM@d3e29bc utils.py:98-204``; ``facebookresearch/mae main_finetune.py``.

    Returns:
      The report ``{'loaded', 'resized', 'fresh', 'unused'}`` of dotted names.

    Raises:
      FileNotFoundError: no checkpoint in ``pretrain_workdir``.
      ValueError: model variables missing from the checkpoint that are not allowed to start
        fresh, or shapes the model cannot adapt (all named).
    """
    src = _read_checkpoint_variables(pretrain_workdir, None if step < 0 else step)
    state = nnx.state(model)
    flat = tree_util.flatten_names(nnx.to_pure_dict(state))
    fresh_ok = model.pretrained_fresh()
    report = {'loaded': [], 'resized': [], 'fresh': [], 'unused': sorted(set(src) - set(flat))}
    missing, errors = [], []
    for name, value in flat.items():
        if name not in src:
            (report['fresh'] if match_any(name, fresh_ok) else missing).append(name)
            continue
        arr = src[name]
        if arr.shape != tuple(value.shape):
            try:
                arr = np.asarray(model.adapt_pretrained(name, arr, tuple(value.shape)))
            except ValueError as e:
                errors.append(str(e))
                continue
            report['resized'].append(name)
        else:
            report['loaded'].append(name)
        flat[name] = jnp.asarray(arr, value.dtype)
    if missing or errors:
        raise ValueError(f'cannot load {pretrain_workdir} into {type(model).__name__}: '
                         + '; '.join(([f'missing from the checkpoint: {missing}'] if missing else []) + errors))
    nnx.replace_by_pure_dict(state, tree_util.unflatten_names(flat, nnx.to_pure_dict(state)))
    nnx.update(model, state)
    return report


def finetune(config: ml_collections.ConfigDict, workdir: str) -> tuple[PyTree, dict]:
    """Supervised fine-tuning (or training from scratch when ``config.pretrained.workdir`` is
    empty) with layer-wise lr decay, label smoothing, optional weight EMA and top-1/top-5
    evaluation (of the EMA weights too, as ``ema_top1`` ...).

    Args:
      config: a fine-tuning config (see ``jaxmim.config.finetune_defaults``).
      workdir: output directory (checkpoints, TensorBoard logs, config and summary JSON).

    Returns:
      ``(state, summary)``; ``summary['final_eval']`` holds the last evaluation.

    Raises:
      ValueError: config errors, or a pre-trained checkpoint that does not fit.
    """
    from jaxmim.data import pipeline

    mesh = resilience.preflight(config, workdir)   # every input checked, workdir locked
    model = build_model(config)
    _check_image_size(model, config)
    report = None
    if config.pretrained.workdir:
        report = load_pretrained(model, config.pretrained.workdir, config.pretrained.step)
        logging.info('Loaded %d pre-trained tensors (%d resized); fresh: %s', len(report['loaded']),
                     len(report['resized']), report['fresh'])
    loss_fn = functools.partial(classification_loss, label_smoothing=config.label_smoothing,
                                num_classes=model.num_classes)
    trainer, state = make_trainer(model, loss_fn, config, mesh,
                                  batch_transform=make_mixup_transform(config, model.num_classes, mesh))
    eval_step = make_eval_step(trainer.graphdef, mesh)
    sharding = batch_sharding(mesh)
    data_cfg = config_lib.resolve_data_config(config)

    def eval_fn(state, step):
        def run(variables):
            batches = pipeline.create_split(data_cfg, train=False, batch_size=config.eval_batch_size,
                                            seed=config.seed)
            return evaluate(eval_step, variables, batches, sharding)

        res = run({'params': state['params'], 'model_state': state['model_state']})
        if 'ema' in state:
            res |= {f'ema_{k}': v for k, v in run(state['ema']).items() if k != 'count'}
        return res

    return _train_loop(config, workdir, trainer, state, _data_fn(config, train=True), eval_fn,
                       extra_summary={'pretrained': report})


def run(config: ml_collections.ConfigDict, workdir: str) -> tuple[PyTree, dict]:
    """Dispatches on ``config.mode`` (``'pretrain'`` or ``'finetune'``)."""
    config_lib.check_config(config)
    return (pretrain if config.mode == 'pretrain' else finetune)(config, workdir)


# ----------------------------------------------------------------------------------------
# Runs as files: the config, the model of a checkpoint.
# ----------------------------------------------------------------------------------------

def load_run_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run wrote to ``<workdir>/config.json`` (every run and import writes one).

    Raises:
      FileNotFoundError: no ``config.json`` in ``workdir``.
    """
    path = os.path.join(workdir, 'config.json')
    if not os.path.exists(path):
        raise FileNotFoundError(f'{path} not found: is {workdir!r} a jaxmim run directory?')
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def restore_model(model: nnx.Module, workdir: str, step: int | None = None) -> int:
    """Loads the parameters and model state of checkpoint ``step`` (default latest) of run
    ``workdir`` into ``model`` in place; returns the step.

    Raises:
      FileNotFoundError: no checkpoint (or not that step). ValueError: the checkpoint does not
      match the model's structure.
    """
    _, params, model_state = nnx.split(model, nnx.Param, ...)
    states = {'params': params, 'model_state': model_state}
    target = _nonempty({k: nnx.to_pure_dict(v) for k, v in states.items()})
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), async_save=False, read_only=True)
    try:
        step = ckpt._resolve_step(step)
        restored = ckpt.restore(step, target=ckpt_lib.abstract_like(target))
    finally:
        ckpt.close()
    for key, values in restored.items():
        nnx.replace_by_pure_dict(states[key], values)
    nnx.update(model, params, model_state)
    return step


def save_model_checkpoint(model: nnx.Module, workdir: str, config: ml_collections.ConfigDict,
                          step: int = 0) -> None:
    """Writes ``model``'s variables as an orbax checkpoint of run ``workdir`` (items ``params``,
    ``model_state``, ``step``) and ``config.json``: what ``convert.import`` produces, and what
    fine-tuning reads with ``config.pretrained.workdir=workdir``."""
    os.makedirs(workdir, exist_ok=True)
    _, params, model_state = split_variables(model)
    state = _nonempty({'params': params, 'model_state': model_state,
                       'step': jnp.asarray(step, jnp.int32)})
    with ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), async_save=False) as ckpt:
        ckpt.save(step, state, force=True)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, 'config.json'), 'w') as f:
            f.write(config.to_json_best_effort(indent=1))
