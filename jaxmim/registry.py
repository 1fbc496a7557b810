"""Model registry and the backbone hook protocol.

A backbone file in ``jaxmim/models/`` defines an NNX module class that mixes in
:class:`Backbone` (the hooks the training loops need) and registers its named variants with the
stackable class decorator :func:`register_model`::

    @register_model('vit_base_patch16_224', embed_dim=768, depth=12, num_heads=12,
                    data_defaults=dict(image_size=224))
    @register_model('vit_large_patch16_224', embed_dim=1024, depth=24, num_heads=16)
    class VisionTransformer(nnx.Module, Backbone):
        ...

``create_model(name, **overrides)`` merges the caller's overrides into a variant's defaults,
rejects unknown arguments with the close valid names, and builds the module. Every module of
``jaxmim.models`` and ``jaxmim.methods`` is imported when ``jaxmim`` is, so adding a backbone is
one new file: nothing else is edited. The loops (``jaxmim.train``, ``jaxmim.benchmark``) only
call the hooks, so they never name a backbone.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from typing import Any, Callable, Sequence

import numpy as np
from flax import nnx

from jaxmim.constants import IMAGENET_MEAN, IMAGENET_STD

__all__ = ['Backbone', 'register_model', 'create_model', 'list_models', 'model_defaults',
           'model_data_defaults', 'model_class', 'classifier_for', 'DEFAULT_DATA', 'match_any',
           'check_out_indices', 'check_feature_images']

DEFAULT_DATA = dict(image_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, eval_crop_ratio=224 / 256)
"""Data settings a variant gets when it declares none: 224 px, ImageNet mean/std (in [0, 1] pixel
units), evaluation resize to ``image_size / eval_crop_ratio`` then centre crop."""


def match_any(name: str, patterns: Sequence[str]) -> bool:
    """Whether dotted parameter ``name`` matches one of the fnmatch ``patterns`` (case-sensitive)."""
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


class Backbone:
    """Mixin with the hooks the training loops call on a model; override what differs.

    Names are dotted paths of ``nnx.to_pure_dict(nnx.state(model, nnx.Param))``, e.g.
    ``'blocks.3.attn.qkv.kernel'`` (Flax leaf names ``kernel`` / ``scale`` / ``bias``).
    """

    def no_weight_decay(self) -> tuple[str, ...]:
        """fnmatch patterns of parameters that get no weight decay, besides the universal rule
        (1-D tensors and ``*.bias`` never decay, see ``jaxmim.optim.weight_decay_mask``)."""
        return ()

    def layer_id(self, name: str) -> int:
        """Layer id of parameter ``name`` in ``[0, num_layer_ids)`` for layer-wise lr decay
        (the lr scale is ``layer_decay ** (num_layer_ids - 1 - id)``).

        Raises:
          NotImplementedError: the backbone does not support layer decay.
        """
        raise NotImplementedError(f'{type(self).__name__} defines no layer ids; set optim.layer_decay=1.0')

    @property
    def num_layer_ids(self) -> int:
        """Number of layer ids (see :meth:`layer_id`).

        Raises:
          NotImplementedError: the backbone does not support layer decay.
        """
        raise NotImplementedError(f'{type(self).__name__} defines no layer ids; set optim.layer_decay=1.0')

    def pretrained_fresh(self) -> tuple[str, ...]:
        """fnmatch patterns of variables that may keep their initial value when a pre-trained
        checkpoint is loaded (the classifier head by default)."""
        return ('head.*',)

    def adapt_pretrained(self, name: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """Turns pre-trained tensor ``value`` whose shape differs from the model's ``shape``
        into an array of ``shape`` (e.g. resizing position tables).

        Raises:
          ValueError: naming the tensor and both shapes, when it cannot be adapted.
        """
        raise ValueError(f'{name}: pre-trained shape {tuple(value.shape)} does not fit the model\'s '
                         f'{tuple(shape)}')

    def pooled_features(self, x, *, train: bool = False, rng=None):
        """The classifier's pooled representation, what its head reads: images ``(B, H, W, C)``
        float NHWC at the model's ``img_size`` -> ``(B, num_features)`` in the compute dtype.

        The features linear probing and k-NN evaluate (MAE ``main_linprobe.py``: the head's
        input; DINO ``eval_knn.py``). Default: ``self.forward_features(x, train=train, rng=rng)``,
        which every family defines as its pooling (ViT: the class token after ``norm``, or the
        mean of the patch tokens after ``fc_norm`` with ``global_pool``; pyramids: the mean of the
        last stage after the final norm). A family whose ``forward_features`` returns tokens
        overrides this. A norm that pre-training does not train (``pretrained_fresh``) is at its
        initial value (scale 1, bias 0) after loading a pre-trained encoder, i.e. it standardises
        each vector.

        Raises:
          NotImplementedError: the model has no ``forward_features``.
        """
        forward = getattr(self, 'forward_features', None)
        if forward is None:
            raise NotImplementedError(f'{type(self).__name__} defines no pooled features')
        return forward(x, train=train, rng=rng)

    def features(self, x, *, train: bool = False, out_indices: Sequence[int] | None = None,
                 rng=None) -> dict:
        """Multi-scale feature maps for detection / segmentation heads.

        Contract of every backbone that implements it: images ``(B, H, W, C)`` float NHWC of any
        size the family's official detection / segmentation backbone accepts (the classifier's
        fixed ``img_size`` does not bind) -> ``dict[str, jax.Array]`` of ``(B, H_k, W_k, C_k)``
        maps, in increasing index order. Keys name what ``out_indices`` indexes, as the mmdet /
        mmseg ``out_indices`` do: ``'stage{i}'`` for stage i of a pyramid (stride
        ``4 * 2**i`` for the stride-4 stems), ``'block{i}'`` for block i of a plain ViT. Each
        family documents its strides, channels and normalisation (those of its official
        det / seg backbone). ``train`` / ``rng`` as in ``__call__``.

        Raises:
          NotImplementedError: the backbone defines no multi-scale features.
        """
        raise NotImplementedError(f'{type(self).__name__} defines no multi-scale features')


def check_out_indices(out_indices: Sequence[int] | None, available: int, default: Sequence[int],
                      what: str = 'stage') -> tuple[int, ...]:
    """The sorted, de-duplicated ``out_indices`` of a :meth:`Backbone.features` call.

    Args:
      out_indices: the caller's indices, or None for ``default``.
      available: indices must lie in ``[0, available)``.
      default: the family's default selection.
      what: what an index selects (``'stage'``, ``'block'``), for the error message.

    Raises:
      ValueError: an empty selection, a non-integer or an index out of range (one line naming
        ``out_indices`` and the accepted range).
    """
    idx = tuple(default) if out_indices is None else tuple(out_indices)
    ok = bool(idx) and all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) and 0 <= i < available
                           for i in idx)
    if not ok:
        raise ValueError(f'out_indices {out_indices!r}: expected a non-empty sequence of {what} indices, '
                         f'integers in [0, {available})')
    return tuple(sorted({int(i) for i in idx}))


def check_feature_images(x, in_chans: int, multiple: int, family: str) -> tuple[int, int]:
    """Checks the images of a :meth:`Backbone.features` call: ``(B, H, W, in_chans)`` with H and
    W positive multiples of ``multiple``. Returns ``(H, W)``.

    Raises:
      ValueError: one line naming the shape and what ``family`` accepts.
    """
    shape = tuple(getattr(x, 'shape', ()))
    if (len(shape) != 4 or shape[3] != in_chans or shape[1] < multiple or shape[2] < multiple
            or shape[1] % multiple or shape[2] % multiple):
        raise ValueError(f'{family}.features: images must be (B, H, W, {in_chans}) NHWC with H and W positive '
                         f'multiples of {multiple}, got shape {shape}')
    return shape[1], shape[2]


_REGISTRY: dict[str, tuple[Callable[..., nnx.Module], dict[str, Any], dict[str, Any], str | None]] = {}


def register_model(name: str, cls: Callable[..., nnx.Module] | None = None, *,
                   data_defaults: dict[str, Any] | None = None, classifier: str | None = None,
                   **defaults: Any):
    """Registers a named model variant; used as a class decorator (stackable) or called.

    Args:
        name: registry name, e.g. ``'swin_base_patch4_window7_224'``.
        cls: the NNX module class (or builder function); omit it to get a class decorator.
        data_defaults: the variant's default data settings, a subset of ``image_size`` (px),
            ``mean``/``std`` (RGB, [0, 1] pixel units), ``eval_crop_ratio``; unspecified keys come
            from :data:`DEFAULT_DATA`.
        classifier: for a pre-training model, the registered fine-tuning classifier of the same
            architecture (used by the benchmark to time the fine-tuning step of a pre-training config).
        **defaults: constructor arguments that define the variant.

    Returns:
        ``None`` when ``cls`` is given, else a decorator that registers and returns the class.

    Raises:
        ValueError: ``name`` already registered, or an unknown ``data_defaults`` key.
        TypeError: a default that is not an argument of ``cls`` (close names listed).
    """
    data = dict(DEFAULT_DATA)
    for key, value in (data_defaults or {}).items():
        if key not in DEFAULT_DATA:
            raise ValueError(f'{name}: unknown data_defaults key {key!r}; accepted: {sorted(DEFAULT_DATA)}')
        data[key] = value

    def register(target):
        if name in _REGISTRY:
            raise ValueError(f'model {name!r} is already registered')
        _check_kwargs(name, target, defaults)
        _REGISTRY[name] = (target, dict(defaults), data, classifier)
        return target

    if cls is not None:
        register(cls)
        return None
    return register


def _accepted_kwargs(cls: Callable[..., Any]) -> list[str]:
    """Keyword arguments of ``cls``; follows ``**kwargs`` up the class hierarchy."""
    names: list[str] = []
    targets = [c.__init__ for c in cls.__mro__ if '__init__' in vars(c)] if inspect.isclass(cls) else [cls]
    for fn in targets:
        params = inspect.signature(fn).parameters.values()
        names += [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                  and p.name not in ('self', 'rngs') and p.name not in names]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return names


def _check_kwargs(name: str, cls: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    accepted = _accepted_kwargs(cls)
    for key in kwargs:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=3)
            hint = f'; did you mean {close}?' if close else ''
            raise TypeError(f'{name}: unknown argument {key!r}{hint} Accepted: {sorted(accepted)}')


def list_models(pattern: str = '*') -> list[str]:
    """Returns the sorted registered model names matching a shell-style ``pattern``."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def _lookup(name: str):
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.4)
        raise KeyError(f'unknown model {name!r}; close matches: {close}. '
                       f'See jaxmim.list_models() for all {len(_REGISTRY)} names.')
    return _REGISTRY[name]


def model_defaults(name: str) -> dict[str, Any]:
    """A copy of the constructor arguments that define variant ``name``.

    Raises:
        KeyError: ``name`` is not registered (the message lists close names).
    """
    return dict(_lookup(name)[1])


def model_data_defaults(name: str) -> dict[str, Any]:
    """The default data settings of variant ``name`` (keys of :data:`DEFAULT_DATA`).

    Raises:
        KeyError: ``name`` is not registered.
    """
    return dict(_lookup(name)[2])


def model_class(name: str) -> Callable[..., nnx.Module]:
    """The class (or builder) registered under ``name``.

    Raises:
        KeyError: ``name`` is not registered.
    """
    return _lookup(name)[0]


def classifier_for(name: str) -> str | None:
    """The fine-tuning classifier registered for pre-training model ``name`` (None if none).

    Raises:
        KeyError: ``name`` is not registered.
    """
    return _lookup(name)[3]


def create_model(name: str, *, rngs: nnx.Rngs | None = None, seed: int = 0,
                 **overrides: Any) -> nnx.Module:
    """Builds a registered model.

    Args:
        name: a name from :func:`list_models`.
        rngs: the ``nnx.Rngs`` used for parameter initialisation; default ``nnx.Rngs(seed)``.
        seed: the seed used when ``rngs`` is not given.
        **overrides: constructor arguments replacing the variant's defaults, e.g.
            ``num_classes=10, drop_path_rate=0.2``.

    Returns:
        The NNX module, parameters initialised.

    Raises:
        KeyError: unknown ``name``.
        TypeError: an override is not an argument of the model (close names are listed).
    """
    cls, defaults, _, _ = _lookup(name)
    _check_kwargs(name, cls, overrides)
    kwargs = {**defaults, **overrides}
    return cls(**kwargs, rngs=rngs if rngs is not None else nnx.Rngs(seed))
