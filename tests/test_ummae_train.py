"""UM-MAE through the real train step and loop: tiny runs of each method lower the loss and compile
once; pipeline masks through ``train.pretrain``; the demo fine-tuning classifier loads the encoder
with only ``head`` and ``fc_norm`` fresh."""

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from jaxmim import train
from jaxmim import rundir, steps
from jaxmim import mesh as mesh_lib
from jaxmim.config import load_config_file, pretrain_defaults
from jaxmim.tree_util import flatten_names

TINY_PVT = dict(img_size=64, patch_size=4, stride=8, embed_dims=(16, 32, 32), depths=(1, 1, 1),
                num_heads=(1, 2, 2), mlp_ratios=(2, 2, 2), sr_ratios=(2, 1, 1))
TINY_DEC = dict(decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
TINY_SWIN = dict(img_size=64, patch_size=4, stride=8, embed_dim=16, depths=(2, 1, 1), num_heads=(1, 2, 2),
                 window_size=4, posmlp_dim=8, mlp_ratio=2.0)
TINY_VIT = dict(img_size=32, patch_size=4, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16,
                decoder_depth=1, decoder_num_heads=2)


def _cfg(method, name, overrides, steps=6):
    cfg = pretrain_defaults(method)
    cfg.model.name = name
    cfg.model.overrides = ml_collections.ConfigDict(overrides)
    cfg.batch_size = 8
    cfg.total_steps = steps
    cfg.optim.update(dict(base_lr=2e-3, warmup_lr=2e-3, min_lr=2e-3, warmup_steps=0, lr_scale_batch=0,
                          weight_decay=0.0, betas=(0.9, 0.95)))
    return cfg


TINY_SWIN_DEC = dict(TINY_SWIN, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)


@pytest.mark.parametrize('method,name,overrides,size', [
    ('ummae', 'mae_pvt_small_256', dict(TINY_PVT, **TINY_DEC), 64),
    ('ummae', 'mae_swin_tiny_256', TINY_SWIN_DEC, 64),
    ('ummae', 'mae_vit_base_patch16_dec512d2b', TINY_VIT, 32),
    ('ummae_simmim', 'simmim_pvt_small_256', dict(TINY_PVT, sr_ratios=(4, 2, 1)), 64),
    ('ummae_simmim', 'simmim_swin_tiny_256', TINY_SWIN, 64),
])
def test_tiny_runs_lower_the_loss_and_compile_once(method, name, overrides, size):
    cfg = _cfg(method, name, overrides)
    model = rundir.build_model(cfg)
    trainer, state = steps.make_trainer(model, steps.mim_loss, cfg, mesh_lib.make_mesh())
    rng = np.random.default_rng(0)
    batch = {'image': rng.standard_normal((8, size, size, 3)).astype(np.float32), **model.host_inputs(rng, 8)}
    batch = mesh_lib.global_batch(batch, mesh_lib.batch_sharding(trainer.mesh))
    losses = []
    for _ in range(6):
        state, metrics = trainer.train_step(state, batch)
        losses.append(float(metrics['loss']))
    assert trainer.train_step._cache_size() == 1
    assert np.isfinite(losses).all() and losses[-1] < 0.97 * losses[0], losses
    assert sum(b < a for a, b in zip(losses, losses[1:])) >= 4, losses


def test_demo_pair_pretrains_with_pipeline_masks_then_finetuning_loads_the_encoder(data_dir, tmp_path):
    """The demo config pair, made tiny: pipeline masks through ``train.pretrain`` (one compilation),
    then the classifier of ``finetune_pvt_fmnist.py:pretrained`` loads every encoder tensor; only
    ``head`` and ``fc_norm`` start fresh (main_finetune.py's assert)."""
    enc = dict(embed_dims=(16, 32, 32), depths=(1, 1, 1), num_heads=(1, 2, 2), mlp_ratios=(2, 2, 2))
    cfg = load_config_file('configs/demo/ummae_pvt_fmnist.py')
    cfg.model.overrides = ml_collections.ConfigDict(dict(enc, **TINY_DEC))
    cfg.data.update(dict(data_dir=data_dir, cache=False, shuffle_buffer=200))
    cfg.method.inputs_from = 'pipeline'
    cfg.update(dict(batch_size=16, total_steps=2, checkpoint_every=2, progress_bar=False, log_every=1))
    cfg.optim.warmup_steps = 1
    state, summary = train.pretrain(cfg, str(tmp_path / 'pre'))
    assert summary['compilations'] == 1 and all(np.isfinite(h['loss']) for h in summary['history'])
    ft = load_config_file('configs/demo/finetune_pvt_fmnist.py:pretrained')
    ft.model.overrides.update(enc)
    clf = rundir.build_model(ft)
    report = rundir.load_pretrained(clf, str(tmp_path / 'pre'))
    assert sorted(report['fresh']) == ['fc_norm.bias', 'fc_norm.scale', 'head.bias', 'head.kernel']
    assert {'vis_mask_token', 'mask_token', 'norm.scale', 'decoder_pred.kernel', 'decoder_pos_embed'} \
        <= set(report['unused'])
    assert 'pos_embed' in report['loaded'] and not report['resized']
    flat = flatten_names(nnx.to_pure_dict(nnx.state(clf)))
    pre = {**flatten_names(jax.device_get(state['params'])), **flatten_names(jax.device_get(state['model_state']))}
    for name, value in flat.items():
        if not name.startswith(('head.', 'fc_norm.')):
            np.testing.assert_array_equal(np.asarray(value), np.asarray(pre[name]), err_msg=name)
