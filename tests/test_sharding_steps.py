"""Sharded train steps equal the single-device step, for every family; parameters are laid out as
the rules say; a checkpoint saved under one layout restores under any other.

Each family's demo config (tiny models on 32 px images) trains two steps on a fixed batch: on one
CPU device (the reference, ``dp``) and under ``fsdp_tp`` on a ``data=2 x fsdp=2 x model=2`` mesh
(all three mesh axes at once); Swin + SimMIM and ViT + MAE also under ``fsdp`` over 8 devices.
Losses, parameters and non-parameter state (GroupMixFormer's SyncBatchNorm statistics) must
agree to float tolerance. (Pure ``dp`` over 8 devices against 1 is tests/test_train.py's.)
"""

import functools
import os

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from families import FAMILY_DEMOS, cpu_mesh
from jaxmim import checkpoint as ckpt_lib
from jaxmim import mesh as mesh_lib
from jaxmim import rundir, steps
from jaxmim.config import load_config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = jax.devices('cpu')
B = 8


# smaller than the demo where compilation time asks for it
OVERRIDES = {'groupmixformer': dict(depths=(1, 1, 1, 1))}


def config_of(family, layout='dp', dims=(1, 1, 1)):
    cfg = load_config_file(os.path.join(ROOT, FAMILY_DEMOS[family]))
    cfg.model.overrides.update(OVERRIDES.get(family, {}))
    cfg.batch_size, cfg.total_steps = B, 20
    cfg.optim.warmup_steps = 1   # a non-zero learning rate from the second step
    cfg.mesh.update(dict(layout=layout, data=dims[0], fsdp=dims[1], model=dims[2]))
    return cfg


def loss_fn_of(cfg, model):
    if cfg.mode == 'pretrain':
        return steps.mim_loss
    return functools.partial(steps.classification_loss, label_smoothing=cfg.label_smoothing,
                             num_classes=model.num_classes)


def batch_of(cfg, model):
    rng = np.random.default_rng(0)
    size = int(rundir.config_lib.resolve_data_config(cfg).image_size)
    batch = {'image': rng.normal(size=(B, size, size, 3)).astype(np.float32)}
    if cfg.mode == 'finetune':
        batch['label'] = rng.integers(0, model.num_classes, B).astype(np.int32)
    elif cfg.method.inputs_from == 'pipeline':
        batch.update(model.host_inputs(np.random.default_rng(1), B))
    return batch


def train(family, layout, dims, n_steps=2):
    cfg = config_of(family, layout, dims)
    mesh = cpu_mesh(dims)
    build = functools.partial(rundir.build_model, cfg)
    model = nnx.eval_shape(build)
    trainer, state = steps.make_trainer(build, loss_fn_of(cfg, model), cfg, mesh)
    batch = mesh_lib.global_batch(batch_of(cfg, model), mesh_lib.batch_sharding(mesh))
    losses = []
    for _ in range(n_steps):
        state, metrics = trainer.train_step(state, batch)
        losses.append(float(metrics['loss']))
    return losses, state, trainer


def host(tree):
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


@pytest.fixture(scope='module')
def reference():
    cache = {}

    def get(family):
        if family not in cache:
            losses, state, _ = train(family, 'dp', (1, 1, 1))
            cache[family] = losses, host({'params': state['params'], 'model_state': state['model_state']})
        return cache[family]

    return get


def assert_tree_close(a, b, rtol, atol):
    flat_a = dict(jax.tree_util.tree_flatten_with_path(a)[0])
    flat_b = dict(jax.tree_util.tree_flatten_with_path(b)[0])
    assert flat_a.keys() == flat_b.keys()
    for k in flat_a:
        np.testing.assert_allclose(flat_a[k], flat_b[k], rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(k))


CASES = [(f, 'fsdp_tp', (2, 2, 2)) for f in sorted(FAMILY_DEMOS)] + [
    ('swin_simmim', 'fsdp', (1, 8, 1)), ('vit_mae', 'fsdp', (1, 8, 1))]


@pytest.mark.parametrize('family,layout,dims', CASES)
def test_sharded_step_equals_single_device(reference, family, layout, dims):
    ref_losses, ref_vars = reference(family)
    losses, state, trainer = train(family, layout, dims)
    np.testing.assert_allclose(losses, ref_losses, rtol=2e-5)
    # atol: a fifth of one AdamW step (lr ~5e-5 here). Gradients that are zero in exact arithmetic
    # (an attention key bias) are float noise that Adam's normalisation turns into steps of
    # any sign, so those entries agree only to about that size.
    assert_tree_close(host({'params': state['params'], 'model_state': state['model_state']}), ref_vars,
                      rtol=2e-4, atol=1e-5)
    # the state really is laid out as the specs say, and something is split
    specs = jax.tree.leaves(jax.tree.map(lambda x: x.sharding.spec, state['params']),
                            is_leaf=lambda s: isinstance(s, P))
    assert any(s != P() for s in specs)
    assert trainer.compilations == 1


def test_checkpoint_moves_between_meshes(tmp_path):
    """Saved under fsdp=8, restored under data=2 and under one device: identical parameters and
    AdamW moments; one more step gives the loss of the unmoved run."""
    family = 'swin_simmim'
    _, state, trainer = train(family, 'fsdp', (1, 8, 1), n_steps=1)
    ckpt = ckpt_lib.Checkpointer(str(tmp_path / 'ckpt'), async_save=False)
    ckpt.save(1, rundir.nonempty(state), force=True)
    saved = host(rundir.nonempty(state))
    cfg = config_of(family, 'fsdp', (1, 8, 1))
    model = nnx.eval_shape(functools.partial(rundir.build_model, cfg))
    batch_np = batch_of(cfg, model)
    state, metrics = trainer.train_step(state, mesh_lib.global_batch(batch_np, mesh_lib.batch_sharding(trainer.mesh)))
    unmoved_loss = float(metrics['loss'])
    for layout, dims in [('dp', (2, 1, 1)), ('dp', (1, 1, 1))]:
        cfg = config_of(family, layout, dims)
        mesh = cpu_mesh(dims)
        t2, fresh = steps.make_trainer(functools.partial(rundir.build_model, cfg), steps.mim_loss, cfg, mesh)
        target = ckpt_lib.abstract_like(rundir.nonempty(fresh), rundir.nonempty(t2.state_sharding))
        restored = ckpt.restore(1, target=target)
        for k in saved:
            jax.tree.map(np.testing.assert_array_equal, host(restored[k]), saved[k])
        assert restored['params']['encoder']['patch_embed']['proj']['kernel'].sharding.mesh.devices.shape == dims
        moved = {**fresh, **restored}
        moved, m = t2.train_step(moved, mesh_lib.global_batch(batch_np, mesh_lib.batch_sharding(mesh)))
        np.testing.assert_allclose(float(m['loss']), unmoved_loss, rtol=2e-5)


def test_export_of_an_fsdp_run_equals_a_replicated_run(tmp_path):
    """convert.export reads a checkpoint saved under fsdp=8 into the same file as the same values
    saved replicated on one device."""
    import importlib
    export_cli = importlib.import_module('convert.export')
    family = 'vit_mae'
    _, state, trainer = train(family, 'fsdp', (1, 8, 1), n_steps=1)
    cfg = config_of(family, 'fsdp', (1, 8, 1))
    outputs = []
    for name, tree in [('fsdp', rundir.nonempty(state)), ('replicated', jax.device_put(host(rundir.nonempty(state)), CPU[0]))]:
        workdir = tmp_path / name
        os.makedirs(workdir / 'checkpoints')
        rundir.write_run_config(cfg, str(workdir))
        ckpt = ckpt_lib.Checkpointer(str(workdir / 'checkpoints'), async_save=False)
        ckpt.save(1, tree, force=True)
        ckpt.close()
        out = str(tmp_path / f'{name}.safetensors')
        export_cli.export_run(str(workdir), 'mae_vit', out, verbose=False)
        from safetensors import safe_open
        with safe_open(out, 'np') as f:
            outputs.append(({k: f.get_tensor(k) for k in f.keys()}, f.metadata()))
    assert any(x.sharding.spec != P() for x in jax.tree.leaves(state['params']))   # it was sharded
    (a, meta_a), (b, meta_b) = outputs
    assert meta_a == meta_b and list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), k


def test_abstract_state_lowers_the_same_step_without_allocating():
    """``make_trainer(..., abstract_state=True)``: every state leaf is a ``jax.ShapeDtypeStruct``
    with the shape, dtype and sharding of the allocated state's, and the step lowers to the same
    module from it (what the benchmark counts and phase 1 of the accelerator run compiles)."""
    cfg = config_of('vit_mae', 'fsdp', (1, 8, 1))
    mesh = cpu_mesh((1, 8, 1))
    build = functools.partial(rundir.build_model, cfg)
    model = nnx.eval_shape(build)
    trainer, state = steps.make_trainer(build, loss_fn_of(cfg, model), cfg, mesh)
    t_abs, abstract = steps.make_trainer(build, loss_fn_of(cfg, model), cfg, mesh, abstract_state=True)
    leaves, abs_leaves = jax.tree.leaves(state), jax.tree.leaves(abstract)
    assert len(leaves) == len(abs_leaves) and all(isinstance(a, jax.ShapeDtypeStruct) for a in abs_leaves)
    for x, a in zip(leaves, abs_leaves):
        assert (a.shape, a.dtype, a.sharding) == (x.shape, x.dtype, x.sharding)
    batch = mesh_lib.global_batch(batch_of(cfg, model), mesh_lib.batch_sharding(mesh))
    text = trainer.train_step.lower(state, batch).as_text()
    assert t_abs.train_step.lower(abstract, batch).as_text() == text
