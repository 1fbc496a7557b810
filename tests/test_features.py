"""Multi-scale ``features`` of every backbone (issue 24, section 2): shapes and strides written out,
Swin's stage maps against the PyTorch twin's transcription of the mmdet detection backbone at a size
that needs padding, ViT's block maps against the real timm ``forward_intermediates``, the jit-friendly
bicubic position-table resampling against ``torch.nn.functional.interpolate``, inputs of another
size than the model was built for, agreement with the classifier path at the built size, ``jax.jit``.
Small configurations only (CPU)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from jaxmim.models import pos_embed as PE
from jaxmim.models import vit
from jaxmim.models.groupmixformer import GroupMixFormer
from jaxmim.models.hivit import HiViT
from jaxmim.models.pvt import PVT
from jaxmim.models.swin import SwinTransformer
from jaxmim.models.ummae_swin import Swin as UMMAESwin
from jaxmim.models.windows import relative_position_index, relative_position_index_hw
from jaxmim.registry import Backbone, create_model
from jaxmim.tree_util import flatten_names

SWIN_CFG = dict(img_size=32, patch_size=2, embed_dim=16, depths=(2, 2, 2), num_heads=(1, 2, 4), window_size=4,
                num_classes=10, ape=True, drop_path_rate=0.0)


def _build(builder, seed):
    """The model of ``builder`` with random weights drawn in NumPy (no eager JAX initialisation, which
    compiles op by op): kernels N(0, 1/fan_in), LayerNorm / BatchNorm scales 1 + N(0, .1), running
    variances 1 + |N(0, .1)|, everything else (biases, tables, tokens, position embeddings) N(0, .1),
    so that nothing sits at its init value."""
    graphdef, state = nnx.split(nnx.eval_shape(builder))
    pure = nnx.to_pure_dict(state)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = str(path[-1].key)
        noise = rng.standard_normal(leaf.shape).astype(leaf.dtype)
        if name == 'kernel':
            return noise / np.sqrt(np.prod(leaf.shape[:-1]))
        if name == 'scale':
            return 1.0 + 0.1 * noise
        if name == 'var':
            return 1.0 + 0.1 * np.abs(noise)
        return 0.1 * noise

    nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(fill, pure))
    return nnx.merge(graphdef, state)


_JITTED = {}


def feats(model, x, out_indices=None):
    """``model.features(x, out_indices=...)`` under ``jax.jit`` (parameters traced), one compiled
    function per model and selection (eager op-by-op dispatch is slow on a shared CPU)."""
    key = (id(model), None if out_indices is None else tuple(out_indices))
    if key not in _JITTED:
        graphdef, _ = nnx.split(model)
        _JITTED[key] = jax.jit(lambda s, y: nnx.merge(graphdef, s).features(y, out_indices=out_indices))
    return _JITTED[key](nnx.state(model), jnp.asarray(x))


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


# The small models, all built for small images, all asked for 320 x 480 features.
BUILDERS = {
    'swin': lambda: SwinTransformer(img_size=32, patch_size=4, embed_dim=16, depths=(2, 2, 2, 2),
                                    num_heads=(1, 2, 2, 4), window_size=4, num_classes=0, out_indices=(0, 1, 2, 3),
                                    rngs=nnx.Rngs(0)),
    'pvt': lambda: PVT(img_size=64, embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2),
                       mlp_ratios=(2, 2, 2, 2), num_classes=0, rngs=nnx.Rngs(0)),
    # window 2: stage maps 16, 8, 4 > 2 are not clamped; the 2 x 2 last stage has one (unshifted) block
    'ummae_swin': lambda: UMMAESwin(img_size=64, embed_dim=16, depths=(2, 2, 2, 1), num_heads=(1, 2, 2, 4),
                                    window_size=2, posmlp_dim=8, num_classes=0, rngs=nnx.Rngs(0)),
    'hivit': lambda: HiViT(img_size=64, embed_dim=64, depths=(1, 1, 2), num_heads=2, num_classes=0,
                           rngs=nnx.Rngs(0)),
    'groupmixformer': lambda: GroupMixFormer(img_size=64, embed_dims=(40, 40, 80, 80), depths=(1, 1, 1, 1),
                                             num_classes=0, rngs=nnx.Rngs(0)),
    'vit': lambda: vit.VisionTransformer(img_size=64, patch_size=16, embed_dim=32, depth=4, num_heads=2,
                                         num_classes=0, global_pool=True, rngs=nnx.Rngs(0)),
}

# Expected maps at 320 x 480, written out: (key, H, W, C); strides 4 / 8 / 16 / 32 (ViT: 16).
EXPECTED_320x480 = {
    'swin': [('stage0', 80, 120, 16), ('stage1', 40, 60, 32), ('stage2', 20, 30, 64), ('stage3', 10, 15, 128)],
    'pvt': [('stage0', 80, 120, 16), ('stage1', 40, 60, 32), ('stage2', 20, 30, 48), ('stage3', 10, 15, 64)],
    'ummae_swin': [('stage0', 80, 120, 16), ('stage1', 40, 60, 32), ('stage2', 20, 30, 64),
                   ('stage3', 10, 15, 128)],
    'hivit': [('stage0', 80, 120, 16), ('stage1', 40, 60, 32), ('stage2', 20, 30, 64), ('stage3', 10, 15, 64)],
    'groupmixformer': [('stage0', 80, 120, 40), ('stage1', 40, 60, 40), ('stage2', 20, 30, 80),
                       ('stage3', 10, 15, 80)],
    # depth 4: default blocks (round(4/3)-1, 4//2-1, round(8/3)-1, 3) = (0, 1, 2, 3)
    'vit': [('block0', 20, 30, 32), ('block1', 20, 30, 32), ('block2', 20, 30, 32), ('block3', 20, 30, 32)],
}


@pytest.fixture(scope='module')
def models():
    return {name: _build(build, seed=i) for i, (name, build) in enumerate(BUILDERS.items())}


@pytest.fixture(scope='module')
def small_images():
    return jax.random.normal(jax.random.key(3), (2, 64, 96, 3), jnp.float32)


@pytest.fixture(scope='module')
def small_feats(models, small_images):
    """Every family's default features at 64 x 96 (jitted), computed once."""
    return {name: feats(m, small_images) for name, m in models.items()}


# ----------------------------------------------------------------------------------------
# Shapes, strides, other sizes, jit.
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize('family', list(BUILDERS))
def test_features_at_320x480_from_a_small_model(models, family):
    """Built for 32 / 64 px, asked (under ``jax.jit``) for 320 x 480: every map has the written-out
    shape and is finite."""
    out = feats(models[family], jax.random.normal(jax.random.key(7), (1, 320, 480, 3), jnp.float32))
    assert [(k, *v.shape[1:]) for k, v in out.items()] == EXPECTED_320x480[family]
    for k, v in out.items():
        assert v.shape[0] == 1 and v.dtype == jnp.float32
        assert bool(jnp.isfinite(v).all()), (family, k)
        assert float(jnp.std(v)) > 0, (family, k)


@pytest.mark.parametrize('family', ['vit'])
def test_features_under_jit_equal_eager(models, small_images, small_feats, family):
    """The jitted maps (parameters traced, the position tables resampled by fixed matrix products) are
    the eager ones."""
    want = models[family].features(small_images)
    got = small_feats[family]
    assert list(got) == list(want)
    for k in want:
        assert got[k].shape == want[k].shape
        np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('family,selection,keys', [
    ('swin', (3, 1), ['stage1', 'stage3']),
    ('pvt', (2,), ['stage2']),
    ('ummae_swin', (0, 3), ['stage0', 'stage3']),
    ('hivit', (1, 3), ['stage1', 'stage3']),
    ('groupmixformer', (1,), ['stage1']),
    ('vit', (2, 0), ['block0', 'block2']),
])
def test_out_indices_select_and_agree(models, small_images, small_feats, family, selection, keys):
    """A selection returns exactly those keys, sorted, equal to the same maps of the full call."""
    sub = feats(models[family], small_images, selection)
    assert list(sub) == keys
    for k in keys:
        np.testing.assert_allclose(np.asarray(sub[k]), np.asarray(small_feats[family][k]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('family,bad_size', [('pvt', (1, 48, 64, 3)), ('ummae_swin', (1, 40, 64, 3)),
                                             ('hivit', (1, 40, 64, 3)), ('groupmixformer', (1, 48, 64, 3)),
                                             ('vit', (1, 40, 64, 3)), ('swin', (1, 32, 32, 1))])
def test_features_reject_sizes_the_family_cannot_take(models, family, bad_size):
    with pytest.raises(ValueError, match='features: images must be'):
        models[family].features(jnp.zeros(bad_size))


@pytest.mark.parametrize('bad', [(), (4,), (-1,), (0.5,), (True,)])
def test_out_indices_out_of_range(models, bad):
    with pytest.raises(ValueError, match='out_indices'):
        models['pvt'].features(jnp.zeros((1, 64, 64, 3)), out_indices=bad)


def test_default_vit_blocks():
    """(3, 5, 7, 11) for ViT-B (mmseg MAE UperNet), (7, 11, 15, 23) for ViT-L (BEiT-L segmentation)."""
    assert vit.default_vit_out_indices(12) == (3, 5, 7, 11)
    assert vit.default_vit_out_indices(24) == (7, 11, 15, 23)
    assert vit.default_vit_out_indices(1) == (0,)


def test_backbone_default_hook_raises():
    with pytest.raises(NotImplementedError, match='defines no multi-scale features'):
        Backbone().features(jnp.zeros((1, 32, 32, 3)))


# ----------------------------------------------------------------------------------------
# Swin: the detection backbone against the PyTorch twin.
# ----------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def swin_pair():
    """A jaxmim Swin classifier, the same weights with the detection norms of stages 0 and 2, the
    PyTorch twin of the classifier and the norms as torch LayerNorms (the classifier's conversion
    layout has no ``norm{i}``: the twin gets the weights of the model built without them)."""
    from convert import official as O
    from convert.swin import SwinTransformer as TorchSwin, swin_twin_kwargs
    plain = _build(lambda: SwinTransformer(**SWIN_CFG, rngs=nnx.Rngs(0)), seed=11)
    det = _build(lambda: SwinTransformer(**SWIN_CFG, out_indices=(2, 0), rngs=nnx.Rngs(0)), seed=12)
    nnx.update(det, nnx.state(plain, nnx.Param))      # the norm{i} keep their own random values
    norms = {}
    for i in (0, 2):
        norm = getattr(det, f'norm{i}')
        ln = torch.nn.LayerNorm(16 * 2 ** i, eps=1e-5)
        ln.weight.data = torch.from_numpy(np.array(norm.scale[...]))
        ln.bias.data = torch.from_numpy(np.array(norm.bias[...]))
        norms[i] = ln
    twin = TorchSwin(**swin_twin_kwargs(plain))
    sd = O.state_dict(plain, 'simmim_swin')
    twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, strict=True)
    return plain, det, twin.eval(), norms


@pytest.mark.parametrize('size,expected', [
    # 45 x 61: image padded to 46 x 62 (patch 2); 23 x 31 padded to 24 x 32 (window 4); odd merges padded
    ((45, 61), [(23, 31, 16), (12, 16, 32), (6, 8, 64)]),
    # the built size: no padding, but the 4 x 4 last stage is shifted as in the detection backbone
    ((32, 32), [(16, 16, 16), (8, 8, 32), (4, 4, 64)]),
])
def test_swin_features_equal_twin_detection_stages(swin_pair, size, expected):
    """Raw stage outputs (model without feature norms) and normalised ones (norm0, norm2) against the
    twin's transcription of the mmdet backbone, at a size that needs every kind of padding."""
    plain, det, twin, norms = swin_pair
    x = np.random.default_rng(0).standard_normal((2, *size, 3)).astype(np.float32)
    nchw = torch.from_numpy(x).permute(0, 3, 1, 2)
    with torch.no_grad():
        want_raw = twin.forward_stages(nchw)
        want_det = twin.forward_stages(nchw, out_indices=(0, 2), norms=norms)
    for got, want, keys in ((feats(plain, x), want_raw, ['stage0', 'stage1', 'stage2']),
                            (feats(det, x), want_det, ['stage0', 'stage2'])):
        assert list(got) == keys
        assert [got[k].shape[1:] for k in keys] == [expected[int(k[-1])] for k in keys]
        for (k, g), w in zip(got.items(), want):
            w = w.permute(0, 2, 3, 1).numpy()
            assert g.shape == w.shape
            assert _rel(g, w) < 1e-5, (k, _rel(g, w))


def test_swin_feature_norms_only_where_asked(swin_pair):
    """Without out_indices the variables are the classifier's (no norm{i}); with them, the logits are
    unchanged (the fast path) and norm{i} may start fresh when loading a classifier checkpoint."""
    plain, det, _, _ = swin_pair
    names = set(flatten_names(nnx.to_pure_dict(nnx.state(plain, nnx.Param))))
    det_names = set(flatten_names(nnx.to_pure_dict(nnx.state(det, nnx.Param))))
    assert sorted(det_names - names) == ['norm0.bias', 'norm0.scale', 'norm2.bias', 'norm2.scale']
    assert {n.split('.')[0] for n in names} == {'absolute_pos_embed', 'patch_embed', 'layers', 'norm', 'head'}
    assert det.out_indices == (0, 2)
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    np.testing.assert_array_equal(np.asarray(plain(x)), np.asarray(det(x)))
    assert det.pretrained_fresh() == ('head.*', 'norm0.*', 'norm2.*')
    with pytest.raises(ValueError, match='feature norms for the stages'):
        det.features(x, out_indices=(1,))
    # without feature norms: un-normalised stage outputs; with them: norm{i} of the same map
    np.testing.assert_allclose(np.asarray(det.norm2(feats(plain, x)['stage2'])), np.asarray(feats(det, x)['stage2']),
                               rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------
# Agreement with the classifier path at the built size.
# ----------------------------------------------------------------------------------------

def _pooled_last(name, m, f):
    """The classifier's pooling and norm applied to the last map of ``features``."""
    if name == 'groupmixformer':
        return m.norm4(f['stage3'], use_running_average=True).mean(axis=(1, 2))
    last = {'pvt': 'stage3', 'ummae_swin': 'stage3', 'hivit': 'stage2', 'vit': 'block3'}[name]
    return m.fc_norm(f[last].mean(axis=(1, 2)))


@pytest.mark.parametrize('family', ['pvt', 'ummae_swin', 'hivit', 'groupmixformer', 'vit'])
def test_built_size_pooled_last_stage_equals_classifier(models, family):
    """At the classifier's own size (no resampling, no padding; for UM-MAE Swin no stage whose
    shifted blocks the classifier's clamp rule changes) the last map, pooled and normalised like the
    classifier, gives the classifier's features (UM-MAE Swin: the window-local position bias differs
    from the classifier's absolute one only on masked pairs, exp(-100))."""
    m = models[family]
    x = jax.random.normal(jax.random.key(9), (2, 64, 64, 3))
    graphdef, _ = nnx.split(m)

    @jax.jit
    def both(state, y):
        mm = nnx.merge(graphdef, state)
        ref = mm(y) if family == 'hivit' else mm.forward_features(y)
        return _pooled_last(family, mm, mm.features(y)), ref

    got, want = both(nnx.state(m), x)
    assert _rel(got, want) < 1e-5


def test_hivit_stage_maps_and_pool(models):
    """HiViT's early maps are the PatchMerge inputs regrouped to the dense grid (unit (r, c), inner
    (i, j) -> pixel row r*inner + i); the extra level is a 2x2 max pool of the main-stage map."""
    m = models['hivit']
    x = jax.random.normal(jax.random.key(2), (1, 64, 64, 3))
    graphdef, _ = nnx.split(m)
    out, hifeat = jax.jit(lambda s, y: (nnx.merge(graphdef, s).features(y),
                                        nnx.merge(graphdef, s).forward_features(y, return_hifeat=True)))(
        nnx.state(m), x)
    early = np.asarray(hifeat[0])                   # (B, 16 units, 4, 4, 16)
    b, n, inner, _, c = early.shape
    dense = np.zeros((b, 4 * inner, 4 * inner, c), np.float32)
    for u in range(n):
        r, col = divmod(u, 4)
        for i in range(inner):
            for j in range(inner):
                dense[:, r * inner + i, col * inner + j] = early[:, u, i, j]
    np.testing.assert_allclose(np.asarray(out['stage0']), dense, rtol=1e-5, atol=1e-6)
    main = np.asarray(out['stage2'])                  # (B, 4, 4, 64)
    pooled = np.zeros((b, 2, 2, main.shape[-1]), np.float32)
    for r in range(2):
        for q in range(2):
            pooled[:, r, q] = main[:, 2 * r:2 * r + 2, 2 * q:2 * q + 2].max(axis=(1, 2))
    np.testing.assert_array_equal(np.asarray(out['stage3']), pooled)


def test_hivit_rectangular_relative_index_brute_force():
    hp, wp = 3, 5
    idx = relative_position_index_hw(hp, wp)
    for p in range(hp * wp):
        for q in range(hp * wp):
            (hp_, wp_), (hq, wq) = divmod(p, wp), divmod(q, wp)
            assert idx[p, q] == (hp_ - hq + hp - 1) * (2 * wp - 1) + (wp_ - wq + wp - 1)
    np.testing.assert_array_equal(relative_position_index_hw(4, 4), relative_position_index(4))


# ----------------------------------------------------------------------------------------
# Position tables: jit-friendly bicubic resampling against torch; ViT against timm.
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize('old,new', [((7, 7), (10, 15)), ((14, 14), (5, 3)), ((4, 6), (9, 4))])
def test_resample_abs_pos_embed_equals_torch_bicubic(old, new):
    """``F.interpolate(mode='bicubic', align_corners=False, antialias=False)`` on the (1, C, h, w)
    grid, class token kept: timm's ``resample_abs_pos_embed``, computed here directly in torch."""
    d = 12
    table = np.random.default_rng(1).standard_normal((1, 1 + old[0] * old[1], d)).astype(np.float32)
    fn = jax.jit(lambda t: PE.resample_abs_pos_embed(t, new, old, num_prefix_tokens=1))
    got = np.asarray(fn(jnp.asarray(table)))
    grid = torch.from_numpy(table[:, 1:]).reshape(1, *old, d).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=new, mode='bicubic', align_corners=False, antialias=False)
    want = np.concatenate([table[:, :1], want.permute(0, 2, 3, 1).reshape(1, -1, d).numpy()], axis=1)
    assert got.shape == (1, 1 + new[0] * new[1], d)
    np.testing.assert_array_equal(got[:, :1], table[:, :1])
    assert _rel(got, want) < 1e-5
    # the NumPy float64 reference of the checkpoint loaders agrees too
    if old[0] == old[1]:
        assert _rel(got, PE.interpolate_pos_embed(table, new, 1)) < 1e-5


def test_vit_block_maps_equal_timm_forward_intermediates(models, monkeypatch):
    """The real timm ViT (``dynamic_img_size=True``, same weights) at 48 x 80: its un-normalised
    intermediates are our block maps. timm's ``resample_abs_pos_embed`` defaults to
    ``antialias=True`` (PyTorch's antialiased bicubic, a PIL-style A = -0.5 kernel); the official
    dense backbones (mmseg's MAE, ViTDet, UM-MAE, HiViT, mmdet Swin) and jaxmim use the plain bicubic,
    so the reference is timm with ``antialias=False``."""
    import functools

    import interop
    timm = interop.timm()
    vt = timm.models.vision_transformer
    monkeypatch.setattr(vt, 'resample_abs_pos_embed', functools.partial(vt.resample_abs_pos_embed, antialias=False))
    m = models['vit']
    ref = vt.VisionTransformer(
        img_size=64, patch_size=16, embed_dim=32, depth=4, num_heads=2, num_classes=0, global_pool='avg',
        fc_norm=True, dynamic_img_size=True)
    pure = nnx.to_pure_dict(nnx.state(m, nnx.Param))
    sd = {'cls_token': pure['cls_token'], 'pos_embed': pure['pos_embed'],
          'patch_embed.proj.weight': np.transpose(pure['patch_embed']['proj']['kernel'], (3, 2, 0, 1)),
          'patch_embed.proj.bias': pure['patch_embed']['proj']['bias'],
          'fc_norm.weight': pure['fc_norm']['scale'], 'fc_norm.bias': pure['fc_norm']['bias']}
    for i, blk in pure['blocks'].items():
        for name in ('norm1', 'norm2'):
            sd[f'blocks.{i}.{name}.weight'], sd[f'blocks.{i}.{name}.bias'] = blk[name]['scale'], blk[name]['bias']
        for name, sub in (('attn.qkv', blk['attn']['qkv']), ('attn.proj', blk['attn']['proj']),
                          ('mlp.fc1', blk['mlp']['fc1']), ('mlp.fc2', blk['mlp']['fc2'])):
            sd[f'blocks.{i}.{name}.weight'], sd[f'blocks.{i}.{name}.bias'] = np.asarray(sub['kernel']).T, sub['bias']
    ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, strict=True)
    ref.eval()
    x = np.random.default_rng(3).standard_normal((2, 48, 80, 3)).astype(np.float32)
    with torch.no_grad():
        want = ref.forward_intermediates(torch.from_numpy(x).permute(0, 3, 1, 2), indices=[1, 3], norm=False,
                                         output_fmt='NCHW', intermediates_only=True)
    got = feats(m, x, (1, 3))
    assert list(got) == ['block1', 'block3']
    for g, w in zip(got.values(), want):
        w = w.permute(0, 2, 3, 1).numpy()
        assert g.shape == w.shape == (2, 3, 5, 32)
        assert _rel(g, w) < 1e-5


def test_registered_variant_features():
    """A registered demo classifier has the hook too (Swin without feature norms: raw stage outputs)."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: create_model('swin_demo_patch4_window4_32')))
    out = jax.eval_shape(lambda s: nnx.merge(graphdef, s).features(jnp.zeros((1, 48, 40, 3))), state)
    assert [(k, v.shape) for k, v in out.items()] == [
        ('stage0', (1, 12, 10, 64)), ('stage1', (1, 6, 5, 128)), ('stage2', (1, 3, 3, 256))]


def test_swin_tiny_built_at_224_gives_finite_features_at_320x480():
    """The registered Swin-T (built for 224 px, window 7) as a detection backbone at 320 x 480:
    padded to its windows in every stage, the four maps have strides 4 / 8 / 16 / 32 (written out:
    80 x 120 x 96, 40 x 60 x 192, 20 x 30 x 384, 10 x 15 x 768) and are finite."""
    m = create_model('swin_tiny_patch4_window7_224', out_indices=(0, 1, 2, 3))
    x = jax.random.normal(jax.random.key(0), (1, 320, 480, 3), jnp.float32)
    out = nnx.jit(lambda m, x: m.features(x))(m, x)
    assert [(k, v.shape) for k, v in out.items()] == [
        ('stage0', (1, 80, 120, 96)), ('stage1', (1, 40, 60, 192)), ('stage2', (1, 20, 30, 384)),
        ('stage3', (1, 10, 15, 768))]
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in out.values())
