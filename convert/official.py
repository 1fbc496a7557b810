"""Official PyTorch checkpoints <-> jaxmim Flax NNX models.

Three entry points, each taking the name of a *source* (an official model definition)::

    from convert import official
    model = official.build('simmim_swin', img_size=224, embed_dim=128, depths=[2, 2, 18, 2],
                           num_heads=[4, 8, 16, 32], window_size=7, num_classes=1000)
    official.load_state_dict(model, 'simmim_swin', torch.load(path)['model'])   # strict
    sd = official.state_dict(model, 'simmim_swin')    # {official key: np.ndarray}, official order

Sources (see :func:`list_sources`):

``'simmim_swin'``
    ``SwinTransformer(...)`` of ``microsoft/SimMIM@d3e29bc models/swin_transformer.py`` (the
    classifier SimMIM fine-tunes). Built as :class:`jaxmim.models.swin.SwinTransformer`.
``'simmim_swin_pretrain'``
    ``SimMIM(encoder=SwinTransformerForSimMIM(...), encoder_stride=...)`` of
    ``microsoft/SimMIM@d3e29bc models/simmim.py``. Built as :class:`jaxmim.methods.simmim.SimMIM`
    around :class:`jaxmim.models.swin.SwinTransformerForSimMIM`.

Design: a source is a :class:`Source` in the :data:`SOURCES` registry. It knows how to build the
jaxmim model from the official constructor arguments and how to list, for a built model, the
official ``state_dict`` entries in the official order (:meth:`Source.entries`). Each entry is
either a :class:`ParamEntry` (official key <-> NNX state path plus a :class:`Layout`, the axis
permutation between the PyTorch and Flax tensor layouts) or a :class:`BufferEntry` (a tensor the
official code stores but derives from the configuration; it is written on export and checked,
never loaded, on import). Export, import, strictness and error reporting are generic; a new model
family adds one :class:`Source` with :func:`register_source`.

Tensor layout rules (spec ``pytorch_layouts.md`` §7): ``nn.Linear.weight`` (out, in) <-> Dense
``kernel`` (in, out); ``nn.Conv2d.weight`` (O, I, kh, kw) <-> Conv ``kernel`` (kh, kw, I, O);
LayerNorm ``weight``/``bias`` <-> ``scale``/``bias``; every other parameter is copied as is.

This module does not import PyTorch; it accepts ``torch.Tensor`` values when PyTorch is loaded.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import warnings
from typing import Any, Callable, Mapping, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = [
    'Layout', 'COPY', 'LINEAR', 'CONV2D', 'ParamEntry', 'BufferEntry', 'Entry', 'Source', 'SOURCES',
    'register_source', 'get_source', 'list_sources', 'build', 'state_dict', 'load_state_dict',
    'unwrap_state_dict', 'build_simmim_swin', 'build_simmim_swin_pretrain', 'swin_entries',
    'simmim_swin_pretrain_entries',
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
"""Same layout in both frameworks (LayerNorm weight/bias, biases, tokens, position tables)."""
LINEAR = Layout('linear', (1, 0))
"""``nn.Linear.weight`` (out, in) <-> Dense ``kernel`` (in, out)."""
CONV2D = Layout('conv2d', (3, 2, 0, 1))
"""``nn.Conv2d.weight`` (O, I, kh, kw) <-> Conv ``kernel`` (kh, kw, I, O)."""


@dataclasses.dataclass(frozen=True)
class ParamEntry:
    """A learned tensor: official key ``key`` <-> NNX ``nnx.Param`` at state path ``path``
    (e.g. ``('layers', 0, 'blocks', 1, 'attn', 'qkv', 'kernel')``), converted with ``layout``."""

    key: str
    path: tuple[Any, ...]
    layout: Layout = COPY


@dataclasses.dataclass(frozen=True)
class BufferEntry:
    """A buffer the official code stores in its state_dict but derives from the configuration.

    ``value`` is the exact tensor the official code would hold (its dtype included, e.g. int64
    ``relative_position_index``, float32 ``attn_mask``); ``derived_from`` says what it is computed
    from, for error messages. Exported as is; on import the checkpoint's tensor must equal it.
    """

    key: str
    value: np.ndarray
    derived_from: str = ''


Entry = Union[ParamEntry, BufferEntry]


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
        built by ``build_fn``, in the official order; raises ``TypeError`` for another model type.
    """

    name: str
    reference: str
    build_fn: Callable[..., nnx.Module]
    entries_fn: Callable[[nnx.Module], list[Entry]]

    def build(self, *, rngs: nnx.Rngs | None = None, **kwargs: Any) -> nnx.Module:
        """Builds the jaxmim model (see :func:`build`)."""
        return self.build_fn(rngs=rngs if rngs is not None else nnx.Rngs(0), **kwargs)

    def entries(self, model: nnx.Module) -> list[Entry]:
        """Official state_dict entries of ``model`` in official order, checked to cover every
        variable of the model exactly once.

        Raises:
          TypeError: ``model`` is not a model of this source.
          RuntimeError: the layout misses or duplicates a model variable (a converter bug).
        """
        entries = self.entries_fn(model)
        keys = [e.key for e in entries]
        if len(set(keys)) != len(keys):
            raise RuntimeError(f'source {self.name!r}: duplicate official keys in the layout')
        variables = _flat_variables(model)
        others = sorted(_path_str(p) for p, v in variables.items() if not isinstance(v, nnx.Param))
        if others:
            raise RuntimeError(f'source {self.name!r}: the model holds non-parameter variables the '
                               f'converter does not know: {others}')
        covered = [e.path for e in entries if isinstance(e, ParamEntry)]
        missing = sorted(_path_str(p) for p in set(variables) - set(covered))
        extra = sorted(_path_str(p) for p in set(covered) - set(variables))
        if missing or extra or len(set(covered)) != len(covered):
            raise RuntimeError(f'source {self.name!r}: layout does not match the model '
                               f'(unmapped model params {missing}, mapped paths not in model {extra})')
        return entries

    def key_map(self, model: nnx.Module) -> dict[str, tuple[Any, ...] | None]:
        """``{official key: NNX state path}`` in official order; derived buffers map to ``None``."""
        return {e.key: (e.path if isinstance(e, ParamEntry) else None) for e in self.entries(model)}


SOURCES: dict[str, Source] = {}
"""Registry of sources by name; add one with :func:`register_source`."""


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
    if source not in SOURCES:
        raise KeyError(f'unknown conversion source {source!r}; known: {list_sources()}')
    return SOURCES[source]


def list_sources() -> list[str]:
    """Sorted names of the registered sources."""
    return sorted(SOURCES)


# ------------------------------------------------------------------------------------------------
# Generic API
# ------------------------------------------------------------------------------------------------

def build(source: str | Source, *, rngs: nnx.Rngs | None = None, **kwargs: Any) -> nnx.Module:
    """Builds the jaxmim NNX model configured exactly like the official constructor call.

    Args:
      source: a name from :func:`list_sources`.
      rngs: initialisation RNG streams (default ``nnx.Rngs(0)``). Not an official argument.
      **kwargs: the official constructor's arguments as Python objects (per source: see
        :func:`build_simmim_swin` and :func:`build_simmim_swin_pretrain`).

    Returns:
      The model with freshly initialised float32 parameters.

    Raises:
      KeyError: unknown source. ValueError / TypeError: arguments jaxmim cannot represent.
    """
    return get_source(source).build(rngs=rngs, **kwargs)


def state_dict(model: nnx.Module, source: str | Source) -> dict[str, np.ndarray]:
    """Exports ``model`` as an official state_dict.

    Returns:
      ``{official key: np.ndarray}`` with exactly the official keys, in the official order
      (``torch.nn.Module.state_dict()`` order: a module's parameters, then its buffers, then its
      children in registration order), in the official layouts; parameters keep the model dtype
      (float32), derived buffers have the official dtypes (``relative_position_index`` int64,
      ``attn_mask`` float32). Arrays are fresh, writable and C-contiguous, so
      ``{k: torch.from_numpy(v)}`` loads with ``torch_model.load_state_dict(..., strict=True)``.

    Raises:
      KeyError: unknown source. TypeError: ``model`` is not a model of ``source``.
    """
    src = get_source(source)
    entries = src.entries(model)
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    out: dict[str, np.ndarray] = {}
    for e in entries:
        if isinstance(e, ParamEntry):
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
      require_buffers: when False, derived buffers (``relative_position_index``, ``attn_mask``) may
        be absent (timm-style files drop them); present ones are still checked.

    Parameters are cast to the model's parameter dtype (float32) and transposed to the Flax
    layouts. Derived buffers are never loaded: each is recomputed from the model's configuration
    and compared exactly with the checkpoint's; a difference means the checkpoint was made with
    another window configuration (window size, image size, shift) and is an error.

    Returns:
      ``model`` (for chaining).

    Raises:
      ValueError: one error listing *all* problems: missing keys, unexpected keys, mis-shaped keys
        (checkpoint shape vs expected shape, both in the official layout), non-numeric or
        non-floating parameters, and buffers that differ from the recomputed ones. Nothing is
        written to the model when it is raised.
      KeyError: unknown source. TypeError: ``model`` is not a model of ``source``, or
        ``state_dict`` is not a mapping.
    """
    src = get_source(source)
    sd = unwrap_state_dict(state_dict)
    entries = src.entries(model)
    state = nnx.state(model, nnx.Param)
    pure = nnx.to_pure_dict(state)

    expected = {e.key for e in entries}
    missing: list[str] = []
    unexpected = [k for k in sd if k not in expected]
    misshaped: list[str] = []
    invalid: list[str] = []
    updates: list[tuple[tuple[Any, ...], jax.Array]] = []
    for e in entries:
        if e.key not in sd:
            if isinstance(e, ParamEntry) or require_buffers:
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
                               f'({e.derived_from}); the checkpoint was made with another window '
                               f'configuration')
            continue
        current = _get_path(pure, e.path)
        want = e.layout.official_shape(current.shape)
        if value.shape != want:
            misshaped.append(f'{e.key}: checkpoint {value.shape} vs expected {want}')
            continue
        if not jnp.issubdtype(value.dtype, jnp.floating):
            invalid.append(f'{e.key}: parameter has non-floating dtype {value.dtype}')
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


def unwrap_state_dict(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Returns the flat state_dict inside a checkpoint object.

    * A container ``{'model': sd, ...}`` (official Swin / SimMIM checkpoints, also holding
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


# ------------------------------------------------------------------------------------------------
# microsoft/SimMIM Swin Transformer
# ------------------------------------------------------------------------------------------------

def _layer_norm_eps(norm_layer: Any) -> float:
    """eps of an official ``norm_layer`` argument: ``nn.LayerNorm`` (1e-5) or
    ``functools.partial(nn.LayerNorm, eps=...)``; anything else raises ValueError."""
    if norm_layer is None:
        return 1e-5
    torch = sys.modules.get('torch')
    layer_norm = torch.nn.LayerNorm if torch is not None else None
    if layer_norm is not None and norm_layer is layer_norm:
        return 1e-5
    if (isinstance(norm_layer, functools.partial) and layer_norm is not None
            and norm_layer.func is layer_norm and not norm_layer.args):
        kw = dict(norm_layer.keywords)
        eps = float(kw.pop('eps', 1e-5))
        bad = {k: v for k, v in kw.items() if not (k in ('elementwise_affine', 'bias') and v is True)}
        if bad:
            raise ValueError(f'norm_layer: only the eps of torch.nn.LayerNorm can be changed, got {bad}')
        return eps
    raise ValueError('norm_layer must be torch.nn.LayerNorm or functools.partial(torch.nn.LayerNorm, '
                     f'eps=...), got {norm_layer!r}; jaxmim Swin supports LayerNorm only')


def _square(value: Any, name: str) -> int:
    """An official int-or-pair size argument as one int (jaxmim Swin is square)."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2 or int(value[0]) != int(value[1]):
            raise ValueError(f'{name} must be an int or a square pair, got {value!r} '
                             '(jaxmim Swin supports square images and patches only)')
        value = value[0]
    return int(value)


_SWIN_ARGS = ('img_size', 'patch_size', 'in_chans', 'num_classes', 'embed_dim', 'depths', 'num_heads',
              'window_size', 'mlp_ratio', 'qkv_bias', 'qk_scale', 'drop_rate', 'attn_drop_rate',
              'drop_path_rate', 'norm_layer', 'ape', 'patch_norm', 'use_checkpoint')


def _swin_kwargs(img_size=224, patch_size=4, in_chans=3, num_classes=1000, embed_dim=96,
                 depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7, mlp_ratio=4.0,
                 qkv_bias=True, qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.1,
                 norm_layer=None, ape=False, patch_norm=True, use_checkpoint=False,
                 **ignored) -> dict[str, Any]:
    """Official ``SwinTransformer.__init__`` arguments (same defaults; ``norm_layer=None`` stands
    for the default ``nn.LayerNorm``) -> jaxmim ``SwinTransformer`` arguments."""
    del use_checkpoint  # activation checkpointing only: no numerical effect
    if ignored:
        warnings.warn(f'official SwinTransformer ignores the arguments {sorted(ignored)}; so does jaxmim '
                      f'(accepted: {list(_SWIN_ARGS)})', stacklevel=5)
    return dict(img_size=_square(img_size, 'img_size'), patch_size=_square(patch_size, 'patch_size'),
                in_chans=int(in_chans), num_classes=int(num_classes), embed_dim=int(embed_dim),
                depths=tuple(int(d) for d in depths), num_heads=tuple(int(h) for h in num_heads),
                window_size=int(window_size), mlp_ratio=float(mlp_ratio), qkv_bias=bool(qkv_bias),
                qk_scale=qk_scale, drop_rate=float(drop_rate), attn_drop_rate=float(attn_drop_rate),
                drop_path_rate=float(drop_path_rate), ape=bool(ape), patch_norm=bool(patch_norm),
                norm_eps=_layer_norm_eps(norm_layer))


def build_simmim_swin(*, rngs: nnx.Rngs, **kwargs: Any) -> nnx.Module:
    """Source ``'simmim_swin'``: ``SwinTransformer(**kwargs)`` of
    ``microsoft/SimMIM@d3e29bc models/swin_transformer.py:485-490``, as
    :class:`jaxmim.models.swin.SwinTransformer`.

    Accepted arguments and defaults are the official ones: img_size 224, patch_size 4 (int or a
    square pair), in_chans 3, num_classes 1000 (0: no head), embed_dim 96, depths (2, 2, 6, 2),
    num_heads (3, 6, 12, 24), window_size 7, mlp_ratio 4., qkv_bias True, qk_scale None,
    drop_rate 0., attn_drop_rate 0., drop_path_rate 0.1, norm_layer ``torch.nn.LayerNorm``
    (or ``functools.partial(torch.nn.LayerNorm, eps=...)``: only the eps is used), ape False,
    patch_norm True, use_checkpoint False (ignored: no numerical effect). Other keyword arguments
    are ignored with a warning, as the official ``**kwargs``.

    Raises:
      ValueError: another norm layer, non-square sizes, or sizes the model rejects (a window not
        dividing a stage resolution, ...).
    """
    from jaxmim.models.swin import SwinTransformer
    return SwinTransformer(**_swin_kwargs(**kwargs), rngs=rngs)


def build_simmim_swin_pretrain(*, rngs: nnx.Rngs, encoder: Mapping[str, Any], encoder_stride: int,
                               mask_patch_size: int = 32, mask_ratio: float = 0.6) -> nnx.Module:
    """Source ``'simmim_swin_pretrain'``: ``SimMIM(encoder=SwinTransformerForSimMIM(**encoder),
    encoder_stride=encoder_stride)`` of ``microsoft/SimMIM@d3e29bc models/simmim.py``, as
    :class:`jaxmim.methods.simmim.SimMIM` around :class:`jaxmim.models.swin.SwinTransformerForSimMIM`.

    Args:
      rngs: initialisation streams (encoder first, then the decoder).
      encoder: dict of the encoder's constructor arguments (those of :func:`build_simmim_swin`);
        ``num_classes`` must be 0 or absent (the official class asserts 0).
      encoder_stride: total encoder stride (32 for 4 stages of patch 4).
      mask_patch_size, mask_ratio: the mask generator's settings (data-side in the official code,
        ``DATA.MASK_PATCH_SIZE`` / ``MODEL.SIMMIM.MASK_RATIO``); no effect on the state_dict.

    Raises:
      TypeError: ``encoder`` is not a dict. ValueError: ``num_classes != 0``, ``in_chans != 3``
      (the official decoder hard-codes 3 colours), ``encoder_stride`` x final resolution !=
      img_size, or the errors of :func:`build_simmim_swin`.
    """
    from jaxmim.methods.simmim import SimMIM
    from jaxmim.models.swin import SwinTransformerForSimMIM
    if not isinstance(encoder, Mapping):
        raise TypeError('encoder must be a dict of SwinTransformerForSimMIM constructor arguments, '
                        f'got {type(encoder).__name__}')
    enc_args = dict(encoder)
    if enc_args.get('num_classes', 0) != 0:
        raise ValueError(f'SwinTransformerForSimMIM needs num_classes == 0, got {enc_args["num_classes"]}')
    enc_args['num_classes'] = 0
    kw = _swin_kwargs(**enc_args)
    if kw['in_chans'] != 3:
        raise ValueError(f'the official SimMIM decoder reconstructs 3 channels; got in_chans={kw["in_chans"]}')
    stride = int(encoder_stride)
    final = kw['img_size'] // kw['patch_size'] // 2 ** (len(kw['depths']) - 1)
    if final * stride != kw['img_size']:
        raise ValueError(f'encoder_stride {stride} x final resolution {final} != img_size {kw["img_size"]}')
    del kw['num_classes']
    enc = SwinTransformerForSimMIM(**kw, rngs=rngs)
    return SimMIM(enc, stride, mask_patch_size=int(mask_patch_size), mask_ratio=float(mask_ratio), rngs=rngs)


def _linear_entries(key: str, path: tuple[Any, ...], module: nnx.Module) -> list[Entry]:
    out: list[Entry] = [ParamEntry(key + '.weight', path + ('kernel',), LINEAR)]
    if getattr(module, 'bias', None) is not None:
        out.append(ParamEntry(key + '.bias', path + ('bias',)))
    return out


def _layer_norm_entries(key: str, path: tuple[Any, ...]) -> list[Entry]:
    return [ParamEntry(key + '.weight', path + ('scale',)), ParamEntry(key + '.bias', path + ('bias',))]


def swin_entries(enc: nnx.Module, key_prefix: str = '', path_prefix: tuple[Any, ...] = ()) -> list[Entry]:
    """Official state_dict entries of a jaxmim Swin (classifier or SimMIM encoder), official order.

    Order follows ``torch.nn.Module.state_dict`` on ``models/swin_transformer.py``: own parameters
    (``absolute_pos_embed`` if ape, then ``mask_token`` for the SimMIM encoder), ``patch_embed``,
    per block ``attn_mask`` (shifted blocks only: a buffer of the block precedes its children),
    ``norm1``, ``attn.relative_position_bias_table``, ``attn.relative_position_index``, ``attn.qkv``,
    ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``; per stage but the last
    ``downsample.reduction`` (registered before) ``downsample.norm``; then ``norm`` and ``head``.
    Buffers are recomputed from the block's (clamped) window, shift and resolution with
    :func:`jaxmim.models.swin.relative_position_index` (int64 here, as the official buffer) and
    :func:`jaxmim.models.swin.shifted_window_mask` (float32).

    Raises:
      TypeError: ``enc`` is not a :class:`jaxmim.models.swin.SwinTransformer`.
    """
    from jaxmim.models import swin as S
    if not isinstance(enc, S.SwinTransformer):
        raise TypeError(f'expected a jaxmim SwinTransformer, got {type(enc).__name__}')

    out: list[Entry] = []
    if enc.absolute_pos_embed is not None:
        out.append(ParamEntry('absolute_pos_embed', ('absolute_pos_embed',)))
    if isinstance(enc, S.SwinTransformerForSimMIM):
        out.append(ParamEntry('mask_token', ('mask_token',)))
    out.append(ParamEntry('patch_embed.proj.weight', ('patch_embed', 'proj', 'kernel'), CONV2D))
    out.append(ParamEntry('patch_embed.proj.bias', ('patch_embed', 'proj', 'bias')))
    if enc.patch_embed.norm is not None:
        out += _layer_norm_entries('patch_embed.norm', ('patch_embed', 'norm'))
    for li, layer in enumerate(enc.layers):
        for bi, blk in enumerate(layer.blocks):
            k, p = f'layers.{li}.blocks.{bi}.', ('layers', li, 'blocks', bi)
            ws, s = blk.window_size, blk.shift_size
            h, w = blk.input_resolution
            where = f'window {ws}, shift {s}, stage resolution {h}x{w}'
            if s > 0:
                out.append(BufferEntry(k + 'attn_mask', S.shifted_window_mask(h, w, ws, s), where))
            out += _layer_norm_entries(k + 'norm1', p + ('norm1',))
            out.append(ParamEntry(k + 'attn.relative_position_bias_table',
                                  p + ('attn', 'relative_position_bias_table')))
            out.append(BufferEntry(k + 'attn.relative_position_index',
                                   S.relative_position_index(ws).astype(np.int64), where))
            out += _linear_entries(k + 'attn.qkv', p + ('attn', 'qkv'), blk.attn.qkv)
            out += _linear_entries(k + 'attn.proj', p + ('attn', 'proj'), blk.attn.proj)
            out += _layer_norm_entries(k + 'norm2', p + ('norm2',))
            out += _linear_entries(k + 'mlp.fc1', p + ('mlp', 'fc1'), blk.mlp.fc1)
            out += _linear_entries(k + 'mlp.fc2', p + ('mlp', 'fc2'), blk.mlp.fc2)
        if layer.downsample is not None:
            k, p = f'layers.{li}.downsample.', ('layers', li, 'downsample')
            out += _linear_entries(k + 'reduction', p + ('reduction',), layer.downsample.reduction)
            out += _layer_norm_entries(k + 'norm', p + ('norm',))
    out += _layer_norm_entries('norm', ('norm',))
    if enc.head is not None:
        out += _linear_entries('head', ('head',), enc.head)
    return [_prefixed(e, key_prefix, path_prefix) for e in out]


def _prefixed(e: Entry, key_prefix: str, path_prefix: tuple[Any, ...]) -> Entry:
    if isinstance(e, ParamEntry):
        return dataclasses.replace(e, key=key_prefix + e.key, path=path_prefix + e.path)
    return dataclasses.replace(e, key=key_prefix + e.key)


def simmim_swin_pretrain_entries(model: nnx.Module) -> list[Entry]:
    """Official state_dict entries of a jaxmim SimMIM with a Swin encoder: ``encoder.*`` (see
    :func:`swin_entries`) then ``decoder.0.weight`` (Conv2d (stride²·3, C, 1, 1)) and
    ``decoder.0.bias``.

    Raises:
      TypeError: ``model`` is not a jaxmim SimMIM around a SwinTransformerForSimMIM.
    """
    from jaxmim.methods.simmim import SimMIM
    from jaxmim.models.swin import SwinTransformerForSimMIM
    if not isinstance(model, SimMIM) or not isinstance(model.encoder, SwinTransformerForSimMIM):
        raise TypeError(f'expected a jaxmim SimMIM with a SwinTransformerForSimMIM encoder, got '
                        f'{type(model).__name__}')
    return (swin_entries(model.encoder, 'encoder.', ('encoder',))
            + [ParamEntry('decoder.0.weight', ('decoder', 'kernel'), CONV2D),
               ParamEntry('decoder.0.bias', ('decoder', 'bias'))])


def _simmim_swin_entries(model: nnx.Module) -> list[Entry]:
    from jaxmim.models.swin import SwinTransformer, SwinTransformerForSimMIM
    if not isinstance(model, SwinTransformer) or isinstance(model, SwinTransformerForSimMIM):
        raise TypeError(f'source simmim_swin expects a jaxmim SwinTransformer classifier, got {type(model).__name__}')
    return swin_entries(model)


register_source(Source(
    name='simmim_swin',
    reference='microsoft/SimMIM@d3e29bc models/swin_transformer.py SwinTransformer',
    build_fn=build_simmim_swin,
    entries_fn=_simmim_swin_entries))

register_source(Source(
    name='simmim_swin_pretrain',
    reference='microsoft/SimMIM@d3e29bc models/simmim.py SimMIM(SwinTransformerForSimMIM)',
    build_fn=build_simmim_swin_pretrain,
    entries_fn=simmim_swin_pretrain_entries))
