"""Mixup / CutMix (jaxmim.mixup) against timm's semantics written out in NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmim import mixup
from jaxmim.mixup import MixupConfig

RECIPE = MixupConfig(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, label_smoothing=0.1,
                     num_classes=10)


def _batch(b=8, h=12, w=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(b, h, w, 3)).astype(np.float32), rng.integers(0, 10, b).astype(np.int32)


def _smooth(labels, k, s):
    t = np.full((len(labels), k), s / k)
    t[np.arange(len(labels)), labels] += 1 - s
    return t


def _draws(cfg, n=200, **kw):
    x, y = _batch(**kw)
    return [(x, y) + tuple(mixup.mix_batch(jax.random.key(i), jnp.asarray(x), jnp.asarray(y), cfg))
            for i in range(n)]


def test_targets_are_distributions_and_images_are_mixes():
    seen = set()
    for x, y, out, t, p in _draws(RECIPE, n=60):
        out, t = np.asarray(out), np.asarray(t)
        lam = float(p['lam'])
        np.testing.assert_allclose(t.sum(-1), 1.0, atol=1e-6)              # label mass sums to 1
        want_t = lam * _smooth(y, 10, 0.1) + (1 - lam) * _smooth(y[::-1], 10, 0.1)
        np.testing.assert_allclose(t, want_t, atol=1e-6)
        if bool(p['use_cutmix']):
            seen.add('cut')
            y0, y1, x0, x1 = (int(v) for v in p['box'])
            want = x.copy()
            want[:, y0:y1, x0:x1] = x[::-1, y0:y1, x0:x1]                 # the partner's box
            np.testing.assert_array_equal(out, want)
            np.testing.assert_allclose(lam, 1 - (y1 - y0) * (x1 - x0) / (12 * 10), atol=1e-6)   # corrected
            assert 0 <= y0 <= y1 <= 12 and 0 <= x0 <= x1 <= 10
        else:
            seen.add('mix')
            assert 0.0 <= lam <= 1.0
            np.testing.assert_allclose(out, lam * x + (1 - lam) * x[::-1], atol=1e-5)
    assert seen == {'cut', 'mix'}


def test_cutmix_box_from_lam():
    # cutmix only, correct_lam off: the box side is int(H sqrt(1 - lam)) clipped around a centre, so
    # each side is at most that and the area never exceeds (1 - lam) H W.
    cfg = MixupConfig(cutmix_alpha=1.0, correct_lam=False, num_classes=10)
    for x, y, out, t, p in _draws(cfg, n=50, h=32, w=32):
        lam = float(p['lam'])
        y0, y1, x0, x1 = (int(v) for v in p['box'])
        cut = int(32 * np.sqrt(1 - lam))
        assert bool(p['use_cutmix'])
        assert y1 - y0 <= cut and x1 - x0 <= cut
        assert (y1 - y0) * (x1 - x0) <= (1 - lam) * 32 * 32 + 1e-4
        # interior box (not clipped): exactly 2 * (cut // 2) on each side
        if y0 > 0 and y1 < 32:
            assert y1 - y0 == 2 * (cut // 2)


def test_statistics_of_the_draw():
    draws = _draws(RECIPE, n=400, b=2, h=4, w=4)
    cut = np.array([bool(d[4]['use_cutmix']) for d in draws])
    assert 0.42 < cut.mean() < 0.58                                          # switch_prob 0.5
    lam_mix = np.array([float(d[4]['lam']) for d in draws])[~cut]
    # Beta(0.8, 0.8): mean 1/2, variance 1 / (4 (2a + 1)) = 0.0962
    assert abs(lam_mix.mean() - 0.5) < 0.05 and abs(lam_mix.var() - 1 / (4 * 2.6)) < 0.02
    off = MixupConfig(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.0, num_classes=10)
    for x, y, out, t, p in _draws(off, n=5):
        np.testing.assert_array_equal(np.asarray(out), x)
        np.testing.assert_allclose(np.asarray(t), _smooth(y, 10, 0.1), atol=1e-7)


def test_groups_pair_within_each_shard_and_sharded_equals_unsharded():
    x = np.arange(8, dtype=np.float32)
    np.testing.assert_array_equal(mixup.partner(jnp.asarray(x), 2), [3, 2, 1, 0, 7, 6, 5, 4])
    with pytest.raises(ValueError, match='divisible'):
        mixup.partner(jnp.asarray(x), 3)
    xb, yb = _batch(b=16)
    mesh = jax.make_mesh((8,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
    sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
    f = jax.jit(lambda k, a, b: mixup.mix_batch(k, a, b, RECIPE, groups=8)[:2])
    key = jax.random.key(3)
    got = f(key, jax.device_put(xb, sh), jax.device_put(yb, sh))
    want = mixup.mix_batch(key, jnp.asarray(xb), jnp.asarray(yb), RECIPE, groups=8)[:2]
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-6)
    # with 8 groups of 2, sample 2k pairs with 2k + 1
    out, t, p = mixup.mix_batch(key, jnp.asarray(xb), jnp.asarray(yb), MixupConfig(mixup_alpha=0.8, num_classes=10),
                                groups=8)
    lam = float(p['lam'])
    pair = xb.reshape(8, 2, *xb.shape[1:])[:, ::-1].reshape(xb.shape)
    np.testing.assert_allclose(np.asarray(out), lam * xb + (1 - lam) * pair, atol=1e-5)


def test_soft_target_cross_entropy():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5, 7)).astype(np.float32)
    t = rng.dirichlet(np.ones(7), size=5).astype(np.float32)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    np.testing.assert_allclose(float(mixup.soft_target_cross_entropy(jnp.asarray(z), jnp.asarray(t))),
                               -(t * logp).sum(-1).mean(), rtol=1e-6)


def test_config_errors_name_the_field():
    for kw, field in [(dict(mixup_alpha=-1.0), 'mixup_alpha'), (dict(switch_prob=2.0), 'switch_prob'),
                      (dict(mode='elem'), 'mode'), (dict(label_smoothing=1.0), 'label_smoothing')]:
        with pytest.raises(ValueError, match=field):
            MixupConfig(**kw).check()
