"""GreenMIM through the real pre-training loop (``jaxmim.train.pretrain``) on Fashion-MNIST:
the loss goes down and the step compiles once although every step has a new mask (its
grouping indices come from a host callback inside the jitted step; the pipeline path,
``host_inputs``, is covered in ``test_greenmim.py``)."""

import os

import numpy as np
import pytest

from jaxmim import train
from jaxmim import rundir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cfg(data_dir, steps, inputs_from):
    from jaxmim.config import load_config_file
    cfg = load_config_file(os.path.join(ROOT, 'configs/demo/greenmim_swin_fmnist.py'))
    cfg.data.data_dir = data_dir
    cfg.data.cache = False
    cfg.data.shuffle_buffer = 1000
    cfg.model.overrides = type(cfg.model.overrides)(dict(embed_dim=16, num_heads=(1, 2, 4)))
    cfg.batch_size = 16
    cfg.total_steps = steps
    cfg.optim.warmup_steps = 2
    cfg.optim.lr_scale_batch = 0
    cfg.optim.base_lr = 4e-3
    cfg.optim.min_lr = 1e-5
    cfg.log_every = 1
    cfg.checkpoint_every = steps
    cfg.progress_bar = False
    cfg.method.inputs_from = inputs_from
    return cfg


def test_greenmim_pretrain_lowers_loss_and_compiles_once(data_dir, tmp_path):
    _, summary = train.pretrain(_cfg(data_dir, 25, 'step'), str(tmp_path / 'step'))
    losses = [h['loss'] for h in summary['history']]
    assert len(losses) == 25 and summary['compilations'] == 1
    assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5]), losses


def test_greenmim_encoder_fine_tunes_as_its_registered_swin_classifier(data_dir, tmp_path):
    """The demo pre-training model names its classifier (``swin_demo_patch2_window4_32``);
    loading the run fills every classifier variable but the head with the checkpoint's values."""
    from jaxmim import tree_util
    from jaxmim.registry import classifier_for, create_model
    from flax import nnx

    cfg = _cfg(data_dir, 2, 'step')
    train.pretrain(cfg, str(tmp_path / 'pre'))
    name = classifier_for(cfg.model.name)
    assert name == 'swin_demo_patch2_window4_32'
    clf = create_model(name, embed_dim=16, num_heads=(1, 2, 4))
    report = rundir.load_pretrained(clf, str(tmp_path / 'pre'))
    assert sorted(report['fresh']) == ['head.bias', 'head.kernel'] and not report['resized']
    saved = rundir.read_checkpoint_variables(str(tmp_path / 'pre'), None)
    got = tree_util.flatten_names(nnx.to_pure_dict(nnx.state(clf)))
    assert len(got) > 40
    for key, value in got.items():
        if not key.startswith('head.'):
            np.testing.assert_array_equal(np.asarray(value), saved[key], err_msg=key)
