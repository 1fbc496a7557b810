"""Tensor layouts, state_dict entry kinds, the :class:`Source` record and small tree helpers of
:mod:`convert.official`.

Split out of :mod:`convert.official` (which re-exports every public name here, so
``official.VariableEntry`` etc. keep working); see its docstring for how they are used. Private
to the :mod:`convert` package (modules starting with ``_`` are not model families). Does not
import PyTorch; accepts ``torch.Tensor`` values when PyTorch is loaded.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np
from flax import nnx

__all__ = ['Layout', 'COPY', 'LINEAR', 'CONV2D', 'VariableEntry', 'BufferEntry', 'ConstantEntry', 'OmittedEntry',
           'Entry', 'LIBRARIES', 'Source']

LIBRARIES = ('official', 'timm', 'hf')
"""Layout owners of a :class:`Source`: the seed repositories (``'official'``), timm (``'timm'``) and
Hugging Face transformers (``'hf'``)."""


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
    the variable's dtype.

    ``part = (index, count)`` makes the official tensor chunk ``index`` of ``count`` equal chunks of
    the Flax variable's *last* axis, laid out with ``layout`` (Hugging Face stores a fused ``qkv``
    Dense ``(D, 3D)`` as three ``nn.Linear`` weights ``query`` / ``key`` / ``value`` ``(D, D)``);
    the ``count`` entries of one variable together cover it. Export slices, import concatenates;
    both exact. ``None``: the whole variable."""

    key: str
    path: tuple[Any, ...]
    layout: Layout = COPY
    part: tuple[int, int] | None = None

    def _chunk(self, flax_shape: Sequence[int]) -> tuple[tuple[int, ...], slice]:
        """(chunk shape, slice of the last axis) in the Flax layout."""
        shape = tuple(int(d) for d in flax_shape)
        if self.part is None:
            return shape, slice(None)
        index, count = self.part
        if not shape or shape[-1] % count:
            raise ValueError(f'{self.key}: a variable of shape {shape} does not split into {count} chunks '
                             'along its last axis')
        width = shape[-1] // count
        return shape[:-1] + (width,), slice(index * width, (index + 1) * width)

    def official_shape(self, flax_shape: Sequence[int]) -> tuple[int, ...]:
        """The official shape of this entry for a variable of Flax shape ``flax_shape``."""
        return self.layout.official_shape(self._chunk(flax_shape)[0])

    def to_official(self, value: np.ndarray) -> np.ndarray:
        """The whole Flax variable -> this entry's official tensor (C-contiguous copy)."""
        return self.layout.to_official(np.asarray(value)[..., self._chunk(value.shape)[1]])


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


@dataclasses.dataclass(frozen=True)
class OmittedEntry:
    """A variable of the model at state path ``path`` that the layout does not hold, e.g. the
    decoder of a pre-training model whose encoder a library layout describes (timm's MAE weights
    are the encoder alone). Not exported; on import the variable keeps its value. ``note`` says
    why (for messages). Returned by :meth:`Source.omitted`, never by :meth:`Source.entries`."""

    path: tuple[Any, ...]
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
      entries_fn: ``entries_fn(model) -> list[Entry | OmittedEntry]``: the official state_dict
        entries of a model built by ``build_fn`` (or an equivalent registry model), in the
        official order, plus an :class:`OmittedEntry` per model variable the layout does not
        hold; raises ``TypeError`` for another model type.
      method: the jaxmim MIM method (``jaxmim.methods``) whose pre-training model this source
        describes, or ``None`` for a classifier; tells the import CLI which kind of run to write.
      twin_fn: optional ``twin_fn(model) -> torch.nn.Module``: the family's pure-PyTorch twin
        with the same configuration as the jaxmim ``model`` (weights arbitrary; :func:`torch_twin`
        loads them). The twin follows the jaxmim call convention: a classifier maps NCHW images
        to logits; a pre-training model is called ``twin(images, **inputs)`` with the jaxmim
        model's masking inputs (``input_keys``) as tensors and returns the loss or a dict with
        ``'loss'``. Used by ``jaxmim.benchmark --compare_torch``.
      library: whose layout the entries follow: ``'official'`` (the seed repository named in
        ``reference``), ``'timm'`` or ``'hf'`` (transformers); see :data:`LIBRARIES`.
      library_models: the library's model names this source stands for (timm model names for
        ``--timm_model``, transformers class names for ``--hf_model``); empty for official sources.
      library_kwargs_fn: ``library_kwargs_fn(name, **create_kwargs) -> dict``: the ``build_fn``
        arguments of exactly the named library architecture (e.g. timm
        ``swin_base_patch4_window7_224`` -> ``embed_dim=128, depths=(2, 2, 18, 2), ...``), with the
        library's creation arguments ``create_kwargs`` (e.g. ``timm.create_model(name,
        **create_kwargs)``) applied; used by :func:`architecture_mismatches` and to document the
        architecture. ``None`` when the architecture comes from the run or a configuration file
        (transformers' ``config.json``).
      library_create_kwargs_fn: ``library_create_kwargs_fn(model, name) -> dict``: the library's
        creation arguments of ``model`` that the library lets its user choose for the named model
        (timm: ``img_size``, ``num_classes``, ``window_size``, ``global_pool`` passed to
        ``timm.create_model``); raises ``ValueError`` for a model setting the library cannot
        express. See :func:`library_create_kwargs`.
      library_config_fn: ``library_config_fn(model, name) -> dict``: the library's configuration
        file of ``model`` as the named class (transformers: the ``config.json`` dict); export to
        a directory writes it beside ``model.safetensors``.
      library_import_fn: ``library_import_fn(name, config) -> (jaxmim registry model name,
        model_overrides, method_overrides)`` for ``convert.import``; ``config`` is the library's
        configuration (transformers: the ``config.json`` dict of a ``save_pretrained`` folder;
        timm: the ``timm.create_model`` keyword arguments, ``{}`` by default) or ``None``.
      import_model_overrides: model constructor overrides ``convert.import`` applies before the
        user's ``--model_overrides`` so that an imported checkpoint runs as the official code ran
        it where a registry model's training default differs (GreenMIM: the official decoder
        placement).
      library_usage_fn: ``library_usage_fn(model, name, **create_kwargs) -> str``: one line
        telling the user how to load the exported file in the library (printed by
        ``convert.export``; ``create_kwargs`` from :func:`library_create_kwargs`, none for
        sources without ``library_create_kwargs_fn``).
    """

    name: str
    reference: str
    build_fn: Callable[..., nnx.Module]
    entries_fn: Callable[[nnx.Module], list[Entry]]
    method: str | None = None
    twin_fn: Callable[[nnx.Module], Any] | None = None
    library: str = 'official'
    library_models: tuple[str, ...] = ()
    library_kwargs_fn: Callable[..., dict] | None = None
    library_create_kwargs_fn: Callable[[nnx.Module, str], dict] | None = None
    library_config_fn: Callable[[nnx.Module, str], dict] | None = None
    library_import_fn: Callable[[str, Mapping | None], tuple[str, dict, dict]] | None = None
    library_usage_fn: Callable[..., str] | None = None
    import_model_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.library not in LIBRARIES:
            raise ValueError(f'source {self.name!r}: library must be one of {list(LIBRARIES)}, got {self.library!r}')
        object.__setattr__(self, 'library_models', tuple(self.library_models))

    def build(self, *, rngs: nnx.Rngs | None = None, **kwargs: Any) -> nnx.Module:
        """Builds the jaxmim model (see :func:`build`)."""
        return self.build_fn(rngs=rngs if rngs is not None else nnx.Rngs(0), **kwargs)

    def entries(self, model: nnx.Module) -> list[Entry]:
        """Official state_dict entries of ``model`` in official order, checked to cover every
        variable of the model (all collections: Param, BatchStat, Buffer, ...) exactly once,
        counting the omitted ones (:meth:`omitted`), which are not returned.

        Raises:
          TypeError: ``model`` is not a model of this source.
          RuntimeError: the layout misses or duplicates a model variable, maps a path the model
            lacks, or repeats an official key (a converter bug).
        """
        return self._checked(model)[0]

    def omitted(self, model: nnx.Module) -> list[OmittedEntry]:
        """The variables of ``model`` this layout does not hold (see :class:`OmittedEntry`),
        after the checks of :meth:`entries`."""
        return self._checked(model)[1]

    def _checked(self, model: nnx.Module) -> tuple[list[Entry], list[OmittedEntry]]:
        rows = self.entries_fn(model)
        entries = [e for e in rows if not isinstance(e, OmittedEntry)]
        omitted = [e for e in rows if isinstance(e, OmittedEntry)]
        keys = [e.key for e in entries]
        if len(set(keys)) != len(keys):
            dup = sorted({k for k in keys if keys.count(k) > 1})
            raise RuntimeError(f'source {self.name!r}: duplicate official keys in the layout: {dup}')
        variables = _flat_variables(model)
        parts: dict[tuple[Any, ...], list[Any]] = {}
        for e in entries:
            if isinstance(e, VariableEntry):
                parts.setdefault(e.path, []).append(e.part)
        for e in omitted:
            parts.setdefault(e.path, []).append(None)
        covered = list(parts)
        missing = sorted(f'{_path_str(p)} ({type(variables[p]).__name__})' for p in set(variables) - set(covered))
        extra = sorted(_path_str(p) for p in set(covered) - set(variables))
        # a variable is covered once: by one whole entry, or by chunks 0..count-1 of one split
        twice = sorted(_path_str(p) for p, got in parts.items()
                       if got != [None] and (None in got or sorted(got) != [(i, got[0][1]) for i in range(got[0][1])]))
        if missing or extra or twice:
            raise RuntimeError(f'source {self.name!r}: layout does not match the model: unmapped model '
                               f'variables {missing}, mapped paths not in the model {extra}, paths '
                               f'mapped twice {twice}')
        return entries, omitted

    def key_map(self, model: nnx.Module) -> dict[str, tuple[Any, ...] | None]:
        """``{official key: NNX state path}`` in official order; derived buffers and constants map
        to ``None``."""
        return {e.key: (e.path if isinstance(e, VariableEntry) else None) for e in self.entries(model)}



"""Layout owners of a :class:`Source`: the seed repositories (``'official'``), timm (``'timm'``) and
Hugging Face transformers (``'hf'``)."""

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
