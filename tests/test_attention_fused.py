"""The shared softmax attention op (``jaxmim.ops.attention``) and the families routed through it.

* The op, both forms, against softmax attention written out in NumPy (float64): logits
  ``scale * q kᵀ + bias`` with an additive bias holding Swin's -100 shift-mask entries, softmax over
  the keys, ``@ v``; bias shapes broadcast over leading dims and heads; keys / values of another
  length (PVT's spatial reduction); bfloat16 inputs; attention dropout.
* Routing: the fast form is ``jax.nn.dot_product_attention`` with XLA's implementation;
  ``JAXMIM_PORTABLE_OPS=1`` and active dropout take the portable (explicit) form.
* ``attn_implementation``: unknown values, and ``'cudnn'`` without a GPU, are refused naming the
  field; the value reaches every attention of a model (encoder and decoder).
* Every family (demo-size registered models, 32 px, 2 images, parameters perturbed so that no bias
  table or head is trivially 0): outputs and parameter gradients of the fast form against the
  portable one, float32 (tight) and bfloat16 (loose: the XLA form keeps the logits in float32 from
  the product on, the portable form rounds them to bf16 first, as PyTorch under autocast).
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxmim import ops
from jaxmim.ops import softmax_attention as ATT   # the module of the op ``jaxmim.ops.attention``
from jaxmim.registry import create_model        # importing jaxmim registers every model

RNG = np.random.RandomState(0)
F32_TOL = 1e-5
TOLS = {'float32': (F32_TOL, 1e-3), 'bfloat16': (1e-1, 1e-2)}
"""Family tests: ``(rtol, floor)``: a gradient leaf may differ by ``rtol * max(its largest magnitude,
floor * the largest gradient of the model)``. The floor covers leaves whose exact gradient is 0
(a per-head constant of the position bias, which the softmax ignores) and whose computed gradient
is rounding noise. bf16: the fast form's float32 logits against the portable form's bf16 ones;
measured up to 6 % of a leaf's largest gradient."""


def _formula(q, k, v, scale, bias=None):
    """Softmax attention in float64 NumPy: q ``(..., T, N, H)``, k / v ``(..., S, N, H)``."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    logits = scale * np.einsum('...thd,...shd->...hts', q, k)
    if bias is not None:
        logits = logits + np.asarray(bias, np.float64)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum('...hts,...shd->...thd', p, v)


def _swin_bias(nw, nh, n):
    """A Swin-like additive term ``(nW, nH, N, N)``: relative bias N(0, 1) plus, for windows
    ``1..nW-1``, -100 between two token regions (the shifted-window mask)."""
    bias = RNG.randn(1, nh, n, n).astype(np.float32)
    region = (np.arange(n) >= n // 2).astype(np.int32)
    mask = np.where(region[:, None] != region[None, :], -100.0, 0.0).astype(np.float32)
    masks = np.stack([np.zeros_like(mask)] + [mask] * (nw - 1))[:, None]
    return bias + masks


def _qkv(shape_q, s=None, dtype=np.float32):
    *lead, t, n, h = shape_q
    s = t if s is None else s
    q = RNG.randn(*lead, t, n, h)
    k, v = RNG.randn(*lead, s, n, h), RNG.randn(*lead, s, n, h)
    return [jnp.asarray(a, dtype) for a in (q, k, v)]


@pytest.mark.parametrize('form', ['fast', 'portable'])
def test_op_matches_the_formula_with_a_shift_mask_bias(form):
    fn = getattr(ops, f'attention_{form}')
    q, k, v = _qkv((2, 3, 16, 2, 8))                                  # (B, nW, N, nH, hd)
    bias = _swin_bias(3, 2, 16)                                       # (nW, nH, N, N) with -100 entries
    got = fn(q, k, v, scale=0.35, bias=jnp.asarray(bias))
    np.testing.assert_allclose(np.asarray(got), _formula(q, k, v, 0.35, bias), rtol=F32_TOL, atol=F32_TOL)
    # the -100 entries really mask: tokens of one region ignore the other's values
    v2 = np.asarray(v).copy()
    v2[:, 1:, 8:] += 1000.0                                            # second region of masked windows
    got2 = fn(q, k, jnp.asarray(v2), scale=0.35, bias=jnp.asarray(bias))
    np.testing.assert_allclose(np.asarray(got2)[:, 1:, :8], np.asarray(got)[:, 1:, :8], atol=1e-4)
    # other broadcasts: no bias, one bias for all heads and windows, per-sample bias
    for b in (None, RNG.randn(1, 16, 16), RNG.randn(2, 3, 2, 16, 16)):
        b = None if b is None else b.astype(np.float32)
        got = fn(q, k, v, scale=1.0, bias=None if b is None else jnp.asarray(b))
        np.testing.assert_allclose(np.asarray(got), _formula(q, k, v, 1.0, b), rtol=F32_TOL, atol=F32_TOL)


@pytest.mark.parametrize('form', ['fast', 'portable'])
def test_op_keys_of_another_length_and_bf16(form):
    fn = getattr(ops, f'attention_{form}')
    q, k, v = _qkv((2, 16, 4, 8), s=4)                                # PVT: 16 queries, 4 reduced keys
    np.testing.assert_allclose(np.asarray(fn(q, k, v, scale=8 ** -0.5)), _formula(q, k, v, 8 ** -0.5),
                               rtol=F32_TOL, atol=F32_TOL)
    qb, kb, vb = (a.astype(jnp.bfloat16) for a in (q, k, v))
    got = fn(qb, kb, vb, scale=8 ** -0.5)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), _formula(qb, kb, vb, 8 ** -0.5), atol=3e-2)


def test_op_gradients_agree():
    q, k, v = _qkv((2, 3, 16, 2, 8))
    bias = jnp.asarray(_swin_bias(3, 2, 16))
    w = jnp.asarray(RNG.randn(2, 3, 16, 2, 8), jnp.float32)

    def loss(fn):
        return lambda q, k, v, b: jnp.sum(fn(q, k, v, scale=0.35, bias=b) * w)

    g_fast = jax.grad(loss(ops.attention_fast), argnums=(0, 1, 2, 3))(q, k, v, bias)
    g_port = jax.grad(loss(ops.attention_portable), argnums=(0, 1, 2, 3))(q, k, v, bias)
    for a, b in zip(g_fast, g_port):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=F32_TOL, atol=F32_TOL * np.abs(b).max())
    # a central difference of the loss along one direction of the bias (float32, step 1e-2)
    d = jnp.asarray(RNG.randn(*bias.shape), jnp.float32)
    f = loss(ops.attention_portable)
    fd = (f(q, k, v, bias + 1e-2 * d) - f(q, k, v, bias - 1e-2 * d)) / 2e-2
    np.testing.assert_allclose(float(jnp.sum(g_fast[3] * d)), float(fd), rtol=2e-3)


def test_dropout_takes_the_portable_form(monkeypatch):
    calls = []
    real = jax.nn.dot_product_attention
    monkeypatch.setattr(jax.nn, 'dot_product_attention', lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    q, k, v = _qkv((2, 8, 2, 4))
    key = jax.random.key(3)
    got = ops.attention(q, k, v, scale=0.5, dropout_rate=0.25, dropout_rng=key)
    assert not calls
    # expected: the formula's probabilities, dropped by the documented draw, rescaled by 1 / 0.75
    logits = 0.5 * np.einsum('bthd,bshd->bhts', np.asarray(q, np.float64), np.asarray(k, np.float64))
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    keep = np.asarray(jax.random.bernoulli(key, 0.75, p.shape))
    want = np.einsum('bhts,bshd->bthd', np.where(keep, p / 0.75, 0.0), np.asarray(v, np.float64))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match='dropout_rng'):
        ops.attention(q, k, v, scale=0.5, dropout_rate=0.25)
    ops.attention(q, k, v, scale=0.5)
    assert calls and calls[0]['implementation'] == 'xla'


def test_portable_env_selects_the_explicit_form(monkeypatch):
    calls = []
    real = jax.nn.dot_product_attention
    monkeypatch.setattr(jax.nn, 'dot_product_attention', lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    q, k, v = _qkv((2, 8, 2, 4))
    monkeypatch.setenv(ops.PORTABLE_ENV, '1')
    portable = ops.attention(q, k, v, scale=0.5)
    assert not calls
    monkeypatch.setenv(ops.PORTABLE_ENV, '0')
    fast = ops.attention(q, k, v, scale=0.5)
    assert len(calls) == 1
    np.testing.assert_allclose(np.asarray(fast), np.asarray(portable), rtol=F32_TOL, atol=F32_TOL)


def test_bad_shapes_and_implementations_are_refused():
    q, k, v = _qkv((2, 8, 2, 4))
    with pytest.raises(ValueError, match='bias'):
        ops.attention(q, k, v, scale=1.0, bias=jnp.zeros((3, 2, 8, 8)))
    with pytest.raises(ValueError, match='same leading dims'):
        ops.attention(q, k[:1], v[:1], scale=1.0)
    with pytest.raises(ValueError, match='attn_implementation'):
        ops.attention(q, k, v, scale=1.0, implementation='flash')
    if jax.default_backend() != 'gpu':
        with pytest.raises(ValueError, match="attn_implementation='cudnn' runs on GPU only"):
            ops.attention(q, k, v, scale=1.0, implementation='cudnn')


def test_cudnn_call_is_shaped_for_the_kernel(monkeypatch):
    """On a (simulated) GPU, ``'cudnn'`` reaches ``jax.nn.dot_product_attention`` with the bias cast to
    the input dtype and broadcast to ``(B, N, T, S)``; float32 inputs are refused. The kernel itself
    is replaced by XLA's (no GPU here)."""
    calls = []
    real = jax.nn.dot_product_attention

    def spy(q, k, v, bias=None, **kw):
        calls.append((bias.shape, bias.dtype, kw['implementation']))
        return real(q, k, v, bias=bias, **{**kw, 'implementation': 'xla'})

    monkeypatch.setattr(jax.nn, 'dot_product_attention', spy)
    monkeypatch.setattr(ATT, 'current_platform', lambda: 'gpu')
    monkeypatch.delenv(ops.PORTABLE_ENV, raising=False)
    q, k, v = _qkv((2, 3, 16, 2, 8), dtype=jnp.bfloat16)
    bias = _swin_bias(3, 2, 16)[:, :1]                                   # one term for both heads
    got = ops.attention(q, k, v, scale=1.0, bias=jnp.asarray(bias), implementation='cudnn')
    assert calls == [((6, 2, 16, 16), jnp.bfloat16, 'cudnn')]
    np.testing.assert_allclose(np.asarray(got, np.float32), _formula(q, k, v, 1.0, bias), atol=3e-2)
    with pytest.raises(ValueError, match='bfloat16 / float16'):
        ops.attention(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), scale=1.0,
                      implementation='cudnn')


def test_attn_implementation_argument():
    with pytest.raises(ValueError, match=r"attn_implementation must be one of \(None, 'xla', 'cudnn'\)"):
        create_model('pvt_demo_32', attn_implementation='flash')
    if not any(d.platform == 'gpu' for d in jax.devices()):
        with pytest.raises(ValueError, match="attn_implementation='cudnn' needs a GPU"):
            create_model('pvt_demo_32', attn_implementation='cudnn')
    # the value reaches every attention, encoder and decoder (the HiViT MAE's decoder is built after
    # the encoder's constructor has set its blocks)
    model = create_model('mae_hivit_demo_patch4_32_dec128d2b', depths=(1, 1, 1), decoder_depth=1,
                         attn_implementation='xla')
    owners = [m for _, m in nnx.iter_modules(model) if hasattr(m, 'attn_implementation')]
    assert len(owners) == 2 and {id(model.blocks[-1].attn), id(model.decoder_blocks[0].attn)} == {id(m) for m in owners}
    assert all(m.attn_implementation == 'xla' for m in owners)


# --------------------------------------------------------------------------------------------
# every family: fast form (jax.nn.dot_product_attention, XLA) against the portable form

FAMILIES = {
    'mae_vit': ('mae_vit_demo_patch4_32_dec128d2b', dict(depth=2, decoder_depth=1)),
    'mae_hivit_rpe': ('mae_hivit_demo_patch4_32_dec128d2b', dict(rpe=True, depths=(1, 1, 2), decoder_depth=1)),
    'swin': ('swin_demo_patch4_window4_32', dict(depths=(2, 2), num_heads=(2, 4))),
    'ummae_swin': ('mae_swin_tiny_256', dict(img_size=32, patch_size=4, stride=8, embed_dim=16, depths=(2, 1, 1),
                                             num_heads=(2, 2, 4), window_size=2, decoder_embed_dim=32,
                                             decoder_depth=1, decoder_num_heads=2)),
    'pvt': ('pvt_demo_32', {}),
    'greenmim_swin': ('green_mim_swin_demo_patch2_32_dec64b1', {}),
    'greenmim_twins': ('green_mim_twins_demo_patch2_32_dec64b1', {}),
}
"""Registered demo-size models, fewer blocks where a family repeats one (UM-MAE's Swin has no 32-px
variant: its Swin-T pre-training model with 32-px overrides), covering every attention class routed
through the op: ViT's (MAE encoder and decoder, the decoders of GreenMIM), HiViT's with a
per-sample relative-position bias (masked units), Swin's windows with the -100 shift mask, UM-MAE's
windows with the per-sample MLP bias and shift mask, PVT's spatial reduction, GreenMIM's grouped
windows (-100 group mask) and Twins' GSA."""


def _perturbed(name, overrides):
    model = create_model(name, seed=0, **overrides)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    r = np.random.RandomState(1)
    params = jax.tree.map(lambda a: a + 0.05 * r.randn(*a.shape).astype(a.dtype), params)
    return model, graphdef, params, rest


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
@pytest.mark.parametrize('family', list(FAMILIES))
def test_family_fast_equals_portable(family, dtype, monkeypatch):
    name, overrides = FAMILIES[family]
    model, graphdef, params, rest = _perturbed(name, overrides)
    dt = jnp.dtype(dtype)
    params = jax.tree.map(lambda a: a.astype(dt), params)
    images = jnp.asarray(RNG.randn(2, 32, 32, model.in_chans), dt)
    inputs = model.host_inputs(np.random.default_rng(0), 2) if hasattr(model, 'host_inputs') else {}
    monkeypatch.delenv(ops.PORTABLE_ENV, raising=False)

    def objective(portable):
        def f(p):
            monkeypatch.setattr(ATT, 'portable_forced', lambda: portable)   # read when traced
            out = nnx.merge(graphdef, p, rest)(images, **inputs)
            if isinstance(out, dict):                                       # MIM models
                return out['loss'], out['pred']
            w = jnp.asarray(np.random.RandomState(2).randn(*out.shape), jnp.float32)
            return jnp.sum(out.astype(jnp.float32) * w), out
        return jax.value_and_grad(f, has_aux=True)

    both = jax.jit(lambda p: (objective(False)(p), objective(True)(p)))
    ((_, out_f), g_f), ((_, out_p), g_p) = both.lower(params).compile({'xla_backend_optimization_level': 0})(params)
    tol, floor = TOLS[dtype]
    f64 = lambda a: np.asarray(a, np.float64)                               # noqa: E731
    scale = np.abs(f64(out_p)).max()
    assert scale > 0 and np.abs(f64(out_f) - f64(out_p)).max() <= tol * scale
    leaves_f, leaves_p = jax.tree.leaves(g_f), jax.tree.leaves(g_p)
    top = max(np.abs(f64(b)).max() for b in leaves_p)
    assert top > 0
    for a, b in zip(leaves_f, leaves_p):
        assert a.dtype == dt
        assert np.abs(f64(a) - f64(b)).max() <= tol * max(np.abs(f64(b)).max(), floor * top)
