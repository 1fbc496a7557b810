"""The pre-training and fine-tuning loops.

Both loops share one shape (big_vision / flax-examples style): build the mesh, the model and
the optimizer; restore the latest checkpoint if one exists; run a jitted step over global
batches sharded on the mesh's ``data`` axis; log, checkpoint and evaluate every N steps. The
step is compiled once per run (static shapes: batches have a fixed size, masks are drawn
inside the step with a fixed count).

State is a plain pytree ``{'params', 'opt_state', 'step'}``; the model structure (NNX
graphdef) stays outside it, so the step is a pure function ``(state, batch) -> (state,
metrics)``. Randomness for step t is ``fold_in(PRNGKey(seed), t)``, so a resumed run
reproduces the uninterrupted one.
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
from jaxmim import tree_util
from jaxmim.methods import create_mim_model
from jaxmim.registry import create_model

PyTree = Any


# ----------------------------------------------------------------------------------------
# Mesh and shardings.
# ----------------------------------------------------------------------------------------

def make_mesh(devices=None) -> jax.sharding.Mesh:
    """A 1-D mesh whose ``data`` axis spans all devices (of every process), axis type Auto."""
    devices = devices if devices is not None else jax.devices()
    return jax.make_mesh((len(devices),), ('data',), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=devices)


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
# Train state and step.
# ----------------------------------------------------------------------------------------

@dataclasses.dataclass
class Trainer:
    """Everything one run needs besides data: model structure, optimizer, jitted step.

    Attributes:
      graphdef: the NNX graph definition (static structure) of the model.
      tx: the optax optimizer.
      lr_fn: step -> learning rate (for logging; base group).
      mesh: the device mesh.
      train_step: jitted ``(state, batch) -> (state, metrics)``.
      state_sharding: sharding pytree of the state.
    """

    graphdef: Any
    tx: optax.GradientTransformation
    lr_fn: Callable[[Any], jax.Array]
    mesh: jax.sharding.Mesh
    train_step: Callable
    state_sharding: PyTree


def make_trainer(model: nnx.Module, loss_fn: Callable, config: ml_collections.ConfigDict,
                 mesh, layer_id_fn=None, num_layer_ids=None) -> tuple[Trainer, PyTree]:
    """Builds the optimizer, the initial state and the jitted train step.

    Args:
      model: the NNX model (parameters initialised).
      loss_fn: ``(model, batch, rng) -> (loss, metrics dict)``.
      config: the run config (uses ``optim``, ``batch_size``, ``total_steps``, ``seed``).
      mesh: the device mesh.
      layer_id_fn, num_layer_ids: layer-wise lr decay (fine-tuning), see ``jaxmim.optim``.

    Returns:
      ``(trainer, state)`` with the state placed on the mesh.
    """
    graphdef, params = nnx.split(model, nnx.Param)
    params = nnx.to_pure_dict(params)
    ocfg = _scaled_optim_config(config)
    tx, lr_fn = optim.build_optimizer(ocfg, params, config.total_steps, layer_id_fn=layer_id_fn,
                                      num_layer_ids=num_layer_ids)
    rep = replicated(mesh)
    state = {'params': params, 'opt_state': tx.init(params), 'step': jnp.zeros((), jnp.int32)}
    state_sharding = jax.tree.map(lambda _: rep, state)
    state = jax.device_put(state, state_sharding)
    base_key = jax.random.key(config.seed)

    def step_fn(state, batch):
        rng = jax.random.fold_in(base_key, state['step'])

        def objective(p):
            return loss_fn(nnx.merge(graphdef, p), batch, rng)

        (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(state['params'])
        updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
        params = optax.apply_updates(state['params'], updates)
        metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads), lr=lr_fn(state['step']))
        return {'params': params, 'opt_state': opt_state, 'step': state['step'] + 1}, metrics

    train_step = jax.jit(step_fn, in_shardings=(state_sharding, batch_sharding(mesh)),
                         out_shardings=(state_sharding, rep), donate_argnums=(0,))
    return Trainer(graphdef, tx, lr_fn, mesh, train_step, state_sharding), state


def _scaled_optim_config(config) -> ml_collections.ConfigDict:
    """The optimizer config with SimMIM's linear lr scaling by ``batch_size / lr_scale_batch``
    applied to base, warmup and min lr (spec ``simmim_swin.md`` §4.3)."""
    o = config.optim.to_dict()
    ref = o.pop('lr_scale_batch')
    if ref:
        for k in ('base_lr', 'warmup_lr', 'min_lr'):
            o[k] = optim.scale_lrs(o[k], config.batch_size, ref)
    return ml_collections.ConfigDict(o)


def mim_loss(model, batch, rng):
    """Pre-training objective for any method of the ``jaxmim.methods`` protocol: draw a
    mask inside the step, return the method's loss."""
    k_mask, k_drop = jax.random.split(rng)
    images = batch['image']
    mask = model.sample_mask(k_mask, images.shape[0])
    out = model(images, mask=mask, train=True, rng=k_drop)
    return out['loss'], {}


def classification_loss(model, batch, rng, label_smoothing: float, num_classes: int):
    """Cross-entropy with label smoothing on ``(B, num_classes)`` logits; also top-1 accuracy."""
    logits = model(batch['image'], train=True, rng=rng).astype(jnp.float32)
    targets = optax.smooth_labels(jax.nn.one_hot(batch['label'], num_classes), label_smoothing)
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    acc = (logits.argmax(-1) == batch['label']).mean()
    return loss, {'train_top1': acc}


def make_eval_step(graphdef, mesh):
    """Jitted ``(params, batch) -> {'top1', 'top5', 'count', 'loss'}`` sums over the real
    (``batch['mask'] == 1``) examples of a padded evaluation batch."""

    def eval_fn(params, batch):
        logits = nnx.merge(graphdef, params)(batch['image'], train=False).astype(jnp.float32)
        w = batch['mask'].astype(jnp.float32)
        label = batch['label']
        top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, label)
        return {'top1': ((top5[:, 0] == label) * w).sum(), 'top5': ((top5 == label[:, None]).any(-1) * w).sum(),
                'loss': (ce * w).sum(), 'count': w.sum()}

    return jax.jit(eval_fn, in_shardings=(replicated(mesh), batch_sharding(mesh)),
                   out_shardings=replicated(mesh))


def evaluate(eval_step, params, batches: Iterator[dict], sharding) -> dict[str, float]:
    """Runs ``eval_step`` over every batch; returns top-1 / top-5 accuracy (%), mean loss, count."""
    sums = None
    for local in batches:
        out = eval_step(params, global_batch(local, sharding))
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    n = float(sums['count'])
    return {'top1': 100.0 * float(sums['top1']) / n, 'top5': 100.0 * float(sums['top5']) / n,
            'loss': float(sums['loss']) / n, 'count': int(n)}


# ----------------------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------------------

def _train_loop(config, workdir: str, trainer: Trainer, state: PyTree, data_fn: Callable[[int], Iterator],
                eval_fn: Callable[[PyTree, int], dict] | None = None) -> tuple[PyTree, dict]:
    """Runs steps ``state.step .. total_steps`` with logging, checkpoints and evaluation.

    ``data_fn(start_step)`` returns the iterator of per-process batches positioned at
    ``start_step``. Returns the final state and a summary dict.
    """
    from flax.metrics import tensorboard  # TF-backed writer; TF never takes an accelerator.
    import tqdm

    is_main = jax.process_index() == 0
    writer = tensorboard.SummaryWriter(os.path.join(workdir, 'tensorboard')) if is_main else None
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                 save_interval_steps=config.checkpoint_every,
                                 max_to_keep=config.keep_checkpoints,
                                 async_save=config.async_checkpointing)
    start = ckpt.latest_step()
    if start is not None:
        logging.info('Resuming from %s at step %d', ckpt.directory, start)
        state = ckpt.restore(start, target=ckpt_lib.abstract_like(state, trainer.state_sharding))
    start = int(start or 0)
    sharding = batch_sharding(trainer.mesh)
    data = data_fn(start)
    # disable=None: no bar when stdout is not a terminal (CI logs keep the metric lines only).
    bar = tqdm.tqdm(total=config.total_steps, initial=start, disable=None if is_main and config.progress_bar else True,
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

    history, evals = [], []
    t0, n0, paused = time.perf_counter(), start, 0.0
    train_time = 0.0
    try:
        for step in range(start + 1, config.total_steps + 1):
            t_step = time.perf_counter()
            state, metrics = trainer.train_step(state, global_batch(next(data), sharding))
            if step % config.log_every == 0 or step == config.total_steps:
                metrics = jax.device_get(metrics)
                dt = time.perf_counter() - t0 - paused
                ips = (step - n0) * config.batch_size / max(dt, 1e-9)
                t0, n0, paused = time.perf_counter(), step, 0.0
                scalars = {k: float(v) for k, v in metrics.items()} | {'images_per_sec': ips}
                history.append({'step': step, **scalars})
                bar.set_postfix(loss=f"{scalars['loss']:.4f}", img_s=f'{ips:.0f}')
                report('train', step, scalars)
                if not np.isfinite(scalars['loss']):
                    raise FloatingPointError(f'loss is {scalars["loss"]} at step {step}; lower optim.base_lr '
                                             'or check the data')
            bar.update(1)
            ckpt.save(step, state, force=step == config.total_steps)
            if eval_fn is not None and (step % config.eval_every == 0 or step == config.total_steps):
                t_eval = time.perf_counter()
                res = eval_fn(state['params'], step)
                paused += time.perf_counter() - t_eval       # throughput excludes evaluation
                evals.append({'step': step, **res})
                report('eval', step, res)
            train_time += time.perf_counter() - t_step
        if eval_fn is not None and not evals:      # resumed from a finished run: evaluate it
            res = eval_fn(state['params'], config.total_steps)
            evals.append({'step': config.total_steps, **res})
            report('eval', config.total_steps, res)
    finally:
        # An interruption (preemption, Ctrl-C, an error) still commits every pending save:
        # orbax writes to a temporary directory and renames it when complete, so no
        # checkpoint is ever left half-written.
        ckpt.wait_until_finished()
        ckpt.close()
    bar.close()
    if writer:
        writer.flush()
    summary = {'mode': config.mode, 'start_step': start, 'total_steps': config.total_steps,
               'history': history, 'evals': evals, 'loop_seconds': train_time,
               'compilations': trainer.train_step._cache_size()}
    if is_main:
        with open(os.path.join(workdir, f'{config.mode}_summary.json'), 'w') as f:
            json.dump(summary, f, indent=1)
    return state, summary


def _data_fn(config, *, train: bool):
    from jaxmim.data import pipeline

    def make(start_step: int):
        return pipeline.create_split(config.data, train=train, batch_size=config.batch_size,
                                     seed=config.seed, start_step=start_step)

    return make


def pretrain(config: ml_collections.ConfigDict, workdir: str) -> tuple[PyTree, dict]:
    """Masked pre-training (SimMIM and any method of ``jaxmim.methods``).

    Args:
      config: a pre-training config (see ``jaxmim.config.pretrain_defaults``).
      workdir: output directory (checkpoints, TensorBoard logs, summary JSON).

    Returns:
      ``(state, summary)``.

    Raises:
      ValueError: config errors (unknown keys, sizes that do not fit).
    """
    config_lib.check_config(config)
    os.makedirs(workdir, exist_ok=True)
    mesh = make_mesh()
    method = config.method.to_dict()
    model = create_mim_model(method.pop('name'), config.model.name,
                             encoder_overrides=config.model.overrides.to_dict(), seed=config.seed, **method)
    trainer, state = make_trainer(model, mim_loss, config, mesh)
    return _train_loop(config, workdir, trainer, state, _data_fn(config, train=True))


def build_classifier(config) -> nnx.Module:
    """The fine-tuning classifier named by ``config.model`` (registry name + overrides)."""
    return create_model(config.model.name, seed=config.seed, **config.model.overrides.to_dict())


def load_pretrained_encoder(params: PyTree, pretrain_workdir: str, step: int = -1) -> tuple[PyTree, dict]:
    """Copies a pre-training checkpoint's encoder into classifier parameters.

    The encoder subtree (``params['encoder']``) replaces the matching classifier leaves;
    ``mask_token`` and the decoder are dropped, the head keeps its fresh init; relative-position
    tables of another window size are resized with SimMIM's geometric bicubic scheme.
    Source: ``microsoft/SimMIM@d3e29bc utils.py:98-204`` (``load_pretrained``).

    Returns:
      ``(params, report)`` with the report listing loaded, resized and skipped names.

    Raises:
      FileNotFoundError: no checkpoint in ``pretrain_workdir``.
      ValueError: a shape mismatch that cannot be resized, or the encoder misses a classifier
        parameter other than the head.
    """
    from jaxmim.models.swin import resize_rel_pos_table

    directory = os.path.join(pretrain_workdir, 'checkpoints')
    enc = ckpt_lib.restore_params(directory, None if step < 0 else step, key_path=('params', 'encoder'))
    flat_enc = tree_util.flatten_names(enc)
    flat = tree_util.flatten_names(params)
    report = {'loaded': [], 'resized': [], 'fresh': [], 'unused': sorted(set(flat_enc) - set(flat))}
    for name, value in flat.items():
        if name not in flat_enc:
            if not name.startswith('head.'):
                raise ValueError(f'pre-trained encoder has no parameter {name!r}')
            report['fresh'].append(name)
            continue
        src = np.asarray(flat_enc[name])
        if src.shape != value.shape:
            if 'relative_position_bias_table' not in name:
                raise ValueError(f'{name}: pre-trained shape {src.shape} does not fit {value.shape}')
            src = resize_rel_pos_table(src, value.shape[0])
            report['resized'].append(name)
        else:
            report['loaded'].append(name)
        flat[name] = jnp.asarray(src, value.dtype)
    return tree_util.unflatten_names(flat, params), report


def finetune(config: ml_collections.ConfigDict, workdir: str) -> tuple[PyTree, dict]:
    """Supervised fine-tuning (or training from scratch when ``config.pretrained.workdir`` is
    empty) with layer-wise lr decay, label smoothing and top-1/top-5 evaluation.

    Args:
      config: a fine-tuning config (see ``jaxmim.config.finetune_defaults``).
      workdir: output directory (checkpoints, TensorBoard logs, summary JSON).

    Returns:
      ``(state, summary)``; ``summary['final_eval']`` holds the last evaluation.
    """
    from jaxmim.data import pipeline

    config_lib.check_config(config)
    os.makedirs(workdir, exist_ok=True)
    mesh = make_mesh()
    model = build_classifier(config)
    report = None
    if config.pretrained.workdir:
        graphdef, params = nnx.split(model, nnx.Param)
        params, report = load_pretrained_encoder(nnx.to_pure_dict(params), config.pretrained.workdir,
                                                 config.pretrained.step)
        model = nnx.merge(graphdef, params)
        logging.info('Loaded %d pre-trained tensors (%d resized); fresh: %s', len(report['loaded']),
                     len(report['resized']), report['fresh'])
    depths = tuple(model.depths)
    layer_id_fn = functools.partial(optim.swin_layer_id, depths=depths)
    loss_fn = functools.partial(classification_loss, label_smoothing=config.label_smoothing,
                                num_classes=model.num_classes)
    trainer, state = make_trainer(model, loss_fn, config, mesh, layer_id_fn=layer_id_fn,
                                  num_layer_ids=sum(depths) + 2)
    eval_step = make_eval_step(trainer.graphdef, mesh)
    sharding = batch_sharding(mesh)

    def eval_fn(params, step):
        batches = pipeline.create_split(config.data, train=False, batch_size=config.eval_batch_size,
                                        seed=config.seed)
        return evaluate(eval_step, params, batches, sharding)

    state, summary = _train_loop(config, workdir, trainer, state, _data_fn(config, train=True), eval_fn)
    summary['final_eval'] = summary['evals'][-1] if summary['evals'] else None
    summary['pretrained'] = report
    return state, summary


def run(config: ml_collections.ConfigDict, workdir: str) -> tuple[PyTree, dict]:
    """Dispatches on ``config.mode`` (``'pretrain'`` or ``'finetune'``)."""
    config_lib.check_config(config)
    return (pretrain if config.mode == 'pretrain' else finetune)(config, workdir)
