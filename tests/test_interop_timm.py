"""jaxmim <-> timm layouts (``convert/timm_layouts.py``) against the real timm 1.0.31 (``interop.timm()``).

For Swin and ViT, small configurations made from the registered timm names with
``timm.create_model(name, **kwargs)`` overrides, in both directions:

* jaxmim -> timm: a perturbed jaxmim model's export loads strictly into timm (same keys in timm's
  order, same shapes) and timm's eval forward equals jaxmim's to 1e-5 relative;
* timm -> jaxmim: a perturbed timm model's ``state_dict`` loads strictly into the jaxmim model,
  outputs equal, and exporting it again gives back timm's tensors bit for bit;
* pre-training runs: an MAE encoder as timm's headless class-token ViT (the layout of timm's own
  ``vit_*.mae`` weights) and a SimMIM Swin encoder as the headless timm Swin, compared on features;
* every registered name at full size: the jaxmim architecture of the name (traced with
  ``nnx.eval_shape``) has exactly timm's keys and shapes (timm built on the meta device), and one
  full-size model (Swin-T) loads strictly both ways with every tensor unchanged;
* the command lines: ``convert.export --format=timm`` of a run loads in timm; one-line errors
  for an unknown name, a mismatched architecture (keys and shapes listed) and NaN;
  ``convert.import --format=timm`` writes a run that exports back to the same bytes.

The maximal relative differences measured are printed (``-s`` shows them) and kept in
:data:`MEASURED`.
"""

import functools
import importlib
import json
import os
import re
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

import interop  # noqa: E402
from helpers import assert_close, perturb  # noqa: E402

from convert import official  # noqa: E402
from convert import timm_layouts as TL  # noqa: E402
from jaxmim import config as config_lib  # noqa: E402
from jaxmim import rundir  # noqa: E402

export_cli = importlib.import_module('convert.export')
import_cli = importlib.import_module('convert.import')

MEASURED = {}
"""``{(case, direction): max relative difference}`` of the output comparisons."""

SWIN = 'swin_tiny_patch4_window7_224'
VIT = 'vit_base_patch16_224'
CASES = {
    # name, timm.create_model kwargs (small but real: shifted windows, patch merging, both heads)
    'swin_2stage_head': (SWIN, dict(img_size=32, window_size=4, embed_dim=16, depths=(2, 2), num_heads=(1, 2),
                                    num_classes=10)),
    'swin_3stage_headless': ('swin_base_patch4_window12_384',
                             dict(img_size=32, window_size=2, embed_dim=8, depths=(2, 2, 2), num_heads=(1, 2, 2),
                                  num_classes=0)),
    'vit_token': (VIT, dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10)),
    'vit_avg': (VIT, dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10,
                          global_pool='avg')),
    'vit_headless': ('vit_huge_patch14_224', dict(img_size=28, patch_size=7, embed_dim=24, depth=2, num_heads=3,
                                                  num_classes=0)),
}


@pytest.fixture(scope='module')
def timm():
    return interop.timm()


def source_of(name):
    return official.library_source('timm', name)


def abstract_model(name, kw):
    """The jaxmim model of timm ``create_model(name, **kw)``, traced with ``nnx.eval_shape`` (no
    initialisation: loading a state_dict or :func:`jax_model` fills it)."""
    src = source_of(name)
    return nnx.eval_shape(lambda: src.build(**src.library_kwargs_fn(name, **kw)))


def jax_model(name, kw, seed=0):
    """That model with random weights: N(0, 0.05^2), plus 1 for LayerNorm scales (NumPy draws, so
    no XLA compilation per shape as ``nnx.Rngs`` initialisation would need)."""
    model = abstract_model(name, kw)
    rng = np.random.RandomState(seed)
    state = nnx.state(model)
    flat = {path: jnp.asarray(0.05 * rng.randn(*v.shape) + (path[-1] == 'scale'), v.dtype)
            for path, v in nnx.to_flat_state(state)}
    nnx.replace_by_pure_dict(state, _unflatten(flat))
    nnx.update(model, state)
    return model


def _unflatten(flat):
    out = {}
    for path, value in flat.items():
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = value
    return out


def images(kw, batch=2, seed=0):
    size = kw.get('img_size', 224)
    return np.random.RandomState(seed).randn(batch, 3, size, size).astype(np.float32)


def compare(model, tmodel, x, case, direction):
    with torch.no_grad():
        ref = tmodel(torch.from_numpy(x)).numpy()
    out = np.asarray(model(jnp.asarray(x.transpose(0, 2, 3, 1)), train=False))
    assert_close(out, ref, rel=1e-5)
    MEASURED[(case, direction)] = float(np.abs(out - ref).max() / np.abs(ref).max())
    print(f'{case} {direction}: max relative difference {MEASURED[(case, direction)]:.2e}')


def to_torch(sd):
    return {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}


# ------------------------------------------------------------------------------------------------
# Small models, both directions
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('case', sorted(CASES))
def test_jaxmim_to_timm_strict_and_equal(timm, case):
    name, kw = CASES[case]
    model = jax_model(name, kw)
    src = source_of(name)
    sd = official.state_dict(model, src)
    tmodel = timm.create_model(name, pretrained=False, **kw).eval()
    assert list(sd) == list(tmodel.state_dict())            # timm's keys, in timm's order
    tmodel.load_state_dict(to_torch(sd), strict=True)
    compare(model, tmodel, images(kw), case, 'jaxmim -> timm')
    # the creation arguments read from the run are the free ones that differ from the name's;
    # the others are what --timm_kwargs names
    create = official.library_create_kwargs(model, src, name)
    named = {'num_classes': 1000, 'in_chans': 3, 'global_pool': 'token', **{**TL.TIMM_SWIN, **TL.TIMM_VIT}[name]}
    assert create == {k: v for k, v in kw.items() if k in TL.FREE_KWARGS[src.name] and v != named.get(k)}
    rest = {k: v for k, v in kw.items() if k not in create}
    assert official.architecture_mismatches(model, src, name, rest) == []


@pytest.mark.parametrize('case', sorted(CASES))
def test_timm_to_jaxmim_equal_and_bit_exact_round_trip(timm, case):
    name, kw = CASES[case]
    tmodel = perturb(timm.create_model(name, pretrained=False, **kw), seed=1)
    tsd = tmodel.state_dict()
    src = source_of(name)
    model = abstract_model(name, kw)
    official.load_state_dict(model, src, tsd)                # strict: raises on any missing/extra key
    compare(model, tmodel, images(kw, seed=1), case, 'timm -> jaxmim')
    back = official.state_dict(model, src)
    assert list(back) == list(tsd)
    for k, v in tsd.items():
        assert back[k].dtype == np.float32 and back[k].tobytes() == v.numpy().tobytes(), k


def test_mae_encoder_exports_as_timm_headless_vit(timm):
    """An MAE pre-training model is exported as its encoder: timm's headless class-token ViT (the
    layout of ``vit_*_patch*_224.mae``). With mask ratio 0 and identity noise the MAE encoder
    sees every patch in raster order, so its latent equals timm's ``forward_features``."""
    mae = official.build('mae_vit', img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                         decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, mask_ratio=0.0,
                         norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6))
    src = official.library_source('timm', VIT, mae)
    assert src.name == 'timm_vit'
    omitted = {'.'.join(map(str, e.path)) for e in src.omitted(mae)}
    assert 'mask_token' in omitted and 'decoder_pred.kernel' in omitted and not any(k.startswith('blocks') for k in omitted)
    create = official.library_create_kwargs(mae, src, VIT)
    assert create == {'img_size': 32, 'num_classes': 0}
    extra = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2)
    assert official.architecture_mismatches(mae, src, VIT, extra) == []
    tmodel = timm.create_model(VIT, pretrained=False, **create, **extra).eval()
    tmodel.load_state_dict(to_torch(official.state_dict(mae, src)), strict=True)
    x = images(create)
    with torch.no_grad():
        ref = tmodel.forward_features(torch.from_numpy(x)).numpy()
    noise = jnp.broadcast_to(jnp.arange(16, dtype=jnp.float32), (2, 16))
    latent, _, _ = mae.forward_encoder(jnp.asarray(x.transpose(0, 2, 3, 1)), noise)
    assert_close(np.asarray(latent), ref)
    MEASURED[('mae_encoder', 'jaxmim -> timm')] = float(np.abs(np.asarray(latent) - ref).max() / np.abs(ref).max())
    print(f"mae encoder jaxmim -> timm: max relative difference {MEASURED[('mae_encoder', 'jaxmim -> timm')]:.2e}")


def test_ummae_vit_encoder_exports_as_timm_headless_vit(timm):
    """UM-MAE's ViT pre-training model: its encoder (its ``vis_mask_token`` and decoder omitted)
    loads strictly into the same headless timm ViT, tensor for tensor."""
    from jaxmim.methods.ummae.vit import MaskedAutoencoderViTUM
    um = MaskedAutoencoderViTUM(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16,
                                decoder_depth=1, decoder_num_heads=2, vis_mask_ratio=0.25, rngs=nnx.Rngs(0))
    src = official.library_source('timm', VIT, um)
    assert {'.'.join(map(str, e.path)) for e in src.omitted(um)} >= {'vis_mask_token', 'mask_token', 'decoder_embed.kernel'}
    create = official.library_create_kwargs(um, src, VIT)
    tmodel = timm.create_model(VIT, pretrained=False, patch_size=8, embed_dim=32, depth=2, num_heads=2, **create)
    sd = official.state_dict(um, src)
    tmodel.load_state_dict(to_torch(sd), strict=True)
    np.testing.assert_array_equal(tmodel.blocks[1].attn.qkv.weight.detach().numpy(),
                                  np.asarray(um.blocks[1].attn.qkv.kernel[...]).T)


def test_simmim_encoder_exports_as_timm_headless_swin(timm):
    """A SimMIM Swin pre-training model exports its encoder as the headless timm Swin; with an
    all-visible mask its feature map equals timm's ``forward_features`` (B, H, W, C)."""
    enc = dict(img_size=32, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[1, 2], window_size=4)
    simmim = official.build('simmim_swin_pretrain', encoder=enc, encoder_stride=8)
    src = official.library_source('timm', SWIN, simmim)
    omitted = {'.'.join(map(str, e.path)) for e in src.omitted(simmim)}
    assert omitted == {'encoder.mask_token', 'decoder.kernel', 'decoder.bias'}
    create = official.library_create_kwargs(simmim, src, SWIN)
    assert create == {'img_size': 32, 'num_classes': 0, 'window_size': 4}
    extra = dict(embed_dim=16, depths=(2, 2), num_heads=(1, 2))
    tmodel = timm.create_model(SWIN, pretrained=False, **create, **extra).eval()
    tmodel.load_state_dict(to_torch(official.state_dict(simmim, src)), strict=True)
    x = images(create)
    with torch.no_grad():
        ref = tmodel.forward_features(torch.from_numpy(x)).numpy()
    out = np.asarray(simmim.encoder(jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.zeros((2, 8, 8))))
    assert_close(out, ref)
    MEASURED[('simmim_encoder', 'jaxmim -> timm')] = float(np.abs(out - ref).max() / np.abs(ref).max())
    print(f"simmim encoder jaxmim -> timm: max relative difference {MEASURED[('simmim_encoder', 'jaxmim -> timm')]:.2e}")


# ------------------------------------------------------------------------------------------------
# Full-size names
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', sorted(TL.TIMM_SWIN) + sorted(TL.TIMM_VIT))
def test_every_name_has_timm_keys_and_shapes(timm, name):
    src = source_of(name)
    with torch.device('meta'):
        tmodel = timm.create_model(name, pretrained=False)
    want = {k: tuple(v.shape) for k, v in tmodel.state_dict().items()}
    ref = nnx.eval_shape(lambda: src.build(**src.library_kwargs_fn(name)))
    have = official.official_shapes(ref, src)
    assert list(have) == list(want) and have == want


def test_full_size_swin_tiny_strict_load_both_ways(timm):
    """Swin-T at full size: timm's tensors load strictly into the jaxmim model of the name (traced
    with ``nnx.eval_shape``; the load fills it) and its export loads strictly back into timm with
    every tensor equal."""
    tmodel = perturb(timm.create_model(SWIN, pretrained=False), seed=2)
    src = source_of(SWIN)
    model = abstract_model(SWIN, {})
    official.load_state_dict(model, src, tmodel.state_dict())
    fresh = timm.create_model(SWIN, pretrained=False)
    fresh.load_state_dict(to_torch(official.state_dict(model, src)), strict=True)
    for (k, a), b in zip(tmodel.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k


def test_unsupported_timm_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="global_pool='max'"):
        TL.build_timm_vit(rngs=nnx.Rngs(0), global_pool='max')
    with pytest.raises(ValueError, match='reg_tokens'):
        TL.vit_jaxmim_kwargs(reg_tokens=4)
    with pytest.raises(TypeError, match='unexpected keyword'):
        TL.swin_jaxmim_kwargs(ape=True)
    with pytest.raises(ValueError, match='one square window'):
        TL.swin_jaxmim_kwargs(window_size=[7, 7, 14, 7])
    with pytest.raises(KeyError, match='PVT v2'):
        official.library_source('timm', 'pvt_v2_b0')


# ------------------------------------------------------------------------------------------------
# Command lines
# ------------------------------------------------------------------------------------------------

SWIN_RUN = dict(embed_dim=16, depths=[2, 2], num_heads=[1, 2])
SWIN_RUN_TIMM = dict(embed_dim=16, depths=[2, 2], num_heads=[1, 2])   # --timm_kwargs of that run


def run_cli(module, *args):
    out = subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
    return out.returncode, out.stdout, out.stderr


@pytest.fixture(scope='module')
def swin_run(tmp_path_factory):
    """A fine-tuning run of the Fashion-MNIST demo Swin (``swin_demo_patch4_window4_32``, made
    smaller), perturbed weights, checkpoint step 3."""
    workdir = tmp_path_factory.mktemp('swin_run')
    config = config_lib.finetune_defaults()
    config.model.name = 'swin_demo_patch4_window4_32'
    config.model.overrides.update(SWIN_RUN)
    model = jax_perturbed(rundir.build_model(config))
    rundir.save_model_checkpoint(model, str(workdir), config, step=3)
    return workdir, model


def jax_perturbed(model, seed=3):
    """Adds N(0, 0.05^2) to every variable of a jaxmim model in place (NumPy noise: no XLA
    compilation per shape)."""
    state = nnx.state(model)
    pure = nnx.to_pure_dict(state)
    leaves, tree = jax.tree.flatten(pure)
    rng = np.random.RandomState(seed)
    leaves = [x + jnp.asarray(0.05 * rng.randn(*x.shape), x.dtype) for x in leaves]
    nnx.replace_by_pure_dict(state, jax.tree.unflatten(tree, leaves))
    nnx.update(model, state)
    return model


def test_export_cli_timm_loads_in_timm(timm, swin_run, tmp_path):
    workdir, model = swin_run
    out = tmp_path / 'swin.safetensors'
    rc, stdout, stderr = run_cli('convert.export', f'--workdir={workdir}', '--format=timm', f'--timm_model={SWIN}',
                                 f'--timm_kwargs={json.dumps(SWIN_RUN_TIMM)}', f'--output={out}')
    assert rc == 0, stderr[-3000:]
    lines = stdout.strip().splitlines()
    assert lines[-1].startswith(f"load it with: model = timm.create_model('{SWIN}', pretrained=False, img_size=32, "
                                "num_classes=10, window_size=4, embed_dim=16, depths=(2, 2), num_heads=(1, 2))")
    assert re.search(r'^layers\.1\.downsample\.reduction\.weight +<- layers\.0\.downsample\.reduction\.kernel '
                     r'\[Param, linear\] +\(32, 64\) float32$', stdout, re.M)
    from safetensors import safe_open
    from safetensors.torch import load_file
    with safe_open(str(out), 'pt') as fh:
        meta = fh.metadata()
    assert meta['library'] == 'timm' and meta['library_model'] == SWIN and meta['jaxmim_step'] == '3'
    tmodel = timm.create_model(SWIN, pretrained=False, **json.loads(meta['library_kwargs'])).eval()
    tmodel.load_state_dict(load_file(str(out)), strict=True)
    compare(model, tmodel, images({'img_size': 32}), 'swin demo run (CLI)', 'jaxmim -> timm')

    # import it back (kwargs from the file's metadata): a fine-tuning run that exports to the same bytes
    rc, stdout, stderr = run_cli('convert.import', '--format=timm', f'--timm_model={SWIN}', f'--checkpoint={out}',
                                 f'--workdir={tmp_path / "imported"}')
    assert rc == 0, stderr[-3000:]
    assert re.search(r'^layers\.1\.downsample\.norm\.weight +-> layers\.0\.downsample\.norm\.scale \[Param\]',
                     stdout, re.M)
    assert stdout.strip().splitlines()[-1] == f'fine-tune from it with --config.pretrained.workdir={tmp_path / "imported"}'
    cfg = rundir.load_run_config(str(tmp_path / 'imported'))
    assert cfg.mode == 'finetune' and cfg.model.name == SWIN
    export_cli.export_run(str(tmp_path / 'imported'), None, str(tmp_path / 'again.safetensors'), format='timm',
                          library_model=SWIN, library_kwargs=SWIN_RUN_TIMM, verbose=False)
    a, b = load_file(str(out)), load_file(str(tmp_path / 'again.safetensors'))
    assert list(a) == list(b) and all(a[k].numpy().tobytes() == b[k].numpy().tobytes() for k in a)


def test_export_cli_unknown_name_is_one_line(swin_run, tmp_path):
    workdir, _ = swin_run
    out = tmp_path / 'x.safetensors'
    rc, stdout, stderr = run_cli('convert.export', f'--workdir={workdir}', '--format=timm',
                                 '--timm_model=swin_tiny_patch4_window8_256', f'--output={out}')
    assert rc == 1 and not out.exists() and stdout == ''
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --timm_model: unknown timm model 'swin_tiny_patch4_window8_256'; "
                                                   "accepted: ['swin_base_patch4_window12_384'")
    assert 'PVT v2' in lines[0]


def test_export_mismatched_architecture_lists_every_key(swin_run, tmp_path):
    workdir, _ = swin_run
    out = tmp_path / 'x.safetensors'
    with pytest.raises(ValueError) as err:
        export_cli.export_run(str(workdir), None, str(out), format='timm', library_model=SWIN, verbose=False)
    msg = str(err.value)
    assert '\n' not in msg and not out.exists()
    assert msg.startswith(f"the run's SwinTransformer is not timm '{SWIN}'")
    assert 'layers.2.blocks.0.norm1.weight: missing from the run' in msg
    assert f'layers.1.downsample.reduction.weight: run (32, 64) vs {SWIN} (192, 384)' in msg
    assert f'patch_embed.proj.weight: run (16, 3, 4, 4) vs {SWIN} (96, 3, 4, 4)' in msg
    # other one-line refusals before anything is written
    with pytest.raises(ValueError, match='--format=timm needs --timm_model'):
        export_cli.export_run(str(workdir), None, str(out), format='timm', verbose=False)
    with pytest.raises(ValueError, match='--source does not apply'):
        export_cli.export_run(str(workdir), 'simmim_swin', str(out), format='timm', library_model=SWIN, verbose=False)
    with pytest.raises(TypeError, match='timm ViT holds'):
        export_cli.export_run(str(workdir), None, str(out), format='timm', library_model=VIT, verbose=False)
    assert not out.exists()


def test_export_refuses_nonfinite_unless_allowed(tmp_path):
    config = config_lib.finetune_defaults()
    config.model.name = 'swin_demo_patch4_window4_32'
    config.model.overrides.update(SWIN_RUN)
    model = rundir.build_model(config)
    model.norm.scale[...] = model.norm.scale[...].at[0].set(jnp.nan)
    rundir.save_model_checkpoint(model, str(tmp_path / 'nan'), config, step=1)
    out = tmp_path / 'nan.safetensors'
    with pytest.raises(ValueError, match=r"non-finite .* \['norm.weight'\].*--allow_nonfinite"):
        export_cli.export_run(str(tmp_path / 'nan'), None, str(out), format='timm', library_model=SWIN,
                              library_kwargs=SWIN_RUN_TIMM, verbose=False)
    assert not out.exists()
    export_cli.export_run(str(tmp_path / 'nan'), None, str(out), format='timm', library_model=SWIN,
                          library_kwargs=SWIN_RUN_TIMM, allow_nonfinite=True, verbose=False)
    assert out.exists()


def test_import_timm_vit_file_fine_tunes(timm, tmp_path):
    """A timm ViT file (headless, class token: how timm stores MAE encoders) imports as a jaxmim
    run that ``config.pretrained.workdir`` loads into the registered global-pool classifier."""
    kw = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0)
    tmodel = perturb(timm.create_model(VIT, pretrained=False, **kw), seed=4)
    path = tmp_path / 'vit.pth'
    torch.save(tmodel.state_dict(), path)
    report = import_cli.import_checkpoint(str(path), None, str(tmp_path / 'imp'), None, format='timm',
                                          library_model=VIT, library_kwargs=kw, verbose=False)
    assert report['model'] == VIT and report['mode'] == 'finetune' and report['source'] == 'timm_vit'
    assert report['model_overrides']['global_pool'] is False and report['model_overrides']['num_classes'] == 0
    ft = config_lib.finetune_defaults()
    ft.model.name = VIT
    ft.model.overrides.update(dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10))
    clf = rundir.build_model(ft)
    loaded = rundir.load_pretrained(clf, str(tmp_path / 'imp'))
    assert set(loaded['fresh']) == {'fc_norm.scale', 'fc_norm.bias', 'head.kernel', 'head.bias'}
    assert loaded['unused'] == ['norm.bias', 'norm.scale']
    np.testing.assert_array_equal(np.asarray(clf.blocks[1].mlp.fc2.kernel[...]),
                                  tmodel.blocks[1].mlp.fc2.weight.detach().numpy().T)
