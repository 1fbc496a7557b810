"""The backend-specific ops of ``jaxmim.ops`` (issue 26): both forms of every op, on CPU.

For each op, its fast form (``X_fast``, the CPU form) and its portable form (``X_portable``)
are called explicitly, forward and gradient, and compared with each other and with a formula
written here in NumPy float64 (or plain ``jnp``), for float32 and bfloat16 inputs and for inputs
sharded over the 8 fake CPU devices of ``tests/conftest.py``. Then the predicate:
``platform_scope`` picks the forms, ``JAXMIM_PORTABLE_OPS=1`` routes everything to the portable
forms, and the steps trace under their mesh's platform.

Tolerances. float32: ``rtol=1e-5`` (``2e-6`` for GELU's values) against float64 formulas, which
are evaluated on the same (float32 or bfloat16-rounded) inputs. bfloat16 (8-bit significand,
one rounding = ``2^-8`` relative at most): results returned in bfloat16 are checked to
``BF16_RTOL = 2^-6`` of the float64 value (a few roundings), or, for products and sums whose
terms cancel, to ``2^-6`` of the sum of the terms' absolute values (GELU: of ``|x|``, since the
fast form's ``1 + erf(x / sqrt 2)`` cancels for ``x < 0``: an error of about ``2^-10 |x|``);
results accumulated and returned in float32 (``sum_rows``, ``sum_squares``) keep the float32
tolerance. Sharded against unsharded: ``1e-5`` (float32), ``2e-2`` (bfloat16) relative.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxmim import layers as L
from jaxmim import mesh as mesh_lib
from jaxmim import ops

RNG = np.random.RandomState(0)
DTYPES = (jnp.float32, jnp.bfloat16)
BF16_RTOL = 2.0 ** -6
F32_RTOL = 1e-5


def _forms(name):
    return {'fast': getattr(ops, f'{name}_fast'), 'portable': getattr(ops, f'{name}_portable')}


def _rounded(a, dtype):
    """``a`` as the op sees it (rounded to ``dtype``), in float64."""
    return np.asarray(jnp.asarray(a, dtype), np.float64)


def _close(got, want, dtype, scale=None, f32_rtol=F32_RTOL):
    """``|got - want| <= rtol * max(|want|, scale)`` elementwise (``scale``: the sum of the
    terms' absolute values, where they cancel), ``rtol`` by dtype as in the module docstring,
    plus an absolute floor of ``1e-6`` of the largest scale (for zeros)."""
    got = np.asarray(jnp.asarray(got, jnp.float32), np.float64)
    want = np.asarray(want, np.float64)
    scale = np.abs(want) if scale is None else np.maximum(np.abs(want), np.asarray(scale, np.float64))
    rtol = BF16_RTOL if dtype == jnp.bfloat16 else f32_rtol
    err = np.abs(got - want)
    bound = rtol * scale + 1e-6 * max(1.0, float(np.max(scale)))
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.all(err <= bound), f'max error {err.max():.3g}, bound at worst {(err - bound).max():.3g} over'


def _cpu_mesh(n=8):
    devs = jax.devices('cpu')
    assert len(devs) >= n, f'needs {n} CPU devices (tests/conftest.py), have {len(devs)}'
    return mesh_lib.make_mesh(devs[:n])


def _jaxpr(fn, *args):
    """The jaxpr of ``fn(*args)`` as text, traced afresh (``make_jaxpr`` goes through ``jax.jit``,
    whose cache is keyed by the function: a new lambda each time, so the current scope counts)."""
    return str(jax.make_jaxpr(lambda *a: fn(*a))(*args))


# --------------------------------------------------------------------------------------------
# sum_rows


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('shape', [(37, 16), (4, 5, 6, 16), (2, 3, 4, 5, 16)])
def test_sum_rows_both_forms_forward_and_gradient(shape, dtype):
    a = (RNG.randn(*shape) * 3).astype(np.float32)
    w = RNG.randn(shape[-1]).astype(np.float32)
    a64 = _rounded(a, dtype)
    want = a64.reshape(-1, shape[-1]).sum(0)
    scale = np.abs(a64).reshape(-1, shape[-1]).sum(0)             # float32 accumulation either way
    out = {}
    for name, fn in _forms('sum_rows').items():
        for f in (fn, jax.jit(fn)):
            got = f(jnp.asarray(a, dtype))
            assert got.shape == (shape[-1],) and got.dtype == jnp.float32, name
            _close(got, want, jnp.float32, scale)
        # d/da sum(w * sum_rows(a)) = w broadcast over the rows
        grad = jax.grad(lambda x: jnp.sum(w * fn(x)))(jnp.asarray(a, dtype))
        assert grad.dtype == dtype
        _close(grad, np.broadcast_to(w, shape), dtype)
        out[name] = got
    _close(out['fast'], np.asarray(out['portable']), jnp.float32, scale)


# --------------------------------------------------------------------------------------------
# sum_squares


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('shape', [(7,), (3, 5), (256, 256), (4096, 33), (2, 3, 5, 4099), (1024, 1, 1, 96)])
def test_sum_squares_both_forms_forward_and_gradient(shape, dtype):
    # sizes below 65,536 or not a multiple of 4 take the plain sum in the fast form; the others the Gram trace
    a = (RNG.randn(*shape) * 3).astype(np.float32)
    a64 = _rounded(a, dtype)
    want = np.sum(a64 ** 2)
    out = {}
    for name, fn in _forms('sum_squares').items():
        for f in (fn, jax.jit(fn)):
            got = f(jnp.asarray(a, dtype))
            assert got.shape == () and got.dtype == jnp.float32, name
            _close(got, want, jnp.float32)
        grad = jax.grad(fn)(jnp.asarray(a, dtype))                 # 2 a
        assert grad.dtype == dtype
        _close(grad, 2 * a64, dtype)
        out[name] = float(got)
    np.testing.assert_allclose(out['fast'], out['portable'], rtol=F32_RTOL)
    uses_gram = a.size >= ops.GRAM_MIN_SIZE and a.size % ops.GRAM_ROWS == 0
    assert ('dot_general' in _jaxpr(ops.sum_squares_fast, jnp.asarray(a))) == uses_gram


# --------------------------------------------------------------------------------------------
# linear_apply


def _linear_case(lead, k, n, use_bias, dtype):
    x = (RNG.randn(*lead, k) * 2).astype(np.float32)
    kernel = (RNG.randn(k, n) / math.sqrt(k)).astype(np.float32)
    bias = RNG.randn(n).astype(np.float32) if use_bias else None
    g = RNG.randn(*lead, n).astype(np.float32)
    args = (jnp.asarray(x, dtype), jnp.asarray(kernel, dtype), None if bias is None else jnp.asarray(bias, dtype))
    return args, jnp.asarray(g, dtype)


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('use_bias', [True, False])
@pytest.mark.parametrize('lead,k,n', [((6,), 16, 24), ((3, 5, 7), 16, 8), ((4, 512), 16, 24),
                                      ((4, 512), 16, 8)])   # 2,048 rows, in > out: the transposed dkernel
def test_linear_apply_both_forms_forward_and_gradient(lead, k, n, use_bias, dtype):
    args, g = _linear_case(lead, k, n, use_bias, dtype)
    x64, k64, g64 = (_rounded(a, dtype) for a in (args[0], args[1], g))
    x2, g2 = x64.reshape(-1, k), g64.reshape(-1, n)
    b64 = 0 if args[2] is None else _rounded(args[2], dtype)
    want_y = (x2 @ k64).reshape(*lead, n) + b64
    scale_y = (np.abs(x2) @ np.abs(k64)).reshape(*lead, n) + np.abs(b64)
    # the formulas written out: dx = g W^T, dW = x^T g over all rows, db = sum of g's rows
    want = (g2 @ k64.T, x2.T @ g2, g2.sum(0))
    scales = (np.abs(g2) @ np.abs(k64.T), np.abs(x2.T) @ np.abs(g2), np.abs(g2).sum(0))
    out = {}
    for name, fn in _forms('linear_apply').items():
        y, vjp = jax.jit(lambda *a, fn=fn: jax.vjp(fn, *a))(*args)
        dx, dk, db = vjp(g)
        assert y.dtype == dx.dtype == dk.dtype == dtype and (db is None) == (args[2] is None), name
        _close(y, want_y, dtype, scale_y)
        _close(dx, want[0].reshape(x64.shape), dtype, scales[0].reshape(x64.shape))
        _close(dk, want[1], dtype, scales[1])
        if db is not None:
            assert db.dtype == dtype
            _close(db, want[2], dtype, scales[2])
        out[name] = (y, dx, dk, db)
    # the forward pass is the same computation in both forms: bit-identical
    assert np.array_equal(np.asarray(out['fast'][0], np.float32), np.asarray(out['portable'][0], np.float32))
    for f, p, s in zip(out['fast'][1:], out['portable'][1:], (scales[0].reshape(x64.shape), scales[1], scales[2])):
        if f is not None:
            _close(f, np.asarray(jnp.asarray(p, jnp.float32)), dtype, s)
    # only the fast form is a custom_vjp; the transposed product sits behind an optimization_barrier
    text = _jaxpr(lambda *a: jax.grad(lambda *b: ops.linear_apply_fast(*b).astype(jnp.float32).sum(),
                                      argnums=(0, 1))(*a), *args)
    assert 'custom_vjp' in text
    assert ('optimization_barrier' in text) == (k > n and math.prod(lead) >= ops.SWAP_MIN_ROWS)
    assert 'custom_vjp' in _jaxpr(ops.linear_apply_fast, *args)
    assert 'custom_vjp' not in _jaxpr(ops.linear_apply_portable, *args)


@pytest.mark.parametrize('form', ['fast', 'portable'])
@pytest.mark.parametrize('k,n', [(16, 8), (8, 16)])    # (16, 8) at 2,048 rows: the transposed dkernel
def test_linear_apply_keeps_a_sharded_batch_sharded(form, k, n):
    mesh = _cpu_mesh()
    fn = _forms('linear_apply')[form]
    args, g = _linear_case((16, 128), k, n, True, jnp.float32)           # 2,048 rows, 16 = 8 x 2 per device
    batch = NamedSharding(mesh, P('data'))
    rep = NamedSharding(mesh, P())
    x = jax.device_put(args[0], batch)
    params = jax.device_put(args[1:], rep)
    gs = jax.device_put(g, batch)

    def grads(x, kernel, bias, g):
        y, vjp = jax.vjp(fn, x, kernel, bias)
        return (y,) + vjp(g)

    y, dx, dk, db = jax.jit(grads)(x, *params, gs)
    # the custom backward keeps the batch axis sharded; the parameter gradients are replicated
    assert y.sharding.spec[0] == 'data' and dx.sharding.spec[0] == 'data', (y.sharding.spec, dx.sharding.spec)
    assert len(dx.addressable_shards) == 8 and dx.addressable_shards[0].data.shape == (2, 128, k)
    assert dk.sharding.is_fully_replicated and db.sharding.is_fully_replicated
    # and the numbers are the unsharded ones
    ref = jax.jit(grads)(*args, g)
    for got, want in zip((y, dx, dk, db), ref):       # float32; sums of 2,048 terms cancel: atol by their size
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5 * np.abs(want).max())


# --------------------------------------------------------------------------------------------
# layer_norm_last


def _naive_layer_norm(x, scale, bias, eps):
    """The textbook formula in plain jnp, float32 (its autodiff is the gradient reference)."""
    x, scale, bias = (a.astype(jnp.float32) for a in (x, scale, bias))
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps) * scale + bias


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('shape', [(4, 7, 48), (3, 2, 5, 16)])
def test_layer_norm_last_both_forms_forward_and_gradient(shape, dtype):
    c, eps = shape[-1], 1e-5
    x = (RNG.randn(*shape) * 2 + 0.5).astype(np.float32)
    scale, bias = RNG.randn(c).astype(np.float32), RNG.randn(c).astype(np.float32)
    g = RNG.randn(*shape).astype(np.float32)
    args = tuple(jnp.asarray(a, dtype) for a in (x, scale, bias))
    gd = jnp.asarray(g, dtype)
    # forward: the float64 formula on the inputs as rounded to dtype
    x64, s64, b64 = (_rounded(a, dtype) for a in (x, scale, bias))
    xc = x64 - x64.mean(-1, keepdims=True)
    x_hat = xc / np.sqrt((xc ** 2).mean(-1, keepdims=True) + eps)
    want_y = x_hat * s64 + b64
    scale_y = np.abs(x_hat * s64) + np.abs(b64)
    # gradient: autodiff of the naive jnp formula (float32), in float64 for the comparison
    _, vjp_ref = jax.vjp(lambda *a: _naive_layer_norm(*a, eps), *(a.astype(jnp.float32) for a in args))
    want_grads = [np.asarray(v, np.float64) for v in vjp_ref(gd.astype(jnp.float32))]
    g64 = _rounded(g, dtype)
    gs, rstd = np.abs(g64 * s64), 1 / np.sqrt((xc ** 2).mean(-1, keepdims=True) + eps)
    # dx = rstd (g' - mean(g') - x_hat mean(g' x_hat)): the three terms' sizes
    gx = (gs * np.abs(x_hat)).mean(-1, keepdims=True)
    grad_scales = [rstd * (gs + gs.mean(-1, keepdims=True) + np.abs(x_hat) * gx),
                   np.abs(g64 * x_hat).reshape(-1, c).sum(0), np.abs(g64).reshape(-1, c).sum(0)]
    out = {}
    for name, fn in _forms('layer_norm_last').items():
        y, vjp = jax.jit(lambda *a, fn=fn: jax.vjp(lambda *b: fn(*b, eps), *a))(*args)
        grads = vjp(gd)
        assert y.dtype == dtype and all(d.dtype == dtype for d in grads), name
        _close(y, want_y, dtype, scale_y)
        for got, want, s in zip(grads, want_grads, grad_scales):
            _close(got, want, dtype, s)
        out[name] = (y, grads)
    assert np.array_equal(np.asarray(out['fast'][0], np.float32), np.asarray(out['portable'][0], np.float32))
    for f, p, s in zip(out['fast'][1], out['portable'][1], grad_scales):
        _close(f, np.asarray(jnp.asarray(p, jnp.float32)), dtype, s)
    assert 'custom_vjp' in _jaxpr(lambda *a: ops.layer_norm_last_fast(*a, eps), *args)
    assert 'custom_vjp' not in _jaxpr(lambda *a: ops.layer_norm_last_portable(*a, eps), *args)


# --------------------------------------------------------------------------------------------
# gelu


def _gelu64(x):
    from scipy.special import erf
    cdf = 0.5 * (1 + erf(x / np.sqrt(2.0)))
    return x * cdf, cdf + x * np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi)     # value, derivative


@pytest.mark.parametrize('dtype', DTYPES)
def test_gelu_both_forms_forward_and_gradient(dtype):
    x = np.concatenate([(RNG.randn(64, 33) * 3).ravel(), np.linspace(-9, 9, 181)]).astype(np.float32)
    x64 = _rounded(x, dtype)
    want, dwant = _gelu64(x64)
    # float32: relative, with a floor of 1e-2 |x| where gelu ~ 0 for x < 0. bfloat16: relative to |x|, since
    # the fast form's 1 + erf(x / sqrt 2) cancels for x < 0 (one bf16 rounding of erf near -1 is up to 2^-9,
    # times x / 2: ~|x| 2^-10, 0.003 at x = -3, where gelu = -0.004); the erfc form does not cancel.
    scale_y = np.abs(x64) * (1.0 if dtype == jnp.bfloat16 else 1e-2)
    scale_d = np.abs(x64) + 1.0                                   # dgelu = Phi + x phi: terms of size ~|x|
    out = {}
    for name, fn in _forms('gelu').items():
        y, vjp = jax.jit(lambda a, fn=fn: jax.vjp(fn, a))(jnp.asarray(x, dtype))
        (dy,) = vjp(jnp.ones_like(y))
        assert y.dtype == dy.dtype == dtype, name
        _close(y, want, dtype, scale_y, f32_rtol=2e-6)
        _close(dy, dwant, dtype, scale_d, f32_rtol=2e-6)
        out[name] = (y, dy)
    for f, p, s in zip(out['fast'], out['portable'], (scale_y, scale_d)):
        _close(f, np.asarray(jnp.asarray(p, jnp.float32)), dtype, s, f32_rtol=2e-6)
    assert 'erfc' in _jaxpr(ops.gelu_portable, jnp.asarray(x)) and 'erfc' not in _jaxpr(ops.gelu_fast, jnp.asarray(x))


# --------------------------------------------------------------------------------------------
# pointwise_conv


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('use_bias', [True, False])
def test_pointwise_conv_both_forms_forward_and_gradient(use_bias, dtype):
    x = RNG.randn(3, 6, 5, 24).astype(np.float32)
    kernel = (RNG.randn(1, 1, 24, 40) / 5).astype(np.float32)
    bias = RNG.randn(40).astype(np.float32) if use_bias else None
    g = RNG.randn(3, 6, 5, 40).astype(np.float32)
    args = (jnp.asarray(x, dtype), jnp.asarray(kernel, dtype), None if bias is None else jnp.asarray(bias, dtype))
    x64, k64, g64 = (_rounded(a, dtype) for a in (x, kernel, g))
    b64 = 0 if bias is None else _rounded(bias, dtype)
    want_y = np.einsum('bhwi,io->bhwo', x64, k64[0, 0]) + b64
    scale_y = np.einsum('bhwi,io->bhwo', np.abs(x64), np.abs(k64[0, 0])) + np.abs(b64)
    want = (np.einsum('bhwo,io->bhwi', g64, k64[0, 0]), np.einsum('bhwi,bhwo->io', x64, g64)[None, None],
            g64.sum((0, 1, 2)))
    scales = (np.einsum('bhwo,io->bhwi', np.abs(g64), np.abs(k64[0, 0])),
              np.einsum('bhwi,bhwo->io', np.abs(x64), np.abs(g64))[None, None], np.abs(g64).sum((0, 1, 2)))
    out = {}
    for name, fn in _forms('pointwise_conv').items():
        y, vjp = jax.jit(lambda *a, fn=fn: jax.vjp(fn, *a))(*args)
        grads = vjp(jnp.asarray(g, dtype))
        _close(y, want_y, dtype, scale_y)
        for got, w, s in zip(grads, want, scales):
            if got is not None:
                assert got.dtype == dtype
                _close(got, w, dtype, s)
        out[name] = (y,) + tuple(grads)
    for f, p, s in zip(out['fast'], out['portable'], (scale_y,) + scales):
        if f is not None:
            _close(f, np.asarray(jnp.asarray(p, jnp.float32)), dtype, s)
    # the portable form is nnx.Conv's computation
    conv = nnx.Conv(24, 40, (1, 1), use_bias=use_bias, rngs=nnx.Rngs(0))
    conv.kernel[...] = jnp.asarray(kernel)
    if use_bias:
        conv.bias[...] = jnp.asarray(bias)
    np.testing.assert_allclose(np.asarray(ops.pointwise_conv_portable(jnp.asarray(x), conv.kernel[...],
                                                                      conv.bias[...] if use_bias else None)),
                               np.asarray(conv(jnp.asarray(x))), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match='not \\(1, ..., 1, in, out\\)'):
        ops.pointwise_conv(args[0], jnp.zeros((3, 3, 24, 40), dtype), None)


# --------------------------------------------------------------------------------------------
# every op on a batch sharded over 8 devices, both forms


def _sharded_cases():
    x = RNG.randn(16, 4, 4, 24).astype(np.float32)       # batch 16 over 8 devices
    kernel = (RNG.randn(1, 1, 24, 12) / 5).astype(np.float32)
    scale, bias = RNG.randn(24).astype(np.float32), RNG.randn(24).astype(np.float32)
    return {
        'sum_rows': (lambda f, a: f(a), (x,)),
        'sum_squares': (lambda f, a: f(a), (RNG.randn(16, 64, 64).astype(np.float32),)),   # Gram-sized
        'layer_norm_last': (lambda f, a, s, b: f(a, s, b, 1e-6), (x, scale, bias)),
        'gelu': (lambda f, a: f(a), (x,)),
        'pointwise_conv': (lambda f, a, k, b: f(a, k, b), (x, kernel, bias[:12])),
    }


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('op', ['sum_rows', 'sum_squares', 'layer_norm_last', 'gelu', 'pointwise_conv'])
def test_every_op_on_a_batch_sharded_over_8_devices(op, dtype):
    mesh = _cpu_mesh()
    call, arrays = _sharded_cases()[op]
    arrays = [jnp.asarray(a, dtype) for a in arrays]
    batch, rep = NamedSharding(mesh, P('data')), NamedSharding(mesh, P())
    placed = [jax.device_put(arrays[0], batch)] + [jax.device_put(a, rep) for a in arrays[1:]]
    results = {}
    for name, fn in _forms(op).items():
        def loss(*a, fn=fn):
            return jnp.sum(call(fn, *a).astype(jnp.float32) ** 2)
        value_grad = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(len(arrays)))))
        (v, grads), (v_ref, grads_ref) = value_grad(*placed), value_grad(*arrays)
        if op not in ('sum_rows', 'sum_squares'):   # ops whose output keeps the batch axis keep it sharded
            assert grads[0].sharding.spec[0] == 'data', (name, grads[0].sharding.spec)
        tol = 2e-2 if dtype == jnp.bfloat16 else 1e-5
        np.testing.assert_allclose(float(v), float(v_ref), rtol=tol)
        for got, want in zip(grads, grads_ref):
            np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=tol,
                                       atol=tol * float(jnp.abs(want.astype(jnp.float32)).max()))
        results[name] = (v, grads)
    tol = 2e-2 if dtype == jnp.bfloat16 else 1e-5
    np.testing.assert_allclose(float(results['fast'][0]), float(results['portable'][0]), rtol=tol)


# --------------------------------------------------------------------------------------------
# the predicate


def test_every_op_has_a_fast_and_a_portable_form_and_a_dispatcher():
    for name in ops.FAST_PLATFORMS:
        if name == 'compiler_options':
            continue
        assert callable(getattr(ops, name)) and callable(getattr(ops, f'{name}_fast'))
        assert callable(getattr(ops, f'{name}_portable'))
    # the layers' public names are the ops
    assert (L.sum_rows, L.sum_squares, L.linear_apply, L.layer_norm_last, L.gelu) == (
        ops.sum_rows, ops.sum_squares, ops.linear_apply, ops.layer_norm_last, ops.gelu)


def test_platform_scope_picks_the_form(monkeypatch):
    monkeypatch.delenv(ops.PORTABLE_ENV, raising=False)
    outside = ops.current_platform()
    assert outside == jax.default_backend()
    with ops.platform_scope('cpu') as p:
        assert p == 'cpu' and ops.current_platform() == 'cpu'
        assert all(ops.form(op) == 'fast' for op in ops.FAST_PLATFORMS)
        with ops.platform_scope('CUDA') as q:                   # nested, normalised
            assert q == 'gpu' and ops.current_platform() == 'gpu'
            assert all(ops.form(op) == 'portable' for op in ops.FAST_PLATFORMS)
        assert ops.current_platform() == 'cpu'
    assert ops.current_platform() == outside
    assert ops.form('linear_apply', 'tpu') == 'portable' and ops.form('linear_apply', 'cpu') == 'fast'
    with pytest.raises(KeyError, match='unknown op'):
        ops.form('softmax')
    with pytest.raises(ValueError, match='platform'):
        with ops.platform_scope(''):
            pass


def _which_forms():
    """The form each dispatching op traced, read from the jaxprs: the fast forms are custom_vjps
    (linear, LayerNorm, pointwise conv), a ``dot_general`` (sum_rows, sum_squares) or ``erf``
    without ``erfc`` (gelu)."""
    x = jnp.asarray(RNG.randn(8, 16).astype(np.float32))
    k, b = jnp.ones((16, 4)), jnp.ones((4,))
    big = jnp.ones((256, 256))
    image, kernel = jnp.ones((2, 3, 3, 16)), jnp.ones((1, 1, 16, 4))
    return {
        'sum_rows': 'fast' if 'dot_general' in _jaxpr(ops.sum_rows, x) else 'portable',
        'sum_squares': 'fast' if 'dot_general' in _jaxpr(ops.sum_squares, big) else 'portable',
        'gelu': 'portable' if 'erfc' in _jaxpr(ops.gelu, x) else 'fast',
        'linear_apply': 'fast' if 'custom_vjp' in _jaxpr(ops.linear_apply, x, k, b) else 'portable',
        'layer_norm_last': 'fast' if 'custom_vjp' in _jaxpr(lambda *a: ops.layer_norm_last(*a, 1e-6), x, x[0], x[1])
        else 'portable',
        'pointwise_conv': 'portable' if 'conv_general_dilated' in _jaxpr(
            lambda *a: ops.pointwise_conv(*a, None), image, kernel) else 'fast',
    }


def test_platform_scope_gpu_selects_the_accelerator_branch_on_cpu(monkeypatch):
    monkeypatch.delenv(ops.PORTABLE_ENV, raising=False)
    assert set(_which_forms().values()) == {'fast'}                 # the CPU default
    with ops.platform_scope('gpu'):
        assert set(_which_forms().values()) == {'portable'}         # no fast form is measured on GPU
        # and through the layers the models use
        lin, ln = L.linear(16, 4, nnx.Rngs(0)), L.layer_norm(16, 1e-6, nnx.Rngs(0))
        conv = L.PointwiseConv(16, 4, (1, 1), rngs=nnx.Rngs(0))
        x = jnp.ones((2, 3, 3, 16))
        graphdef, state = nnx.split((lin, ln, conv))

        def loss(state):
            a, b, c = nnx.merge(graphdef, state)
            return a(x).sum() + b(x).sum() + c(x).sum()

        text = _jaxpr(jax.value_and_grad(loss), state)
        assert 'custom_vjp' not in text and 'conv_general_dilated' in text
    assert 'custom_vjp' in _jaxpr(jax.value_and_grad(loss), state)        # outside the scope: the CPU forms
    assert ops.compiler_options('gpu') is None


def test_portable_ops_env_routes_every_op_to_its_portable_form(monkeypatch):
    monkeypatch.setenv('XLA_FLAGS', '')
    mesh = _cpu_mesh(1)
    for value in ('', '0', 'off'):
        monkeypatch.setenv(ops.PORTABLE_ENV, value)
        assert set(_which_forms().values()) == {'fast'}
        assert mesh_lib.step_compiler_options(mesh) == ops.CPU_COMPILER_OPTIONS
    for value in ('1', 'true', ' ON '):
        monkeypatch.setenv(ops.PORTABLE_ENV, value)
        assert ops.portable_forced()
        assert set(_which_forms().values()) == {'portable'}
        with ops.platform_scope('cpu'):                              # even on an explicit CPU scope
            assert all(ops.form(op) == 'portable' for op in ops.FAST_PLATFORMS)
        assert mesh_lib.step_compiler_options(mesh) is None          # XLA's default fusions too
    monkeypatch.setenv(ops.PORTABLE_ENV, 'maybe')
    with pytest.raises(ValueError, match='JAXMIM_PORTABLE_OPS'):
        ops.form('gelu')


def test_fast_ops_env_puts_named_fast_forms_on_every_platform(monkeypatch):
    """``JAXMIM_FAST_OPS`` is the measuring switch: the named ops (or ``all``) take their fast form
    on a GPU trace too, the others stay portable; ``compiler_options`` (XLA:CPU flags) cannot be
    named; ``JAXMIM_PORTABLE_OPS`` wins."""
    monkeypatch.delenv(ops.PORTABLE_ENV, raising=False)
    monkeypatch.setenv(ops.FAST_OPS_ENV, 'gelu, linear_apply')
    with ops.platform_scope('gpu'):
        forms = _which_forms()
    assert forms == {'sum_rows': 'portable', 'sum_squares': 'portable', 'gelu': 'fast', 'linear_apply': 'fast',
                     'layer_norm_last': 'portable', 'pointwise_conv': 'portable'}
    monkeypatch.setenv(ops.FAST_OPS_ENV, 'all')
    with ops.platform_scope('gpu'):
        assert set(_which_forms().values()) == {'fast'}
        assert ops.form('compiler_options') == 'portable' and ops.compiler_options('gpu') is None
    monkeypatch.setenv(ops.PORTABLE_ENV, '1')
    assert set(_which_forms().values()) == {'portable'}
    monkeypatch.delenv(ops.PORTABLE_ENV)
    for bad in ('compiler_options', 'gelu,softmax'):
        monkeypatch.setenv(ops.FAST_OPS_ENV, bad)
        with pytest.raises(ValueError, match='JAXMIM_FAST_OPS names'):
            ops.form('gelu')


def test_steps_trace_under_their_mesh_platform(monkeypatch):
    """A CPU mesh takes the CPU forms whatever the default backend says (simulated here by an
    outer ``platform_scope('gpu')``), the eval step included."""
    from jaxmim import rundir, steps

    monkeypatch.delenv(ops.PORTABLE_ENV, raising=False)
    seen = []

    def f(x):
        seen.append(ops.current_platform())
        return ops.linear_apply(x, jnp.ones((16, 4)), None)

    with ops.platform_scope('gpu'):
        jax.jit(ops.traced_on('cpu', f)).lower(jnp.ones((2, 16)))
        assert ops.current_platform() == 'gpu'
    assert seen == ['cpu'] and ops.traced_on('cpu', f).__name__ == 'f'

    class Net(nnx.Module):
        def __init__(self):
            self.fc = L.linear(16, 4, nnx.Rngs(0))

        def __call__(self, x, train=False):
            return self.fc(x.reshape(x.shape[0], -1))

    mesh = _cpu_mesh(8)
    graphdef, params, model_state = rundir.split_variables(Net())
    variables = {'params': params, 'model_state': model_state}
    batch = {'image': jnp.ones((8, 4, 4, 1)), 'label': jnp.zeros((8,), jnp.int32), 'mask': jnp.ones((8,))}
    with ops.platform_scope('gpu'):
        text = steps.make_eval_step(graphdef, mesh).trace(variables, batch).jaxpr
    assert 'custom_vjp' in str(text)
