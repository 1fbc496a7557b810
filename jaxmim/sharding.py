"""Logical axis names on parameters and activations, and the rules that map them to mesh axes.

Model files name the role of each dimension of each parameter (``embed``, ``mlp``, ``heads`` ...)
and never a mesh axis; the run config maps those names to the axes of the device mesh
(``config.mesh.layout`` picks a preset list of rules, ``config.mesh.rules`` adds rules in front
of it). A user changes the layout of every model without touching a model file, as MaxText's
``logical_axis_rules`` and big_vision's ``sharding_rules`` do.

Parameters carry their names as the ``out_sharding`` metadata of the NNX variable (flax's
:func:`flax.nnx.with_partitioning` spelling), created with ``eager_sharding=False`` so that a
model is built as before outside any mesh; :func:`flax.nnx.get_partition_spec` reads them back.
:func:`axes` and :func:`with_axes` are the two spellings model files use.

The logical vocabulary (a dimension may also be ``None``: never sharded, e.g. a conv window):

================  ===================================================================
``embed``         token channels of the residual stream (ViT width, a Swin stage's C)
``mlp``           the hidden layer of a transformer MLP (``fc1`` out, ``fc2`` in)
``heads``         the attention inner width: ``q`` / fused ``qkv`` outputs, ``proj`` inputs
``kv``            a separate ``kv`` projection's output (PVT's spatial-reduction attention)
``classes``       a classifier's outputs
``pixels``        a pixel-regression head's outputs (MAE / SimMIM decoders, ``p*p*3`` values)
``conv_in``       a convolution kernel's input channels
``conv_out``      a convolution kernel's output channels
``tokens``        the token axis of position embeddings
``relpos``        rows of a relative-position bias table (replicated in every preset)
``norm``          LayerNorm / BatchNorm scale and bias (replicated in every preset)
``bias``          a Linear / Conv bias (replicated in every preset)
``batch``         the batch axis of activations (:func:`constrain`)
================  ===================================================================

Resolution (:func:`resolve`): rules are tried in order; a rule ``(name, mesh_axes)`` shards the
first dimension named ``name`` that is not yet decided, when every mesh axis it names is still
unused by this array and the dimension divides evenly by their size product; a rule
``(name, None)`` decides that dimension as replicated. Every dimension no rule decides is
replicated. So rule order is priority: the ``fsdp`` preset lists the wide names (``mlp``,
``heads``) before ``embed`` so that a weight is split along its largest dimension, and falls
back to the next name when a size does not divide (Swin's 96 * 2^k widths on 5 devices).

Sources: MaxText ``logical_axis_rules`` and ``assert_params_sufficiently_sharded``
(AI-Hypercomputer/maxtext ``src/MaxText/configs/base.yml``, ``maxtext_utils.py``); big_vision's
``fsdp`` tactic (google-research/big_vision ``big_vision/sharding.py``); Megatron-LM's column /
row split of the MLP and attention (Shoeybi et al. 2019, section 3).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
from typing import Any, Callable, Iterable, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxmim.tree_util import flatten_names

__all__ = ['LOGICAL_AXES', 'MESH_AXES', 'BATCH_AXES', 'PRESETS', 'axes', 'with_axes', 'rules_for', 'check_rules',
           'resolve', 'logical_axes_tree', 'spec_tree', 'constrain', 'activation_rules', 'replicated_above',
           'tree_bytes', 'ShardingReport', 'sharding_report', 'missing_axes', 'replicated_warning']

LOGICAL_AXES = ('embed', 'mlp', 'heads', 'kv', 'classes', 'pixels', 'conv_in', 'conv_out', 'tokens',
                'relpos', 'norm', 'bias', 'batch')
"""The logical names model files may use (see the module docstring)."""

MESH_AXES = ('data', 'fsdp', 'model')
"""The axes of every jaxmim mesh, in this order (:func:`jaxmim.mesh.make_mesh`): ``data`` (pure data
parallelism), ``fsdp`` (data parallelism whose state is sharded) and ``model`` (tensor parallelism)."""

BATCH_AXES = ('data', 'fsdp')
"""Mesh axes the batch is split over."""

Rules = tuple[tuple[str, Any], ...]

_FSDP_RULES: Rules = (
    ('mlp', 'fsdp'), ('heads', 'fsdp'), ('kv', 'fsdp'), ('classes', 'fsdp'), ('pixels', 'fsdp'),
    ('conv_out', 'fsdp'), ('embed', 'fsdp'), ('conv_in', 'fsdp'), ('tokens', 'fsdp'),
)

PRESETS: dict[str, Rules] = {
    # replicated state: pure data parallelism (the default; every rule maps to nothing)
    'dp': (),
    # parameters, gradients, optimizer moments and EMA split over `fsdp` along their widest named
    # dimension; XLA gathers each weight where a layer uses it
    'fsdp': _FSDP_RULES,
    # Megatron: MLP fc1 / attention qkv split by columns over `model`, fc2 / proj by rows (their
    # `mlp` / `heads` input), the other dimension over `fsdp`
    'fsdp_tp': (('mlp', 'model'), ('heads', 'model'), ('kv', 'model')) + _FSDP_RULES,
}
"""Named layouts (``config.mesh.layout``): lists of ``(logical name, mesh axis | tuple | None)``."""

_ACTIVATION_RULES: Rules = (('batch', BATCH_AXES),)


def axes(*names: str | None) -> dict:
    """The variable metadata naming the logical axes of a parameter, one name (or None) per
    dimension: ``nnx.Param(value, **axes('tokens', 'embed'))``, or as ``kernel_metadata=`` /
    ``bias_metadata=`` / ``scale_metadata=`` of flax layers. Not sharded at creation
    (``eager_sharding=False``): the rules of the run decide later.

    Raises:
      ValueError: a name outside :data:`LOGICAL_AXES`.
    """
    for n in names:
        if n is not None and n not in LOGICAL_AXES:
            raise ValueError(f'unknown logical axis name {n!r}; accepted: {list(LOGICAL_AXES)} or None')
    return {'out_sharding': tuple(names), 'eager_sharding': False}


def with_axes(init: Callable, *names: str | None) -> Callable:
    """``init`` (a ``jax.nn.initializers`` function) wrapped so the variable it fills carries the
    logical names ``names`` (:func:`flax.nnx.with_partitioning` with ``eager_sharding=False``)."""
    meta = axes(*names)
    return nnx.with_partitioning(init, meta['out_sharding'], eager_sharding=False)


# ----------------------------------------------------------------------------------------
# Rules.
# ----------------------------------------------------------------------------------------

def _as_axes(value) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def rules_for(mesh_config) -> Rules:
    """The rules of a run: ``mesh_config.rules`` (user rules, first) followed by the preset
    ``mesh_config.layout``, then the activation rule ``('batch', ('data', 'fsdp'))``.
    ``mesh_config`` is ``config.mesh`` (a ConfigDict or dict) or None (today's ``dp``).

    Raises:
      ValueError: an unknown layout, a malformed rule, an unknown logical name or mesh axis
        (:func:`check_rules`).
    """
    if mesh_config is None:
        return PRESETS['dp'] + _ACTIVATION_RULES
    layout = mesh_config.get('layout', 'dp')
    if layout not in PRESETS:
        raise ValueError(f'config.mesh.layout={layout!r} is not a layout; accepted: {sorted(PRESETS)}')
    user = tuple(tuple(r) for r in (mesh_config.get('rules') or ()))
    check_rules(user)
    return user + PRESETS[layout] + _ACTIVATION_RULES


def check_rules(rules: Iterable) -> None:
    """Each rule is ``(logical name, mesh axis | tuple of mesh axes | None)`` with a name of
    :data:`LOGICAL_AXES` and axes of :data:`MESH_AXES`.

    Raises:
      ValueError: naming ``config.mesh.rules``, the rule and what is accepted.
    """
    for rule in rules:
        if not isinstance(rule, (tuple, list)) or len(rule) != 2:
            raise ValueError(f'config.mesh.rules: {rule!r} is not a (logical name, mesh axis) pair')
        name, value = rule
        if name not in LOGICAL_AXES:
            raise ValueError(f'config.mesh.rules: unknown logical name {name!r} in {tuple(rule)!r}; '
                             f'accepted: {list(LOGICAL_AXES)}')
        for a in _as_axes(value) or ():
            if a not in MESH_AXES:
                raise ValueError(f'config.mesh.rules: unknown mesh axis {a!r} in {tuple(rule)!r}; '
                                 f'accepted: {list(MESH_AXES)} (or None: replicated)')


def _axis_sizes(mesh) -> dict[str, int]:
    return dict(zip(mesh.axis_names, mesh.devices.shape))


def resolve(names: Sequence[str | None] | None, shape: Sequence[int], rules: Rules, mesh) -> P:
    """The ``PartitionSpec`` of an array of ``shape`` whose dimensions have the logical ``names``
    (None: no names, replicated) under ``rules`` on ``mesh`` (see the module docstring).

    Raises:
      ValueError: ``names`` has another length than ``shape``.
    """
    if not names:
        return P()
    if len(names) != len(shape):
        raise ValueError(f'logical axes {tuple(names)} do not match the shape {tuple(shape)}')
    sizes = _axis_sizes(mesh)
    decided: list[Any] = [False] * len(shape)
    spec: list[Any] = [None] * len(shape)
    used: set[str] = set()
    for name, value in rules:
        mesh_axes = _as_axes(value)
        for i, n in enumerate(names):
            if n != name or decided[i]:
                continue
            if mesh_axes is None:
                decided[i] = True
                break
            if any(a not in sizes or a in used for a in mesh_axes):
                continue
            if shape[i] % math.prod(sizes[a] for a in mesh_axes):
                continue
            decided[i] = True
            spec[i] = mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes
            used.update(mesh_axes)
            break
    while spec and spec[-1] is None:
        spec.pop()
    return P(*spec)


def _is_var(x) -> bool:
    return isinstance(x, nnx.Variable)


def logical_axes_tree(state) -> Any:
    """The logical names of every variable of an ``nnx.State`` (or module), as a nested pure dict
    of tuples (None for a variable without names), for the pure-dict trees of
    :func:`jaxmim.rundir.split_variables`."""
    if isinstance(state, nnx.Module):
        state = nnx.state(state)

    def names(v):
        meta = v.get_metadata()
        out = meta.get('out_sharding')
        return tuple(out) if out else None

    tree = jax.tree.map(lambda v: v.replace(names(v)), state, is_leaf=_is_var)
    return nnx.to_pure_dict(tree)


def spec_tree(logical: Any, shapes: Any, rules: Rules, mesh) -> Any:
    """``PartitionSpec`` tree for a tree of logical names (:func:`logical_axes_tree`) and the
    matching tree of arrays / ``ShapeDtypeStruct`` ``shapes``."""
    return jax.tree.map(lambda s, n: resolve(n, s.shape, rules, mesh), shapes, logical,
                        is_leaf=lambda x: x is None or isinstance(x, tuple))


# ----------------------------------------------------------------------------------------
# Activations.
# ----------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Context(threading.local):
    mesh: Any = None
    rules: Rules = ()


_CONTEXT = _Context()


@contextlib.contextmanager
def activation_rules(mesh, rules: Rules):
    """Within this context (entered around the tracing of a step), :func:`constrain` pins
    activations to ``mesh`` by ``rules``; outside it :func:`constrain` is the identity."""
    old = (_CONTEXT.mesh, _CONTEXT.rules)
    _CONTEXT.mesh, _CONTEXT.rules = mesh, tuple(rules)
    try:
        yield
    finally:
        _CONTEXT.mesh, _CONTEXT.rules = old


def constrain(x: jax.Array, *names: str | None) -> jax.Array:
    """``x`` with a sharding constraint from its logical ``names`` (one per dimension, e.g.
    ``constrain(x, 'batch', None, None)`` for ``(B, L, C)`` tokens) under the rules of the
    enclosing :func:`activation_rules`; the identity outside one (eager use, tests). Model files
    call it at stage boundaries so the batch stays split over ``('data', 'fsdp')``.

    Raises:
      ValueError: the number of names differs from ``x.ndim``.
    """
    if len(names) != x.ndim:
        raise ValueError(f'constrain: {len(names)} names for an array of shape {x.shape}')
    mesh = _CONTEXT.mesh
    if mesh is None:
        return x
    spec = resolve(names, x.shape, _CONTEXT.rules, mesh)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


# ----------------------------------------------------------------------------------------
# Reports.
# ----------------------------------------------------------------------------------------

def _nbytes(x) -> int:
    return int(np.prod(x.shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize


def _shard_bytes(x, spec: P, mesh) -> int:
    """Bytes one device holds of array ``x`` laid out as ``spec`` on ``mesh``."""
    sizes = _axis_sizes(mesh)
    parts = 1
    for entry in spec:
        for a in _as_axes(entry) or ():
            parts *= sizes[a]
    return _nbytes(x) // parts


def tree_bytes(shapes: Any, specs: Any, mesh) -> tuple[int, int]:
    """``(bytes per device, replicated bytes)`` of a tree of arrays / ``ShapeDtypeStruct`` laid
    out by a matching tree of ``PartitionSpec`` on ``mesh`` (the per-device figure assumes even
    splits, which :func:`resolve` guarantees)."""
    leaves = jax.tree.leaves(shapes)
    spec_leaves = jax.tree.leaves(specs)   # a PartitionSpec is a leaf
    per_device = sum(_shard_bytes(x, s, mesh) for x, s in zip(leaves, spec_leaves))
    return per_device, sum(_nbytes(x) for x in leaves)


def replicated_above(shapes: Any, specs: Any, min_bytes: int) -> list[tuple[str, tuple[int, ...], int]]:
    """``(path, shape, bytes)`` of every array of at least ``min_bytes`` whose spec shards nothing,
    for the start-up warning of a sharded layout (``config.mesh.min_shard_bytes``)."""
    out = []
    spec_by_path = flatten_names(specs)
    for path, x in flatten_names(shapes).items():
        spec = spec_by_path.get(path, P())
        if _nbytes(x) >= min_bytes and all(e is None for e in spec):
            out.append((path, tuple(x.shape), _nbytes(x)))
    return out


@dataclasses.dataclass
class ShardingReport:
    """The layout of a train state: per parameter ``(path, shape, logical names, spec)`` and
    the bytes of parameters + optimizer state + EMA per device and replicated."""

    rows: list[tuple[str, tuple[int, ...], Any, P]]
    per_device_bytes: int
    replicated_bytes: int
    warnings: list[tuple[str, tuple[int, ...], int]]

    @property
    def ratio(self) -> float:
        """Per-device bytes over replicated bytes (1.0 for ``dp``, about 1/N for FSDP over N)."""
        return self.per_device_bytes / max(self.replicated_bytes, 1)

    def lines(self) -> list[str]:
        """The printed report: one line per parameter, then the byte totals."""
        mib = 2 ** 20
        width = max((len(r[0]) for r in self.rows), default=10)
        out = [f'{"parameter":<{width}}  {"shape":<22} {"logical axes":<34} spec']
        for path, shape, names, spec in self.rows:
            out.append(f'{path:<{width}}  {str(shape):<22} {str(names):<34} {spec}')
        for path, shape, nbytes in self.warnings:
            out.append(f'WARNING replicated: {path} {shape} ({nbytes / mib:.2f} MiB)')
        out.append(f'state bytes per device: {self.per_device_bytes / mib:.2f} MiB '
                   f'(replicated: {self.replicated_bytes / mib:.2f} MiB, ratio {self.ratio:.4f})')
        return out


def sharding_report(logical_params: Any, state_shapes: dict, state_specs: dict, mesh,
                    min_shard_bytes: int | None) -> ShardingReport:
    """The :class:`ShardingReport` of a train state (``{'params', 'opt_state', 'ema', ...}``
    shapes and specs, e.g. from :func:`jaxmim.steps.abstract_train_state`): rows for
    ``params`` (nested dicts, as :func:`jaxmim.rundir.split_variables` gives), byte totals over
    ``params``, ``opt_state`` and ``ema``, and the parameters of
    at least ``min_shard_bytes`` left replicated (None: no such list, e.g. for ``dp``)."""
    rows = []
    names_by_path = flatten_names(logical_params)
    spec_by_path = flatten_names(state_specs['params'])
    for path, x in flatten_names(state_shapes['params']).items():
        rows.append((path, tuple(x.shape), names_by_path.get(path), spec_by_path.get(path, P())))
    keys = [k for k in ('params', 'opt_state', 'ema') if k in state_shapes]
    per_device = replicated = 0
    for k in keys:
        d, r = tree_bytes(state_shapes[k], state_specs[k], mesh)
        per_device, replicated = per_device + d, replicated + r
    warn = ([] if min_shard_bytes is None
            else replicated_above(state_shapes['params'], state_specs['params'], min_shard_bytes))
    return ShardingReport(rows, per_device, replicated, warn)


def missing_axes(model: nnx.Module) -> list[str]:
    """Paths of the ``nnx.Param`` variables of ``model`` whose logical names are missing or do not
    have one name per dimension (every parameter of every jaxmim model must have them)."""
    out = []
    for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        names = v.get_metadata().get('out_sharding')
        if not names or len(names) != len(v.shape):
            out.append(f'{".".join(map(str, path))} {tuple(v.shape)} axes={names}')
    return out


def replicated_warning(layout, config, mesh) -> list[tuple[str, tuple[int, ...], int]]:
    """Logs a warning per parameter of at least ``config.mesh.min_shard_bytes`` that a sharded
    layout (not ``dp``) leaves replicated, with its path and shape; returns them.
    ``layout`` is a :class:`jaxmim.steps.StateLayout`."""
    from absl import logging

    mesh_config = config.get('mesh')
    if mesh_config is None or mesh_config.get('layout', 'dp') == 'dp':
        return []
    min_bytes = int(mesh_config.get('min_shard_bytes', 2 ** 20))
    rows = replicated_above(layout.shapes['params'], layout.specs['params'], min_bytes)
    for path, shape, nbytes in rows:
        logging.warning('config.mesh.layout=%s leaves parameter %s %s (%.2f MiB) replicated on every device '
                        '(no rule of config.mesh.rules / the layout splits it evenly over mesh %s)',
                        mesh_config.get('layout'), path, shape, nbytes / 2 ** 20,
                        dict(zip(mesh.axis_names, mesh.devices.shape)))
    return rows
