"""Linear probing: a linear classifier trained on the frozen features of a pre-trained encoder.

What facebookresearch/mae@6a2ba40 ``main_linprobe.py`` does (MAE paper, He et al. 2022,
Appendix A (implementation details), "Linear probing"), for any registered classifier:

* the classifier is built and its pre-trained weights loaded as for fine-tuning
  (:func:`jaxmim.rundir.load_pretrained`), then frozen: every ``nnx.Param`` becomes a
  :class:`FrozenParam`, a variable type the train state keeps in ``model_state`` (not in
  ``params``), so the optimizer has no state for it and the step computes no gradient for it
  (``main_linprobe.py:223-227``: ``requires_grad = False`` for all but the head);
* it runs in evaluation mode (``train=False``): no dropout or drop path, BatchNorm on its running
  statistics, which stay as loaded. MAE leaves its ViT in ``model.train()``, where the ViT (drop
  path 0 in ``main_linprobe.py``, no BatchNorm) computes the same function;
* the features are the classifier's standard pooling, :meth:`jaxmim.registry.Backbone.pooled_features`
  (MAE ViT with ``global_pool=False``: the class token after the final norm), under
  ``jax.lax.stop_gradient``;
* the head is ``BatchNorm1d(num_features, affine=False, eps=1e-6)`` then a ``Linear`` with
  ``trunc_normal_(std=0.01)`` weights and zero bias (``main_linprobe.py:217-222``: "hack: revise
  model's head with BN"; the weight init follows MoCo v3).

So the compiled train step holds the encoder's forward pass and the head's forward and backward
passes only (``tests/test_linprobe.py`` measures the FLOPs). The optimizer (LARS, ``optim.name=
'lars'``), schedule and data of MAE's recipe are :func:`jaxmim.recipes.linprobe`.

The train state of a probe run: ``params`` = ``head.{kernel,bias}``; ``model_state`` =
``encoder.*`` (frozen weights, BatchNorm statistics and buffers of the classifier) and
``head_norm.{mean,var}``. Checkpoints, resume and evaluation are the fine-tuning loop's
(:func:`jaxmim.train.finetune` calls :func:`prepare` and :func:`wrap`). A probe run's workdir can
serve as ``config.pretrained.workdir`` of a fine-tuning run (its ``encoder`` scope is unwrapped
by :func:`jaxmim.rundir.read_checkpoint_variables`).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from jaxmim import layers as L
from jaxmim import sharding
from jaxmim.config import PROBES
from jaxmim.registry import Backbone

__all__ = ['FrozenParam', 'freeze', 'FeatureBatchNorm', 'LinearProbe', 'wrap', 'prepare', 'PROBES']

_ENC = 'encoder.'


class FrozenParam(nnx.Variable):
    """A parameter of a frozen encoder: the value and sharding metadata of an ``nnx.Param``, but
    not a ``Param``, so :func:`jaxmim.rundir.split_variables` puts it in ``model_state``: the
    optimizer never sees it and ``jax.value_and_grad`` over ``params`` never differentiates it."""


def freeze(module: nnx.Module) -> int:
    """Turns every ``nnx.Param`` attribute of ``module`` and its submodules into a
    :class:`FrozenParam` in place (same value, same metadata); returns how many.

    Raises:
      ValueError: a ``Param`` is left that is not a module attribute (e.g. held in a plain list),
        named by its path.
    """
    count = 0
    for _, node in nnx.iter_graph(module):
        if isinstance(node, nnx.Module):
            for name, value in list(vars(node).items()):
                if isinstance(value, nnx.Param):
                    setattr(node, name, FrozenParam(value.get_value(), **value.get_metadata()))
                    count += 1
    left = ['.'.join(map(str, path)) for path, _ in nnx.to_flat_state(nnx.state(module, nnx.Param))]
    if left:
        raise ValueError(f'cannot freeze {type(module).__name__}: parameters {left[:5]} are not module '
                         'attributes')
    return count


class FeatureBatchNorm(nnx.Module):
    """``torch.nn.BatchNorm1d(dim, affine=False, eps=eps, momentum=momentum)`` on ``(B, dim)``
    features: in training the batch mean and biased variance normalise, and the running
    statistics move as ``r <- (1 - momentum) r + momentum s`` with the *unbiased* batch variance
    (``B / (B - 1)`` times the biased one, as torch); in evaluation the running statistics
    normalise. Statistics in float32; the output has the input's dtype. Under ``jit`` the batch is
    the global batch (SyncBatchNorm; MAE's per-GPU BatchNorm1d sees 512 images of 16384), or one
    micro-batch with ``config.accum_steps > 1``.

    Source: ``torch/nn/modules/batchnorm.py`` (``_BatchNorm``), as ``main_linprobe.py:222`` uses it.
    """

    def __init__(self, dim: int, *, eps: float = 1e-6, momentum: float = 0.1):
        self.eps, self.momentum = float(eps), float(momentum)
        self.mean = nnx.BatchStat(jnp.zeros((dim,), jnp.float32), **sharding.axes('norm'))
        self.var = nnx.BatchStat(jnp.ones((dim,), jnp.float32), **sharding.axes('norm'))

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """``x`` (B, dim) -> normalised (B, dim) in ``x.dtype``; updates the running statistics when
        ``train``."""
        x32 = x.astype(jnp.float32)
        if train:
            n = x.shape[0]
            mean = x32.mean(0)
            var = jnp.square(x32 - mean).mean(0)
            unbiased = var * (n / max(n - 1, 1))
            m = self.momentum
            self.mean[...] = jax.lax.stop_gradient((1.0 - m) * self.mean[...] + m * mean)
            self.var[...] = jax.lax.stop_gradient((1.0 - m) * self.var[...] + m * unbiased)
        else:
            mean, var = self.mean[...], self.var[...]
        return ((x32 - mean) * jax.lax.rsqrt(var + self.eps)).astype(x.dtype)


class LinearProbe(nnx.Module, Backbone):
    """A frozen classifier (``encoder``) and a trained head: logits = ``head(head_norm(f))`` with
    ``f = stop_gradient(encoder.pooled_features(x, train=False))``.

    Args:
      encoder: a registered classifier (its weights loaded); frozen in place (:func:`freeze`). Its
        own head stays (frozen, unused).
      num_classes: classes of the probe's head.
      head_init_std: std of the normal init of ``head.kernel`` (timm ``trunc_normal_`` truncates
        at +-2 absolute: a plain normal at 0.01); the bias is 0.
      bn_eps: ``head_norm``'s epsilon (MAE 1e-6).
      rngs: draws ``head.kernel``.

    Shapes: images ``(B, H, W, C)`` NHWC at the encoder's ``img_size`` -> logits
    ``(B, num_classes)`` float (the compute dtype).

    Raises:
      ValueError: the encoder has no ``num_features`` (the width of its pooled features).
    """

    def __init__(self, encoder: nnx.Module, num_classes: int, *, head_init_std: float = 0.01,
                 bn_eps: float = 1e-6, rngs: nnx.Rngs):
        dim = getattr(encoder, 'num_features', None)
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f'config.probe: {type(encoder).__name__} has no num_features (the width of '
                             'pooled_features), so no probe head can be built')
        freeze(encoder)
        self.encoder = encoder
        self.num_classes, self.num_features = int(num_classes), dim
        self.img_size = getattr(encoder, 'img_size', None)
        self.head_norm = FeatureBatchNorm(dim, eps=bn_eps)
        self.head = L.linear(dim, self.num_classes, rngs, kernel_init=jax.nn.initializers.normal(head_init_std),
                             axes=('embed', 'classes'))

    def _encoder_in(self, dtype) -> nnx.Module:
        """The encoder with its frozen weights in ``dtype`` when that is a low-precision float (the
        bf16 copies of ``config.compute_dtype='bfloat16'``, as the step casts ``params``), else the
        encoder itself. The compute dtype is read from the trained head's kernel (the step casts
        it with the other ``params``; the images arrive in float32)."""
        if not jnp.issubdtype(dtype, jnp.floating) or jnp.dtype(dtype) == jnp.float32:
            return self.encoder
        graphdef, frozen, rest = nnx.split(self.encoder, FrozenParam, ...)
        cast = lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a  # noqa: E731
        return nnx.merge(graphdef, jax.tree.map(cast, frozen), rest)

    def pooled_features(self, x: jax.Array, *, train: bool = False, rng: jax.Array | None = None) -> jax.Array:
        """The frozen encoder's pooled features ``(B, num_features)`` (what ``head_norm`` reads),
        always in evaluation mode and without gradient; ``train`` / ``rng`` are ignored."""
        del train, rng
        return jax.lax.stop_gradient(self._encoder_in(self.head.kernel[...].dtype).pooled_features(x, train=False))

    def __call__(self, x: jax.Array, *, train: bool = False, rng: jax.Array | None = None) -> jax.Array:
        """Images -> logits; ``train`` switches ``head_norm`` to batch statistics (the encoder stays
        in evaluation mode)."""
        return self.head(self.head_norm(self.pooled_features(x), train=train))

    # -- Backbone hooks ----------------------------------------------------------------------

    def no_weight_decay(self) -> tuple[str, ...]:
        """None beyond the universal rule: only ``head`` is trained (its kernel decays if the
        weight decay is not 0; MAE's probe uses 0)."""
        return ()

    def pretrained_fresh(self) -> tuple[str, ...]:
        """The head and its norm, and the encoder's own fresh patterns under ``encoder.``."""
        return ('head.*', 'head_norm.*') + tuple(_ENC + p for p in self.encoder.pretrained_fresh())

    def adapt_pretrained(self, name: str, value, shape: tuple[int, ...]):
        """The encoder's hook for ``encoder.*`` tensors.

        Raises:
          ValueError: another tensor, or one the encoder cannot adapt."""
        if name.startswith(_ENC):
            return self.encoder.adapt_pretrained(name[len(_ENC):], value, shape)
        return super().adapt_pretrained(name, value, shape)

    def features(self, x, *, train: bool = False, out_indices=None, rng=None) -> dict:
        """The frozen encoder's multi-scale features (evaluation mode, no gradient).

        Raises:
          NotImplementedError: the encoder defines none."""
        del train, rng
        out = self._encoder_in(self.head.kernel[...].dtype).features(x, train=False, out_indices=out_indices)
        return jax.lax.stop_gradient(out)


def wrap(config: ml_collections.ConfigDict, classifier: nnx.Module) -> nnx.Module:
    """``classifier`` as ``config.probe`` trains it: unchanged for ``''``, a :class:`LinearProbe`
    of it (frozen in place; ``num_classes`` the classifier's, head drawn from ``config.seed``) for
    ``'linear'``.

    Raises:
      ValueError: an unknown ``config.probe`` (accepted values listed).
    """
    kind = config.get('probe', '')
    if kind not in PROBES:
        raise ValueError(f'config.probe={kind!r} is not a probe; accepted: {list(PROBES)}')
    if not kind:
        return classifier
    rngs = nnx.Rngs(params=jax.random.fold_in(jax.random.key(int(config.seed)), 0x6C696E))
    return LinearProbe(classifier, classifier.num_classes, rngs=rngs)


def prepare(config: ml_collections.ConfigDict, build: Callable[[], nnx.Module],
            abstract: nnx.Module) -> tuple[Callable[[], nnx.Module], Any]:
    """``(build, abstract)`` of the model a fine-tuning run trains: the classifier's builder and
    abstract model (``nnx.eval_shape``) as given without a probe, else those of its probe
    (:func:`wrap`).

    Raises:
      ValueError: an unknown ``config.probe``.
    """
    if not config.get('probe', ''):
        return build, abstract
    wrapped = lambda: wrap(config, build())  # noqa: E731
    return wrapped, nnx.eval_shape(wrapped)
