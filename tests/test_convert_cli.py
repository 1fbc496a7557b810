"""Tests for the conversion command-line tools ``python -m convert.export`` / ``convert.import``.

Tiny runs are written with ``jaxmim.rundir.save_model_checkpoint`` (weights perturbed first, so no
tensor is trivially 0 or 1), exported, loaded strictly into the PyTorch twins of ``convert.vit`` /
``convert.swin`` (outputs compared with the JAX model) and imported back (variables compared
bit-exactly). The ViT classifier goes through the real command lines (subprocesses); the MAE and
Swin runs call the functions behind them in-process to keep the file fast.
"""

import argparse
import functools
import importlib
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from convert import _cli, official  # noqa: E402
from helpers import assert_close, variables_of  # noqa: E402
from convert import swin as S  # noqa: E402
from convert import vit as V  # noqa: E402
from jaxmim import config as config_lib  # noqa: E402
from jaxmim import rundir

export_cli = importlib.import_module('convert.export')
import_cli = importlib.import_module('convert.import')

LN6 = functools.partial(torch.nn.LayerNorm, eps=1e-6)
VIT_OVERRIDES = dict(depth=2, embed_dim=32, num_heads=2)
# vit_demo_patch4_32 with VIT_OVERRIDES as a models_vit constructor call
VIT_TWIN = dict(global_pool=True, img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=10,
                qkv_bias=True, norm_layer=LN6)
MAE_OVERRIDES = dict(depth=1, embed_dim=32, num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
MAE_TWIN = dict(img_size=32, patch_size=4, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16, decoder_depth=1,
                decoder_num_heads=2, norm_layer=LN6, norm_pix_loss=True)
SWIN_OVERRIDES = dict(embed_dim=16, depths=[2, 2], num_heads=[1, 2])
SWIN_TWIN = dict(img_size=32, patch_size=4, embed_dim=16, depths=(2, 2), num_heads=(1, 2), window_size=4,
                 num_classes=10)


def perturb(model, seed):
    """Adds N(0, 0.05²) to every variable (Params and Buffers) in place."""
    state = nnx.state(model)
    pure = nnx.to_pure_dict(state)
    leaves, tree = jax.tree.flatten(pure)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    nnx.replace_by_pure_dict(state, jax.tree.unflatten(tree, leaves))
    nnx.update(model, state)
    return model


def make_run(workdir, config, seed):
    model = perturb(rundir.build_model(config), seed)
    rundir.save_model_checkpoint(model, str(workdir), config, step=3)
    return model


def run_cli(module, *args):
    out = subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
    return out.returncode, out.stdout, out.stderr


@pytest.fixture(scope='module')
def vit_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp('vit_run')
    config = config_lib.finetune_defaults()
    config.model.name = 'vit_demo_patch4_32'
    config.model.overrides.update(VIT_OVERRIDES)
    model = make_run(workdir, config, seed=0)
    return workdir, model


def _twin_logits(twin, model, seed=0):
    x = np.random.RandomState(seed).randn(2, 3, 32, 32).astype(np.float32)
    with torch.no_grad():
        ref = twin(torch.from_numpy(x)).numpy()
    return model(jnp.asarray(x.transpose(0, 2, 3, 1)), train=False), ref


# ------------------------------------------------------------------------------------------------
# The command lines (subprocesses), ViT classifier run
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
def test_export_cli_loads_strictly_into_the_twin(vit_run, tmp_path, suffix):
    workdir, model = vit_run
    output = tmp_path / f'model{suffix}'
    rc, stdout, stderr = run_cli('convert.export', f'--workdir={workdir}', '--source=mae_vit_cls',
                                 f'--output={output}')
    assert rc == 0, stderr[-3000:]
    lines = stdout.strip().splitlines()
    twin = V.VisionTransformer(**VIT_TWIN).eval()
    keys = list(twin.state_dict())
    assert len(lines) == len(keys) + 1
    for line, key in zip(lines, keys):
        assert line.split()[0] == key and ' <- ' in line
    assert lines[0].split()[2] == 'cls_token' and '(1, 1, 32)' in lines[0]
    assert 'blocks.0.attn.qkv.kernel [Param, linear]' in stdout and '(96, 32)' in stdout
    assert lines[-1].startswith(f'exported {len(keys)} tensors') and 'step 3' in lines[-1]
    if suffix == '.pth':
        sd = torch.load(output, weights_only=True)
        assert list(sd) == keys   # official order kept
    else:
        from safetensors import safe_open
        from safetensors.torch import load_file
        sd = load_file(output)
        with safe_open(str(output), 'pt') as f:
            assert f.metadata()['source'] == 'mae_vit_cls' and f.metadata()['jaxmim_step'] == '3'
    twin.load_state_dict(sd, strict=True)
    out, ref = _twin_logits(twin, model)
    assert_close(out, ref)


def test_import_cli_round_trip_is_bit_exact(vit_run, tmp_path):
    workdir, model = vit_run
    path = tmp_path / 'official.safetensors'
    _cli.write_checkpoint(official.state_dict(model, 'mae_vit_cls'), str(path))
    target = tmp_path / 'imported'
    rc, stdout, stderr = run_cli('convert.import', f'--checkpoint={path}', '--source=mae_vit_cls',
                                 f'--workdir={target}', '--model=vit_demo_patch4_32',
                                 '--model_overrides={"depth": 2, "embed_dim": 32, "num_heads": 2}')
    assert rc == 0, stderr[-3000:]
    assert 'cls_token' in stdout and ' -> ' in stdout and f'--config.pretrained.workdir={target}' in stdout
    config = rundir.load_run_config(str(target))
    assert config.mode == 'finetune' and config.model.name == 'vit_demo_patch4_32'
    assert dict(config.model.overrides) == VIT_OVERRIDES
    fresh = rundir.build_model(config)
    assert rundir.restore_model(fresh, str(target)) == 0
    a, b = variables_of(model), variables_of(fresh)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k


def test_cli_errors_are_one_line(vit_run, tmp_path):
    workdir, _ = vit_run
    rc, _, stderr = run_cli('convert.export', f'--workdir={workdir}', '--source=mae_vit', f'--output={tmp_path}/x.pth')
    assert rc == 1 and stderr.strip().splitlines()[-1] == ('error: source mae_vit expects a jaxmim '
                                                           'MaskedAutoencoderViT, got VisionTransformer')


# ------------------------------------------------------------------------------------------------
# The functions behind them: MAE pre-training run (Buffers in model_state), Swin classifier
# ------------------------------------------------------------------------------------------------

def test_mae_run_export_and_import(tmp_path):
    config = config_lib.pretrain_defaults('mae')
    config.method.norm_pix_loss = True
    config.model.name = 'mae_vit_demo_patch4_32_dec128d2b'
    config.model.overrides.update(MAE_OVERRIDES)
    model = make_run(tmp_path / 'pre', config, seed=1)
    summary = export_cli.export_run(str(tmp_path / 'pre'), 'mae_vit', str(tmp_path / 'mae.pth'), verbose=False)
    assert summary['step'] == 3 and summary['keys'][:4] == ['cls_token', 'pos_embed', 'mask_token', 'decoder_pos_embed']
    twin = V.MaskedAutoencoderViT(**MAE_TWIN).eval()
    twin.load_state_dict(torch.load(tmp_path / 'mae.pth', weights_only=True), strict=True)
    x = np.random.RandomState(2).randn(2, 3, 32, 32).astype(np.float32)
    noise = np.random.RandomState(3).rand(2, 64).astype(np.float32)
    with torch.no_grad():
        ref = twin(torch.from_numpy(x), noise=torch.from_numpy(noise))
    out = model(jnp.asarray(x.transpose(0, 2, 3, 1)), noise=jnp.asarray(noise))
    assert_close(out['pred'], ref['pred'].numpy())
    assert_close(out['loss'], ref['loss'].numpy())

    report = import_cli.import_checkpoint(str(tmp_path / 'mae.pth'), 'mae_vit', str(tmp_path / 'imp'),
                                          'mae_vit_demo_patch4_32_dec128d2b', MAE_OVERRIDES,
                                          {'norm_pix_loss': True}, verbose=False)
    assert report['mode'] == 'pretrain' and report['ignored'] == []
    config2 = rundir.load_run_config(str(tmp_path / 'imp'))
    assert config2.method.name == 'mae' and config2.method.norm_pix_loss is True
    fresh = rundir.build_model(config2)
    rundir.restore_model(fresh, str(tmp_path / 'imp'))
    a, b = variables_of(model), variables_of(fresh)
    assert a.keys() == b.keys() and ('pos_embed',) in a
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k


def test_swin_run_export_and_import(tmp_path):
    config = config_lib.finetune_defaults()
    config.model.name = 'swin_demo_patch4_window4_32'
    config.model.overrides.update(SWIN_OVERRIDES)
    model = make_run(tmp_path / 'swin', config, seed=4)
    export_cli.export_run(str(tmp_path / 'swin'), 'simmim_swin', str(tmp_path / 'swin.safetensors'), verbose=False)
    from safetensors.torch import load_file
    sd = load_file(tmp_path / 'swin.safetensors')
    assert sd['layers.0.blocks.0.attn.relative_position_index'].dtype == torch.int64
    twin = S.SwinTransformer(**SWIN_TWIN).eval()
    twin.load_state_dict(sd, strict=True)
    out, ref = _twin_logits(twin, model, seed=5)
    assert_close(out, ref)

    report = import_cli.import_checkpoint(str(tmp_path / 'swin.safetensors'), 'simmim_swin', str(tmp_path / 'imp'),
                                          'swin_demo_patch4_window4_32', SWIN_OVERRIDES, verbose=False)
    assert 'layers.0.blocks.1.attn_mask' in report['ignored']   # checked, never loaded
    fresh = rundir.build_model(rundir.load_run_config(str(tmp_path / 'imp')))
    rundir.restore_model(fresh, str(tmp_path / 'imp'))
    a, b = variables_of(model), variables_of(fresh)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k


def test_import_refuses_pickles_unless_allowed_and_checks_arguments(vit_run, tmp_path):
    _, model = vit_run
    path = tmp_path / 'with_args.pth'
    sd = {k: torch.from_numpy(v) for k, v in official.state_dict(model, 'mae_vit_cls').items()}
    torch.save({'model': sd, 'args': argparse.Namespace(lr=1e-3), 'epoch': 99}, path)   # like MAE's checkpoints
    with pytest.raises(ValueError, match='--allow_pickle'):
        _cli.read_checkpoint(str(path))
    raw = _cli.read_checkpoint(str(path), allow_pickle=True)
    assert list(official.unwrap_state_dict(raw)) == list(sd)
    with pytest.raises(ValueError, match='classifier'):
        import_cli.run_config('mae_vit_cls', 'vit_demo_patch4_32', method_overrides={'mask_ratio': 0.5})
    with pytest.raises(ValueError, match='mask_ratio'):
        import_cli.run_config('mae_vit', 'mae_vit_demo_patch4_32_dec128d2b', method_overrides={'mask_ration': 0.5})
    with pytest.raises(ValueError, match='format'):
        _cli.file_format('model.npz')
    with pytest.raises(ValueError) as err:   # strict: a depth-2 checkpoint into a depth-3 model names the missing keys
        import_cli.import_checkpoint(str(path), 'mae_vit_cls', str(tmp_path / 'bad'), 'vit_demo_patch4_32',
                                     dict(VIT_OVERRIDES, depth=3), allow_pickle=True, verbose=False)
    assert 'blocks.2.attn.qkv.weight' in str(err.value) and not (tmp_path / 'bad').exists()


# ------------------------------------------------------------------------------------------------
# --format: the flags shared by both tools (convert._cli.resolve_format)
# ------------------------------------------------------------------------------------------------

class _Flags:
    """The parsed absl flags ``resolve_format`` reads: ``f.name`` and ``f[name].value``."""

    def __init__(self, **values):
        self.__dict__.update(dict(format='official', source=None, timm_model=None, hf_model=None, timm_kwargs=None),
                             **values)

    def __getitem__(self, name):
        return argparse.Namespace(value=getattr(self, name))


def test_format_flags_pick_one_layout_or_fail_in_one_line():
    assert _cli.resolve_format(_Flags(source='mae_vit')) == dict(format='official', source='mae_vit',
                                                                 library_model=None, library_kwargs=None)
    assert _cli.resolve_format(_Flags(format='timm', timm_model='m', timm_kwargs='{"embed_dim": 64}')) == dict(
        format='timm', source=None, library_model='m', library_kwargs={'embed_dim': 64})
    assert _cli.resolve_format(_Flags(format='hf', hf_model='C'))['library_model'] == 'C'
    for flags_, message in ((_Flags(), '--format=official needs --source'),
                            (_Flags(format='timm'), '--format=timm needs --timm_model'),
                            (_Flags(format='hf', hf_model='C', source='s'), '--source does not apply to --format=hf'),
                            (_Flags(source='s', timm_model='m'), '--timm_model does not apply to --format=official'),
                            (_Flags(format='hf', hf_model='C', timm_kwargs='{}'), '--timm_kwargs does not apply'),
                            (_Flags(format='timm', timm_model='m', timm_kwargs='[1]'), 'must be a JSON object'),
                            (_Flags(format='timm', timm_model='m', timm_kwargs='{'), 'must be a JSON object')):
        with pytest.raises(ValueError, match=message) as err:
            _cli.resolve_format(flags_)
        assert '\n' not in str(err.value)


def test_import_cli_without_source_is_one_line(tmp_path):
    rc, stdout, stderr = run_cli('convert.import', f'--checkpoint={tmp_path}/x.pth', f'--workdir={tmp_path}/w',
                                 '--model=vit_demo_patch4_32')
    assert rc == 1 and stderr.strip().splitlines()[-1] == 'error: --format=official needs --source'
    assert 'Traceback' not in stderr
    assert not (tmp_path / 'w').exists()
