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
:class:`OmittedEntry`
    a model variable the layout deliberately does not hold (the decoder and mask token of a
    pre-training model exported as its encoder, e.g. an MAE run as a timm ViT): neither
    exported nor loaded (it keeps its value); :meth:`Source.omitted` lists them.

Every variable of the model must be covered by exactly one :class:`VariableEntry` or
:class:`OmittedEntry`; a source whose layout misses one is a converter bug
(:meth:`Source.entries` raises).

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

Library sources. Besides the seed repositories' own layouts (``Source.library == 'official'``),
a source may describe a model in the layout of a model *library*: ``'timm'`` (``timm.create_model``
state dicts) or ``'hf'`` (Hugging Face ``transformers`` ``save_pretrained`` folders). Such a source
lists the library's model names it stands for (``Source.library_models``: timm model names such as
``swin_tiny_patch4_window7_224``, transformers class names such as ``SwinForImageClassification``)
and how to go between them and jaxmim: ``library_kwargs_fn`` (a library model name -> the
``build_fn`` arguments of exactly that architecture, used to check that a run matches the named
model before exporting, see :func:`architecture_mismatches`), ``library_create_kwargs_fn`` (the
``build_fn`` arguments the library lets its user choose at creation, e.g. timm's ``img_size`` /
``num_classes``, read from a model), ``library_config_fn`` (a model -> the library's configuration
file, e.g. transformers' ``config.json``), ``library_import_fn`` (a library model name and its
configuration -> the jaxmim registry model, model overrides and method overrides of a run) and
``library_usage_fn`` (one line telling the user how to load the exported file in the library).
:func:`library_source` finds the source of a library model name (given a model, the one whose
layout describes it); :func:`library_models` lists the names a library accepts;
:func:`architecture_mismatches` / :func:`check_architecture` compare a model with a named library
architecture key by key; :func:`register_library_note` adds to the unknown-name error what a
library has no layout for. A library layout may describe a pre-training model by its encoder:
the decoder's variables are :class:`OmittedEntry` rows (not exported, kept on import). The family modules (e.g. ``convert/timm_layouts.py``,
``convert/hf_layouts.py``) register them like any other source; ``convert.export`` /
``convert.import`` select them with ``--format=timm --timm_model=NAME`` / ``--format=hf
--hf_model=CLASS``.

This module does not import PyTorch; it accepts ``torch.Tensor`` values when PyTorch is loaded.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = [
    'Layout', 'COPY', 'LINEAR', 'CONV2D', 'VariableEntry', 'BufferEntry', 'ConstantEntry', 'OmittedEntry', 'Entry',
    'Source', 'SOURCES', 'CORE_MODULES', 'register_source', 'get_source', 'list_sources', 'build',
    'state_dict', 'load_state_dict', 'unwrap_state_dict', 'describe', 'sources_for', 'torch_twin',
    'LIBRARIES', 'LIBRARY_NOTES', 'register_library_note', 'library_source', 'library_models', 'official_shapes', 'library_create_kwargs',
    'architecture_mismatches', 'check_architecture',
]


from convert._layout import (  # noqa: F401  (re-exported: the layouts, entry kinds and Source record)
    CONV2D, COPY, LIBRARIES, LINEAR, BufferEntry, ConstantEntry, Entry, Layout, OmittedEntry, Source, VariableEntry,
    _flat_variables, _get_path, _path_str, _set_path, _to_numpy)


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


LIBRARY_NOTES: dict[str, list[str]] = {}
"""``{library: [note, ...]}``: what a library has no layout for, added by the family modules with
:func:`register_library_note` and shown when a library model name is unknown."""


def register_library_note(library: str, note: str) -> None:
    """Adds ``note`` (e.g. which jaxmim models have no equivalent in the library) to the message of
    an unknown ``library`` model name (:func:`library_source`).

    Raises:
      ValueError: ``library`` not in :data:`LIBRARIES`.
    """
    if library not in LIBRARIES:
        raise ValueError(f'unknown library {library!r}; accepted: {list(LIBRARIES)}')
    if note not in LIBRARY_NOTES.setdefault(library, []):
        LIBRARY_NOTES[library].append(note)


def library_models(library: str) -> list[str]:
    """Sorted model names accepted for ``library`` (``'timm'``: timm model names, ``'hf'``:
    transformers class names): the union of the ``library_models`` of its sources.

    Raises:
      ValueError: ``library`` not in :data:`LIBRARIES`.
    """
    if library not in LIBRARIES:
        raise ValueError(f'unknown library {library!r}; accepted: {list(LIBRARIES)}')
    _discover_families()
    return sorted({m for src in SOURCES.values() if src.library == library for m in src.library_models})


def library_source(library: str, name: str, model: nnx.Module | None = None) -> Source:
    """The source of ``library`` whose ``library_models`` holds ``name`` and, given ``model``,
    whose entries describe ``model`` (several sources may share a name, e.g. a timm ViT name
    for both a classifier run and an MAE pre-training run, whose encoder it exports).

    Args:
      library: ``'timm'`` or ``'hf'`` (or ``'official'``, whose sources list no names).
      name: a timm model name (``swin_tiny_patch4_window7_224``) or a transformers class name
        (``SwinForImageClassification``).
      model: optional jaxmim model the source must accept (``Source.entries`` does not raise
        ``TypeError``).

    Returns:
      The first matching source in registration order.

    Raises:
      ValueError: unknown ``library``.
      KeyError: no source of ``library`` lists ``name`` (the message lists the accepted names).
      TypeError: sources list ``name`` but none describes ``model`` (the message names them and
        the model type).
    """
    accepted = library_models(library)
    candidates = [src for src in SOURCES.values() if src.library == library and name in src.library_models]
    if not candidates:
        flag = {'timm': '--timm_model', 'hf': '--hf_model'}.get(library, 'library model')
        notes = ''.join(f'; {note}' for note in LIBRARY_NOTES.get(library, []))
        raise KeyError(f'{flag}: unknown {library} model {name!r}; accepted: {accepted}{notes}')
    if model is None:
        return candidates[0]
    reasons = []
    for src in candidates:
        try:
            src.entries(model)
        except TypeError as err:
            reasons.append(f'{src.name}: {err}')
            continue
        return src
    raise TypeError(f'{library} model {name!r} cannot hold a {type(model).__name__}: ' + '; '.join(reasons))


def official_shapes(model: nnx.Module, source: str | Source) -> dict[str, tuple[int, ...]]:
    """``{official key: official shape}`` of ``model`` in ``source``'s layout, official order.
    Works on abstract models (``nnx.eval_shape``): only shapes are read.

    Raises:
      KeyError: unknown source. TypeError: ``model`` is not a model of ``source``.
    """
    return {row[0]: tuple(row[2]) for row in describe(model, source)}


def library_create_kwargs(model: nnx.Module, source: str | Source, library_model: str,
                          library_kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The keyword arguments to create ``library_model`` in its library so that it holds
    ``model``: ``source.library_create_kwargs_fn(model, library_model)`` (the settings the library
    lets its user choose, read from the model, e.g. timm's ``img_size`` / ``num_classes``)
    updated with ``library_kwargs`` (the user's further arguments, e.g. ``--timm_kwargs``).

    Raises:
      KeyError: unknown source. ValueError: a model setting the library cannot express (raised by
      the source's function, e.g. another LayerNorm eps).
    """
    src = get_source(source)
    out = dict(src.library_create_kwargs_fn(model, library_model)) if src.library_create_kwargs_fn else {}
    out.update(dict(library_kwargs or {}))
    return out


def architecture_mismatches(model: nnx.Module, source: str | Source, library_model: str,
                            library_kwargs: Mapping[str, Any] | None = None) -> list[str]:
    """How ``model`` differs from the library architecture ``library_model`` of ``source``: one
    string per official key that is missing (``'<key>: missing from the run'``), extra
    (``'<key>: not in <name>'``) or of another shape (``'<key>: run (a, b) vs <name> (c, d)'``).
    Empty when they match.

    The reference is ``source.build(**source.library_kwargs_fn(library_model, **create))`` with
    ``create = library_create_kwargs(model, source, library_model, library_kwargs)``, traced with
    ``nnx.eval_shape`` (no memory for the weights): the named architecture with the settings the
    library lets its user choose at creation taken from ``model`` and the user's ``library_kwargs``
    on top. Sources without ``library_kwargs_fn`` (architecture from the run or a configuration
    file) always match.

    Raises:
      KeyError: unknown source or library model. TypeError: ``model`` is not a model of
      ``source``, or ``library_kwargs`` the library's constructor does not take. ValueError:
      ``library_kwargs`` values jaxmim cannot represent.
    """
    src = get_source(source)
    if src.library_kwargs_fn is None:
        return []
    if library_model not in src.library_models:
        raise KeyError(f'source {src.name!r} does not describe {src.library} model {library_model!r}; '
                       f'accepted: {list(src.library_models)}')
    create = library_create_kwargs(model, src, library_model, library_kwargs)
    kwargs = dict(src.library_kwargs_fn(library_model, **create))
    reference = nnx.eval_shape(lambda: src.build(**kwargs))
    want = official_shapes(reference, src)
    have = official_shapes(model, src)
    out = [f'{k}: missing from the run' for k in want if k not in have]
    out += [f'{k}: not in {library_model}' for k in have if k not in want]
    out += [f'{k}: run {have[k]} vs {library_model} {want[k]}' for k in want if k in have and have[k] != want[k]]
    return out


def check_architecture(model: nnx.Module, source: str | Source, library_model: str,
                       library_kwargs: Mapping[str, Any] | None = None) -> None:
    """Raises if ``model`` is not the library architecture ``library_model`` (with
    ``library_kwargs``; see :func:`architecture_mismatches`).

    Raises:
      ValueError: one message listing every mismatched key and shape.
    """
    src = get_source(source)
    bad = architecture_mismatches(model, src, library_model, library_kwargs)
    if bad:
        extra = f' with {dict(library_kwargs)}' if library_kwargs else ''
        raise ValueError(f'the run\'s {type(model).__name__} is not {src.library} {library_model!r}{extra} '
                         f'({len(bad)} mismatched keys; name the other creation arguments the file is for, e.g. '
                         f'--timm_kwargs): ' + '; '.join(bad))


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
            out[e.key] = np.array(e.to_official(value), copy=True)
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
    chunks: dict[tuple[Any, ...], dict[int, np.ndarray]] = {}
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
        want = e.official_shape(current.shape)
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
        chunk = e.layout.from_official(value).astype(current.dtype)
        if e.part is None:
            updates.append((e.path, jnp.asarray(chunk)))
        else:   # one chunk of a split variable (VariableEntry.part): concatenated once all are read
            chunks.setdefault(e.path, {})[e.part[0]] = chunk
    for path, got in chunks.items():
        updates.append((path, jnp.asarray(np.concatenate([got[i] for i in sorted(got)], axis=-1))))

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


def sources_for(model: nnx.Module, *, with_twin: bool = False, library: str | None = 'official') -> list[str]:
    """Names of the sources whose layout describes ``model`` (their ``entries_fn`` accepts it),
    sorted; with ``with_twin`` only those that can build a PyTorch twin; ``library`` keeps the
    sources of that layout owner (``'official'``: the seed repositories, the default, so a model
    has one source; ``'timm'``, ``'hf'``; ``None``: all)."""
    out = []
    for name in list_sources():
        src = SOURCES[name]
        if (with_twin and src.twin_fn is None) or (library is not None and src.library != library):
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
            shape = e.official_shape(value.shape)
            how = ([e.layout.name] if e.layout.perm else []) + ([f'part {e.part[0]} of {e.part[1]}'] if e.part else [])
            side = f'{_path_str(e.path)} [{", ".join([type(var).__name__] + how)}]'
            rows.append((e.key, side, shape, str(value.dtype)))
        elif isinstance(e, BufferEntry):
            rows.append((e.key, f'(derived: {e.derived_from})', tuple(e.value.shape), str(e.value.dtype)))
        else:
            rows.append((e.key, f'(constant: {e.note})', tuple(e.value.shape), str(e.value.dtype)))
    return rows
