"""Softmax attention with an additive bias: ``softmax(scale * q kᵀ + bias) v``, the core of every
family whose official attention is plain softmax attention plus an additive term.

Sources: Vaswani et al. (2017), "Attention Is All You Need", eq. 1; the official attention modules
whose core this is: ``timm@v0.3.3 models/vision_transformer.py:98-123`` (ViT, MAE),
``microsoft/SimMIM@d3e29bc models/swin_transformer.py:66-145`` (Swin: relative-position bias and
the *additive* -100 shift mask), ``zhangxiaosong18/hivit@2718339
self_supervised/models/models_hivit.py:10-53`` (HiViT), ``implus/UM-MAE@cb7776b
models_mae_swin.py:60-116`` and ``models_mae_pvt.py:43-79`` (UM-MAE Swin, PVT),
``LayneH/GreenMIM@b981012 modeling/group_window_attention.py:67-105`` and
``modeling/green_twins_models.py:15-70`` (GreenMIM's grouped window attention with its -100 group
mask, Twins' LSA / GSA).

Two forms, as every op of :mod:`jaxmim.ops`:

* :func:`attention_fast`: ``jax.nn.dot_product_attention`` with ``implementation='xla'`` (the
  same einsum / scale / bias / float32 softmax / einsum, in JAX's ``(B, T, N, H)`` layout; in
  bfloat16 its ``q kᵀ`` returns float32 logits, ``preferred_element_type``) or ``'cudnn'`` (cuDNN's
  fused kernel, GPU only, bfloat16 / float16 inputs);
* :func:`attention_portable`: the explicit form written out (``q kᵀ`` in the input dtype, then
  float32: times ``scale``, plus ``bias``, softmax; probabilities cast back to ``v.dtype``, optional
  dropout, ``@ v``).

:func:`attention` takes the portable form when ``JAXMIM_PORTABLE_OPS`` is set
(:func:`jaxmim.ops.portable_forced`) or attention dropout is active (``jax.nn.dot_product_attention``
has none), else the fast form on every platform: the XLA implementation is no backend-specific
trick (it emits the portable form's operations), so it is not gated by
:data:`jaxmim.ops.FAST_PLATFORMS`; the one backend-specific choice, ``'cudnn'``, is the user's
(``attn_implementation``, checked by :func:`check_attn_implementation`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmim.ops.dispatch import current_platform, portable_forced

__all__ = ['ATTN_IMPLEMENTATIONS', 'check_attn_implementation', 'set_attn_implementation', 'attention',
           'attention_fast', 'attention_portable']

ATTN_IMPLEMENTATIONS = (None, 'xla', 'cudnn')
"""Accepted ``attn_implementation`` values: ``None`` or ``'xla'`` (XLA's softmax attention, every
platform) and ``'cudnn'`` (cuDNN's fused attention kernel: GPU only, bfloat16 / float16 compute)."""


def _gpu_present() -> bool:
    try:
        return bool(jax.devices('gpu'))
    except RuntimeError:
        return False


def check_attn_implementation(value: str | None) -> str | None:
    """Returns ``value`` when it is an accepted ``attn_implementation`` (:data:`ATTN_IMPLEMENTATIONS`)
    usable on this host.

    Raises:
      ValueError: a value outside :data:`ATTN_IMPLEMENTATIONS`, or ``'cudnn'`` where JAX sees no GPU.
    """
    if not (value is None or (isinstance(value, str) and value in ATTN_IMPLEMENTATIONS)):
        raise ValueError(f'attn_implementation must be one of {ATTN_IMPLEMENTATIONS} (None / "xla": XLA\'s '
                         f'softmax attention on every platform; "cudnn": cuDNN\'s fused kernel, GPU only), '
                         f'got {value!r}')
    if value == 'cudnn' and not _gpu_present():
        raise ValueError(f"attn_implementation='cudnn' needs a GPU (cuDNN's fused attention), but JAX sees none "
                         f'here (devices: {[d.platform for d in jax.devices()]}); use None or "xla"')
    return value


def set_attn_implementation(module: nnx.Module, implementation: str | None) -> nnx.Module:
    """Sets ``attn_implementation`` on ``module`` and every sub-module that has that attribute (the
    attention modules of the families that call :func:`attention`), after checking it
    (:func:`check_attn_implementation`). Returns ``module``. The top-level models call it at the end
    of their constructor, so the value reaches every encoder / decoder attention they built.

    Raises:
      ValueError: see :func:`check_attn_implementation`.
    """
    implementation = check_attn_implementation(implementation)
    for _, m in nnx.iter_modules(module):
        if hasattr(m, 'attn_implementation'):
            m.attn_implementation = implementation
    return module


def _check(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None) -> tuple[int, ...]:
    """The shape of ``bias`` broadcast against the logits ``(..., N, T, S)``; checks the shapes."""
    if q.ndim < 3 or k.shape != v.shape or k.shape[:-3] != q.shape[:-3] or k.shape[-2:] != q.shape[-2:]:
        raise ValueError(f'attention: q must be (..., T, N, H) and k, v (..., S, N, H) with the same leading '
                         f'dims, heads and head dim, got q {q.shape}, k {k.shape}, v {v.shape}')
    logits = q.shape[:-3] + (q.shape[-2], q.shape[-3], k.shape[-3])
    if bias is not None:
        try:
            if np.broadcast_shapes(bias.shape, logits) != logits:
                raise ValueError
        except ValueError:
            raise ValueError(f'attention: bias {bias.shape} does not broadcast to the logits (..., N, T, S) = '
                             f'{logits}') from None
    return logits


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float, bias: jax.Array | None = None,
              implementation: str | None = None, dropout_rate: float = 0.0,
              dropout_rng: jax.Array | None = None) -> jax.Array:
    """``softmax(scale * q kᵀ + bias) v`` per head, the softmax in float32.

    Args:
      q: ``(..., T, N, H)`` queries (any leading dims: batch, windows, groups), float.
      k, v: ``(..., S, N, H)`` keys and values, same leading dims and dtype as ``q``.
      scale: multiplies ``q kᵀ`` (after the product, in float32). The families that scale ``q``
        before the product (Swin, HiViT, UM-MAE Swin, GreenMIM) do so themselves and pass 1.0.
      bias: additive term broadcastable to the logits ``(..., N, T, S)`` (relative-position bias,
        additive masks such as Swin's -100), any float dtype; added in float32.
      implementation: ``None`` / ``'xla'`` or ``'cudnn'`` (:data:`ATTN_IMPLEMENTATIONS`).
      dropout_rate: dropout on the probabilities (inverted scaling, ``torch.nn.Dropout``); 0 when
        not training. Above 0 the portable form runs.
      dropout_rng: PRNG key, required when ``dropout_rate > 0``.

    Returns ``(..., T, N, H)`` in ``v.dtype``. Dispatch: see the module docstring.

    Raises:
      ValueError: bad shapes, an unknown ``implementation``, ``'cudnn'`` traced for a platform other
        than GPU or on float32 inputs, or dropout without a key.
    """
    if dropout_rate > 0.0 or portable_forced():
        return attention_portable(q, k, v, scale=scale, bias=bias, dropout_rate=dropout_rate,
                                  dropout_rng=dropout_rng)
    return attention_fast(q, k, v, scale=scale, bias=bias, implementation=implementation)


def attention_portable(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float, bias: jax.Array | None = None,
                       dropout_rate: float = 0.0, dropout_rng: jax.Array | None = None) -> jax.Array:
    """The reference form of :func:`attention`: ``logits = float32(q kᵀ)`` (the product in the
    input dtype, as the official code under PyTorch autocast), ``* scale`` (skipped when 1),
    ``+ float32(bias)``, float32 softmax over the keys, cast to ``v.dtype``, dropout, ``@ v``;
    differentiated by JAX's autodiff. Shapes and errors as :func:`attention`."""
    _check(q, k, v, bias)
    logits = jnp.einsum('...qhd,...khd->...hqk', q, k).astype(jnp.float32)
    if scale != 1.0:
        logits = logits * np.float32(scale)
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    if dropout_rate > 0.0:
        if dropout_rng is None:
            raise ValueError('attention: a PRNG key (dropout_rng) is required when dropout_rate > 0')
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
        probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0).astype(probs.dtype)
    return jnp.einsum('...hqk,...khd->...qhd', probs, v)


def attention_fast(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float, bias: jax.Array | None = None,
                   implementation: str | None = None) -> jax.Array:
    """:func:`attention` through ``jax.nn.dot_product_attention``: the leading dims are folded into
    one batch axis ``B``; a bias whose leading dims are all 1 stays ``(1, N or 1, T, S)``, else it
    is broadcast to ``(B, N or 1, T, S)`` (XLA fuses the broadcast into the addition). With
    ``'cudnn'`` the bias is cast to the input dtype and broadcast to ``(B, N, T, S)``, the kernel's
    documented layout (``jax._src.cudnn.fused_attention_stablehlo.dot_product_attention``), whose
    bias gradient JAX then sums back over the broadcast dims. No dropout. Equal to :func:`attention_portable` to float rounding in float32; in
    bfloat16 the XLA form keeps the logits in float32 from the product on (the portable form rounds
    them to bfloat16 first).

    Raises:
      ValueError: bad shapes, an unknown ``implementation``, or ``'cudnn'`` traced for a platform
        other than GPU (:func:`jaxmim.ops.current_platform`) or on inputs other than bfloat16 / float16.
    """
    logits = _check(q, k, v, bias)
    if not (implementation is None or (isinstance(implementation, str) and implementation in ATTN_IMPLEMENTATIONS)):
        raise ValueError(f'attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {implementation!r}')
    if implementation == 'cudnn':
        if current_platform() != 'gpu':
            raise ValueError(f"attn_implementation='cudnn' runs on GPU only; this attention is traced for "
                             f"{current_platform()!r}: use None or 'xla'")
        if q.dtype not in (jnp.bfloat16, jnp.float16):
            raise ValueError(f"attn_implementation='cudnn' takes bfloat16 / float16 inputs, got {q.dtype} "
                             "(set config.compute_dtype='bfloat16', or use attn_implementation None / 'xla')")
    lead, (t, n, h), s = q.shape[:-3], q.shape[-3:], k.shape[-3]
    b = math.prod(lead)
    bias4 = None
    if bias is not None:
        bias = jnp.asarray(bias)
        nb = n if (implementation == 'cudnn' or (bias.ndim >= 3 and bias.shape[-3] == n)) else 1
        if implementation == 'cudnn':
            bias = bias.astype(q.dtype)
        bias = bias.reshape((1,) * (len(logits) - bias.ndim) + bias.shape)      # the rank of the logits
        if implementation != 'cudnn' and all(d == 1 for d in bias.shape[:-3]):
            bias4 = jnp.broadcast_to(bias.reshape(bias.shape[-3:]), (nb, t, s))[None]
        else:
            bias4 = jnp.broadcast_to(bias, lead + (nb, t, s)).reshape(b, nb, t, s)
    out = jax.nn.dot_product_attention(q.reshape(b, t, n, h), k.reshape(b, s, n, h), v.reshape(b, s, n, h),
                                       bias=bias4, scale=scale, implementation=implementation or 'xla')
    return out.reshape(q.shape)
