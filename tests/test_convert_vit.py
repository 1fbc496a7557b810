"""Tests for convert/vit.py: facebookresearch/mae ViT and MAE <-> jaxmim, and the PyTorch twins.

References: the pure-PyTorch twins in ``convert.vit`` (official state_dict layout; their key lists
are checked against the official tables written out here (``facebookresearch/mae@efb2a80``
``models_mae.py`` / ``models_vit.py``), their sin-cos tables and loss against
NumPy formulas). Twin weights are perturbed (N(0, 0.05²) on every parameter, the fixed sin-cos
tables included) so that no LayerNorm weight is 1 and no bias 0. CPU only, small configurations;
ViT-B is checked through shapes only (``nnx.eval_shape`` and a meta-device twin).
"""

import functools
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from convert import official  # noqa: E402
from helpers import assert_close, check_round_trip, perturb, variables_of  # noqa: E402
from convert import vit as V  # noqa: E402
from jaxmim.registry import create_model  # noqa: E402

LN6 = functools.partial(torch.nn.LayerNorm, eps=1e-6)

# The registered demo variants (mae_vit_demo_patch4_32_dec128d2b / vit_demo_patch4_32) as official
# constructor calls.
MAE_DEMO = dict(img_size=32, patch_size=4, embed_dim=128, depth=6, num_heads=4, decoder_embed_dim=128,
                decoder_depth=2, decoder_num_heads=4, norm_layer=LN6)
# Nothing a power of two: 6x6 grid, 3 / 5 heads, MLP ratio 2.5, default LayerNorm eps 1e-5.
MAE_ODD = dict(img_size=24, patch_size=4, embed_dim=36, depth=2, num_heads=3, decoder_embed_dim=20,
               decoder_depth=1, decoder_num_heads=5, mlp_ratio=2.5)
CLS_DEMO = dict(global_pool=True, img_size=32, patch_size=4, embed_dim=128, depth=6, num_heads=4, num_classes=10,
                qkv_bias=True, norm_layer=LN6)
# Class-token pooling with the final norm, one input channel, no qkv bias, an explicit qk_scale.
CLS_ODD = dict(global_pool=False, img_size=24, patch_size=4, in_chans=1, embed_dim=36, depth=2, num_heads=3,
               mlp_ratio=2.5, num_classes=7, qkv_bias=False, qk_scale=0.3)

CASES = {'mae_demo': ('mae_vit', MAE_DEMO), 'mae_odd': ('mae_vit', MAE_ODD),
         'cls_demo': ('mae_vit_cls', CLS_DEMO), 'cls_odd': ('mae_vit_cls', CLS_ODD)}


def torch_twin(source, cfg):
    return V.MaskedAutoencoderViT(**cfg) if source == 'mae_vit' else V.VisionTransformer(**cfg)


def perturbed_twin(source, cfg, seed=0):
    """Torch twin in eval mode with N(0, 0.05²) noise added to every parameter."""
    return perturb(torch_twin(source, cfg), seed)


_mae_fwd = nnx.jit(lambda m, x, noise: m(x, noise=noise, train=False))
_cls_fwd = nnx.jit(lambda m, x: m(x, train=False))


def run_mae(jm, images_nchw, noise):
    """The jitted JAX MAE on NCHW images (transposed to NHWC) and ``(B, L)`` noise."""
    return _mae_fwd(jm, jnp.asarray(images_nchw.transpose(0, 2, 3, 1)), jnp.asarray(noise))


def run_cls(jm, images_nchw):
    """The jitted JAX classifier on NCHW images (transposed to NHWC)."""
    return _cls_fwd(jm, jnp.asarray(images_nchw.transpose(0, 2, 3, 1)))


class _Cases(dict):
    """Lazily built ``name -> (name, source, cfg, perturbed torch twin, jax model loaded from it)``
    shared by the tests of this module (building is the slow part on CPU)."""

    def __missing__(self, name):
        source, cfg = CASES[name]
        tm = perturbed_twin(source, cfg)
        jm = official.load_state_dict(official.build(source, **cfg), source, tm.state_dict())
        self[name] = (name, source, cfg, tm, jm)
        return self[name]


_cases = _Cases()


@pytest.fixture(params=list(CASES))
def case(request):
    """(name, source, cfg, perturbed torch twin, jax model loaded from it)."""
    return _cases[request.param]


def _images(cfg, batch=2, seed=1):
    c = cfg.get('in_chans', 3)
    return np.random.RandomState(seed).randn(batch, c, cfg['img_size'], cfg['img_size']).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Twin layout against the official state_dicts (MAE ``models_mae.py``, ``models_vit.py``; UM-MAE's
# ``implus/UM-MAE@cb7776b models_mae.py:24-28`` adds ``vis_mask_token``)
# ------------------------------------------------------------------------------------------------

def _block_layout(prefix, d, hidden, qkv_bias=True):
    out = [(prefix + 'norm1.weight', (d,)), (prefix + 'norm1.bias', (d,)), (prefix + 'attn.qkv.weight', (3 * d, d))]
    if qkv_bias:
        out.append((prefix + 'attn.qkv.bias', (3 * d,)))
    return out + [(prefix + 'attn.proj.weight', (d, d)), (prefix + 'attn.proj.bias', (d,)),
                  (prefix + 'norm2.weight', (d,)), (prefix + 'norm2.bias', (d,)),
                  (prefix + 'mlp.fc1.weight', (hidden, d)), (prefix + 'mlp.fc1.bias', (hidden,)),
                  (prefix + 'mlp.fc2.weight', (d, hidden)), (prefix + 'mlp.fc2.bias', (d,))]


def expected_mae_layout(img, p, c, d, depth, dd, ddepth, ratio=4.0):
    n = (img // p) ** 2 + 1
    out = [('cls_token', (1, 1, d)), ('pos_embed', (1, n, d)), ('mask_token', (1, 1, dd)),
           ('decoder_pos_embed', (1, n, dd)), ('patch_embed.proj.weight', (d, c, p, p)),
           ('patch_embed.proj.bias', (d,))]
    for i in range(depth):
        out += _block_layout(f'blocks.{i}.', d, int(d * ratio))
    out += [('norm.weight', (d,)), ('norm.bias', (d,)), ('decoder_embed.weight', (dd, d)),
            ('decoder_embed.bias', (dd,))]
    for i in range(ddepth):
        out += _block_layout(f'decoder_blocks.{i}.', dd, int(dd * ratio))
    return out + [('decoder_norm.weight', (dd,)), ('decoder_norm.bias', (dd,)),
                  ('decoder_pred.weight', (p * p * c, dd)), ('decoder_pred.bias', (p * p * c,))]


def expected_cls_layout(img, p, c, d, depth, classes, global_pool, qkv_bias, ratio=4.0):
    n = (img // p) ** 2 + 1
    out = [('cls_token', (1, 1, d)), ('pos_embed', (1, n, d)), ('patch_embed.proj.weight', (d, c, p, p)),
           ('patch_embed.proj.bias', (d,))]
    for i in range(depth):
        out += _block_layout(f'blocks.{i}.', d, int(d * ratio), qkv_bias)
    if not global_pool:
        out += [('norm.weight', (d,)), ('norm.bias', (d,))]
    if classes:
        out += [('head.weight', (classes, d)), ('head.bias', (classes,))]
    if global_pool:   # models_vit registers fc_norm after timm's head
        out += [('fc_norm.weight', (d,)), ('fc_norm.bias', (d,))]
    return out


def _layout(module):
    return [(k, tuple(v.shape)) for k, v in module.state_dict().items()]


def test_twin_layouts_match_the_spec():
    assert _layout(V.MaskedAutoencoderViT(**MAE_ODD)) == expected_mae_layout(24, 4, 3, 36, 2, 20, 1, 2.5)
    assert _layout(V.VisionTransformer(**CLS_ODD)) == expected_cls_layout(24, 4, 1, 36, 2, 7, False, False, 2.5)
    assert _layout(V.VisionTransformer(**CLS_DEMO)) == expected_cls_layout(32, 4, 3, 128, 6, 10, True, True)
    headless = V.VisionTransformer(**dict(CLS_DEMO, num_classes=0))
    assert _layout(headless) == expected_cls_layout(32, 4, 3, 128, 6, 0, True, True)


def _loop_sincos(d, g):
    """Brute force: row i, column j -> [sin(j w_k), cos(j w_k), sin(i w_k), cos(i w_k)] over
    k < d/4, w_k = 10000^(-k/(d/4)); a zero row for the class token first."""
    out = np.zeros((1 + g * g, d))
    q = d // 4
    for i in range(g):
        for j in range(g):
            for k in range(q):
                w = 1.0 / 10000 ** (k / q)
                out[1 + i * g + j, [k, q + k, 2 * q + k, 3 * q + k]] = [math.sin(j * w), math.cos(j * w),
                                                                          math.sin(i * w), math.cos(i * w)]
    return out


def test_sincos_tables_match_brute_force_and_jax_buffers():
    np.testing.assert_allclose(V.get_2d_sincos_pos_embed(20, 6, cls_token=True), _loop_sincos(20, 6), atol=1e-12)
    tm = V.MaskedAutoencoderViT(**MAE_ODD)
    jm = official.build('mae_vit', **MAE_ODD)
    sd = official.state_dict(jm, 'mae_vit')   # fresh init: the JAX Buffers hold the official tables
    for k in ('pos_embed', 'decoder_pos_embed'):
        assert sd[k].tobytes() == tm.state_dict()[k].numpy().tobytes(), k
    assert not tm.pos_embed.requires_grad and not tm.decoder_pos_embed.requires_grad
    assert type(jm.pos_embed).__name__ == 'Buffer' and type(jm.decoder_pos_embed).__name__ == 'Buffer'


def test_twin_mae_loss_and_mask_match_numpy():
    tm = perturbed_twin('mae_vit', MAE_ODD)
    x = _images(MAE_ODD)
    noise = np.random.RandomState(2).rand(2, 36).astype(np.float32)
    for norm_pix in (False, True):
        tm.norm_pix_loss = norm_pix
        with torch.no_grad():
            out = tm(torch.from_numpy(x), noise=torch.from_numpy(noise))
        keep = int(36 * 0.25)
        mask = np.ones((2, 36))
        for b in range(2):
            mask[b, np.argsort(noise[b])[:keep]] = 0
        np.testing.assert_array_equal(out['mask'].numpy(), mask)
        target = np.zeros((2, 36, 48))   # patch (r, c), pixel (i, j), channel ch at (i*4 + j)*3 + ch
        for b in range(2):
            for r in range(6):
                for c in range(6):
                    for i in range(4):
                        for j in range(4):
                            target[b, r * 6 + c, (i * 4 + j) * 3:(i * 4 + j) * 3 + 3] = x[b, :, r * 4 + i, c * 4 + j]
        if norm_pix:
            target = (target - target.mean(-1, keepdims=True)) / np.sqrt(target.var(-1, ddof=1, keepdims=True) + 1e-6)
        per_patch = ((out['pred'].numpy().astype(np.float64) - target) ** 2).mean(-1)
        np.testing.assert_allclose(out['loss'].item(), (per_patch * mask).sum() / mask.sum(), rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# Numerical parity
# ------------------------------------------------------------------------------------------------

def test_perturbation_leaves_no_trivial_norms_or_biases():
    tm = perturbed_twin(*CASES['mae_odd'])
    for name, p in tm.named_parameters():
        if name.endswith('.bias'):
            assert (p != 0).all(), name
        if 'norm' in name and name.endswith('.weight'):
            assert (p != 1).all(), name
    assert (tm.pos_embed[0, 0] != 0).all()   # the class row of the sin-cos table is perturbed too


@pytest.mark.parametrize('norm_pix_loss', [False, True])
@pytest.mark.parametrize('name', ['mae_demo', 'mae_odd'])
def test_mae_parity_with_torch(name, norm_pix_loss):
    _, source, cfg, tm, jm = _cases[name]
    tm.norm_pix_loss = norm_pix_loss
    jm.norm_pix_loss = norm_pix_loss   # a static attribute: the jitted call retraces
    x = _images(cfg)
    L = (cfg['img_size'] // cfg['patch_size']) ** 2
    noise = np.random.RandomState(4).rand(2, L).astype(np.float32)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x), noise=torch.from_numpy(noise), train=False)
    out = run_mae(jm, x, noise)
    np.testing.assert_array_equal(np.asarray(out['mask']), ref['mask'].numpy())
    assert out['pred'].shape == (2, L, cfg['patch_size'] ** 2 * 3)
    assert_close(out['pred'], ref['pred'].numpy())
    assert_close(out['loss'], ref['loss'].numpy())


def test_mae_parity_other_mask_ratio():
    source, cfg = CASES['mae_odd']
    tm = perturbed_twin(source, cfg, seed=5)
    jm = official.load_state_dict(official.build(source, **cfg, mask_ratio=0.5), source, tm.state_dict())
    x = _images(cfg, seed=6)
    noise = np.random.RandomState(7).rand(2, 36).astype(np.float32)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x), 0.5, noise=torch.from_numpy(noise))
    out = run_mae(jm, x, noise)
    assert float(np.asarray(out['mask']).sum()) == 2 * 18
    np.testing.assert_array_equal(np.asarray(out['mask']), ref['mask'].numpy())
    assert_close(out['pred'], ref['pred'].numpy())
    assert_close(out['loss'], ref['loss'].numpy())


@pytest.mark.parametrize('name', ['cls_demo', 'cls_odd'])
def test_classifier_parity_with_torch(name):
    _, source, cfg, tm, jm = _cases[name]
    x = _images(cfg, seed=9)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
    out = run_cls(jm, x)
    assert out.shape == (2, cfg['num_classes'])
    assert_close(out, ref)


def test_norm_eps_follows_norm_layer():
    eps = lambda m: {n.epsilon for _, n in nnx.iter_graph(m) if isinstance(n, nnx.LayerNorm)}
    assert eps(official.build('mae_vit', **MAE_ODD)) == {1e-5}       # official default nn.LayerNorm
    assert eps(official.build('mae_vit', **dict(MAE_ODD, norm_layer=LN6))) == {1e-6}
    assert eps(official.build('mae_vit_cls', **CLS_DEMO)) == {1e-6}
    assert eps(official.build('mae_vit_cls', **CLS_ODD)) == {1e-5}


# ------------------------------------------------------------------------------------------------
# Layout: keys, order, shapes, round trip, registry variants
# ------------------------------------------------------------------------------------------------

def test_export_keys_order_shapes_and_values_match_torch(case):
    _, source, _, tm, jm = case
    sd = official.state_dict(jm, source)
    ref = tm.state_dict()
    assert list(sd) == list(ref)
    for k, v in ref.items():
        assert sd[k].shape == tuple(v.shape) and sd[k].dtype == np.float32, k
        assert sd[k].tobytes() == v.numpy().tobytes(), k   # loaded values come back unchanged


def test_round_trip_jax_torch_jax_is_bit_exact(case):
    _, source, cfg, _, _ = case
    check_round_trip(source, cfg, torch_twin(source, cfg))


@pytest.mark.parametrize('registry_name,source,cfg', [
    ('mae_vit_demo_patch4_32_dec128d2b', 'mae_vit', MAE_DEMO),
    ('vit_demo_patch4_32', 'mae_vit_cls', CLS_DEMO)])
def test_registry_demo_variants_are_the_official_configs(registry_name, source, cfg):
    """The registered demo variants load the twin of the official constructor call strictly and
    compute the same function."""
    tm = perturbed_twin(source, cfg, seed=11)
    jm = official.load_state_dict(create_model(registry_name), source, tm.state_dict())
    x = _images(cfg, seed=12)
    if source == 'mae_vit':
        noise = np.random.RandomState(13).rand(2, 64).astype(np.float32)
        with torch.no_grad():
            ref = tm(torch.from_numpy(x), noise=torch.from_numpy(noise))['pred'].numpy()
        out = run_mae(jm, x, noise)['pred']
    else:
        with torch.no_grad():
            ref = tm(torch.from_numpy(x)).numpy()
        out = run_cls(jm, x)
    assert_close(out, ref)


def test_headless_classifier_exports_without_head():
    cfg = dict(CLS_ODD, num_classes=0)
    jm = official.build('mae_vit_cls', **cfg)
    assert list(official.state_dict(jm, 'mae_vit_cls')) == list(V.VisionTransformer(**cfg).state_dict())


# ViT-B/16: the MAE factories. Parameter counts written out: per block 12 d^2 + 13 d.
MAE_B = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, decoder_embed_dim=512, decoder_depth=8,
             decoder_num_heads=16, mlp_ratio=4, norm_layer=LN6)
VIT_B = dict(global_pool=True, patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4, qkv_bias=True,
             norm_layer=LN6, num_classes=1000, drop_path_rate=0.1)


def _shape_layout(source, model):
    return [(key, shape) for key, _, shape, _ in official.describe(model, source)]


def test_vit_b_layouts_and_counts_by_shape():
    blk = lambda d: 12 * d * d + 13 * d
    mae = nnx.eval_shape(lambda: official.build('mae_vit', **MAE_B))
    vit = nnx.eval_shape(lambda: official.build('mae_vit_cls', **VIT_B))
    with torch.device('meta'):
        tmae = V.MaskedAutoencoderViT(**MAE_B)
        tvit = V.VisionTransformer(**VIT_B)
    assert _shape_layout('mae_vit', mae) == _layout(tmae)
    assert _shape_layout('mae_vit_cls', vit) == _layout(tvit)
    count = lambda m: sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(m)))
    # timm vit_base_patch16_224: 86,567,656 parameters (fc_norm replaces norm: same count)
    assert count(vit) == 86_567_656 == ((768 * 3 * 256 + 768) + 768 + 197 * 768 + 12 * blk(768) + 2 * 768
                                        + 768 * 1000 + 1000)
    encoder = 86_567_656 - (768 * 1000 + 1000)
    decoder = 512 + 197 * 512 + (768 * 512 + 512) + 8 * blk(512) + 2 * 512 + (512 * 768 + 768)
    assert count(mae) == encoder + decoder == 111_907_840
    assert len(official.get_source('mae_vit').entries(mae)) == 4 + 2 + 12 * 12 + 2 + 2 + 8 * 12 + 2 + 2


# ------------------------------------------------------------------------------------------------
# Strictness and arguments
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def mae_small():
    jm = official.build('mae_vit', **MAE_ODD)
    return jm, official.state_dict(jm, 'mae_vit')


def _load_error(jm, sd, source='mae_vit'):
    before = variables_of(jm)
    with pytest.raises(ValueError) as err:
        official.load_state_dict(jm, source, sd)
    after = variables_of(jm)
    assert all(np.array_equal(before[k], after[k]) for k in before)   # nothing written
    return str(err.value)


def test_strict_load_names_missing_unexpected_and_misshaped_keys(mae_small):
    jm, sd = mae_small
    sd = dict(sd)
    del sd['decoder_pos_embed']
    del sd['blocks.1.attn.qkv.bias']
    sd['pos_embed'] = np.zeros((1, 50, 36), np.float32)             # another grid
    sd['decoder_pred.weight'] = sd['decoder_pred.weight'].T.copy()   # Flax layout by mistake
    sd['vis_mask_token'] = np.zeros((1, 1, 36), np.float32)          # UM-MAE extra
    msg = _load_error(jm, sd)
    assert 'missing keys (2)' in msg and 'decoder_pos_embed' in msg and 'blocks.1.attn.qkv.bias' in msg
    assert 'unexpected keys (1)' in msg and 'vis_mask_token' in msg
    assert 'pos_embed: checkpoint (1, 50, 36) vs expected (1, 37, 36)' in msg
    assert 'decoder_pred.weight: checkpoint (20, 48) vs expected (48, 20)' in msg


def test_encoder_only_checkpoint_into_mae_is_rejected(mae_small):
    """Released MAE pre-training checkpoints hold the encoder only; loading one into the full MAE
    names every decoder key."""
    jm, sd = mae_small
    enc = {k: v for k, v in sd.items() if not k.startswith(('decoder', 'mask_token'))}
    msg = _load_error(jm, {'model': enc})
    assert 'mask_token' in msg and 'decoder_blocks.0.mlp.fc2.bias' in msg and 'decoder_pred.bias' in msg


def test_wrong_model_type_and_bad_arguments():
    jm = official.build('mae_vit', **MAE_ODD)
    with pytest.raises(TypeError, match='VisionTransformer'):
        official.state_dict(jm, 'mae_vit_cls')
    with pytest.raises(TypeError, match='MaskedAutoencoderViT'):
        official.state_dict(official.build('mae_vit_cls', **CLS_ODD), 'mae_vit')
    with pytest.raises(ValueError, match='norm_layer'):
        official.build('mae_vit', **dict(MAE_ODD, norm_layer=torch.nn.BatchNorm1d))
    with pytest.raises(ValueError, match='hybrid_backbone'):
        official.build('mae_vit_cls', **CLS_ODD, hybrid_backbone=torch.nn.Identity())
    with pytest.raises(ValueError, match='square'):
        official.build('mae_vit_cls', **dict(CLS_ODD, img_size=(24, 32)))
    with pytest.raises(ValueError, match='multiple of 4'):
        official.build('mae_vit', **dict(MAE_ODD, decoder_embed_dim=18, decoder_num_heads=3))
    with pytest.raises(TypeError):
        official.build('mae_vit_cls', **CLS_ODD, representation_size=8)   # not a timm 0.3.2 argument
    m = official.build('mae_vit_cls', **dict(CLS_ODD, img_size=(24, 24), patch_size=[4, 4]))
    assert m.img_size == 24 and m.patch_size == 4
