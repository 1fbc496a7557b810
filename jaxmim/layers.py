"""Building blocks shared by the backbones: initialisers, LayerNorm, MLP, DropPath.

Every layer takes and returns channels-last arrays. Randomness (dropout, stochastic
depth) is explicit: layers receive a ``jax.random`` key and a ``train`` flag instead of
holding RNG state, so a module is a plain tree of parameters (no RNG variables) and a
jitted step is a pure function of ``(params, batch, key)``.

The backend-specific computations (the hand-written backward passes, the CPU forms of the
reductions and of GELU) live in :mod:`jaxmim.ops`, each next to its portable form; the layers
here call the dispatching ops and never ask which backend they are on. ``layer_norm_last``,
``sum_rows``, ``sum_squares``, ``linear_apply`` and ``gelu`` are re-exported from there.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmim import ops
from jaxmim.sharding import axes as logical_axes
from jaxmim.ops import gelu, layer_norm_last, linear_apply, sum_rows, sum_squares  # noqa: F401  (re-exported)


class Buffer(nnx.Variable):
    """A fixed tensor saved with the model but never trained (PyTorch's ``requires_grad=False``
    parameters, e.g. MAE's sin-cos ``pos_embed``). It lives in the train state's ``model_state``
    collection (not in ``params``), so the optimizer never sees it, while checkpoints and the
    PyTorch converter carry it like any other variable."""


# Initialisers matching PyTorch / timm conventions.
trunc_normal_02 = jax.nn.initializers.normal(stddev=0.02)
"""timm ``trunc_normal_(std=.02)`` truncates at +-2 *absolute*, i.e. +-100 sigma: a plain normal."""


def torch_default_kernel_init(key, shape, dtype=jnp.float32):
    """PyTorch's default Linear/Conv weight init, ``kaiming_uniform_(a=sqrt(5))``.

    Equals U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = prod(shape[:-1]) for a Flax
    kernel laid out ``(..., in, out)`` (conv ``(kh, kw, in, out)``; dense ``(in, out)``).
    Source: ``torch.nn.Conv2d.reset_parameters``.
    """
    fan_in = math.prod(shape[:-1])
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def torch_default_bias_init(fan_in: int) -> Callable:
    """PyTorch's default bias init for a layer with ``fan_in`` inputs: U(+-1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class LayerNorm(nnx.LayerNorm):
    """``nnx.LayerNorm`` (same parameters ``scale``, ``bias`` and attributes) whose common case,
    a normalisation over the last axis with scale and bias and no mask, runs through
    :func:`jaxmim.ops.layer_norm_last` (on CPU its closed-form backward pass); any other
    configuration falls back to ``nnx.LayerNorm``.
    Input ``(..., C)``, output the same shape."""

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        last = tuple(np.atleast_1d(self.reduction_axes)) in ((-1,), (x.ndim - 1,))
        if mask is not None or not last or self.scale is None or self.bias is None or self.axis_name is not None:
            return super().__call__(x, mask=mask)
        y = layer_norm_last(x, self.scale[...], self.bias[...], self.epsilon)
        return y.astype(self.dtype) if self.dtype is not None else y


def layer_norm(dim: int, eps: float, rngs: nnx.Rngs) -> LayerNorm:
    """``torch.nn.LayerNorm(dim, eps)``: biased variance computed as E[(x-mean)^2], affine 1/0 init
    (:class:`LayerNorm`, an ``nnx.LayerNorm`` with the faster backward pass). Scale and bias
    carry the logical axis ``norm`` (:mod:`jaxmim.sharding`: replicated in every preset)."""
    return LayerNorm(dim, epsilon=eps, use_fast_variance=False, rngs=rngs,
                     scale_metadata=logical_axes('norm'), bias_metadata=logical_axes('norm'))


class Linear(nnx.Linear):
    """``nnx.Linear`` (same parameters ``kernel`` ``(in, out)`` and ``bias`` ``(out,)``, same
    attributes and checkpoints) whose common case, no ``precision``, ``preferred_element_type``,
    ``out_sharding`` or custom ``dot_general``, runs through :func:`jaxmim.ops.linear_apply` (on CPU
    its faster backward pass); any other configuration falls back to ``nnx.Linear``. Input ``(..., in)``, output
    ``(..., out)`` in the promoted dtype (``self.dtype`` when set)."""

    def __call__(self, inputs: jax.Array, out_sharding=None) -> jax.Array:
        if (out_sharding is not None or self.precision is not None or self.preferred_element_type is not None
                or self.dot_general is not jax.lax.dot_general):
            return super().__call__(inputs, out_sharding=out_sharding)
        kernel = self.kernel[...]
        bias = self.bias[...] if self.bias is not None else None
        inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
        return linear_apply(inputs, kernel, bias)


def _all_ones(v) -> bool:
    return v is None or all(int(e) == 1 for e in np.atleast_1d(v))


class PointwiseConv(nnx.Conv):
    """``nnx.Conv`` with a ``1 x 1`` kernel (same parameters ``kernel`` ``(1, 1, in, out)`` and
    ``bias`` ``(out,)``, same checkpoints), computed by :func:`jaxmim.ops.pointwise_conv` (on CPU
    a matrix product, :func:`jaxmim.ops.pointwise_conv_fast`, whose docstring has the
    measurements). Input ``(B, H, W, in)`` (channels last), output ``(B, H, W, out)``.

    Any other configuration (a larger kernel,
    strides, dilations, groups, a mask, ``precision``, ``preferred_element_type``, a custom
    ``conv_general_dilated``, integer padding, ``out_sharding``) falls back to ``nnx.Conv``.
    Source: SimMIM's decoder ``nn.Conv2d(num_features, stride ** 2 * 3, kernel_size=1)``
    (microsoft/SimMIM ``models/simmim.py``)."""

    def __call__(self, inputs: jax.Array, out_sharding=None) -> jax.Array:
        pointwise = (all(k == 1 for k in self.kernel_size) and _all_ones(self.strides)
                     and _all_ones(self.input_dilation) and _all_ones(self.kernel_dilation)
                     and self.feature_group_count == 1 and self.mask is None
                     and isinstance(self.padding, str) and self.padding.upper() in ('SAME', 'VALID')
                     and out_sharding is None and self.precision is None
                     and self.preferred_element_type is None
                     and self.conv_general_dilated is jax.lax.conv_general_dilated
                     and inputs.ndim == len(self.kernel_size) + 2)
        if not pointwise:
            return super().__call__(inputs, out_sharding=out_sharding)
        bias = self.bias[...] if self.bias is not None else None
        inputs, kernel, bias = self.promote_dtype((inputs, self.kernel[...], bias), dtype=self.dtype)
        return ops.pointwise_conv(inputs, kernel, bias)


def linear(din: int, dout: int, rngs: nnx.Rngs, use_bias: bool = True,
           kernel_init: Callable = trunc_normal_02, *, axes: tuple[str | None, str | None] | None = None) -> Linear:
    """Dense layer, kernel laid out ``(in, out)`` drawn by ``kernel_init`` (default the timm/Swin
    init N(0, 0.02^2)), bias 0 (:class:`Linear`, an ``nnx.Linear`` with the faster backward pass).

    ``axes``: the logical names of the kernel's ``(in, out)`` dimensions (:mod:`jaxmim.sharding`,
    e.g. ``('embed', 'mlp')`` for an MLP's fc1, ``('heads', 'embed')`` for an attention ``proj``);
    the bias is named ``bias``. None: no names (replicated under every layout; every jaxmim model
    names all its parameters, which ``tests/test_sharding.py`` checks).

    Raises:
      ValueError: an unknown logical name.
    """
    return Linear(din, dout, use_bias=use_bias, kernel_init=kernel_init,
                  bias_init=jax.nn.initializers.zeros, rngs=rngs,
                  kernel_metadata=logical_axes(*axes) if axes is not None else {},
                  bias_metadata=logical_axes('bias') if axes is not None else {})


def dropout(x: jax.Array, rate: float, train: bool, key: jax.Array | None) -> jax.Array:
    """Element-wise dropout with inverted scaling (``torch.nn.Dropout``); identity when not training.

    Raises:
      ValueError: ``train`` and ``rate > 0`` but ``key`` is None.
    """
    if not train or rate == 0.0:
        return x
    if key is None:
        raise ValueError('dropout: a PRNG key is required when train=True and rate > 0')
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def drop_path(x: jax.Array, rate: float | jax.Array, train: bool, key: jax.Array | None) -> jax.Array:
    """Stochastic depth (timm ``DropPath``): drops whole samples of a residual branch.

    Args:
        x: ``(B, ...)`` residual branch output.
        rate: drop probability p; kept samples are divided by 1 - p. A Python number, or a
            float32 scalar array (the rate of a block run under ``jax.lax.scan``,
            :mod:`jaxmim.models.stacking`): then the mask is always drawn (rate 0 draws an
            all-kept mask and returns ``x`` unchanged, as the number 0 does without drawing),
            with the same random numbers, and kept samples are multiplied by ``1 / (1 - p)``:
            what XLA makes of the division by the constant ``1 - p`` of a number rate (its
            algebraic simplifier folds it into that product), so in float32 both give the same
            bits.
        train: identity when False.
        key: PRNG key, required when ``train`` and ``rate > 0`` (for an array rate: whenever
            ``train``).

    Raises:
        ValueError: key missing while training with ``rate > 0`` (or with an array rate).
    """
    static = isinstance(rate, (int, float))
    if not train or (static and rate == 0.0):
        return x
    if key is None:
        raise ValueError('drop_path: a PRNG key is required when train=True and rate > 0')
    keep_prob = 1.0 - (rate if static else jnp.asarray(rate, jnp.float32))
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    keep = jax.random.bernoulli(key, keep_prob, shape)
    y = x / keep_prob if static else x * (1.0 / keep_prob).astype(x.dtype)
    return jnp.where(keep, y, 0.0).astype(x.dtype)


def images_to(x: jax.Array, layer: nnx.Module) -> jax.Array:
    """Images ``(B, H, W, C)`` cast to the dtype of ``layer.kernel``, the first layer they meet.

    Under mixed precision (``config.compute_dtype='bfloat16'``, :func:`jaxmim.steps.accumulate_gradients`)
    the step casts the weights but hands the model float32 images, from which the methods make
    their reconstruction targets: the targets stay float32 and the network computes in bf16 from
    its first layer, as ``torch.autocast`` casts a conv's input (official MAE / SimMIM / UM-MAE /
    GreenMIM / HiViT train under autocast). In float32 this is the identity.
    """
    return x.astype(layer.kernel.dtype)


def patchify(x: jax.Array, p: int) -> jax.Array:
    """Cuts images ``(B, H, W, C)`` into ``p x p`` units ``(B, (H/p)*(W/p), p*p*C)``: units in
    raster order, pixels in ``(p, q, c)`` order (MAE ``models_mae.py`` ``patchify``, whose
    ``einsum('nchpwq->nhwpqc')`` on NCHW gives the same order). ``p`` must divide H and W."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(x: jax.Array, p: int, h: int, w: int) -> jax.Array:
    """Inverse of :func:`patchify`: ``(B, h*w, p*p*C)`` -> ``(B, h*p, w*p, C)`` for an ``h x w``
    grid of units."""
    b, _, d = x.shape
    c = d // (p * p)
    return x.reshape(b, h, w, p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h * p, w * p, c)


def split_key(key: jax.Array | None, n: int) -> list[jax.Array | None]:
    """Splits ``key`` in ``n`` keys, or returns ``n`` Nones when ``key`` is None."""
    if key is None:
        return [None] * n
    return list(jax.random.split(key, n))


REMAT_POLICIES = ('none', 'block', 'dots_saveable', 'dots_with_no_batch_dims_saveable')
"""Accepted ``remat`` values of the backbones (the ``remat`` constructor argument of every family,
``--config.model.overrides.remat=...``). Each names what a transformer block keeps from its
forward pass for the backward pass; every policy gives the same loss and gradients (tested):

* ``'none'``: everything (no rematerialisation);
* ``'block'``: nothing but the block's inputs: the whole block is recomputed in the backward pass
  (``nnx.remat`` = ``jax.checkpoint`` with its default policy, ``nothing_saveable``);
* ``'dots_saveable'``: the outputs of every matrix product (``jax.checkpoint_policies.dots_saveable``):
  the projections and the attention products are kept, the elementwise work between them (LayerNorm,
  GELU, softmax, residual adds) is recomputed;
* ``'dots_with_no_batch_dims_saveable'``: the outputs of the products without batch dimensions,
  i.e. the dense layers' (qkv, proj, fc1, fc2), while the batched attention products ``q kᵀ`` and
  ``attn v`` (``N x N`` per head, the largest activations at long sequences) are recomputed.

On CPU the dense layers run a ``jax.custom_vjp`` (:func:`jaxmim.ops.linear_apply_fast`), whose
product is not a ``dot_general`` the two ``dots`` policies can see: there they keep only the attention
products (``dots_saveable``) or nothing (``dots_with_no_batch_dims_saveable``). On accelerators the
portable forms run and the policies behave as named. Source: JAX's
``jax.checkpoint`` / ``jax.checkpoint_policies`` documentation ("Gradient checkpointing")."""

_POLICY = {'block': None, 'dots_saveable': jax.checkpoint_policies.dots_saveable,
           'dots_with_no_batch_dims_saveable': jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def check_remat(remat: str) -> str:
    """``remat`` itself, once checked to be one of :data:`REMAT_POLICIES` (what the backbones store
    and give :func:`call_block`).

    Raises:
      ValueError: ``remat`` is not one of :data:`REMAT_POLICIES` (the message names
        ``config.model.overrides.remat``).
    """
    if remat not in REMAT_POLICIES:
        raise ValueError(f'remat must be one of {list(REMAT_POLICIES)}, got {remat!r} '
                         '(config.model.overrides.remat)')
    return remat


def remat_policy(remat: str | bool) -> tuple[bool, Callable | None]:
    """``(rematerialise?, jax.checkpoint policy)`` of a :data:`REMAT_POLICIES` name; ``False`` /
    ``True`` read as ``'none'`` / ``'block'``. The policy is None for ``'block'`` (JAX's default:
    save nothing) and for ``'none'`` (no checkpoint at all).

    Raises:
      ValueError: an unknown name (see :func:`check_remat`).
    """
    remat = {False: 'none', True: 'block'}.get(remat, remat) if isinstance(remat, bool) else remat
    check_remat(remat)
    return remat != 'none', _POLICY.get(remat)


def call_block(block: nnx.Module, x: jax.Array, *args, train: bool, rng: jax.Array | None,
               remat: str | bool, **kwargs):
    """``block(x, *args, train=train, rng=rng, **kwargs)`` under ``nnx.remat`` with the policy of
    ``remat`` (:data:`REMAT_POLICIES`; ``'none'`` / False calls the block directly): the same
    numbers, less activation memory, one more forward of (part of) the block in the backward pass.

    ``args`` and ``kwargs`` (attention masks, index tables, plans: whatever the family's block
    takes besides the tokens) reach the block as they are, closed over by the rematerialised
    function (jax arrays among them become its inputs). Returns what the block returns (an array,
    or e.g. UM-MAE Swin's ``(tokens, coordinates)``).

    Raises:
      ValueError: an unknown ``remat``.
    """
    on, policy = remat_policy(remat)
    if not on:
        return block(x, *args, train=train, rng=rng, **kwargs)
    return nnx.remat(lambda b, y, k: b(y, *args, train=train, rng=k, **kwargs), policy=policy)(block, x, rng)


class Mlp(nnx.Module):
    """Transformer MLP: fc1 -> exact (erf) GELU -> dropout -> fc2 -> dropout.

    Input and output ``(..., dim)``. Source: microsoft/SimMIM ``models/swin_transformer.py`` ``Mlp``.
    """

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0, *, rngs: nnx.Rngs):
        self.fc1 = linear(dim, hidden_dim, rngs, axes=('embed', 'mlp'))
        self.fc2 = linear(hidden_dim, dim, rngs, axes=('mlp', 'embed'))
        self.drop = drop

    def __call__(self, x: jax.Array, *, train: bool = False, rng: jax.Array | None = None) -> jax.Array:
        k1, k2 = split_key(rng, 2)
        x = gelu(self.fc1(x))
        x = dropout(x, self.drop, train, k1)
        return dropout(self.fc2(x), self.drop, train, k2)
