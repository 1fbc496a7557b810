"""GreenMIM-Twins through the real pre-training loop (``jaxmim.train.pretrain``) on Fashion-MNIST:
the loss goes down and the step compiles once although every step draws a new mask (its
grouping and block indices come from a host callback inside the jitted step)."""

import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_twins_pretrain_lowers_loss_and_compiles_once(data_dir, tmp_path):
    from jaxmim import train
    from jaxmim.config import load_config_file
    cfg = load_config_file(os.path.join(ROOT, 'configs/demo/greenmim_swin_fmnist.py'))
    cfg.model.name = 'green_mim_twins_demo_patch2_32_dec64b1'
    cfg.model.overrides = type(cfg.model.overrides)(dict(embed_dims=(16, 32, 64), num_heads=(1, 2, 4),
                                                         decoder_embed_dim=32))
    cfg.data.data_dir = data_dir
    cfg.data.cache = False
    cfg.data.shuffle_buffer = 1000
    cfg.batch_size = 16
    cfg.total_steps = 25
    cfg.optim.warmup_steps = 2
    cfg.optim.lr_scale_batch = 0
    cfg.optim.base_lr = 4e-3
    cfg.optim.min_lr = 1e-5
    cfg.log_every = 1
    cfg.checkpoint_every = 25
    cfg.progress_bar = False
    cfg.method.inputs_from = 'step'
    _, summary = train.pretrain(cfg, str(tmp_path / 'run'))
    losses = [h['loss'] for h in summary['history']]
    assert len(losses) == 25 and summary['compilations'] == 1
    assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5]), losses
