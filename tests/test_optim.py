"""Tests for jaxmim.optim against hand-written expectations (spec simmim_swin.md 4.3-4.7)."""

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxmim import optim


def _swin_like_tree():
    """A tiny SimMIM-shaped parameter tree (names as in the real model, small shapes)."""
    f = lambda *s: np.zeros(s, np.float32)  # noqa: E731
    block = {
        'norm1': {'scale': f(4), 'bias': f(4)},
        'attn': {'qkv': {'kernel': f(4, 12), 'bias': f(12)},
                 'proj': {'kernel': f(4, 4), 'bias': f(4)},
                 'relative_position_bias_table': f(9, 2)},
        'norm2': {'scale': f(4), 'bias': f(4)},
        'mlp': {'fc1': {'kernel': f(4, 8), 'bias': f(8)}, 'fc2': {'kernel': f(8, 4), 'bias': f(4)}},
    }
    return {
        'encoder': {
            'patch_embed': {'proj': {'kernel': f(2, 2, 3, 4), 'bias': f(4)},
                            'norm': {'scale': f(4), 'bias': f(4)}},
            'mask_token': f(1, 1, 4),
            'layers': {0: {'blocks': {0: block, 1: block},
                           'downsample': {'reduction': {'kernel': f(16, 8)},
                                          'norm': {'scale': f(16), 'bias': f(16)}}}},
            'norm': {'scale': f(8), 'bias': f(8)},
        },
        'decoder': {'kernel': f(1, 1, 8, 48), 'bias': f(48)},
    }


# ------------------------------------------------------------------------------ names / mask


def test_path_names():
    names = optim.path_names(_swin_like_tree())
    assert names['encoder']['layers'][0]['blocks'][1]['attn']['qkv']['kernel'] == (
        'encoder.layers.0.blocks.1.attn.qkv.kernel')
    assert names['decoder']['bias'] == 'decoder.bias'


def test_path_names_nnx_state_drops_value():
    from flax import nnx
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    assert sorted(jax.tree.leaves(optim.path_names(state))) == ['bias', 'kernel']


def test_weight_decay_mask_hand_built():
    tree = {
        'a': {'kernel': np.zeros((3, 4)), 'bias': np.zeros((4,))},
        'norm': {'scale': np.zeros((4,)), 'bias': np.zeros((4,))},
        'attn': {'relative_position_bias_table': np.zeros((9, 2)),
                 'relative_position_bias_table_extra': np.zeros((9, 2))},
        'mask_token': np.zeros((1, 1, 4)),
        'encoder': {'mask_token': np.zeros((1, 1, 4)), 'absolute_pos_embed': np.zeros((1, 4, 4))},
        'conv': {'kernel': np.zeros((2, 2, 3, 4)), 'bias': np.zeros((4,))},
        'odd_bias': np.zeros((2, 2)),       # ends with 'bias' but not '.bias': decayed
        'w2d_bias': {'bias': np.zeros((2, 2))},  # 2-D but named '.bias': not decayed
        'vec': np.zeros((5,)),              # 1-D: not decayed
    }
    expected = {
        'a': {'kernel': True, 'bias': False},
        'norm': {'scale': False, 'bias': False},
        'attn': {'relative_position_bias_table': False,
                 'relative_position_bias_table_extra': False},
        'mask_token': False,
        'encoder': {'mask_token': False, 'absolute_pos_embed': False},
        'conv': {'kernel': True, 'bias': False},
        'odd_bias': True,
        'w2d_bias': {'bias': False},
        'vec': False,
    }
    assert optim.weight_decay_mask(tree) == expected


def test_weight_decay_mask_simmim_tree():
    mask = optim.weight_decay_mask(_swin_like_tree())
    names = optim.path_names(_swin_like_tree())
    decayed = sorted(n for n, m in zip(jax.tree.leaves(names), jax.tree.leaves(mask)) if m)
    assert decayed == sorted([
        'decoder.kernel', 'encoder.patch_embed.proj.kernel',
        'encoder.layers.0.downsample.reduction.kernel',
    ] + [f'encoder.layers.0.blocks.{b}.{n}.kernel' for b in (0, 1)
         for n in ('attn.qkv', 'attn.proj', 'mlp.fc1', 'mlp.fc2')])


# ------------------------------------------------------------------------------ layer ids


def test_swin_layer_id_swin_b_depths():
    depths = [2, 2, 18, 2]
    lid = functools.partial(optim.swin_layer_id, depths=depths)
    assert lid('encoder.mask_token') == 0
    assert lid('patch_embed.proj.kernel') == 0
    assert lid('encoder.patch_embed.norm.scale') == 0
    # stage 1: blocks 1-2, merge 2
    assert [lid(f'layers.0.blocks.{b}.attn.qkv.kernel') for b in range(2)] == [1, 2]
    assert lid('layers.0.downsample.reduction.kernel') == 2
    assert lid('layers.0.downsample.norm.scale') == 2
    # stage 2: blocks 3-4, merge 4
    assert [lid(f'layers.1.blocks.{b}.norm1.bias') for b in range(2)] == [3, 4]
    assert lid('layers.1.downsample.reduction.kernel') == 4
    # stage 3: blocks 5-22, merge 22
    assert [lid(f'layers.2.blocks.{b}.mlp.fc1.kernel') for b in range(18)] == list(range(5, 23))
    assert lid('layers.2.downsample.norm.bias') == 22
    # stage 4: blocks 23-24
    assert [lid(f'encoder.layers.3.blocks.{b}.attn.relative_position_bias_table')
            for b in range(2)] == [23, 24]
    assert lid('norm.scale') == 25
    assert lid('head.kernel') == 25
    assert lid('head.bias') == 25


def test_vit_layer_id():
    assert optim.vit_layer_id('cls_token', 12) == 0
    assert optim.vit_layer_id('encoder.pos_embed', 12) == 0
    assert optim.vit_layer_id('blocks.11.attn.qkv.kernel', 12) == 12
    assert optim.vit_layer_id('rel_pos_bias.relative_position_bias_table', 12) == 13
    assert optim.vit_layer_id('head.kernel', 12) == 13


def test_layer_decay_scales():
    tree = {'patch_embed': {'proj': {'kernel': np.zeros((2, 2))}},
            'layers': {0: {'blocks': {0: {'w': np.zeros(2)}, 1: {'w': np.zeros(2)}},
                           'downsample': {'reduction': {'kernel': np.zeros((4, 2))}}},
                       1: {'blocks': {0: {'w': np.zeros(2)}}}},
            'head': {'kernel': np.zeros((2, 2))}}
    depths = (2, 1)   # ids 0..4, num_ids = 5
    lid = functools.partial(optim.swin_layer_id, depths=depths)
    s = optim.layer_decay_scales(tree, lid, 5, 0.5)
    assert s['patch_embed']['proj']['kernel'] == 0.5 ** 4
    assert s['layers'][0]['blocks'][0]['w'] == 0.5 ** 3
    assert s['layers'][0]['blocks'][1]['w'] == 0.5 ** 2
    assert s['layers'][0]['downsample']['reduction']['kernel'] == 0.5 ** 2
    assert s['layers'][1]['blocks'][0]['w'] == 0.5 ** 1
    assert s['head']['kernel'] == 1.0
    with pytest.raises(ValueError, match='outside'):
        optim.layer_decay_scales(tree, lambda n: 7, 5, 0.5)


# ------------------------------------------------------------------------------ schedules


def test_cosine_schedule_values():
    base, wlr, mlr, T, Tw = 1e-3, 1e-6, 1e-5, 100, 20
    raw = optim.simmim_lr_schedule(base, wlr, mlr, T, Tw, lag=False)
    lagged = optim.simmim_lr_schedule(base, wlr, mlr, T, Tw)
    v = lambda f, t: float(f(t))  # noqa: E731
    # warmup start and linear warmup
    assert v(raw, 0) == pytest.approx(wlr, rel=1e-6)
    assert v(raw, 10) == pytest.approx(wlr + 10 * (base - wlr) / 20, rel=1e-6)
    assert v(raw, 19) == pytest.approx(wlr + 19 * (base - wlr) / 20, rel=1e-6)
    # jump at Tw: cosine not re-based, 0.5(1 + cos(0.2 pi)) = 0.9045
    expected_tw = mlr + 0.5 * (base - mlr) * (1 + math.cos(math.pi * 0.2))
    assert v(raw, 20) == pytest.approx(expected_tw, rel=1e-6)
    assert v(raw, 20) / base == pytest.approx(0.905, abs=1e-3)
    assert v(raw, 57) == pytest.approx(mlr + 0.5 * (base - mlr) * (1 + math.cos(math.pi * 0.57)),
                                       rel=1e-5)
    assert v(raw, 100) == pytest.approx(mlr, rel=1e-6)
    assert v(raw, 150) == pytest.approx(mlr, rel=1e-6)
    # the one-step lag: iterations 0 and 1 at warmup_lr, iteration t >= 1 at raw(t - 1)
    assert v(lagged, 0) == pytest.approx(wlr, rel=1e-6)
    assert v(lagged, 1) == pytest.approx(wlr, rel=1e-6)
    assert v(lagged, 2) == pytest.approx(wlr + (base - wlr) / 20, rel=1e-6)
    assert v(lagged, 21) == pytest.approx(expected_tw, rel=1e-6)
    # last iteration T - 1 runs at raw(T - 2), close to min_lr
    last = mlr + 0.5 * (base - mlr) * (1 + math.cos(math.pi * 98 / 100))
    assert v(lagged, 99) == pytest.approx(last, rel=1e-4)
    assert v(lagged, 99) == pytest.approx(mlr, abs=1e-3 * base)   # ~ min_lr at the end


def test_cosine_schedule_vectorised_and_jittable():
    f = optim.simmim_lr_schedule(2e-4, 1e-6, 1e-5, 50, 5)
    steps = jnp.arange(50)
    vec = jax.jit(f)(steps)
    assert vec.dtype == jnp.float32 and vec.shape == (50,)
    np.testing.assert_allclose(vec, [float(f(int(t))) for t in range(50)], rtol=1e-6)


def test_group_base_lr_below_warmup_lr():
    # Swin-L layer decay side effect (spec 4.5): warmup_lr/min_lr absolute, group base lr smaller.
    f = optim.simmim_lr_schedule(5e-7, 1e-6, 1e-6, 100, 20, lag=False)
    assert float(f(0)) == pytest.approx(1e-6, rel=1e-6)
    assert float(f(10)) == pytest.approx(1e-6 + 10 * (5e-7 - 1e-6) / 20, rel=1e-5)
    assert float(f(10)) < float(f(0))


def test_multistep_schedule():
    base, wlr, T, Tw = 4e-4, 2e-6, 800, 10
    f = optim.simmim_lr_schedule(base, wlr, 5e-6, T, Tw, name='multistep', milestones=[700],
                                 gamma=0.1, lag=False)
    assert float(f(0)) == pytest.approx(wlr, rel=1e-6)
    assert float(f(5)) == pytest.approx(wlr + 5 * (base - wlr) / 10, rel=1e-6)
    assert float(f(10)) == pytest.approx(base, rel=1e-6)
    assert float(f(699)) == pytest.approx(base, rel=1e-6)
    assert float(f(700)) == pytest.approx(base * 0.1, rel=1e-6)   # bisect_right: t == milestone
    assert float(f(799)) == pytest.approx(base * 0.1, rel=1e-6)
    g = optim.simmim_lr_schedule(1.0, 0.0, 0.0, 100, 0, name='multistep', milestones=[10, 20],
                                 gamma=0.5)
    # lagged: iteration t runs at raw(t - 1); raw(10) = 0.5 since milestone 10 <= 10
    assert [float(g(t)) for t in (0, 1, 10, 11, 20, 21, 22)] == pytest.approx(
        [1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25])


@pytest.mark.parametrize('kwargs, field', [
    (dict(name='step'), 'schedule name'),
    (dict(base_lr=-1.0), 'base_lr'),
    (dict(warmup_lr=-1e-6), 'warmup_lr'),
    (dict(min_lr=float('nan')), 'min_lr'),
    (dict(warmup_steps=200), 'warmup_steps'),
    (dict(total_steps=0), 'total_steps'),
    (dict(name='multistep'), 'milestones'),
    (dict(name='multistep', milestones=[5]), 'first milestone'),
    (dict(name='multistep', milestones=[50], gamma=0.0), 'gamma'),
])
def test_schedule_validation(kwargs, field):
    args = dict(base_lr=1e-3, warmup_lr=1e-6, min_lr=1e-5, total_steps=100, warmup_steps=10)
    args.update(kwargs)
    with pytest.raises(ValueError, match=field):
        optim.simmim_lr_schedule(**args)


def test_scale_lrs():
    assert optim.scale_lrs(1.25e-3, 2048) == pytest.approx(5e-3)
    assert optim.scale_lrs((2e-4, 1e-6, 1e-5), 2048) == pytest.approx((8e-4, 4e-6, 4e-5))
    assert optim.scale_lrs({'base_lr': 1e-4}, 256, reference=128) == {'base_lr': 2e-4}
    with pytest.raises(ValueError, match='batch_size_total'):
        optim.scale_lrs(1e-3, 0)


# ------------------------------------------------------------------------------ optimizer


def _config(**kw):
    c = ml_collections.ConfigDict(dict(
        base_lr=1e-2, warmup_lr=1e-4, min_lr=1e-3, weight_decay=0.05, warmup_steps=2,
        schedule='cosine', milestones=(), gamma=0.1, clip_grad=0.5, betas=(0.9, 0.999), eps=1e-8,
        layer_decay=0.5))
    c.update(kw)
    return c


def _numpy_adamw(params, grads_seq, *, lrs_seq, decay, clip, b1, b2, eps, wd):
    """Reference torch-style AdamW in float64: params/grads dicts of name -> array."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v2 = {k: np.zeros_like(v) for k, v in p.items()}
    for t, (grads, lrs) in enumerate(zip(grads_seq, lrs_seq), start=1):
        g = {k: gg.astype(np.float64) for k, gg in grads.items()}
        norm = math.sqrt(sum(float(np.sum(x ** 2)) for x in g.values()))
        coef = clip / (norm + 1e-6)
        if coef < 1:
            g = {k: x * coef for k, x in g.items()}
        for k in p:
            lr = lrs[k]
            if decay[k]:
                p[k] = p[k] * (1 - lr * wd)
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v2[k] = b2 * v2[k] + (1 - b2) * g[k] ** 2
            denom = np.sqrt(v2[k]) / math.sqrt(1 - b2 ** t) + eps
            p[k] = p[k] - (lr / (1 - b1 ** t)) * m[k] / denom
    return p


def test_build_optimizer_matches_numpy_adamw():
    rng = np.random.default_rng(0)
    params = {
        'patch_embed': {'proj': {'kernel': rng.normal(size=(2, 3)).astype(np.float32),
                                 'bias': rng.normal(size=(3,)).astype(np.float32)}},
        'layers': {0: {'blocks': {0: {'attn': {'relative_position_bias_table':
                                               rng.normal(size=(3, 2)).astype(np.float32),
                                               'qkv': {'kernel': rng.normal(size=(3, 3)).astype(
                                                   np.float32)}}}}}},
        'norm': {'scale': rng.normal(size=(3,)).astype(np.float32)},
        'head': {'kernel': rng.normal(size=(3, 2)).astype(np.float32),
                 'bias': rng.normal(size=(2,)).astype(np.float32)},
    }
    # tiny quadratic: L = sum(0.5 a p^2 + c p), grad = a p + c
    a = jax.tree.map(lambda x: rng.uniform(0.5, 2.0, size=x.shape).astype(np.float32), params)
    c = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
    grad_fn = lambda p: jax.tree.map(lambda pp, aa, cc: aa * pp + cc, p, a, c)  # noqa: E731

    depths = (1,)             # ids: patch_embed 0, block 1, norm/head 2
    cfg = _config()
    total = 10
    tx, lr_fn = optim.build_optimizer(cfg, params, total,
                                      layer_id_fn=functools.partial(optim.swin_layer_id,
                                                                    depths=depths),
                                      num_layer_ids=3)
    n_steps = 4
    state = tx.init(params)
    p = jax.tree.map(jnp.asarray, params)
    grads_seq = []
    step = jax.jit(lambda p, s: (lambda g: (g,) + tx.update(g, s, p))(grad_fn(p)))
    for _ in range(n_steps):
        g, updates, state = step(p, state)
        grads_seq.append(g)
        p = optax.apply_updates(p, updates)

    # reference: names, decay and scales written by hand
    names = {
        'patch_embed.proj.kernel': (True, 0.25), 'patch_embed.proj.bias': (False, 0.25),
        'layers.0.blocks.0.attn.relative_position_bias_table': (False, 0.5),
        'layers.0.blocks.0.attn.qkv.kernel': (True, 0.5),
        'norm.scale': (False, 1.0), 'head.kernel': (True, 1.0), 'head.bias': (False, 1.0),
    }
    flat = lambda tree: dict(zip(jax.tree.leaves(optim.path_names(tree)),  # noqa: E731
                                 [np.asarray(x) for x in jax.tree.leaves(tree)]))
    assert set(flat(params)) == set(names)

    def lr_hand(base, t):   # lagged SimMIM lr with Tw = 2, T = 10, absolute warmup/min
        t = max(t - 1, 0)
        if t < 2:
            return 1e-4 + t * (base - 1e-4) / 2
        return 1e-3 + 0.5 * (base - 1e-3) * (1 + math.cos(math.pi * t / 10))

    lrs_seq = [{k: lr_hand(1e-2 * s, t) for k, (_, s) in names.items()} for t in range(n_steps)]
    # the schedules really differ across groups (layer decay active) and the clip is active
    assert lrs_seq[3]['patch_embed.proj.kernel'] != lrs_seq[3]['head.kernel']
    g0 = flat(grads_seq[0])
    assert math.sqrt(sum(float(np.sum(x.astype(np.float64) ** 2)) for x in g0.values())) > 0.5
    ref = _numpy_adamw(flat(params), [flat(g) for g in grads_seq], lrs_seq=lrs_seq,
                       decay={k: d for k, (d, _) in names.items()}, clip=0.5, b1=0.9, b2=0.999,
                       eps=1e-8, wd=0.05)
    got = flat(p)
    for k in names:
        np.testing.assert_allclose(got[k], ref[k], rtol=2e-6, atol=1e-7, err_msg=k)
    # logged lr = scale-1 group
    assert [float(lr_fn(t)) for t in range(n_steps)] == pytest.approx(
        [lr_hand(1e-2, t) for t in range(n_steps)], rel=1e-6)


def test_build_optimizer_no_clip_no_layer_decay_equals_optax_adamw():
    rng = np.random.default_rng(1)
    params = {'w': {'kernel': rng.normal(size=(4, 3)).astype(np.float32),
                    'bias': rng.normal(size=(3,)).astype(np.float32)}}
    grads = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
    cfg = _config(clip_grad=None, layer_decay=1.0, warmup_steps=0)
    tx, lr_fn = optim.build_optimizer(cfg, params, 10)
    ref = optax.adamw(lr_fn, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.05,
                      mask=optim.weight_decay_mask(params))
    u1, _ = tx.update(grads, tx.init(params), params)
    u2, _ = ref.update(grads, ref.init(params), params)
    for x, y in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
        np.testing.assert_allclose(x, y, rtol=1e-6)


def test_clip_by_global_norm_torch():
    g = {'a': jnp.array([3.0, 0.0]), 'b': jnp.array([[4.0]])}   # norm 5
    tx = optim.clip_by_global_norm_torch(1.0)
    out, _ = tx.update(g, tx.init(g))
    coef = 1.0 / (5.0 + 1e-6)
    np.testing.assert_allclose(out['a'], [3.0 * coef, 0.0], rtol=1e-7)
    out, _ = optim.clip_by_global_norm_torch(10.0).update(g, optax.EmptyState())
    np.testing.assert_array_equal(out['a'], g['a'])


@pytest.mark.parametrize('kw, field', [
    (dict(schedule='linear'), 'schedule'),
    (dict(base_lr=-1.0), 'base_lr'),
    (dict(min_lr=-1.0), 'min_lr'),
    (dict(weight_decay=-0.1), 'weight_decay'),
    (dict(warmup_steps=11), 'warmup_steps'),
    (dict(betas=(0.9, 1.0)), 'betas'),
    (dict(clip_grad=-1.0), 'clip_grad'),
    (dict(layer_decay=0.0), 'layer_decay'),
    (dict(schedule='multistep', milestones=()), 'milestones'),
])
def test_build_optimizer_validation(kw, field):
    params = {'w': np.zeros((2, 2), np.float32)}
    cfg = _config(layer_decay=1.0)
    cfg.update(kw)
    with pytest.raises(ValueError, match=field):
        optim.build_optimizer(cfg, params, 10)


def test_build_optimizer_missing_field_and_layer_decay_without_ids():
    params = {'w': np.zeros((2, 2), np.float32)}
    cfg = _config()
    del cfg['warmup_lr']
    with pytest.raises(ValueError, match='warmup_lr'):
        optim.build_optimizer(cfg, params, 10)
    with pytest.raises(ValueError, match='layer_id_fn'):
        optim.build_optimizer(_config(layer_decay=0.9), params, 10)


def test_build_optimizer_with_nnx_optimizer_matches_pure_dict():
    from flax import nnx

    class Model(nnx.Module):
        def __init__(self):
            rngs = nnx.Rngs(0)
            self.patch_embed = nnx.Linear(3, 3, rngs=rngs)
            self.layers = nnx.List([nnx.Dict(blocks=nnx.List([nnx.Linear(3, 3, rngs=rngs)]))])
            self.head = nnx.Linear(3, 2, rngs=rngs)

        def __call__(self, x):
            return self.head(self.layers[0]['blocks'][0](self.patch_embed(x)))

    x = jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)
    cfg = _config(clip_grad=0.1)
    lid = functools.partial(optim.swin_layer_id, depths=(1,))
    model = Model()
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))

    tx, _ = optim.build_optimizer(cfg, nnx.state(model, nnx.Param), 10, lid, 3)
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def nnx_step(model, opt):
        opt.update(model, nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model))

    def loss(p):
        m = Model()
        nnx.update(m, p)
        return jnp.sum(m(x) ** 2)

    tx2, _ = optim.build_optimizer(cfg, params, 10, lid, 3)
    state = tx2.init(params)
    for _ in range(3):
        nnx_step(model, opt)
        updates, state = tx2.update(jax.grad(loss)(params), state, params)
        params = optax.apply_updates(params, updates)
    got = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)
