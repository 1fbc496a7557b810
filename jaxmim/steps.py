"""The train and eval steps: pure functions of ``(state, batch)``, jitted over the mesh.

State is a plain pytree ``{'params', 'model_state', 'ema' (when ``ema_decay > 0``),
'opt_state', 'step', 'guard'}`` (``guard``: the on-device non-finite step counter of
:mod:`jaxmim.resilience.guard`): ``params`` holds the trained ``nnx.Param`` variables,
``model_state`` every other variable of the model (BatchNorm statistics updated by the forward
in training, fixed buffers such as MAE's sin-cos tables), ``ema`` an exponential moving average
of both. The model structure (NNX graphdef) stays outside it, so the step is a pure function
``(state, batch) -> (state, metrics)``. Randomness for step t is ``fold_in(PRNGKey(seed), t)``,
so a resumed run reproduces the uninterrupted one.

The steps know no backbone and no method: they call the model's hooks
(:class:`jaxmim.registry.Backbone`: weight-decay patterns, layer ids) and the method protocol
of :mod:`jaxmim.methods` (masking inputs, loss).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxmim import mixup
from jaxmim import ops
from jaxmim import optim
from jaxmim import sharding
from jaxmim.mesh import batch_sharding, batch_size_divisor, global_batch, replicated, step_compiler_options
from jaxmim.resilience import guard as guard_lib
from jaxmim.rundir import merge_variables, split_variables

__all__ = ['Trainer', 'make_trainer', 'StateLayout', 'abstract_train_state', 'cast_floating', 'accumulate_gradients', 'masking_inputs', 'mim_loss',
           'classification_loss', 'make_mixup_transform', 'make_eval_step', 'evaluate']

PyTree = Any


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
      traces: how many times ``train_step`` was traced, each trace being one compilation (a run
        compiles its step once: the loop records this count in its summary).
      rules: the run's logical-axis rules (:func:`jaxmim.sharding.rules_for`), for steps built
        beside the train step (evaluation).
    """

    graphdef: Any
    tx: optax.GradientTransformation
    lr_fn: Callable[[Any], jax.Array]
    mesh: jax.sharding.Mesh
    train_step: Callable
    state_sharding: PyTree
    ema_decay: float = 0.0
    traces: list = dataclasses.field(default_factory=list)
    rules: tuple = ()

    @property
    def compilations(self) -> int:
        """The number of times the train step was traced (and so compiled) in this process."""
        return len(self.traces)


def make_trainer(model: nnx.Module | Callable[[], nnx.Module], loss_fn: Callable,
                 config: ml_collections.ConfigDict, mesh,
                 batch_transform: Callable | None = None, *,
                 abstract_model: nnx.Module | None = None,
                 abstract_state: bool = False) -> tuple[Trainer, PyTree]:
    """Builds the optimizer, the initial state laid out on ``mesh`` and the jitted train step.

    The optimizer takes the model's hooks: ``no_weight_decay()`` patterns, and, when
    ``config.optim.layer_decay != 1``, ``layer_id`` / ``num_layer_ids``. The layout of every
    state array comes from the logical axes of the model's variables and the rules of
    ``config.mesh`` (:func:`abstract_train_state`); the batch is split over ``('data', 'fsdp')``.

    Args:
      model: the NNX model, or a zero-argument function that builds it. A function is the
        sharded initialisation: the model is built abstractly (``nnx.eval_shape``) to find the
        layout, then built again inside a ``jax.jit`` whose ``out_shardings`` are that layout,
        so no device ever holds a full copy of a sharded state. A built model (e.g. one holding
        pre-trained weights) is copied onto the layout with ``jax.device_put``.
      loss_fn: ``(model, batch, rng) -> (loss, metrics dict)``; the model it receives is
        merged from the state, and any non-parameter variable the forward updates (BatchNorm
        statistics) is carried to the next state.
      config: the run config (uses ``optim``, ``batch_size``, ``total_steps``, ``seed``,
        ``ema_decay``, ``accum_steps``: see :func:`accumulate_gradients`, ``mesh``: layout).
      mesh: the device mesh (:func:`jaxmim.mesh.make_mesh`).
      batch_transform: optional ``(batch, key) -> batch`` run on device in the step over the
        whole global batch before it is split into micro-batches (fine-tuning: mixup / cutmix
        into soft targets, :mod:`jaxmim.mixup`); its key is ``fold_in(step key, 0x6d6978)``.
      abstract_model: with a builder ``model``, its ``nnx.eval_shape`` when the caller has it
        already (e.g. from :func:`jaxmim.preflight.preflight`), so the model is not traced twice.
      abstract_state: return the state as ``jax.ShapeDtypeStruct`` leaves carrying their
        ``NamedSharding`` instead of allocating it: enough to ``train_step.lower(state, batch)``
        and compile or count the step (:func:`jaxmim.benchmark_steps.model_flops_per_image`), with
        nothing initialised (a built ``model`` is not copied either).

    Returns:
      ``(trainer, state)`` with the state placed on the mesh (abstract with ``abstract_state``).

    Raises:
      ValueError: optimizer or mesh config errors (named field).
    """
    build = None if isinstance(model, nnx.Module) else model
    if build is None:
        abstract = model
    else:
        abstract = abstract_model if abstract_model is not None else nnx.eval_shape(build)
    layout = abstract_train_state(abstract, config, mesh)
    tx, lr_fn, graphdef = layout.tx, layout.lr_fn, layout.graphdef
    state_sharding = layout.shardings
    ema_decay = float(config.get('ema_decay', 0.0))
    accum_steps = int(config.get('accum_steps', 1))
    compute_dtype = jnp.dtype(config.get('compute_dtype', 'float32'))
    nonfinite_mode = config.get('nonfinite', 'stop')
    rep = replicated(mesh)
    init = functools.partial(_init_state, tx=tx, ema_decay=ema_decay)
    if abstract_state:
        state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                             layout.shapes, state_sharding)
    elif build is not None:
        state = jax.jit(lambda: init(*split_variables(build())[1:]), out_shardings=state_sharding)()
    else:
        _, params, model_state = split_variables(model)
        placed = jax.device_put((_host(params), _host(model_state)),
                                (state_sharding['params'], state_sharding['model_state']))
        state = jax.jit(init, out_shardings=state_sharding)(*placed)
    sharding.replicated_warning(layout, config, mesh)
    base_key = jax.random.key(config.seed)
    traces = []

    def step_fn(state, batch):
        traces.append(jax.tree.map(lambda x: (x.shape, x.dtype), batch))   # runs once per trace
        rng = jax.random.fold_in(base_key, state['step'])

        if batch_transform is not None:   # mixup / cutmix over the whole batch, before any split
            batch = batch_transform(batch, jax.random.fold_in(rng, 0x6d6978))
        (loss, (metrics, model_state)), grads = accumulate_gradients(
            graphdef, loss_fn, state['params'], state['model_state'], batch, rng, accum_steps,
            compute_dtype=compute_dtype)
        # gradients take the parameters' layout (FSDP: reduce-scattered, not all-reduced)
        grads = jax.lax.with_sharding_constraint(grads, state_sharding['params'])
        updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
        params = optax.apply_updates(state['params'], updates)
        new = {'params': params, 'model_state': model_state, 'opt_state': opt_state, 'step': state['step'] + 1}
        if ema_decay > 0:
            # Polyak averaging of every variable: ema <- d * ema + (1 - d) * value (timm ModelEmaV2).
            new['ema'] = optax.incremental_update({'params': params, 'model_state': model_state},
                                                  state['ema'], step_size=1.0 - ema_decay)
        metrics = dict(metrics, loss=loss, grad_norm=optim.global_norm(grads), lr=lr_fn(state['step']))
        # Non-finite loss / gradient norm: counted on device; skipped with config.nonfinite='skip'.
        return guard_lib.guard_step(new, state, metrics, nonfinite_mode)

    def traced(state, batch):   # activations pinned by the run's rules while the step is traced
        with sharding.activation_rules(mesh, layout.rules):
            return step_fn(state, batch)

    # the ops are traced for the mesh's platform (jaxmim.ops: a CPU mesh takes the CPU forms anywhere)
    train_step = jax.jit(ops.traced_on(ops.mesh_platform(mesh), traced),
                         in_shardings=(state_sharding, batch_sharding(mesh)), out_shardings=(state_sharding, rep),
                         donate_argnums=(0,), compiler_options=step_compiler_options(mesh))
    return Trainer(graphdef, tx, lr_fn, mesh, train_step, state_sharding, ema_decay, traces, layout.rules), state


def _host(tree: PyTree) -> PyTree:
    """NumPy copies of a tree of arrays (a built model's variables), so ``jax.device_put`` can lay
    them out on any mesh, of one process or of many."""
    return jax.tree.map(np.asarray, tree)


def _init_state(params: PyTree, model_state: PyTree, *, tx, ema_decay: float) -> PyTree:
    state = {'params': params, 'model_state': model_state, 'opt_state': tx.init(params),
             'step': jnp.zeros((), jnp.int32), 'guard': guard_lib.guard_init()}
    if ema_decay > 0:
        state['ema'] = jax.tree.map(lambda x: jnp.array(x, copy=True), {'params': params, 'model_state': model_state})
    return state


@dataclasses.dataclass
class StateLayout:
    """The abstract train state of a run and where each array lives.

    Attributes:
      graphdef: the model's NNX graph definition.
      tx, lr_fn: the optimizer and its learning-rate function.
      logical: ``{'params', 'model_state'}`` trees of logical axis names (None: unnamed).
      rules: the run's logical-axis rules (:func:`jaxmim.sharding.rules_for`).
      shapes: the state as ``jax.ShapeDtypeStruct`` (``params``, ``model_state``, ``opt_state``,
        ``step``, ``guard`` and ``ema`` when ``config.ema_decay > 0``).
      specs: the matching ``PartitionSpec`` tree.
      shardings: the matching ``NamedSharding`` tree on the mesh.
    """

    graphdef: Any
    tx: optax.GradientTransformation
    lr_fn: Callable
    logical: dict
    rules: tuple
    shapes: dict
    specs: dict
    shardings: dict


def abstract_train_state(abstract_model: nnx.Module, config: ml_collections.ConfigDict, mesh) -> StateLayout:
    """The train state of ``config`` for a model (built or abstract, ``nnx.eval_shape``) and its
    layout on ``mesh``, without allocating or compiling anything.

    Parameters and non-parameter variables are laid out by their logical axes under
    ``config.mesh``'s rules; the optimizer state of each parameter like the parameter
    (``optax.tree_map_params``), its counters replicated; the EMA like the variables it averages.

    Raises:
      ValueError: optimizer config errors, a bad ``config.mesh.layout`` / ``rules`` (named).
    """
    graphdef, param_vars, rest_vars = nnx.split(abstract_model, nnx.Param, ...)   # as split_variables does
    shape_of = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)  # noqa: E731
    params = jax.tree.map(shape_of, nnx.to_pure_dict(param_vars))
    model_state = jax.tree.map(shape_of, nnx.to_pure_dict(rest_vars))
    ocfg = optim.scaled_optim_config(config.optim.to_dict(), config.batch_size)
    layer_kw = {}
    if float(ocfg.get('layer_decay', 1.0)) != 1.0:
        try:
            layer_kw = dict(layer_id_fn=abstract_model.layer_id, num_layer_ids=abstract_model.num_layer_ids)
        except NotImplementedError as e:   # the Backbone default: no layer ids
            raise ValueError(f'config.optim.layer_decay={ocfg["layer_decay"]}: {e}') from e
    tx, lr_fn = optim.build_optimizer(ocfg, params, config.total_steps,
                                      no_weight_decay=abstract_model.no_weight_decay(), **layer_kw)
    rules = sharding.rules_for(config.get('mesh'))
    logical = {'params': sharding.logical_axes_tree(param_vars), 'model_state': sharding.logical_axes_tree(rest_vars)}
    var_specs = {k: sharding.spec_tree(logical[k], t, rules, mesh)
                 for k, t in (('params', params), ('model_state', model_state))}
    ema_decay = float(config.get('ema_decay', 0.0))
    shapes = jax.eval_shape(functools.partial(_init_state, tx=tx, ema_decay=ema_decay), params, model_state)
    # a PartitionSpec is a pytree leaf: moments take their parameter's spec, counters P()
    opt_specs = optax.tree_map_params(tx, lambda _, spec: spec, shapes['opt_state'], var_specs['params'],
                                      transform_non_params=lambda _: P())
    specs = {'params': var_specs['params'], 'model_state': var_specs['model_state'], 'opt_state': opt_specs,
             'step': P(), 'guard': jax.tree.map(lambda _: P(), shapes['guard'])}
    if 'ema' in shapes:
        specs['ema'] = dict(var_specs)
    shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
    return StateLayout(graphdef, tx, lr_fn, logical, rules, shapes, specs, shardings)


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
    sees a model holding bf16 copies of the float32 ``params`` and the float32 batch (images,
    masking inputs, soft targets): reconstruction targets are made from float32 images, and each
    model's first layer casts the images to bf16 (:func:`jaxmim.layers.images_to`, as
    ``torch.autocast`` does); the loss is returned in float32, and the gradient flows back through the
    casts, so the optimizer gets float32 gradients and updates the float32 master weights.
    Non-parameter state (BatchNorm statistics, fixed tables) stays float32.

    Raises:
      ValueError: ``B`` not a multiple of ``accum_steps``.
    """
    low = jnp.dtype(compute_dtype) != jnp.float32

    def objective(p, ms, b, key):
        if low:
            # images stay float32: the reconstruction targets are made from them, and the models'
            # first layer casts them to the weights' dtype (jaxmim.layers.images_to)
            p = cast_floating(p, compute_dtype)
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
    cfg = mixup.MixupConfig(**config.mixup.to_dict(), label_smoothing=float(config.label_smoothing),
                            num_classes=int(num_classes)).check()
    if not cfg.enabled:
        return None
    groups = batch_size_divisor(mesh)   # partners paired within each shard of the batch

    def transform(batch, key):
        images, targets, _ = mixup.mix_batch(key, batch['image'], batch['label'], cfg, groups=groups)
        return {**batch, 'image': images, 'target': targets}

    return transform


def make_eval_step(graphdef, mesh, variables_sharding: PyTree | None = None, rules: tuple = ()):
    """Jitted ``(variables, batch) -> {'top1', 'top5', 'count', 'loss'}`` sums over the real
    (``batch['mask'] == 1``) examples of a padded evaluation batch; ``variables`` is
    ``{'params', 'model_state'}`` (raw or EMA weights) laid out as ``variables_sharding``
    (default replicated; a sharded run passes its state's layout and ``rules``). BatchNorm runs on
    its running statistics. Traced, like the train step, under ``jaxmim.ops.platform_scope`` of
    the mesh's platform."""

    def eval_fn(variables, batch):
        model = merge_variables(graphdef, variables['params'], variables['model_state'])
        logits = model(batch['image'], train=False).astype(jnp.float32)
        w = batch['mask'].astype(jnp.float32)
        label = batch['label']
        top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, label)
        return {'top1': ((top5[:, 0] == label) * w).sum(), 'top5': ((top5 == label[:, None]).any(-1) * w).sum(),
                'loss': (ce * w).sum(), 'count': w.sum()}

    def traced(variables, batch):
        with sharding.activation_rules(mesh, rules):
            return eval_fn(variables, batch)

    return jax.jit(ops.traced_on(ops.mesh_platform(mesh), traced),
                   in_shardings=(variables_sharding if variables_sharding is not None else replicated(mesh),
                                 batch_sharding(mesh)), out_shardings=replicated(mesh),
                   compiler_options=step_compiler_options(mesh))


def evaluate(eval_step, variables, batches: Iterator[dict], sharding) -> dict[str, float]:
    """Runs ``eval_step`` over every batch; returns top-1 / top-5 accuracy (%), mean loss, count."""
    sums = None
    for local in batches:
        out = eval_step(variables, global_batch(local, sharding))
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    n = float(sums['count'])
    return {'top1': 100.0 * float(sums['top1']) / n, 'top5': 100.0 * float(sums['top5']) / n,
            'loss': float(sums['loss']) / n, 'count': int(n)}
