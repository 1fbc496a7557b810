"""The step's hand-written layers (issue 12): exact GELU through ``lax.erf``, LayerNorm with a
closed-form backward pass, the Linear layer with its hand-written backward pass, the pointwise
convolution and the gradient norm, through the public names of ``jaxmim.layers`` / ``jaxmim.optim``
(the default, CPU, forms of ``jaxmim.ops``) against PyTorch's own ops and against the written-out
formulas; and the per-op profiler of ``jaxmim.benchmark --profile``. Both forms of every op, in
float32, bfloat16 and sharded, are in ``tests/test_ops.py`` (with the column sums and sums of
squares formerly tested here).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from jaxmim import layers as L
from jaxmim import profiling

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RNG = np.random.RandomState(0)


def test_gelu_equals_torch_exact_gelu_and_its_gradient():
    x = (RNG.randn(64, 33) * 3).astype(np.float32)
    g = RNG.randn(64, 33).astype(np.float32)
    tx = torch.from_numpy(x).requires_grad_()
    ty = torch.nn.functional.gelu(tx)             # approximate='none': the erf form
    ty.backward(torch.from_numpy(g))
    y, vjp = jax.vjp(L.gelu, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(y), ty.detach().numpy(), atol=2e-6, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(vjp(jnp.asarray(g))[0]), tx.grad.numpy(), atol=2e-6, rtol=1e-6)
    # the tanh approximation differs by ~1e-3 at |x| ~ 2: the form is the exact one
    assert abs(float(L.gelu(jnp.float32(2.0))) - 2.0 * 0.5 * (1 + 0.9544997361036416)) < 1e-6


def _naive_layer_norm(x, scale, bias, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps) * scale + bias


@pytest.mark.parametrize('shape', [(4, 7, 48), (3, 2, 5, 16)])
def test_layer_norm_forward_and_backward_equal_the_formula_and_torch(shape):
    c = shape[-1]
    x = (RNG.randn(*shape) * 2 + 0.5).astype(np.float32)
    scale, bias = RNG.randn(c).astype(np.float32), RNG.randn(c).astype(np.float32)
    g = RNG.randn(*shape).astype(np.float32)
    args = tuple(map(jnp.asarray, (x, scale, bias)))
    y, vjp = jax.vjp(lambda *a: L.layer_norm_last(*a, 1e-5), *args)
    y_ref, vjp_ref = jax.vjp(lambda *a: _naive_layer_norm(*a, 1e-5), *args)   # autodiff of the formula
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), atol=1e-5)
    for got, want in zip(vjp(jnp.asarray(g)), vjp_ref(jnp.asarray(g))):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=1e-5)
    tx, ts, tb = (torch.from_numpy(a).requires_grad_() for a in (x, scale, bias))
    torch.nn.functional.layer_norm(tx, (c,), ts, tb, 1e-5).backward(torch.from_numpy(g))
    for got, want in zip(vjp(jnp.asarray(g)), (tx.grad, ts.grad, tb.grad)):
        np.testing.assert_allclose(np.asarray(got), want.numpy(), atol=2e-5, rtol=1e-5)


def test_layer_norm_module_is_an_nnx_layer_norm_with_the_same_forward():
    ours = L.layer_norm(24, 1e-6, nnx.Rngs(0))
    ref = nnx.LayerNorm(24, epsilon=1e-6, use_fast_variance=False, rngs=nnx.Rngs(0))
    assert isinstance(ours, nnx.LayerNorm) and ours.epsilon == 1e-6
    for m in (ours, ref):
        m.scale[...] = jnp.asarray(np.linspace(0.5, 2.0, 24, dtype=np.float32))
        m.bias[...] = jnp.asarray(np.linspace(-1.0, 1.0, 24, dtype=np.float32))
    x = jnp.asarray(RNG.randn(5, 3, 24).astype(np.float32) * 4)
    assert np.array_equal(np.asarray(ours(x)), np.asarray(ref(x)))      # bit-identical forward
    # bfloat16 inputs and parameters: statistics in float32, a bfloat16 result as nnx.LayerNorm gives
    xb = x.astype(jnp.bfloat16)
    for m in (ours, ref):
        m.scale = nnx.Param(m.scale[...].astype(jnp.bfloat16))
        m.bias = nnx.Param(m.bias[...].astype(jnp.bfloat16))
    yo, yr = ours(xb), ref(xb)
    assert yo.dtype == yr.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(yo, np.float32), np.asarray(yr, np.float32), atol=0.02)


@pytest.mark.parametrize('use_bias', [True, False])
def test_pointwise_conv_equals_torch_conv1x1_forward_and_backward(use_bias):
    conv = L.PointwiseConv(24, 40, (1, 1), use_bias=use_bias, rngs=nnx.Rngs(0))
    assert isinstance(conv, nnx.Conv) and conv.kernel.shape == (1, 1, 24, 40)
    if use_bias:
        conv.bias[...] = jnp.asarray(RNG.randn(40).astype(np.float32))
    x = RNG.randn(3, 6, 5, 24).astype(np.float32)
    g = RNG.randn(3, 6, 5, 40).astype(np.float32)
    kernel = np.asarray(conv.kernel[...])
    tconv = torch.nn.Conv2d(24, 40, 1, bias=use_bias)
    with torch.no_grad():
        tconv.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))   # (out, in, 1, 1)
        if use_bias:
            tconv.bias.copy_(torch.from_numpy(np.array(conv.bias[...])))
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
    ty = tconv(tx)
    ty.backward(torch.from_numpy(g.transpose(0, 3, 1, 2).copy()))

    def f(params, x):
        m = nnx.merge(gdef, params)
        return m(x)
    gdef, params = nnx.split(conv, nnx.Param)
    y, vjp = jax.vjp(f, params, jnp.asarray(x))
    dparams, dx = vjp(jnp.asarray(g))
    np.testing.assert_allclose(np.asarray(y), ty.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dx), tx.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dparams['kernel'][...]),
                               tconv.weight.grad.numpy().transpose(2, 3, 1, 0), rtol=1e-5, atol=1e-4)
    # the written-out formula: dkernel = sum over pixels of x (outer) g
    want = np.einsum('bhwi,bhwo->io', x.astype(np.float64), g.astype(np.float64))
    np.testing.assert_allclose(np.asarray(dparams['kernel'][...])[0, 0], want, rtol=1e-5, atol=1e-4)
    if use_bias:
        np.testing.assert_allclose(np.asarray(dparams['bias'][...]), g.astype(np.float64).sum((0, 1, 2)),
                                   rtol=1e-5, atol=1e-4)
    # a 3x3 kernel or a stride is not pointwise: the nnx.Conv path, the same as nnx.Conv itself
    for kw in (dict(kernel_size=(3, 3)), dict(kernel_size=(1, 1), strides=2)):
        ours = L.PointwiseConv(24, 8, rngs=nnx.Rngs(1), **kw)
        ref = nnx.Conv(24, 8, rngs=nnx.Rngs(1), **kw)
        assert np.array_equal(np.asarray(ours(jnp.asarray(x))), np.asarray(ref(jnp.asarray(x))))


def test_global_norm_and_clipping_equal_torch_clip_grad_norm():
    from jaxmim import optim
    shapes = {'fc1': (512, 2048), 'fc2': (2048, 512), 'bias': (2048,), 'odd': (3, 7)}
    grads = {k: (RNG.randn(*s) * 1e-2).astype(np.float32) for k, s in shapes.items()}
    tp = [torch.nn.Parameter(torch.zeros(s)) for s in shapes.values()]
    for p, g in zip(tp, grads.values()):
        p.grad = torch.from_numpy(g.copy())
    norm = torch.nn.utils.clip_grad_norm_(tp, 0.5)          # returns the norm before clipping
    want = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads.values()))
    got = float(optim.global_norm(jax.tree.map(jnp.asarray, grads)))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # torch's float32 norm is itself about 1e-5 off the float64 one on these 2 M values
    np.testing.assert_allclose(got, float(norm), rtol=3e-5)
    tx = optim.clip_by_global_norm_torch(0.5)
    out, _ = jax.jit(tx.update)(jax.tree.map(jnp.asarray, grads), tx.init(grads))
    for k, p in zip(shapes, tp):
        np.testing.assert_allclose(np.asarray(out[k]), grads[k] * (0.5 / (want + 1e-6)), rtol=2e-6, atol=1e-12)
        np.testing.assert_allclose(np.asarray(out[k]), p.grad.numpy(), rtol=3e-5, atol=1e-12)
    assert float(optim.global_norm({})) == 0.0


@pytest.mark.parametrize('use_bias', [True, False])
@pytest.mark.parametrize('dout', [24, 8])          # out > in, and in > out
@pytest.mark.parametrize('lead', [(6,), (3, 5, 7), (4, 512)])   # 2048 rows: the transposed dkernel form
def test_linear_forward_is_nnx_linear_and_backward_equals_torch_and_the_formula(lead, dout, use_bias):
    shape = lead + (16,)
    ours = L.linear(16, dout, nnx.Rngs(0), use_bias=use_bias)
    ref = nnx.Linear(16, dout, use_bias=use_bias, rngs=nnx.Rngs(1))
    assert isinstance(ours, nnx.Linear) and type(ours) is L.Linear
    ref.kernel[...] = ours.kernel[...]
    if use_bias:
        ours.bias[...] = ref.bias[...] = jnp.asarray(RNG.randn(dout).astype(np.float32))
    x = (RNG.randn(*shape) * 2).astype(np.float32)
    g = RNG.randn(*lead, dout).astype(np.float32)
    assert np.array_equal(np.asarray(ours(jnp.asarray(x))), np.asarray(ref(jnp.asarray(x))))  # bit-identical
    kernel = np.asarray(ours.kernel[...])
    bias = np.array(ours.bias[...]) if use_bias else None
    y, vjp = jax.jit(lambda *a: jax.vjp(L.linear_apply, *a))(jnp.asarray(x), jnp.asarray(kernel),
                                                              None if bias is None else jnp.asarray(bias))
    dx, dk, db = vjp(jnp.asarray(g))
    # the formulas written out in float64: dx = g W^T, dW = x^T g over all rows, db = sum of g's rows
    x2, g2 = x.reshape(-1, 16).astype(np.float64), g.reshape(-1, dout).astype(np.float64)
    np.testing.assert_allclose(np.asarray(dx), (g2 @ kernel.T.astype(np.float64)).reshape(x.shape), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dk), x2.T @ g2, rtol=1e-5, atol=1e-4)
    assert (db is None) == (not use_bias)
    # torch.nn.Linear with the same weights (its weight is the transposed kernel)
    t = torch.nn.Linear(16, dout, bias=use_bias)
    with torch.no_grad():
        t.weight.copy_(torch.from_numpy(kernel.T.copy()))
        if use_bias:
            t.bias.copy_(torch.from_numpy(bias))
    tx = torch.from_numpy(x).requires_grad_()
    t(tx).backward(torch.from_numpy(g))
    np.testing.assert_allclose(np.asarray(y), t(tx).detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dx), tx.grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dk), t.weight.grad.numpy().T, rtol=1e-5, atol=1e-4)
    if use_bias:
        np.testing.assert_allclose(np.asarray(db), g2.sum(0), rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(np.asarray(db), t.bias.grad.numpy(), rtol=1e-5, atol=1e-4)


def test_linear_keeps_nnx_linear_for_the_options_it_does_not_cover():
    # an explicit precision goes through nnx.Linear's own call: same numbers, plain autodiff
    m = L.linear(8, 4, nnx.Rngs(0))
    x = jnp.asarray(RNG.randn(3, 8).astype(np.float32))
    y = m(x)
    m.precision = jax.lax.Precision.HIGHEST
    np.testing.assert_allclose(np.asarray(m(x)), np.asarray(y), rtol=1e-6, atol=1e-6)
    # bfloat16 parameters and inputs: a bfloat16 result and bfloat16 gradients of each parameter
    m = L.linear(8, 4, nnx.Rngs(0))
    m.kernel = nnx.Param(m.kernel[...].astype(jnp.bfloat16))
    m.bias = nnx.Param(m.bias[...].astype(jnp.bfloat16))
    out, grads = nnx.value_and_grad(lambda mod: mod(x.astype(jnp.bfloat16)).astype(jnp.float32).sum())(m)
    assert grads.kernel[...].dtype == grads.bias[...].dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(grads.bias[...], np.float32), np.full(4, 3.0))     # three rows
    np.testing.assert_allclose(np.asarray(grads.kernel[...], np.float32),
                               np.repeat(np.asarray(x.astype(jnp.bfloat16), np.float32).sum(0)[:, None], 4, 1),
                               rtol=1e-2, atol=1e-2)


def test_hlo_instructions_and_primitive_names():
    f = jax.jit(lambda a, b: jnp.tanh(a @ b).sum())
    compiled = f.lower(jnp.ones((16, 8)), jnp.ones((8, 4))).compile()
    table = profiling.hlo_instructions(compiled)
    dots = [v for v in table.values() if 'dot_general' in v['op_name']]
    assert dots, table
    assert any(v['source'].startswith('test_fast_layers.py:') for v in dots)
    assert profiling.primitive_of('jit(f)/transpose(jvp(Model))/dot_general') == 'dot_general (backward)'
    assert profiling.primitive_of('jit(f)/jvp(Model)/erf') == 'erf'


def test_benchmark_profile_attributes_the_step_time_to_ops(tmp_path):
    from jaxmim import benchmark
    from jaxmim.config import load_config_file
    config = load_config_file(os.path.join(ROOT, 'configs/demo/finetune_swin_fmnist.py'))
    (row,) = benchmark.run_benchmark(config, steps=1, warmup=0, batch_size=4, compare_torch=True,
                                     torch_compile=False, profile_dir=str(tmp_path), profile_top=5,
                                     devices=jax.devices('cpu')[:1])
    jax_rows, torch_rows = row['profile_jax'], row['profile_torch']
    assert sum(r['share'] for r in jax_rows) == pytest.approx(1.0)
    assert sum(r['share'] for r in torch_rows) == pytest.approx(1.0)
    assert [r['seconds_per_step'] for r in jax_rows] == sorted((r['seconds_per_step'] for r in jax_rows), reverse=True)
    # the step's matrix products show up on both sides, attributed to the source lines that emit them
    # (the attention products in the shared op, the dense layers in the linear op or the model file)
    sources = ('@ swin.py:', '@ softmax_attention.py:', '@ linear.py:')
    assert any(r['name'].startswith('dot_general') and any(s in r['name'] for s in sources) for r in jax_rows), \
        [r['name'] for r in jax_rows]
    assert any(r['name'] in ('aten::mm', 'aten::addmm', 'aten::bmm') for r in torch_rows)
    assert list(tmp_path.glob('finetune/**/*.xplane.pb'))
    text = profiling.format_costs('t', jax_rows, 3)
    assert len(text.splitlines()) == 5


def test_cpu_steps_keep_ynnpack_to_matrix_products(monkeypatch):
    from jaxmim import mesh as mesh_lib
    mesh = mesh_lib.make_mesh(jax.devices('cpu')[:1])
    monkeypatch.setenv('XLA_FLAGS', '')
    monkeypatch.delenv('JAXMIM_PORTABLE_OPS', raising=False)
    assert mesh_lib.step_compiler_options(mesh) == {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_DOT'}
    # the option is accepted by the CPU compiler, and the step computes the same numbers
    f = lambda x: (jax.nn.gelu(x) * 2.0).sum(0)
    x = jnp.asarray(RNG.randn(64, 32).astype(np.float32))
    with_opts = jax.jit(f, compiler_options=mesh_lib.step_compiler_options(mesh))(x)
    np.testing.assert_allclose(np.asarray(with_opts), np.asarray(jax.jit(f)(x)), rtol=1e-6, atol=1e-6)
    # an explicit XLA flag is the user's choice: no override
    monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_experimental_ynn_fusion_type=dot,eltwise')
    assert mesh_lib.step_compiler_options(mesh) is None
