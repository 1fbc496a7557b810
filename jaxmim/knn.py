r"""Weighted k-nearest-neighbour (k-NN) accuracy of any encoder, as DINO evaluates its features.

Every train image of the run's dataset is encoded without augmentation (the evaluation
transform: resize and centre crop) into its pooled features (``model.pooled_features``, the
head's input: :meth:`jaxmim.registry.Backbone.pooled_features`), L2-normalised. Each evaluation
image takes its ``k`` most cosine-similar train images; neighbour ``i`` votes for its class with
weight ``exp(s_i / T)``; the class with the largest sum of votes is the prediction. Top-1 and
top-5 accuracy (%) over the evaluation split; top-5 ranks the ``min(5, k)`` classes with the
largest votes (DINO: "top5 does not make sense if k < 5").

Sources: ``facebookresearch/dino@7c446df eval_knn.py:143-182`` (``knn_classifier``: top-k of
the dot products of normalised features, one-hot votes weighted by ``exp(s / T)``, k=20 and
T=0.07 its defaults) and ``:30-38, 81-82`` (evaluation transform for both splits;
``nn.functional.normalize``); the weighting is that of Wu et al., "Unsupervised Feature Learning
via Non-Parametric Instance Discrimination", CVPR 2018, §3.4.

Command line (any pre-training run whose model registers a classifier, or any fine-tuning run)::

    python -m jaxmim.knn --workdir=RUN [--k=20] [--temperature=0.07] [--step=N] \
        [--train_examples=N] [--batch_size=N] [--chunk=256] [--mesh=dp] [--random_init]

prints one line ``knn: top1=... top5=... (k=20, T=0.07, N train, M eval)`` and writes
``<workdir>/knn.json``. A bad input is one ``error:`` line and exit status 2. During pre-training
``config.knn_every=N`` logs ``knn/top1`` and ``knn/top5`` to TensorBoard every N steps from the
in-memory weights (:func:`make_train_hook`, settings in ``config.knn``).

Distribution: images are batched over the mesh's batch axes (``('data', 'fsdp')``) as in
evaluation, the last partial batch padded and masked. The train features stay on the devices,
rows split over the batch axes. The similarities are computed for ``chunk`` evaluation images at
a time; each device keeps a running top-k over blocks of its own rows, and the devices' top-k
candidates are gathered and reduced to the global top-k (:func:`knn_class_scores`), so no device
ever holds more than ``chunk x rows per block`` similarities.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxmim import config as config_lib
from jaxmim import files
from jaxmim import ops
from jaxmim import registry
from jaxmim import rundir
from jaxmim import sharding as sharding_lib
from jaxmim.mesh import (batch_sharding, batch_size_divisor, data_shards, global_batch, replicated,
                         step_compiler_options)

__all__ = ['DEFAULTS', 'DEFAULT_CHUNK', 'RESULT_FILE', 'knn_class_scores', 'knn_counts', 'make_feature_step',
           'extract_features', 'knn_accuracy', 'classifier_of_run', 'make_train_hook', 'run_knn', 'main']

DEFAULTS = config_lib.knn_defaults().to_dict()
"""``k``, ``temperature``, ``train_examples``, ``batch_size``: DINO's k=20, T=0.07, the whole
train split, the run's batch size (:func:`jaxmim.config.knn_defaults`)."""
DEFAULT_CHUNK = 256
"""Evaluation images per similarity chunk (DINO cuts the evaluation set into 100 chunks)."""
RESULT_FILE = 'knn.json'
"""Written by the command line in the run directory."""


# ----------------------------------------------------------------------------------------
# The k-NN classifier on features laid out on the mesh.
# ----------------------------------------------------------------------------------------

def _batch_axes(mesh) -> tuple[str, ...]:
    return tuple(batch_sharding(mesh).spec[0])


def _normalize(x: jax.Array) -> jax.Array:
    """Rows divided by their L2 norm, at least 1e-12 (``torch.nn.functional.normalize``)."""
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True)), 1e-12)


@functools.lru_cache(maxsize=32)
def _scores_fn(mesh, k: int, temperature: float, num_classes: int, chunk: int, train_block: int | None):
    axes = _batch_axes(mesh)
    shards = batch_size_divisor(mesh)

    def local(feats, labels, valid, queries):
        # one device: its rows of the train bank (n, C), every query (Q, C)
        n = feats.shape[0]
        block = n if train_block is None else min(train_block, n)
        blocks = -(-n // block)
        pad = blocks * block - n
        bank = (jnp.pad(feats, ((0, pad), (0, 0))).reshape(blocks, block, -1),
                jnp.pad(labels, (0, pad)).reshape(blocks, block),
                jnp.pad(valid, (0, pad)).reshape(blocks, block))
        kb = min(k, block)
        q = queries.shape[0]
        padded_q = -(-q // chunk) * chunk
        chunks = jnp.pad(queries, ((0, padded_q - q), (0, 0))).reshape(padded_q // chunk, chunk, -1)

        def one_chunk(x):
            def merge(carry, blk):   # running top-k over this device's row blocks
                best_s, best_l = carry
                f, lab, v = blk
                s = jnp.where(v[None], jnp.dot(x, f.T, precision=jax.lax.Precision.HIGHEST), -jnp.inf)
                s, idx = jax.lax.top_k(s, kb)
                cat_s, cat_l = jnp.concatenate([best_s, s], 1), jnp.concatenate([best_l, lab[idx]], 1)
                s, idx = jax.lax.top_k(cat_s, k)
                return (s, jnp.take_along_axis(cat_l, idx, 1)), None

            init = (jnp.full((chunk, k), -jnp.inf, jnp.float32), jnp.zeros((chunk, k), jnp.int32))
            (s, lab), _ = jax.lax.scan(merge, init, bank)
            # every device's k candidates, then the global top-k
            s = jax.lax.all_gather(s, axes, axis=1, tiled=True)
            lab = jax.lax.all_gather(lab, axes, axis=1, tiled=True)
            s, idx = jax.lax.top_k(s, k)
            lab = jnp.take_along_axis(lab, idx, 1)
            # exp(s / T) scaled by exp(-1 / T) (s <= 1): the same ranking, no overflow at small T
            w = jnp.where(jnp.isfinite(s), jnp.exp((s - 1.0) / temperature), 0.0)
            return jnp.einsum('qk,qkc->qc', w, jax.nn.one_hot(lab, num_classes, dtype=jnp.float32))

        return jax.lax.map(one_chunk, chunks).reshape(padded_q, num_classes)[:q]

    # the all-gathered candidates, hence the votes, are the same on every device: out_specs P()
    # (check_vma off: all_gather's output is typed as varying)
    sharded = jax.shard_map(local, mesh=mesh, in_specs=(P(axes), P(axes), P(axes), P()), out_specs=P(),
                            check_vma=False)

    def scores(feats, labels, valid, queries):
        pad = -feats.shape[0] % shards   # rows split evenly over the batch axes; padding rows invalid
        feats = jnp.pad(_normalize(feats), ((0, pad), (0, 0)))
        labels = jnp.pad(labels.astype(jnp.int32), (0, pad))
        valid = jnp.pad(valid.astype(bool), (0, pad))
        return sharded(feats, labels, valid, _normalize(queries))

    rows = NamedSharding(mesh, P(axes))
    return jax.jit(scores, out_shardings=replicated(mesh)), rows


def knn_class_scores(train_features, train_labels, train_valid, queries, *, k: int, temperature: float,
                     num_classes: int, mesh, chunk: int = DEFAULT_CHUNK, train_block: int | None = None) -> jax.Array:
    """DINO's weighted k-NN class votes of every query.

    Both sides are L2-normalised here; for each query the ``k`` valid train rows of largest
    cosine similarity ``s`` each add ``exp((s - 1) / T)`` to their class: DINO's ``exp(s / T)``
    (``facebookresearch/dino@7c446df eval_knn.py:157-172``) times the constant ``exp(-1 / T)``,
    which leaves every ranking unchanged and cannot overflow (``s <= 1``).

    The train rows are split over the mesh's batch axes (``('data', 'fsdp')``; padded with
    invalid rows to a multiple of their size); queries are processed ``chunk`` at a time, each
    device keeping a running top-k over blocks of ``train_block`` of its rows (default: all of
    them), then the devices' candidates are gathered and reduced to the global top-k. Memory per
    device: ``chunk x min(train_block, rows per device)`` similarities.

    Args:
      train_features: ``(N, C)`` float, any sharding (row-split over the batch axes avoids a copy).
      train_labels: ``(N,)`` int class ids in ``[0, num_classes)``.
      train_valid: ``(N,)`` bool (or 0/1): rows that take part (padding rows are False).
      queries: ``(Q, C)`` float, replicated on the mesh for the computation.
      k: neighbours, at most the number of valid train rows.
      temperature: ``T > 0``.
      num_classes: width of the output.
      mesh: the device mesh (:func:`jaxmim.mesh.make_mesh`).
      chunk: queries per similarity chunk.
      train_block: train rows per device per step of the running top-k (None: all).

    Returns:
      float32 ``(Q, num_classes)`` votes, replicated. A class no neighbour has gets 0.

    Raises:
      ValueError: ``k``, ``chunk``, ``train_block`` or ``temperature`` out of range.
    """
    if k < 1 or chunk < 1 or (train_block is not None and train_block < 1) or not temperature > 0:
        raise ValueError(f'k={k}, chunk={chunk}, train_block={train_block} must be >= 1 and '
                         f'temperature={temperature} > 0')
    fn, _ = _scores_fn(mesh, int(k), float(temperature), int(num_classes), int(chunk), train_block)
    return fn(train_features, train_labels, train_valid, queries)


@functools.lru_cache(maxsize=32)
def _counts_fn(mesh, k: int):
    def counts(scores, labels, valid):
        top = jax.lax.top_k(scores, min(5, k, scores.shape[-1]))[1]
        hit = top == labels[:, None].astype(top.dtype)
        w = valid.astype(jnp.float32)
        return {'top1': (hit[:, 0] * w).sum(), 'top5': (hit.any(-1) * w).sum(), 'count': w.sum()}

    return jax.jit(counts, out_shardings=replicated(mesh))


def knn_counts(scores, labels, valid, *, k: int, mesh) -> dict[str, float]:
    """Correct top-1 / top-5 predictions and the count of valid queries: ``scores`` ``(Q, K)``
    from :func:`knn_class_scores`, ``labels`` ``(Q,)`` int, ``valid`` ``(Q,)``; top-5 is the
    ``min(5, k)`` best classes (``facebookresearch/dino@7c446df eval_knn.py:176-178``).
    Returns ``{'top1', 'top5', 'count'}`` as floats (sums, not percentages)."""
    out = jax.device_get(_counts_fn(mesh, int(k))(scores, labels, valid))
    return {key: float(v) for key, v in out.items()}


# ----------------------------------------------------------------------------------------
# Features of a split.
# ----------------------------------------------------------------------------------------

def make_feature_step(graphdef, mesh, variables_sharding, rules: tuple = ()) -> Callable:
    """Jitted ``(variables, images) -> (B, C)`` float32 L2-normalised pooled features
    (``model.pooled_features(images, train=False)``; BatchNorm on its running statistics), images
    ``(B, H, W, C)`` split over the batch axes, output split the same way; ``variables`` is
    ``{'params', 'model_state'}`` laid out as ``variables_sharding``. Traced, like the eval step,
    under the mesh's platform (:func:`jaxmim.ops.traced_on`) and activation ``rules``."""

    def features(variables, images):
        model = rundir.merge_variables(graphdef, variables['params'], variables['model_state'])
        return _normalize(model.pooled_features(images, train=False))

    def traced(variables, images):
        with sharding_lib.activation_rules(mesh, rules):
            return features(variables, images)

    rows = batch_sharding(mesh)
    return jax.jit(ops.traced_on(ops.mesh_platform(mesh), traced), in_shardings=(variables_sharding, rows),
                   out_shardings=rows, compiler_options=step_compiler_options(mesh))


@functools.lru_cache(maxsize=8)
def _concat_fn(mesh):
    rows = batch_sharding(mesh)
    return jax.jit(lambda f, l, v: (jnp.concatenate(f), jnp.concatenate(l), jnp.concatenate(v) > 0),
                   out_shardings=(rows, rows, rows))


def extract_features(feature_step, variables, batches: Iterator[dict], mesh) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(features (N, C), labels (N,) int32, valid (N,) bool)`` of every per-process batch
    (``{'image', 'label', 'mask'}`` as :func:`jaxmim.data.pipeline.create_split` yields in
    evaluation), kept on the devices, rows split over the batch axes; padding rows are invalid.

    Raises:
      ValueError: no batch at all.
    """
    sharding = batch_sharding(mesh)
    feats, labels, valid = [], [], []
    for local in batches:
        g = global_batch({key: local[key] for key in ('image', 'label', 'mask')}, sharding)
        feats.append(feature_step(variables, g['image']))
        labels.append(g['label'])
        valid.append(g['mask'])
    if not feats:
        raise ValueError('the split gave no batch')
    return _concat_fn(mesh)(feats, labels, valid)


def _batches(data_cfg, split: str, batch_size: int, seed: int, mesh, limit: int = 0) -> Iterator[dict]:
    """Evaluation batches (no augmentation, one pass, padded and masked) of ``split``, this
    process's part of each (:func:`jaxmim.mesh.data_shards` of ``mesh``); with ``limit > 0`` only
    the first ``limit`` examples count (one part: the first of the split; P parts: the first
    ``limit / P`` of each part's contiguous slice)."""
    from jaxmim.data import pipeline

    cfg = ml_collections.ConfigDict(data_cfg.to_dict())
    cfg.eval_split, cfg.cache = split, False
    p, procs = data_shards(mesh)
    it = pipeline.create_split(cfg, train=False, batch_size=batch_size, seed=seed, process_index=p,
                               process_count=procs)
    if not limit:
        yield from it
        return
    quota = limit // procs + (p < limit % procs)
    local = batch_size // procs
    most = limit // procs + (limit % procs > 0)   # the largest quota: every process runs as many batches
    for i in range(-(-most // local)):
        batch = next(it)
        position = i * local + np.arange(local)
        yield {**batch, 'mask': batch['mask'] * (position < quota).astype(np.float32)}


@jax.jit
def _top_label(labels, valid):
    return jnp.max(jnp.where(valid, labels, 0))


def knn_accuracy(feature_step, variables, mesh, data_cfg, *, k: int, temperature: float, train_examples: int,
                 batch_size: int, seed: int = 0, chunk: int = DEFAULT_CHUNK) -> dict[str, float]:
    """k-NN top-1 / top-5 (%) of the evaluation split against the train split (both with the
    evaluation transform) for the encoder ``feature_step`` / ``variables``
    (:func:`make_feature_step`).

    Args:
      data_cfg: a resolved data config (:func:`jaxmim.config.resolve_data_config`).
      train_examples: the first N train examples (0: the whole split).
      batch_size: global images per feature batch (a multiple of the batch axes' size).

    Returns:
      ``{'top1', 'top5', 'train_count', 'eval_count', 'num_classes'}``.

    Raises:
      ValueError: ``k`` larger than the train images used.
    """
    train = extract_features(feature_step, variables,
                             _batches(data_cfg, data_cfg.train_split, batch_size, seed, mesh, train_examples), mesh)
    test = extract_features(feature_step, variables, _batches(data_cfg, data_cfg.eval_split, batch_size, seed, mesh), mesh)
    n_train = int(jax.device_get(train[2].sum()))
    if k > n_train:
        raise ValueError(f'k={k} neighbours but only {n_train} train images')
    num_classes = int(max(jax.device_get(_top_label(*train[1:])), jax.device_get(_top_label(*test[1:])))) + 1
    scores = knn_class_scores(*train, test[0], k=k, temperature=temperature, num_classes=num_classes,
                              mesh=mesh, chunk=chunk)
    c = knn_counts(scores, test[1], test[2], k=k, mesh=mesh)
    return {'top1': 100.0 * c['top1'] / c['count'], 'top5': 100.0 * c['top5'] / c['count'],
            'train_count': n_train, 'eval_count': int(c['count']), 'num_classes': num_classes}


# ----------------------------------------------------------------------------------------
# The encoder of a run.
# ----------------------------------------------------------------------------------------

def classifier_of_run(config) -> tuple[str, dict[str, Any]]:
    """``(model name, constructor overrides)`` of the classifier whose pooled features a run is
    evaluated on: a fine-tuning run's own model; for a pre-training run, the classifier its model
    registered (``register_model(classifier=...)``, as fine-tuning and the benchmark use it) with
    the run's ``config.model.overrides`` that the classifier accepts (``embed_dim``, ``depth``,
    ``img_size``...; decoder and masking arguments dropped).

    Raises:
      ValueError: the pre-training model registers no classifier.
    """
    overrides = config.model.overrides.to_dict() if hasattr(config.model.overrides, 'to_dict') \
        else dict(config.model.overrides or {})
    if config.get('mode') != 'pretrain':
        return config.model.name, overrides
    name = registry.classifier_for(config.model.name)
    if name is None:
        raise ValueError(f'model {config.model.name!r} registers no classifier (register_model(..., '
                         'classifier=...)), so its encoder has no pooled features to evaluate by k-NN')
    accepted = registry._accepted_kwargs(registry.model_class(name))  # pylint: disable=protected-access
    return name, {key: v for key, v in overrides.items() if key in accepted}


def _build_classifier(config, image_size: int) -> nnx.Module:
    """The classifier of :func:`classifier_of_run`, built in host memory.

    Raises:
      ValueError: no classifier, or one that takes another image size than the data.
    """
    name, overrides = classifier_of_run(config)
    with jax.default_device(rundir.host_device()):
        model = registry.create_model(name, seed=int(config.get('seed', 0)), **overrides)
    size = getattr(model, 'img_size', None)
    if size is not None and int(np.max(size)) != int(image_size):
        raise ValueError(f'classifier {name!r} takes {size} px images but config.data.image_size={image_size}')
    return model


def _layout(model: nnx.Module, mesh, rules) -> dict:
    """``{'params', 'model_state'}`` shardings of ``model``'s variables by their logical axes."""
    _, pv, rv = nnx.split(model, nnx.Param, ...)
    out = {}
    for key, part in (('params', pv), ('model_state', rv)):
        specs = sharding_lib.spec_tree(sharding_lib.logical_axes_tree(part), nnx.to_pure_dict(part), rules, mesh)
        out[key] = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
    return out


def _place(model: nnx.Module, layout: dict, mesh) -> dict:
    """``model``'s variables on the mesh as ``layout``: arrays already on the mesh's devices (the
    train state's) are resharded there; any other value goes through NumPy (every process builds
    the same host values)."""
    _, params, model_state = rundir.split_variables(model)
    devices = set(mesh.devices.flat)

    def source(x):
        on_mesh = isinstance(x, jax.Array) and isinstance(x.sharding, NamedSharding) and x.sharding.device_set == devices
        return x if on_mesh else np.asarray(x)

    return jax.device_put(jax.tree.map(source, {'params': params, 'model_state': model_state}), layout)


def _settings(config, mesh, *, k=None, temperature=None, train_examples=None, batch_size=None) -> dict:
    """The k-NN settings of a run (flags, else ``config.knn``, else :data:`DEFAULTS`), checked
    against the mesh and the dataset.

    Raises:
      ValueError: a bad value (named), a batch size the batch axes do not divide, a dataset
        without labels, ``k`` or ``train_examples`` larger than the train split.
    """
    from jaxmim.data import datasets

    block = config.get('knn') or {}
    pick = lambda flag, key: flag if flag is not None else block.get(key, DEFAULTS[key])  # noqa: E731
    s = {'k': pick(k, 'k'), 'temperature': pick(temperature, 'temperature'),
         'train_examples': pick(train_examples, 'train_examples'), 'batch_size': pick(batch_size, 'batch_size')}
    flags = {'k': k, 'temperature': temperature, 'train_examples': train_examples, 'batch_size': batch_size}
    for key, value in s.items():   # a flag is named as a flag, a config value as its field
        config_lib.check_knn(ml_collections.ConfigDict({**DEFAULTS, key: value}),
                             prefix='--' if flags[key] is not None else 'config.knn.')
    if not s['batch_size']:
        s['batch_size'] = int(config.get('eval_batch_size') or config.batch_size)
    n = batch_size_divisor(mesh)   # a multiple of the processes' distinct parts (mesh.data_shards)
    if s['batch_size'] % n:
        raise ValueError(f'k-NN batch size {s["batch_size"]} (--batch_size / config.knn.batch_size) must be a '
                         f'multiple of {n} (the data x fsdp mesh axes, over which the processes split it)')
    data_cfg = config_lib.resolve_data_config(config)
    try:
        builder = datasets.get_dataset_builder(data_cfg.dataset, data_cfg.data_dir)
        features = builder.info.features
        if 'label' not in features:
            raise ValueError(f'config.data.dataset={data_cfg.dataset!r} has no label feature (features '
                             f'{sorted(features.keys())}); k-NN needs labelled train and eval splits')
        total = datasets.num_examples(data_cfg, data_cfg.train_split)
        datasets.num_examples(data_cfg, data_cfg.eval_split)
    except datasets.DatasetNotFoundError as e:
        raise ValueError(f'config.data.dataset={data_cfg.dataset!r}: {e}') from None
    name = lambda key: ('--' if flags[key] is not None else 'config.knn.') + key  # noqa: E731
    if s['train_examples'] > total:
        raise ValueError(f'{name("train_examples")}={s["train_examples"]} is larger than the train split '
                         f'{data_cfg.train_split!r} ({total} images)')
    used = s['train_examples'] or total
    where = f'{name("train_examples")}={used}' if s['train_examples'] else f'split {data_cfg.train_split!r}'
    if s['k'] > used:
        raise ValueError(f'{name("k")}={s["k"]} is larger than the {used} train images ({where}); lower k')
    return {**s, 'data': data_cfg}


def make_train_hook(config, mesh, rules: tuple, state: dict) -> Callable[[dict, int], dict] | None:
    """The pre-training loop's k-NN evaluation: ``hook(state, step) -> {'top1', 'top5'}`` (%)
    of the encoder in the train state's ``params`` / ``model_state`` (in memory: no checkpoint
    read), mapped onto the registered classifier by name as fine-tuning maps a checkpoint
    (:func:`jaxmim.rundir.load_variables`), with the settings of ``config.knn``. None when
    ``config.knn_every`` is 0. ``state`` (the initial train state) is mapped once here, so a
    mismatch fails before the first step.

    Raises:
      ValueError: as :func:`_settings`; no classifier; the state does not map onto it.
    """
    if int(config.get('knn_every', 0) or 0) <= 0:
        return None
    s = _settings(config, mesh)
    model = _build_classifier(config, s['data'].image_size)
    graphdef, init_params, init_rest = rundir.split_variables(model)
    init_params, init_rest = jax.tree.map(np.asarray, (init_params, init_rest))
    layout = _layout(model, mesh, rules)
    step_fn = make_feature_step(graphdef, mesh, layout, rules)

    def variables(state):
        clf = rundir.merge_variables(graphdef, init_params, init_rest)
        rundir.load_variables(clf, rundir.encoder_variables(state['params'], state['model_state']), 'the train state')
        return _place(clf, layout, mesh)

    variables(state)

    def hook(state: dict, step: int) -> dict:
        del step
        res = knn_accuracy(step_fn, variables(state), mesh, s['data'], k=s['k'], temperature=s['temperature'],
                           train_examples=s['train_examples'], batch_size=s['batch_size'], seed=int(config.seed))
        return {'top1': res['top1'], 'top5': res['top5']}

    return hook


# ----------------------------------------------------------------------------------------
# The command line.
# ----------------------------------------------------------------------------------------

def _checkpoint_step(workdir: str, step: int | None) -> int:
    directory = os.path.join(workdir, 'checkpoints')
    steps = sorted(int(n) for n in os.listdir(directory) if n.isdigit()) if os.path.isdir(directory) else []
    if not steps:
        raise ValueError(f'{workdir!r} has no checkpoint ({directory} holds no step directory)')
    if step is not None and step not in steps:
        raise ValueError(f'--step={step} is not a checkpoint of {workdir!r}; available: {steps}')
    return steps[-1] if step is None else step


def run_knn(workdir: str, *, k: int | None = None, temperature: float | None = None, step: int | None = None,
            train_examples: int | None = None, batch_size: int | None = None, chunk: int = DEFAULT_CHUNK,
            mesh_flag: str = 'dp', random_init: bool = False) -> dict:
    """k-NN accuracy of a run's checkpoint; writes ``<workdir>/knn.json`` (atomically) and
    returns its content. ``random_init``: the same classifier at its random initialisation
    (``config.seed``), no checkpoint read: the baseline a pre-trained encoder has to beat;
    written to ``<workdir>/knn_random.json``.

    A pre-training run is evaluated on its registered classifier's pooled features
    (:func:`classifier_of_run`, checkpoint loaded by :func:`jaxmim.rundir.load_pretrained`); a
    fine-tuning run on its own model's (raw weights, :func:`jaxmim.rundir.restore_model`). Data:
    the run's resolved data config; train split as the neighbour bank, eval split as queries.
    Unset settings come from ``config.knn`` (pre-training runs), else :data:`DEFAULTS`; the batch
    size then from ``eval_batch_size`` or ``batch_size``. ``mesh_flag``: as ``--mesh``
    (:func:`jaxmim.mesh.parse_mesh_flag`).

    Raises:
      ValueError: the workdir does not exist or has no ``config.json`` or no checkpoint (or not
        ``step``), no classifier, a dataset without labels, ``k`` larger than the train images,
        a bad setting (each named).
    """
    from jaxmim import mesh as mesh_lib

    if not os.path.isdir(workdir):
        raise ValueError(f'--workdir={workdir!r} does not exist')
    if not os.path.exists(os.path.join(workdir, 'config.json')):
        raise ValueError(f'--workdir={workdir!r} has no config.json: not a jaxmim run directory')
    config = rundir.load_run_config(workdir)
    if chunk < 1:
        raise ValueError(f'--chunk={chunk}: must be an integer >= 1')
    classifier_of_run(config)   # no classifier: named before anything is read
    step = 0 if random_init else _checkpoint_step(workdir, step)
    mesh_cfg = ml_collections.ConfigDict(mesh_lib.parse_mesh_flag(mesh_flag))
    mesh = mesh_lib.make_mesh(mesh_config=mesh_cfg)
    s = _settings(config, mesh, k=k, temperature=temperature, train_examples=train_examples, batch_size=batch_size)
    t0 = time.perf_counter()
    model = _build_classifier(config, s['data'].image_size)
    with jax.default_device(rundir.host_device()):
        if not random_init and config.get('mode') == 'pretrain':
            rundir.load_pretrained(model, workdir, step)
        elif not random_init:
            rundir.restore_model(model, workdir, step)
    rules = sharding_lib.rules_for(mesh_cfg)
    layout = _layout(model, mesh, rules)
    step_fn = make_feature_step(rundir.split_variables(model)[0], mesh, layout, rules)
    res = knn_accuracy(step_fn, _place(model, layout, mesh), mesh, s['data'], k=s['k'], temperature=s['temperature'],
                       train_examples=s['train_examples'], batch_size=s['batch_size'],
                       seed=int(config.get('seed', 0)), chunk=chunk)
    out = {**res, 'k': s['k'], 'temperature': s['temperature'], 'step': step, 'workdir': os.path.abspath(workdir),
           'model': classifier_of_run(config)[0], 'train_split': s['data'].train_split,
           'eval_split': s['data'].eval_split, 'batch_size': s['batch_size'], 'seconds': time.perf_counter() - t0,
           'random_init': random_init}
    if jax.process_index() == 0:
        path = os.path.join(workdir, 'knn_random.json' if random_init else RESULT_FILE)
        files.write_json(path, out)
    return out


def main(argv: list[str] | None = None) -> dict:
    """``python -m jaxmim.knn --workdir=RUN [--k] [--temperature] [--step] [--train_examples]
    [--batch_size] [--chunk] [--mesh]``: prints ``knn: top1=... top5=... (k=.., T=.., N train,
    M eval)`` and returns the result; a bad input prints one ``error:`` line and exits with status 2."""
    import argparse

    from jaxmim import resilience

    parser = argparse.ArgumentParser(prog='python -m jaxmim.knn', description=__doc__.split('\n\n')[0])
    parser.add_argument('--workdir', required=True, help='a pre-training or fine-tuning run directory')
    parser.add_argument('--k', type=int, default=None, help='neighbours (default config.knn.k, else 20)')
    parser.add_argument('--temperature', type=float, default=None, help='vote temperature (default 0.07)')
    parser.add_argument('--step', type=int, default=None, help='checkpoint step (default: latest)')
    parser.add_argument('--train_examples', type=int, default=None, help='first N train images (0: all)')
    parser.add_argument('--batch_size', type=int, default=None, help='global images per feature batch')
    parser.add_argument('--chunk', type=int, default=DEFAULT_CHUNK, help='eval images per similarity chunk')
    parser.add_argument('--mesh', default='dp', help="layout[:sizes] as jaxmim.summary's --mesh (default dp)")
    parser.add_argument('--random_init', action='store_true',
                        help='the same classifier at random initialisation (baseline; writes knn_random.json)')
    args = parser.parse_args(argv)
    try:
        res = run_knn(args.workdir, k=args.k, temperature=args.temperature, step=args.step,
                      train_examples=args.train_examples, batch_size=args.batch_size, chunk=args.chunk,
                      mesh_flag=args.mesh, random_init=args.random_init)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(resilience.EXIT_BAD_INPUT)
    print(f"knn: top1={res['top1']:.2f} top5={res['top5']:.2f} (k={res['k']}, T={res['temperature']:g}, "
          f"{res['train_count']} train, {res['eval_count']} eval)", flush=True)
    return res


if __name__ == '__main__':
    main()
