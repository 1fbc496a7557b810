"""Official PyTorch state_dicts <-> jaxmim Flax NNX models: the generic machinery.

Three entry points, each taking the name of a *source* (an official model definition)::

    from convert import official
    model = official.build('simmim_swin', img_size=224, embed_dim=128, depths=[2, 2, 18, 2],
                           num_heads=[4, 8, 16, 32], window_size=7, num_classes=1000)
    official.load_state_dict(model, 'simmim_swin', torch.load(path)['model'])   # strict
    sd = official.state_dict(model, 'simmim_swin')    # {official key: np.ndarray}, official order

A source is a :class:`Source` in the :data:`SOURCES` registry. It knows how to build the jaxmim
model from the official constructor arguments and how to list, for a built model, the official
``state_dict`` entries in the official order (:meth:`Source.entries`). Entry kinds:

:class:`VariableEntry`
    official key <-> the NNX variable at a state path (``nnx.Param``, ``nnx.BatchStat``,
    :class:`jaxmim.layers.Buffer`, any ``nnx.Variable``), with a :class:`Layout` (the axis
    permutation between the PyTorch and Flax layouts). Exported, and loaded with a strict shape
    check and a cast to the variable's dtype.
:class:`BufferEntry`
    a tensor the official code stores but jaxmim derives from the configuration (Swin's
    ``relative_position_index`` and ``attn_mask``): exported with its official value and dtype;
    on import the checkpoint's tensor must equal it; never loaded.
:class:`ConstantEntry`
    official-only bookkeeping with no jaxmim counterpart (BatchNorm ``num_batches_tracked``):
    written on export with a fixed value, ignored on import (present or absent, any value).

Every variable of the model must be covered by exactly one :class:`VariableEntry`; a source
whose layout misses one is a converter bug (:meth:`Source.entries` raises).

The model families live in the other modules of the :mod:`convert` package (one file per family,
e.g. ``convert/swin.py``, ``convert/vit.py``), each registering its sources with
:func:`register_source` when imported. This module names no model: the first call of
:func:`get_source` or :func:`list_sources` (hence of :func:`build`, :func:`state_dict`,
:func:`load_state_dict`) imports every module of the package that is not core machinery
(``pkgutil``; core = :data:`CORE_MODULES` and names starting with ``_``), so adding a family is
one new file.

Tensor layout rules (PyTorch's ``nn.Linear`` / ``nn.Conv2d`` weight layouts against Flax's
``nnx.Linear`` / ``nnx.Conv`` kernels): ``nn.Linear.weight`` (out, in) <-> Dense
``kernel`` (in, out) (a fused qkv Linear is a plain transpose too); ``nn.Conv2d.weight``
(O, I, kh, kw) <-> Conv ``kernel`` (kh, kw, I, O); LayerNorm / BatchNorm ``weight``/``bias`` <->
``scale``/``bias``; BatchNorm ``running_mean``/``running_var`` <-> ``nnx.BatchStat``
``mean``/``var``; every other tensor is copied as is. Transposes are exact, so conversion is
bit-preserving.

This module does not import PyTorch; it accepts ``torch.Tensor`` values when PyTorch is loaded.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import sys
from typing import Any, Callable, Mapping, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = [
    'Layout', 'COPY', 'LINEAR', 'CONV2D', 'VariableEntry', 'BufferEntry', 'ConstantEntry', 'Entry',
    'Source', 'SOURCES', 'CORE_MODULES', 'register_source', 'get_source', 'list_sources', 'build',
    'state_dict', 'load_state_dict', 'unwrap_state_dict', 'describe', 'sources_for', 'torch_twin',
]


# ------------------------------------------------------------------------------------------------
# Layouts and entries
# ------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Layout:
    """How one tensor is laid out in PyTorch relative to Flax: an axis permutation.

    ``perm`` maps the Flax array to the official (PyTorch) one: ``official = flax.transpose(perm)``;
    ``None`` means identical layouts. Transposes are exact, so conversion is bit-preserving.
    """

    name: str
    perm: tuple[int, ...] | None = None

    def to_official(self, x: np.ndarray) -> np.ndarray:
        """Flax-layout array -> official-layout array (C-contiguous copy)."""
        self._check_ndim(x.shape)
        return np.ascontiguousarray(x if self.perm is None else x.transpose(self.perm))

    def from_official(self, x: np.ndarray) -> np.ndarray:
        """Official-layout array -> Flax-layout array (C-contiguous)."""
        self._check_ndim(x.shape)
        return np.ascontiguousarray(x if self.perm is None else x.transpose(np.argsort(self.perm)))

    def official_shape(self, flax_shape: Sequence[int]) -> tuple[int, ...]:
        """The official shape of a tensor whose Flax shape is ``flax_shape``."""
        self._check_ndim(flax_shape)
        flax_shape = tuple(int(d) for d in flax_shape)
        return flax_shape if self.perm is None else tuple(flax_shape[i] for i in self.perm)

    def _check_ndim(self, shape: Sequence[int]) -> None:
        if self.perm is not None and len(shape) != len(self.perm):
            raise ValueError(f'layout {self.name!r} needs {len(self.perm)}-D tensors, got shape {tuple(shape)}')


COPY = Layout('copy')
"""Same layout in both frameworks (norm weight/bias, biases, running stats, tokens, position tables)."""
LINEAR = Layout('linear', (1, 0))
"""``nn.Linear.weight`` (out, in) <-> Dense ``kernel`` (in, out)."""
CONV2D = Layout('conv2d', (3, 2, 0, 1))
"""``nn.Conv2d.weight`` (O, I/groups, kh, kw) <-> Conv ``kernel`` (kh, kw, I/groups, O)."""


@dataclasses.dataclass(frozen=True)
class VariableEntry:
    """An official tensor held by a jaxmim variable: official key ``key`` <-> the ``nnx.Variable``
    (``nnx.Param``, ``nnx.BatchStat``, :class:`jaxmim.layers.Buffer`, ...) at state path ``path``
    of ``nnx.state(model)`` (e.g. ``('blocks', 1, 'attn', 'qkv', 'kernel')``), converted with
    ``layout``. Exported in the variable's dtype; loaded with a strict shape check and a cast to
    the variable's dtype."""

    key: str
    path: tuple[Any, ...]
    layout: Layout = COPY


@dataclasses.dataclass(frozen=True)
class BufferEntry:
    """A buffer the official code stores in its state_dict but jaxmim derives from the configuration.

    ``value`` is the exact tensor the official code would hold (its dtype included, e.g. int64
    ``relative_position_index``, float32 ``attn_mask``); ``derived_from`` says what it is computed
    from, for error messages. Exported as is; on import the checkpoint's tensor must equal it;
    never loaded.
    """

    key: str
    value: np.ndarray
    derived_from: str = ''


@dataclasses.dataclass(frozen=True)
class ConstantEntry:
    """Official-only bookkeeping with no jaxmim counterpart, e.g. BatchNorm ``num_batches_tracked``
    (int64 scalar). Exported as ``value``; ignored on import (it may be absent or hold anything)."""

    key: str
    value: np.ndarray
    note: str = ''


Entry = Union[VariableEntry, BufferEntry, ConstantEntry]


@dataclasses.dataclass(frozen=True)
class Source:
    """One official model definition.

    Attributes:
      name: registry name, e.g. ``'simmim_swin'``.
      reference: the official file and class this source follows (for documentation).
      build_fn: ``build_fn(rngs=nnx.Rngs, **official_kwargs) -> nnx.Module``; takes the official
        constructor's arguments as Python objects and raises ``ValueError``/``TypeError`` for
        configurations jaxmim cannot represent.
      entries_fn: ``entries_fn(model) -> list[Entry]``: the official state_dict entries of a model
        built by ``build_fn`` (or an equivalent registry model), in the official order; raises
        ``TypeError`` for another model type.
      method: the jaxmim MIM method (``jaxmim.methods``) whose pre-training model this source
        describes, or ``None`` for a classifier; tells the import CLI which kind of run to write.
      twin_fn: optional ``twin_fn(model) -> torch.nn.Module``: the family's pure-PyTorch twin
        with the same configuration as the jaxmim ``model`` (weights arbitrary; :func:`torch_twin`
        loads them). The twin follows the jaxmim call convention: a classifier maps NCHW images
        to logits; a pre-training model is called ``twin(images, **inputs)`` with the jaxmim
        model's masking inputs (``input_keys``) as tensors and returns the loss or a dict with
        ``'loss'``. Used by ``jaxmim.benchmark --compare_torch``.
    """

    name: str
    reference: str
    build_fn: Callable[..., nnx.Module]
    entries_fn: Callable[[nnx.Module], list[Entry]]
    method: str | None = None
    twin_fn: Callable[[nnx.Module], Any] | None = None

    def build(self, *, rngs: nnx.Rngs | None = None, **kwargs: Any) -> nnx.Module:
        """Builds the jaxmim model (see :func:`build`)."""
        return self.build_fn(rngs=rngs if rngs is not None else nnx.Rngs(0), **kwargs)

    def entries(self, model: nnx.Module) -> list[Entry]:
        """Official state_dict entries of ``model`` in official order, checked to cover every
        variable of the model (all collections: Param, BatchStat, Buffer, ...) exactly once.

        Raises:
          TypeError: ``model`` is not a model of this source.
          RuntimeError: the layout misses or duplicates a model variable, maps a path the model
            lacks, or repeats an official key (a converter bug).
        """
        entries = self.entries_fn(model)
        keys = [e.key for e in entries]
        if len(set(keys)) != len(keys):
            dup = sorted({k for k in keys if keys.count(k) > 1})
            raise RuntimeError(f'source {self.name!r}: duplicate official keys in the layout: {dup}')
        variables = _flat_variables(model)
        covered = [e.path for e in entries if isinstance(e, VariableEntry)]
        missing = sorted(f'{_path_str(p)} ({type(variables[p]).__name__})' for p in set(variables) - set(covered))
        extra = sorted(_path_str(p) for p in set(covered) - set(variables))
        twice = sorted({_path_str(p) for p in covered if covered.count(p) > 1})
        if missing or extra or twice:
            raise RuntimeError(f'source {self.name!r}: layout does not match the model: unmapped model '
                               f'variables {missing}, mapped paths not in the model {extra}, paths '
                               f'mapped twice {twice}')
        return entries

    def key_map(self, model: nnx.Module) -> dict[str, tuple[Any, ...] | None]:
        """``{official key: NNX state path}`` in official order; derived buffers and constants map
        to ``None``."""
        return {e.key: (e.path if isinstance(e, VariableEntry) else None) for e in self.entries(model)}


SOURCES: dict[str, Source] = {}
"""Registry of sources by name; a family module adds its sources with :func:`register_source`."""

CORE_MODULES = frozenset({'official', 'export', 'import', 'extract_backbone'})
"""Modules of the :mod:`convert` package that are machinery, not model families (modules whose
name starts with ``_`` are skipped too)."""

_discovered = False


def _discover_families() -> None:
    """Imports every family module of the :mod:`convert` package once (see the module docstring)."""
    global _discovered
    if _discovered:
        return
    package = __name__.rpartition('.')[0]
    if not package:   # loaded outside its package: only explicitly imported families exist
        _discovered = True
        return
    path = importlib.import_module(package).__path__
    _discovered = True
    try:
        for info in pkgutil.iter_modules(path):
            if info.name in CORE_MODULES or info.name.startswith('_'):
                continue
            importlib.import_module(f'{package}.{info.name}')
    except BaseException:
        _discovered = False
        raise


def register_source(source: Source) -> Source:
    """Adds ``source`` to :data:`SOURCES` and returns it.

    Raises:
      ValueError: a source of that name already exists.
    """
    if source.name in SOURCES:
        raise ValueError(f'conversion source {source.name!r} is already registered')
    SOURCES[source.name] = source
    return source


def get_source(source: str | Source) -> Source:
    """Returns the :class:`Source` named ``source`` (a :class:`Source` is returned unchanged).

    Raises:
      KeyError: unknown name (the message lists the known sources).
    """
    if isinstance(source, Source):
        return source
    _discover_families()
    if source not in SOURCES:
        raise KeyError(f'unknown conversion source {source!r}; known: {list_sources()}')
    return SOURCES[source]


def list_sources() -> list[str]:
    """Sorted names of the registered sources (family modules are imported first)."""
    _discover_families()
    return sorted(SOURCES)


# ------------------------------------------------------------------------------------------------
# Generic API
# ------------------------------------------------------------------------------------------------

def build(source: str | Source, *, rngs: nnx.Rngs | None = None, **kwargs: Any) -> nnx.Module:
    """Builds the jaxmim NNX model configured exactly like the official constructor call.

    Args:
      source: a name from :func:`list_sources`.
      rngs: initialisation RNG streams (default ``nnx.Rngs(0)``). Not an official argument.
      **kwargs: the official constructor's arguments as Python objects (per source: see the
        ``build_*`` function of its family module, e.g. ``convert.swin.build_simmim_swin``).

    Returns:
      The model with freshly initialised float32 variables.

    Raises:
      KeyError: unknown source. ValueError / TypeError: arguments jaxmim cannot represent.
    """
    return get_source(source).build(rngs=rngs, **kwargs)


def state_dict(model: nnx.Module, source: str | Source) -> dict[str, np.ndarray]:
    """Exports ``model`` as an official state_dict.

    Returns:
      ``{official key: np.ndarray}`` with exactly the official keys, in the official order
      (``torch.nn.Module.state_dict()`` order: a module's parameters, then its buffers, then its
      children in registration order), in the official layouts; variables keep their dtype
      (float32), derived buffers and constants have the official dtypes (``relative_position_index``
      int64, ``attn_mask`` float32, ``num_batches_tracked`` int64). Arrays are fresh, writable and
      C-contiguous, so ``{k: torch.from_numpy(v)}`` loads with
      ``torch_model.load_state_dict(..., strict=True)``.

    Raises:
      KeyError: unknown source. TypeError: ``model`` is not a model of ``source``.
    """
    src = get_source(source)
    entries = src.entries(model)
    pure = nnx.to_pure_dict(nnx.state(model))
    out: dict[str, np.ndarray] = {}
    for e in entries:
        if isinstance(e, VariableEntry):
            value = np.asarray(jax.device_get(_get_path(pure, e.path)))
            out[e.key] = np.array(e.layout.to_official(value), copy=True)
        else:
            out[e.key] = np.array(e.value, copy=True)
    return out


def load_state_dict(model: nnx.Module, source: str | Source, state_dict: Mapping[str, Any], *,
                    require_buffers: bool = True) -> nnx.Module:
    """Loads an official state_dict into ``model`` in place, strictly.

    Args:
      model: a model of ``source`` (e.g. from :func:`build`), updated in place.
      source: a name from :func:`list_sources`.
      state_dict: ``{official key: tensor}`` with ``torch.Tensor`` (any device, bfloat16 included)
        or array-like values in the official layouts. A checkpoint container is unwrapped and a
        DDP ``'module.'`` prefix stripped first (see :func:`unwrap_state_dict`).
      require_buffers: when False, derived buffers (:class:`BufferEntry`, e.g.
        ``relative_position_index``, ``attn_mask``) may be absent (timm-style files drop them);
        present ones are still checked.

    Every :class:`VariableEntry` (parameters, BatchNorm running statistics, fixed buffers such as
    MAE's sin-cos ``pos_embed``) is shape-checked in the official layout, transposed to the Flax
    layout and cast to the variable's dtype; a floating variable needs a floating tensor, an
    integer variable an integer one. Derived buffers are never loaded: each is recomputed from
    the model's configuration and compared exactly with the checkpoint's; a difference means the
    checkpoint was made with another configuration and is an error. :class:`ConstantEntry` keys
    (``num_batches_tracked``) are accepted and ignored.

    Returns:
      ``model`` (for chaining).

    Raises:
      ValueError: one error listing *all* problems: missing keys, unexpected keys, mis-shaped keys
        (checkpoint shape vs expected shape, both in the official layout), values of the wrong
        kind, and buffers that differ from the recomputed ones. Nothing is written to the model
        when it is raised.
      KeyError: unknown source. TypeError: ``model`` is not a model of ``source``, or
        ``state_dict`` is not a mapping.
    """
    src = get_source(source)
    sd = unwrap_state_dict(state_dict)
    entries = src.entries(model)
    state = nnx.state(model)
    pure = nnx.to_pure_dict(state)

    expected = {e.key for e in entries}
    missing: list[str] = []
    unexpected = [k for k in sd if k not in expected]
    misshaped: list[str] = []
    invalid: list[str] = []
    updates: list[tuple[tuple[Any, ...], jax.Array]] = []
    for e in entries:
        if isinstance(e, ConstantEntry):
            continue
        if e.key not in sd:
            if isinstance(e, VariableEntry) or require_buffers:
                missing.append(e.key)
            continue
        try:
            value = _to_numpy(sd[e.key])
        except (TypeError, ValueError) as err:
            invalid.append(f'{e.key}: cannot convert to an array ({err})')
            continue
        if isinstance(e, BufferEntry):
            if value.shape != e.value.shape:
                misshaped.append(f'{e.key}: checkpoint {value.shape} vs expected {e.value.shape}')
            elif not np.array_equal(value.astype(e.value.dtype, copy=False), e.value):
                invalid.append(f'{e.key}: buffer differs from the one recomputed for this model '
                               f'({e.derived_from}); the checkpoint was made with another configuration')
            continue
        current = _get_path(pure, e.path)
        want = e.layout.official_shape(current.shape)
        if value.shape != want:
            misshaped.append(f'{e.key}: checkpoint {value.shape} vs expected {want}')
            continue
        floating = jnp.issubdtype(current.dtype, jnp.floating)
        if floating and not jnp.issubdtype(value.dtype, jnp.floating):
            invalid.append(f'{e.key}: floating variable {_path_str(e.path)} given non-floating dtype {value.dtype}')
            continue
        if not floating and not jnp.issubdtype(value.dtype, jnp.integer):
            invalid.append(f'{e.key}: {current.dtype} variable {_path_str(e.path)} given dtype {value.dtype}')
            continue
        updates.append((e.path, jnp.asarray(e.layout.from_official(value).astype(current.dtype))))

    if missing or unexpected or misshaped or invalid:
        lines = [f'official.load_state_dict(source={src.name!r}): the state_dict does not match the model '
                 f'({src.reference}); shapes are in the official (PyTorch) layout.']
        for title, items in (('missing keys', missing), ('unexpected keys', unexpected),
                             ('mis-shaped keys', misshaped), ('invalid values', invalid)):
            if items:
                lines.append(f'  {title} ({len(items)}):')
                lines += [f'    {item}' for item in items]
        raise ValueError('\n'.join(lines))

    for path, value in updates:
        _set_path(pure, path, value)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)
    return model


def sources_for(model: nnx.Module, *, with_twin: bool = False) -> list[str]:
    """Names of the sources whose layout describes ``model`` (their ``entries_fn`` accepts it),
    in registration order; with ``with_twin`` only those that can build a PyTorch twin."""
    out = []
    for name in list_sources():
        src = SOURCES[name]
        if with_twin and src.twin_fn is None:
            continue
        try:
            src.entries(model)
        except TypeError:
            continue
        out.append(name)
    return out


def torch_twin(model: nnx.Module, source: str | Source | None = None):
    """The pure-PyTorch twin of ``model`` holding ``model``'s weights (strict ``load_state_dict``).

    Args:
      model: a jaxmim model.
      source: the source to use; ``None``: the first of :func:`sources_for` ``(model,
        with_twin=True)``.

    Returns:
      ``(twin, source_name)``; the twin is in train mode, float32, on the CPU.

    Raises:
      LookupError: no registered source describes ``model`` with a twin.
      ValueError: ``source`` has no ``twin_fn``.
    """
    import torch
    if source is None:
        names = sources_for(model, with_twin=True)
        if not names:
            raise LookupError(f'no conversion source with a PyTorch twin describes a {type(model).__name__}; '
                              f'sources that have one: {[n for n in list_sources() if SOURCES[n].twin_fn]}')
        source = names[0]
    src = get_source(source)
    if src.twin_fn is None:
        raise ValueError(f'source {src.name!r} has no PyTorch twin (twin_fn)')
    twin = src.twin_fn(model)
    sd = {k: torch.from_numpy(np.array(v)) for k, v in state_dict(model, src).items()}
    twin.load_state_dict(sd, strict=True)
    return twin.train(), src.name


def unwrap_state_dict(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Returns the flat state_dict inside a checkpoint object.

    * A container ``{'model': sd, ...}`` (official Swin / SimMIM / MAE checkpoints, also holding
      ``optimizer``, ``lr_scheduler``, ...) or ``{'state_dict': sd, ...}`` is unwrapped: the value
      under ``'model'`` (else ``'state_dict'``) is used when it is itself a mapping.
    * A DDP prefix ``'module.'`` is stripped when *every* key carries it (a partial prefix is left
      alone, so those keys surface as unexpected).

    Raises:
      TypeError: ``obj`` is not a mapping.
    """
    if not isinstance(obj, Mapping):
        raise TypeError(f'expected a state_dict mapping, got {type(obj).__name__}')
    for container_key in ('model', 'state_dict'):
        if isinstance(obj.get(container_key), Mapping):
            obj = obj[container_key]
            break
    sd = dict(obj)
    if sd and all(isinstance(k, str) and k.startswith('module.') for k in sd):
        sd = {k[len('module.'):]: v for k, v in sd.items()}
    return sd


def describe(model: nnx.Module, source: str | Source) -> list[tuple[str, str, tuple[int, ...], str]]:
    """One row per official key, in official order: ``(official key, jaxmim side, official shape,
    dtype)``. The jaxmim side is the dotted variable path followed by its collection, e.g.
    ``'blocks.0.attn.qkv.kernel [Param, linear]'``, or ``'(derived: ...)'`` for a derived buffer,
    ``'(constant: ...)'`` for bookkeeping.

    Raises:
      KeyError: unknown source. TypeError: ``model`` is not a model of ``source``.
    """
    src = get_source(source)
    entries = src.entries(model)
    variables = _flat_variables(model)
    rows = []
    for e in entries:
        if isinstance(e, VariableEntry):
            var = variables[e.path]
            value = var.get_value() if hasattr(var, 'get_value') else var.value
            shape = e.layout.official_shape(value.shape)
            side = f'{_path_str(e.path)} [{type(var).__name__}{", " + e.layout.name if e.layout.perm else ""}]'
            rows.append((e.key, side, shape, str(value.dtype)))
        elif isinstance(e, BufferEntry):
            rows.append((e.key, f'(derived: {e.derived_from})', tuple(e.value.shape), str(e.value.dtype)))
        else:
            rows.append((e.key, f'(constant: {e.note})', tuple(e.value.shape), str(e.value.dtype)))
    return rows


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------

def _to_numpy(value: Any) -> np.ndarray:
    """torch.Tensor (any device/dtype) or array-like -> np.ndarray, without importing torch."""
    torch = sys.modules.get('torch')
    if torch is not None and isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        if t.dtype == torch.bfloat16:
            t = t.float()
        return t.numpy()
    arr = np.asarray(value)
    if arr.dtype == object:
        raise TypeError(f'unsupported value of type {type(value).__name__}')
    return arr


def _flat_variables(model: nnx.Module) -> dict[tuple[Any, ...], nnx.Variable]:
    return {tuple(path): var for path, var in nnx.to_flat_state(nnx.state(model))}


def _get_path(tree: Mapping, path: tuple[Any, ...]) -> Any:
    for p in path:
        tree = tree[p]
    return tree


def _set_path(tree: dict, path: tuple[Any, ...], value: Any) -> None:
    for p in path[:-1]:
        tree = tree[p]
    tree[path[-1]] = value


def _path_str(path: tuple[Any, ...]) -> str:
    return '.'.join(str(p) for p in path)
