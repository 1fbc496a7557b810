"""Logical-axis rules, the mesh from the config, and the layout of every family's parameters.

Expectations are written out by hand: which dimension of which weight a rule splits, on which
mesh axis, and the bytes a device holds.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxmim import mesh as mesh_lib
from jaxmim import rundir, sharding, steps
from families import FAMILY_DEMOS, cpu_mesh
from jaxmim.config import check_config, finetune_defaults, load_config_file
from jaxmim.tree_util import flatten_names

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = jax.devices('cpu')


def mesh_of(data, fsdp, model):
    return cpu_mesh((data, fsdp, model))


# ------------------------------------------------------------------------------------------
# resolve(): rules -> PartitionSpec.
# ------------------------------------------------------------------------------------------

FSDP = sharding.PRESETS['fsdp'] + (('batch', ('data', 'fsdp')),)
TP = sharding.PRESETS['fsdp_tp']


@pytest.mark.parametrize('names,shape,rules,mesh,expected', [
    # fc1 (embed, mlp): split along the wider mlp dimension
    (('embed', 'mlp'), (768, 3072), FSDP, (1, 8, 1), P(None, 'fsdp')),
    # fc2 (mlp, embed)
    (('mlp', 'embed'), (3072, 768), FSDP, (1, 8, 1), P('fsdp')),
    # qkv (embed, heads)
    (('embed', 'heads'), (768, 2304), FSDP, (1, 8, 1), P(None, 'fsdp')),
    # a head with 10 classes on 8 devices: classes does not divide, embed does
    (('embed', 'classes'), (96, 10), FSDP, (1, 8, 1), P('fsdp')),
    # nothing divides (3 x 5 on 8): replicated
    (('embed', 'classes'), (3, 5), FSDP, (1, 8, 1), P()),
    # norms, biases and relative-position tables stay replicated
    (('norm',), (4096,), FSDP, (1, 8, 1), P()),
    (('bias',), (4096,), FSDP, (1, 8, 1), P()),
    (('relpos', None), (169, 32), FSDP, (1, 8, 1), P()),
    # conv kernel (kh, kw, in, out): out channels first, then in
    ((None, None, 'conv_in', 'conv_out'), (4, 4, 3, 96), FSDP, (1, 8, 1), P(None, None, None, 'fsdp')),
    ((None, None, 'conv_in', 'conv_out'), (1, 1, 96, 12), FSDP, (1, 8, 1), P(None, None, 'fsdp')),
    # Megatron: fc1 columns over model, rows over fsdp; fc2 the other way round
    (('embed', 'mlp'), (768, 3072), TP, (1, 4, 2), P('fsdp', 'model')),
    (('mlp', 'embed'), (3072, 768), TP, (1, 4, 2), P('model', 'fsdp')),
    (('heads', 'embed'), (768, 768), TP, (1, 4, 2), P('model', 'fsdp')),
    # dp: nothing sharded
    (('embed', 'mlp'), (768, 3072), sharding.PRESETS['dp'], (8, 1, 1), P()),
    # no names: replicated
    (None, (7, 9), FSDP, (1, 8, 1), P()),
    # the batch of activations over ('data', 'fsdp')
    (('batch', None, None), (16, 49, 96), FSDP, (2, 4, 1), P(('data', 'fsdp'))),
])
def test_resolve(names, shape, rules, mesh, expected):
    assert sharding.resolve(names, shape, rules, mesh_of(*mesh)) == expected


def test_rule_order_and_none():
    mesh = mesh_of(1, 8, 1)
    # a user rule in front replicates mlp: fc1 falls back to embed
    rules = (('mlp', None),) + FSDP
    assert sharding.resolve(('embed', 'mlp'), (768, 3072), rules, mesh) == P('fsdp')
    # a user rule that puts embed first wins over the preset's order
    rules = (('embed', 'fsdp'),) + FSDP
    assert sharding.resolve(('embed', 'mlp'), (768, 3072), rules, mesh) == P('fsdp')
    # one mesh axis is used once per array: (embed, embed) splits the first only
    assert sharding.resolve(('embed', 'embed'), (64, 64), FSDP, mesh) == P('fsdp')
    with pytest.raises(ValueError, match='do not match the shape'):
        sharding.resolve(('embed',), (3, 4), FSDP, mesh)


def test_rules_for_and_errors():
    cfg = ml_collections.ConfigDict(dict(layout='fsdp', rules=(('classes', None),)))
    rules = sharding.rules_for(cfg)
    assert rules[0] == ('classes', None) and rules[1:-1] == sharding.PRESETS['fsdp']
    assert rules[-1] == ('batch', ('data', 'fsdp'))
    with pytest.raises(ValueError, match=r"config.mesh.layout='zero3'.*accepted"):
        sharding.rules_for(dict(layout='zero3'))
    with pytest.raises(ValueError, match=r"config.mesh.rules: unknown mesh axis 'tensor'"):
        sharding.rules_for(dict(layout='dp', rules=(('mlp', 'tensor'),)))
    with pytest.raises(ValueError, match=r"config.mesh.rules: unknown logical name 'hidden'"):
        sharding.rules_for(dict(layout='dp', rules=(('hidden', 'fsdp'),)))
    with pytest.raises(ValueError, match='unknown logical axis name'):
        sharding.axes('hidden')


# ------------------------------------------------------------------------------------------
# The mesh from the config.
# ------------------------------------------------------------------------------------------

def test_mesh_shape():
    cfg = finetune_defaults().mesh
    assert mesh_lib.mesh_shape(cfg, 8) == (8, 1, 1)            # today's default: pure data parallel
    cfg.fsdp = 4
    assert mesh_lib.mesh_shape(cfg, 8) == (2, 4, 1)
    cfg.update(dict(data=1, fsdp=-1, model=2))
    assert mesh_lib.mesh_shape(cfg, 8) == (1, 4, 2)
    for bad, msg in [(dict(data=2, fsdp=3, model=1), r'data x fsdp x model = 2 x 3 x 1 = 6 does not match the 8'),
                     (dict(data=-1, fsdp=3, model=1), r'fsdp=3 .*= 3 does not divide the 8 devices'),
                     (dict(data=-1, fsdp=-1, model=1), 'only one of'),
                     (dict(data=0, fsdp=8, model=1), r'config.mesh.data=0: must be'),
                     (dict(data=8, fsdp=1, model=1, dcn_data=3), r'config.mesh.dcn_data=3 must divide')]:
        c = finetune_defaults().mesh
        c.update(bad)
        with pytest.raises(ValueError, match=msg):
            mesh_lib.mesh_shape(c, 8)


def test_make_mesh_and_batch_sharding():
    cfg = finetune_defaults().mesh
    cfg.fsdp = 4
    mesh = mesh_lib.make_mesh(CPU, cfg)
    assert mesh.axis_names == ('data', 'fsdp', 'model') and mesh.devices.shape == (2, 4, 1)
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    assert mesh_lib.batch_sharding(mesh).spec == P(('data', 'fsdp'))
    assert mesh_lib.batch_size_divisor(mesh) == 8
    cfg.update(dict(data=2, fsdp=2, model=2))
    assert mesh_lib.batch_size_divisor(mesh_lib.make_mesh(CPU, cfg)) == 4   # the model axis holds copies
    # default: all devices on data
    assert mesh_lib.make_mesh(CPU).devices.shape == (8, 1, 1)


def test_parse_mesh_flag():
    assert mesh_lib.parse_mesh_flag('fsdp:8') == dict(layout='fsdp', data=-1, fsdp=8, model=1)
    assert mesh_lib.parse_mesh_flag('fsdp_tp:4x2') == dict(layout='fsdp_tp', data=-1, fsdp=4, model=2)
    assert mesh_lib.parse_mesh_flag('dp') == dict(layout='dp', data=-1, fsdp=1, model=1)
    for bad in ('zero:8', 'fsdp:x', 'fsdp:0', 'fsdp:2x2x2'):
        with pytest.raises(ValueError, match='--mesh'):
            mesh_lib.parse_mesh_flag(bad)


def test_batch_size_check_names_the_axes():
    cfg = finetune_defaults()
    cfg.mesh.update(dict(data=2, fsdp=4))
    cfg.batch_size, cfg.eval_batch_size = 12, 16
    with pytest.raises(ValueError, match=r'config.batch_size=12 must be a positive multiple of data x fsdp = 8'):
        mesh_lib.check_batch_sizes(cfg, mesh_lib.make_mesh(CPU, cfg.mesh))


def test_check_config_rejects_bad_mesh_fields():
    cfg = finetune_defaults()
    cfg.model.name = 'swin_tiny_patch4_window7_224'
    cfg.mesh.layout = 'zero3'
    with pytest.raises(ValueError, match='config.mesh.layout'):
        check_config(cfg)
    cfg.mesh.layout = 'fsdp'
    cfg.mesh.rules = (('mlp', 'tensor'),)
    with pytest.raises(ValueError, match="unknown mesh axis 'tensor'"):
        check_config(cfg)


# ------------------------------------------------------------------------------------------
# Every family's parameters, laid out as the rules say (abstract: nothing allocated).
# ------------------------------------------------------------------------------------------


F = 'fsdp'
EXPECTED_FSDP8 = {
    'swin_simmim': {
        'encoder.layers.0.blocks.0.attn.qkv.kernel': ((64, 192), P(None, F)),
        'encoder.layers.0.blocks.0.attn.proj.kernel': ((64, 64), P(F)),
        'encoder.layers.0.blocks.0.attn.relative_position_bias_table': ((49, 2), P()),
        'encoder.layers.2.blocks.0.mlp.fc1.kernel': ((256, 1024), P(None, F)),
        'encoder.layers.2.blocks.0.mlp.fc2.kernel': ((1024, 256), P(F)),
        'encoder.layers.0.blocks.0.norm1.scale': ((64,), P()),
        'encoder.layers.0.blocks.0.mlp.fc1.bias': ((256,), P()),
        'encoder.patch_embed.proj.kernel': ((4, 4, 3, 64), P(None, None, None, F)),
        'encoder.mask_token': ((1, 1, 64), P(None, None, F)),
    },
    'vit_mae': {
        'blocks.0.attn.qkv.kernel': ((128, 384), P(None, F)),
        'blocks.0.mlp.fc2.kernel': ((512, 128), P(F)),
        'decoder_pred.kernel': ((128, 48), P(None, F)),
        'patch_embed.proj.kernel': ((4, 4, 3, 128), P(None, None, None, F)),
        'norm.scale': ((128,), P()),
    },
    'hivit_mae': {
        'absolute_pos_embed': ((1, 64, 128), P(None, None, F)),
        'blocks.0.mlp.fc1.kernel': ((32, 96), P(None, F)),
        'decoder_blocks.0.attn.qkv.kernel': ((128, 384), P(None, F)),
        'patch_embed.proj.kernel': ((1, 1, 3, 32), P(None, None, None, F)),
    },
    'ummae_pvt': {
        'blocks.0.attn.q.kernel': ((64, 64), P(None, F)),
        'blocks.0.attn.kv.kernel': ((64, 128), P(None, F)),
        'blocks.0.attn.sr.kernel': ((1, 1, 64, 64), P(None, None, None, F)),
        'blocks.0.attn.norm.scale': ((64,), P()),
        'decoder_blocks.0.mlp.fc1.kernel': ((96, 384), P(None, F)),
    },
    'greenmim_swin': {
        'encoder.layers.1.blocks.0.attn.qkv.kernel': ((64, 192), P(None, F)),
        'encoder.layers.1.blocks.0.attn.relative_position_bias_table': ((49, 4), P()),
        'decoder_pred.kernel': ((64, 192), P(None, F)),
        'mask_token': ((1, 1, 64), P(None, None, F)),
    },
    'groupmixformer': {
        'groupmixformer_backbone.2.gma_stage.0.att.qkv.kernel': ((160, 480), P(None, F)),
        'groupmixformer_backbone.2.gma_stage.0.mlp.fc2.kernel': ((640, 160), P(F)),
        # 10 classes do not split over 8 devices: the head falls back to its input dimension
        'head.kernel': ((160, 10), P(F)),
        # depthwise: (kh, kw, 1, C) splits its output channels
        'patch_embed_layers.1.proj.conv1.kernel': ((3, 3, 1, 40), P(None, None, None, F)),
    },
}


def _layout(family, layout='fsdp', dims=(1, 8, 1), ema=0.0):
    cfg = load_config_file(os.path.join(ROOT, FAMILY_DEMOS[family]))
    cfg.mesh.update(dict(layout=layout, data=dims[0], fsdp=dims[1], model=dims[2]))
    cfg.ema_decay = ema
    mesh = cpu_mesh(dims)
    model = nnx.eval_shape(lambda: rundir.build_model(cfg))
    assert sharding.missing_axes(model) == []     # every parameter of the family is named
    return cfg, mesh, steps.abstract_train_state(model, cfg, mesh)


@pytest.mark.parametrize('family', sorted(FAMILY_DEMOS))
def test_family_specs_under_fsdp(family):
    _, _, lay = _layout(family)
    specs, shapes = flatten_names(lay.specs['params']), flatten_names(lay.shapes['params'])
    for path, (shape, spec) in EXPECTED_FSDP8[family].items():
        assert shapes[path].shape == shape, path
        assert specs[path] == spec, (path, specs[path])
    # AdamW moments are laid out like their parameters
    opt = lay.specs['opt_state']
    moments = [s for s in jax.tree.leaves(opt, is_leaf=lambda s: isinstance(s, P)) if s != P()]
    sharded_params = [s for s in specs.values() if s != P()]
    assert len(moments) == 2 * len(sharded_params)


def test_fsdp_tp_specs_megatron():
    _, _, lay = _layout('vit_mae', 'fsdp_tp', (1, 4, 2))
    specs = flatten_names(lay.specs['params'])
    assert specs['blocks.0.attn.qkv.kernel'] == P(F, 'model')      # column split
    assert specs['blocks.0.attn.proj.kernel'] == P('model', F)     # row split
    assert specs['blocks.0.mlp.fc1.kernel'] == P(F, 'model')
    assert specs['blocks.0.mlp.fc2.kernel'] == P('model', F)
    assert specs['blocks.0.attn.qkv.bias'] == P()


def test_report_bytes_match_the_real_state():
    """The report's per-device bytes equal what device 0 really holds of the initialised state
    (parameters, AdamW moments, EMA), counted from its shards; dp holds everything."""
    cfg, mesh, lay = _layout('swin_simmim', ema=0.999)
    report = sharding.sharding_report(lay.logical['params'], lay.shapes, lay.specs, mesh, 2 ** 20)
    trainer, state = steps.make_trainer(lambda: rundir.build_model(cfg), steps.mim_loss, cfg, mesh)
    dev0 = CPU[0]

    def held(tree):
        return sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards if s.device == dev0)

    def full(tree):
        return sum(x.nbytes for x in jax.tree.leaves(tree))

    keys = ('params', 'opt_state', 'ema')
    assert report.per_device_bytes == sum(held(state[k]) for k in keys)
    assert report.replicated_bytes == sum(full(state[k]) for k in keys)
    assert report.ratio < 0.2          # most bytes are in split weights
    lines = report.lines()
    assert lines[-1].startswith('state bytes per device: ') and 'ratio' in lines[-1]
    # dp: the ratio is 1
    _, mesh_dp, lay_dp = _layout('swin_simmim', 'dp', (8, 1, 1))
    rep_dp = sharding.sharding_report(lay_dp.logical['params'], lay_dp.shapes, lay_dp.specs, mesh_dp, 2 ** 20)
    assert rep_dp.ratio == 1.0


def test_large_replicated_parameter_is_reported():
    # a rule that replicates every mlp and embed dimension leaves ViT-B's MLP kernels (9 MiB) whole
    shapes = {'fc1': jax.ShapeDtypeStruct((768, 3072), jnp.float32), 'b': jax.ShapeDtypeStruct((3072,), jnp.float32)}
    specs = {'fc1': P(), 'b': P()}
    assert sharding.replicated_above(shapes, specs, 2 ** 20) == [('fc1', (768, 3072), 768 * 3072 * 4)]


def test_summary_sharding_cli():
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8', JAX_PLATFORMS='cpu')
    cmd = [sys.executable, '-m', 'jaxmim.summary', '--sharding', '--config=configs/demo/mae_vit_fmnist.py',
           '--mesh=fsdp:8']
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert "'fsdp': 8" in lines[0]
    assert any(ln.startswith('blocks.0.mlp.fc1.kernel') and "P(None, 'fsdp')" in ln for ln in lines)
    assert lines[-1].startswith('state bytes per device:')
    bad = subprocess.run(cmd[:-1] + ['--mesh=fsdp:3'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and 'does not divide the 8 devices' in bad.stderr


def test_every_registered_model_class_names_every_parameter():
    """Every parameter of every registered model class (classifiers, encoders and pre-training
    models with their decoders; the smallest registered variant of each class, as size changes
    no code path) has one logical name per dimension. The demo configs' models are checked in
    test_family_specs_under_fsdp."""
    from jaxmim import registry
    rank = lambda n: next((i for i, w in enumerate(('demo', 'mini', 'tiny', 'small', 'base')) if w in n), 9)  # noqa: E731
    per_class = {}
    for name in registry.list_models():
        if name.startswith('test_'):    # models the tests register (tests/test_protocol.py)
            continue
        target = registry._REGISTRY[name][0]
        if target not in per_class or rank(name) < rank(per_class[target]):
            per_class[target] = name
    assert len(per_class) >= 15
    missing = {n: sharding.missing_axes(nnx.eval_shape(lambda: registry.create_model(n))) for n in per_class.values()}
    assert {k: v for k, v in missing.items() if v} == {}


@pytest.mark.parametrize('flags,message', [
    (['--config.mesh.data=3'], 'config.mesh: data x fsdp x model = 3 x 1 x 1 = 3 does not match the 8 devices'),
    (['--config.mesh.layout=fsdp', "--config.mesh.rules=(('mlp', 'tensor'),)"], "config.mesh.rules: unknown mesh axis 'tensor'"),
    (['--config.mesh.fsdp=8', '--config.batch_size=12'], 'config.batch_size=12 must be a positive multiple of data x fsdp = 8'),
])
def test_cli_rejects_bad_mesh_before_compiling(tmp_path, flags, message):
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8', JAX_PLATFORMS='cpu')
    cmd = [sys.executable, '-m', 'jaxmim.main', '--config=configs/demo/simmim_swin_fmnist.py',
           f'--workdir={tmp_path}/run'] + flags
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith('error:')]
    assert out.returncode == 2 and len(errors) == 1 and message in errors[0], out.stderr[-1500:]
    assert not os.path.exists(tmp_path / 'run' / 'checkpoints')
