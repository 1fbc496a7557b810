"""Interop with the real Hugging Face ``transformers`` 5.23.0 (``convert/hf_layouts.py``).

For each class (``SwinModel``, ``SwinForImageClassification``, ``SwinForMaskedImageModeling``,
``ViTModel`` without pooler, ``ViTForImageClassification``, ``ViTMAEForPreTraining``) on small
configurations (CPU):

* import: the real model, built from its config and perturbed (N(0, 0.05²) on every parameter, the
  MAE sin-cos tables included), is written by its own ``save_pretrained``; the folder's key set and
  shapes equal the jaxmim layout, it loads strictly into the jaxmim model, the outputs agree to
  1e-5 relative and exporting the jaxmim model gives the folder's tensors back bit for bit;
* export: a perturbed jaxmim model written as ``model.safetensors`` + :func:`hf_config` loads with
  ``from_pretrained`` with no missing / unexpected / mismatched key and gives the jaxmim outputs;
* the command lines (``convert.import --format=hf`` on a ``save_pretrained`` folder, then
  ``convert.export --format=hf``) keep every tensor bit-exact;
* at real size (Swin-T/B, ViT-B, ViT-MAE-B), the key names and shapes equal those that
  ``save_pretrained`` writes (transformers' ``revert_weight_conversion`` on a meta-device model
  against ``nnx.eval_shape``), and the config defaults equal the config classes';
* refusals: one clear reason for every model or ``config.json`` with no counterpart.

The measured relative differences are printed (``pytest -s``).
"""

import importlib
import json
import os
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import interop  # noqa: E402
from convert import _cli, official  # noqa: E402
from convert import hf_layouts as H  # noqa: E402
from helpers import assert_close, perturb  # noqa: E402

# Small configurations (config.json fields): nothing a default, every field the layout reads set.
SWIN_CLS = dict(image_size=32, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4,
                id2label={str(i): f'c{i}' for i in range(5)}, label2id={f'c{i}': i for i in range(5)})
# absolute position embeddings, no qkv bias, MLP ratio 2.5, a last stage equal to the window (4x4)
SWIN_MODEL = dict(image_size=32, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4,
                  use_absolute_embeddings=True, qkv_bias=False, mlp_ratio=2.5)
SWIN_MIM = dict(image_size=32, patch_size=4, embed_dim=16, depths=[2, 2, 2], num_heads=[2, 2, 4], window_size=2,
                encoder_stride=8 * 2)
VIT_CLS = dict(image_size=32, patch_size=8, hidden_size=24, num_hidden_layers=2, num_attention_heads=3,
               intermediate_size=60, layer_norm_eps=1e-6, num_labels=3)
VIT_MODEL = dict(image_size=24, patch_size=8, num_channels=1, hidden_size=16, num_hidden_layers=2,
                 num_attention_heads=2, intermediate_size=64, layer_norm_eps=1e-6, qkv_bias=False)
VIT_MAE = dict(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=32, decoder_hidden_size=8, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
               decoder_intermediate_size=16, layer_norm_eps=1e-6, norm_pix_loss=True, mask_ratio=0.75)

CASES = {'SwinModel': SWIN_MODEL, 'SwinForImageClassification': SWIN_CLS, 'SwinForMaskedImageModeling': SWIN_MIM,
         'ViTModel': VIT_MODEL, 'ViTForImageClassification': VIT_CLS, 'ViTMAEForPreTraining': VIT_MAE}
CONFIG_CLASS = {'swin': 'SwinConfig', 'vit': 'ViTConfig', 'vit_mae': 'ViTMAEConfig'}


@pytest.fixture(scope='module')
def T():
    """The real transformers (skips when missing). Its image utilities import torchvision, so the
    torchvision operator schemas are declared first as for timm (see ``tests/interop.py``)."""
    try:
        interop._declare_torchvision_ops()
    except Exception:   # torch missing or odd: interop.transformers() reports it
        pass
    return interop.transformers()


def hf_model(T, cls, cfg):
    """``cls(ConfigClass(**cfg))`` of the real library (ViTModel without pooler), in eval mode."""
    config = getattr(T, CONFIG_CLASS[H.HF_CLASSES[cls][1]])(**cfg)
    klass = getattr(T, cls)
    return (klass(config, add_pooling_layer=False) if cls == 'ViTModel' else klass(config)).eval()


def random_model(source, cfg, seed):
    """The jaxmim model of ``source`` built from config.json fields ``cfg``, every variable drawn
    at random (N(0, 0.05²), plus 1 for LayerNorm scales): traced with ``nnx.eval_shape`` and filled
    from NumPy, which skips the slow first-call compilation of every initialiser on the CPU."""
    model = nnx.eval_shape(lambda: official.build(source, **cfg))
    state = nnx.state(model)
    rng = np.random.default_rng(seed)
    flat = {path: jnp.asarray(0.05 * rng.standard_normal(v.shape) + (path[-1] == 'scale'), v.dtype)
            for path, v in nnx.to_flat_state(state)}
    nnx.replace_by_pure_dict(state, nnx.traversals.unflatten_mapping(flat))
    nnx.update(model, state)
    return model


def inputs(cfg, cls, seed=0):
    """NCHW float32 images, and the masking input of the pre-training classes: SimMIM's
    ``(B, H/patch, W/patch)`` mask, MAE's ``(B, L)`` noise."""
    rng = np.random.default_rng(seed)
    size, chans = cfg['image_size'], cfg.get('num_channels', 3)
    x = rng.standard_normal((2, chans, size, size)).astype(np.float32)
    grid = size // cfg['patch_size']
    if cls == 'SwinForMaskedImageModeling':
        return x, (rng.random((2, grid, grid)) < 0.5).astype(np.int32)
    if cls == 'ViTMAEForPreTraining':
        return x, rng.random((2, grid * grid), dtype=np.float32)
    return x, None


_call = nnx.jit(lambda m, x: m(x))
_mim = nnx.jit(lambda m, x, mask: m(x, mask))
_mae = nnx.jit(lambda m, x, noise: m(x, noise=noise))
_swin_tokens = nnx.jit(lambda m, x: (m.forward_tokens(m.embed(x)), m.forward_features(x)))


@nnx.jit
def _vit_tokens(m, x):
    """All tokens of a jaxmim ViT after the final norm (B, 1 + L, D), from its own modules."""
    t = m.patch_embed(x)
    cls = jnp.broadcast_to(m.cls_token[...], (t.shape[0], 1, t.shape[-1]))
    t = jnp.concatenate([cls, t], axis=1) + m.pos_embed[...]
    for blk in m.blocks:
        t = blk(t)
    return m.norm(t)


def outputs_pair(T, cls, hm, jm, x, extra):
    """``{name: (transformers output, jaxmim output)}`` as float64 arrays in the same layout."""
    xt, xj = torch.from_numpy(x), jnp.asarray(x.transpose(0, 2, 3, 1))
    with torch.no_grad():
        if cls == 'SwinForMaskedImageModeling':
            o = hm(xt, bool_masked_pos=torch.from_numpy(extra.reshape(len(x), -1)).bool())
            j = _mim(jm, xj, jnp.asarray(extra))
            return {'reconstruction': (o.reconstruction.numpy().transpose(0, 2, 3, 1), j['x_rec']),
                    'loss': (o.loss.numpy(), j['loss'])}
        if cls == 'ViTMAEForPreTraining':
            o = hm(xt, noise=torch.from_numpy(extra))
            j = _mae(jm, xj, jnp.asarray(extra))
            assert np.array_equal(o.mask.numpy(), np.asarray(j['mask']))
            return {'pred': (o.logits.numpy(), j['pred']), 'loss': (o.loss.numpy(), j['loss'])}
        if cls in H._HEADED:
            return {'logits': (hm(xt).logits.numpy(), _call(jm, xj))}
        o = hm(xt)
        if cls == 'SwinModel':
            tokens, pooled = _swin_tokens(jm, xj)
            return {'last_hidden_state': (o.last_hidden_state.numpy(), tokens.reshape(len(x), -1, tokens.shape[-1])),
                    'pooler_output': (o.pooler_output.numpy(), pooled)}
        return {'last_hidden_state': (o.last_hidden_state.numpy(), _vit_tokens(jm, xj)),
                'cls_token': (o.last_hidden_state[:, 0].numpy(), _call(jm, xj))}


def check_outputs(T, cls, hm, jm, direction):
    """Asserts every output pair equal to 1e-5 relative; prints the largest relative difference."""
    x, extra = inputs(CASES[cls], cls)
    worst = 0.0
    for name, (ref, out) in outputs_pair(T, cls, hm, jm, x, extra).items():
        ref, out = np.asarray(ref, np.float64), np.asarray(out, np.float64)
        assert_close(out, ref, 1e-5)
        worst = max(worst, float(np.abs(out - ref).max() / np.abs(ref).max()))
    print(f'\n[hf interop] {cls} {direction}: max relative difference {worst:.2e}')


def read_folder(path):
    """``{key: np.ndarray}`` of a save_pretrained folder's weights, and its config.json."""
    from safetensors.numpy import load_file
    with open(os.path.join(path, 'config.json')) as fh:
        return load_file(os.path.join(path, 'model.safetensors')), json.load(fh)


# ------------------------------------------------------------------------------------------------
# Import: the real model's save_pretrained folder -> jaxmim
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('cls', list(CASES))
def test_save_pretrained_folder_imports_exactly(T, cls, tmp_path):
    cfg = CASES[cls]
    hm = perturb(hf_model(T, cls, cfg), seed=1)
    hm.save_pretrained(tmp_path)
    sd, config = read_folder(tmp_path)
    source = official.library_source('hf', cls)
    jm = nnx.eval_shape(lambda: official.build(source, **config))   # abstract: every variable is loaded
    assert official.official_shapes(jm, source) == {k: tuple(v.shape) for k, v in sd.items()}
    official.load_state_dict(jm, source, sd)                   # strict: raises on any difference
    check_outputs(T, cls, hm, jm, 'import (transformers -> jaxmim)')
    out = official.state_dict(jm, source)
    assert out.keys() == sd.keys()
    for key in sd:
        assert out[key].dtype == sd[key].dtype and out[key].tobytes() == sd[key].tobytes(), key


# ------------------------------------------------------------------------------------------------
# Export: jaxmim -> model.safetensors + config.json -> from_pretrained
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('cls', list(CASES))
def test_export_loads_strictly_with_from_pretrained(T, cls, tmp_path):
    source = official.library_source('hf', cls)
    jm = random_model(source, CASES[cls], seed=3)
    sd = official.state_dict(jm, source)
    config = H.hf_config(jm, cls)
    _cli.write_pretrained_folder(sd, config, str(tmp_path))
    kwargs = {'add_pooling_layer': False} if cls == 'ViTModel' else {}
    hm, info = getattr(T, cls).from_pretrained(str(tmp_path), output_loading_info=True, **kwargs)
    assert not info['missing_keys'] and not info['unexpected_keys'] and not info['mismatched_keys'], info
    assert not info['error_msgs'], info
    hm.eval()
    # the config rebuilt the run's numerics (e.g. LayerNorm eps 1e-6, not ViT's 1e-12 default)
    for name, value in config.items():
        if name not in ('architectures', 'id2label', 'label2id'):
            got = getattr(hm.config, name)
            assert (list(got) if isinstance(got, (list, tuple)) else got) == value, name
    check_outputs(T, cls, hm, jm, 'export (jaxmim -> transformers)')
    # what transformers saves again is what was exported, bit for bit
    hm.save_pretrained(tmp_path / 'again')
    again, _ = read_folder(tmp_path / 'again')
    assert again.keys() == sd.keys()
    for key in sd:
        assert again[key].tobytes() == sd[key].tobytes(), key


# ------------------------------------------------------------------------------------------------
# The command lines
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('cls', ['SwinForImageClassification', 'ViTMAEForPreTraining'])
def test_cli_import_then_export_is_bit_exact(T, cls, tmp_path):
    export_cli = importlib.import_module('convert.export')
    import_cli = importlib.import_module('convert.import')
    hm = perturb(hf_model(T, cls, CASES[cls]), seed=4)
    hm.save_pretrained(tmp_path / 'hf')
    original, _ = read_folder(tmp_path / 'hf')
    res = import_cli.import_checkpoint(str(tmp_path / 'hf'), None, str(tmp_path / 'run'), None, format='hf',
                                       library_model=cls, verbose=False)
    assert res['num_tensors'] == len(original) and not res['ignored'] and not res['omitted']
    export_cli.export_run(str(tmp_path / 'run'), None, str(tmp_path / 'out'), format='hf', library_model=cls,
                          verbose=False)
    back, config = read_folder(tmp_path / 'out')
    assert config['architectures'] == [cls]
    assert back.keys() == original.keys()
    for key in original:
        assert back[key].tobytes() == original[key].tobytes(), key
    reloaded, info = getattr(T, cls).from_pretrained(str(tmp_path / 'out'), output_loading_info=True)
    assert not any(info[k] for k in ('missing_keys', 'unexpected_keys', 'mismatched_keys', 'error_msgs')), info


# ------------------------------------------------------------------------------------------------
# Real sizes: key names and shapes only
# ------------------------------------------------------------------------------------------------

REAL = {   # config.json fields of Hub models (microsoft/swin-*, google/vit-base-*, facebook/vit-mae-base)
    'SwinModel': dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=7),
    'SwinForImageClassification': dict(num_labels=1000),                               # swin-tiny-patch4-window7-224
    'SwinForMaskedImageModeling': dict(image_size=192, embed_dim=128, depths=[2, 2, 18, 2],
                                       num_heads=[4, 8, 16, 32], window_size=6),     # swin-base-simmim-window6-192
    'ViTModel': dict(),                                                               # vit-base-patch16-224-in21k
    'ViTForImageClassification': dict(num_labels=1000),                               # vit-base-patch16-224
    'ViTMAEForPreTraining': dict(),                                                   # vit-mae-base
}


@pytest.mark.parametrize('cls', list(REAL))
def test_real_size_keys_and_shapes(T, cls):
    from transformers.core_model_loading import revert_weight_conversion
    cfg = REAL[cls]
    with torch.device('meta'):
        hm = hf_model(T, cls, cfg)
    saved = {k: tuple(v.shape) for k, v in revert_weight_conversion(hm, hm.state_dict()).items()}
    source = official.library_source('hf', cls)
    jm = nnx.eval_shape(lambda: official.build(source, **cfg))
    assert official.official_shapes(jm, source) == saved


@pytest.mark.parametrize('model_type', ['swin', 'vit', 'vit_mae'])
def test_config_defaults_are_transformers_defaults(T, model_type):
    defaults = {'swin': H.SWIN_CONFIG_DEFAULTS, 'vit': H.VIT_CONFIG_DEFAULTS,
                'vit_mae': H.VIT_MAE_CONFIG_DEFAULTS}[model_type]
    config = getattr(T, CONFIG_CLASS[model_type])()
    for name, value in defaults.items():
        got = getattr(config, name)
        assert (tuple(got) if isinstance(got, (list, tuple)) else got) == value, name


def test_mae_sincos_tables_equal_transformers_tables(T):
    """transformers' own table (``build_2d_sinusoidal_position_embedding``, ``[sin_h|cos_h|sin_w|cos_w]``
    with its halves swapped as ``ViTMAEEmbeddings.initialize_weights`` / ``ViTMAEDecoder.initialize_weights``
    do) equals jaxmim's fixed buffers (the official MAE formula) to float32 rounding. (A freshly built
    5.23 ``ViTMAEForPreTraining`` holds zero tables: ``initialize_weights`` returns early once
    ``post_init`` has marked the patch projection initialised and ``_init_weights`` zeros the decoder's;
    loading a checkpoint sets them.)"""
    from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding
    jm = official.build('hf_vit_mae_for_pretraining', **VIT_MAE)
    grid = VIT_MAE['image_size'] // VIT_MAE['patch_size']
    for dim, table in ((VIT_MAE['hidden_size'], jm.pos_embed), (VIT_MAE['decoder_hidden_size'], jm.decoder_pos_embed)):
        ref = build_2d_sinusoidal_position_embedding(grid, grid, dim, cls_token=True)
        ref = torch.cat([ref[..., dim // 2:], ref[..., :dim // 2]], dim=-1).numpy()
        np.testing.assert_allclose(np.asarray(table[...])[0], ref, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Refusals
# ------------------------------------------------------------------------------------------------

def _abstract(name, **overrides):
    from jaxmim.registry import create_model
    return nnx.eval_shape(lambda: create_model(name, **overrides))


def test_global_pool_vit_is_refused_for_vit_classes():
    jm = _abstract('vit_demo_patch4_32', depth=1)          # global_pool=True (fc_norm)
    with pytest.raises(TypeError, match='global_pool=True'):
        official.library_source('hf', 'ViTForImageClassification', jm)
    with pytest.raises(TypeError, match='global_pool=True'):
        H.hf_config(jm, 'ViTModel')


def test_models_without_an_hf_counterpart_are_refused():
    with pytest.raises(TypeError, match='only norm_eps=1e-5 maps'):
        official.library_source('hf', 'SwinForImageClassification', _abstract('swin_demo_patch4_window4_32',
                                                                                norm_eps=1e-6))
    with pytest.raises(TypeError, match='stage 1 is 4x4, smaller than window_size 8'):   # stage 0 is 8x8
        official.library_source('hf', 'SwinForImageClassification', _abstract('swin_demo_patch4_window4_32',
                                                                                depths=(2, 2), num_heads=(2, 4),
                                                                                window_size=8))
    with pytest.raises(TypeError, match='export it as SwinForImageClassification'):
        official.library_source('hf', 'SwinModel', _abstract('swin_demo_patch4_window4_32'))
    with pytest.raises(TypeError, match='qk_scale'):
        official.library_source('hf', 'ViTModel', _abstract('vit_demo_patch4_32', depth=1, global_pool=False,
                                                            num_classes=0, qk_scale=0.3))
    with pytest.raises(KeyError, match='accepted:.*SwinForMaskedImageModeling'):
        official.library_source('hf', 'SwinForSegmentation')


@pytest.mark.parametrize('cls, cfg, match', [
    ('SwinForImageClassification', dict(SWIN_CLS, hidden_act='gelu_new'), 'hidden_act'),
    ('SwinForImageClassification', dict(SWIN_CLS, layer_norm_eps=1e-6), 'layer_norm_eps'),
    ('SwinForImageClassification', dict(SWIN_CLS, image_size=[32, 64]), 'image_size'),
    ('SwinModel', dict(SWIN_CLS, window_size=7), 'window_size=7'),
    ('SwinForMaskedImageModeling', dict(SWIN_MIM, encoder_stride=32), 'encoder_stride=32'),
    ('ViTMAEForPreTraining', dict(VIT_MAE, decoder_intermediate_size=24), 'decoder_intermediate_size=24'),
    ('ViTMAEForPreTraining', dict(VIT_MAE, model_type='vit'), 'model_type'),
    ('ViTForImageClassification', dict(VIT_CLS, architectures=['ViTForMaskedImageModeling']), 'architectures'),
])
def test_bad_config_json_gives_one_line(cls, cfg, match):
    with pytest.raises(ValueError, match=match) as err:
        H.hf_import(cls, cfg)
    assert '\n' not in str(err.value)
    with pytest.raises(ValueError, match='needs the config.json'):
        H.hf_import(cls, None)


def test_import_picks_the_registered_model_of_the_config():
    name, overrides, method = H.hf_import('SwinForMaskedImageModeling', dict(
        model_type='swin', image_size=192, embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32],
        window_size=6, drop_path_rate=0.0))
    assert (name, method) == ('simmim_swin_base_patch4_window6_192', {'encoder_stride': 32})
    assert overrides == {}
    name, overrides, method = H.hf_import('ViTMAEForPreTraining', VIT_MAE)
    assert name.startswith('mae_vit_') and method == {'mask_ratio': 0.75, 'norm_pix_loss': True}
    from jaxmim.registry import create_model
    jm = nnx.eval_shape(lambda: create_model(name, **overrides, **method))
    assert official.official_shapes(jm, 'hf_vit_mae_for_pretraining') == official.official_shapes(
        nnx.eval_shape(lambda: official.build('hf_vit_mae_for_pretraining', **VIT_MAE)), 'hf_vit_mae_for_pretraining')
