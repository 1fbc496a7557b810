r"""MAE pre-training of HiViT-B on ImageNet-1K, the official recipe (zhangxiaosong18/hivit@2718339 self_supervised).

    python -m jaxmim.main --config=configs/pretrain/mae_hivit_base.py:1600ep --workdir=gs://bucket/mae_hivit_base \
        --config.data.data_dir=/path/to/tensorflow_datasets
    # the 800-epoch schedule:
    python -m jaxmim.main --config=configs/pretrain/mae_hivit_base.py:800ep --workdir=...

Recipe (zhangxiaosong18/hivit@2718339 ``self_supervised/get_started.md:25-29``,
``main_pretrain.py:125-190``, ``util/lr_sched.py:9-21``, ``models/models_hivit_mae.py:175-180``):
model ``mae_hivit_base_dec512d6b`` (HiViT-B encoder 512 / [2, 2, 20] / 8 heads without RPE, hifeat
3584-d encoder output, decoder 6 x 512, 16 heads); mask ratio 0.75 of the 16x16-px units;
norm-pixel targets (hard-coded officially); AdamW betas (0.9, 0.95), weight decay 0.05 on
everything but 1-D tensors and biases (the trainable sin-cos ``absolute_pos_embed`` and
``mask_token`` are decayed), no gradient clipping; batch 4096 (8 GPUs x 256 x accum 2), base lr
1e-4 per 256 images (lr 1.6e-3; MAE ViT uses 1.5e-4), per-iteration linear warm-up over 40
epochs from 0 then half-cycle cosine to 0; RandomResizedCrop(224, scale (0.2, 1.0), bicubic) +
flip. 312 iterations per epoch. The official epoch loop shifts the schedule by one epoch
(``main_pretrain.py:190``: first step at lr/40); not reproduced. Reported after fine-tuning
(1600 + 100 epochs): 84.6 top-1.
"""

from jaxmim.config import pretrain_defaults
from jaxmim.recipes import imagenet_data, mae_optim

BATCH = 4096
ITERS_PER_EPOCH = 1_281_167 // BATCH   # 312
EPOCHS = {'800ep': 800, '1600ep': 1600}


def get_config(arg='1600ep'):
    if arg not in EPOCHS:
        raise ValueError(f'variant must be one of {list(EPOCHS)}, got {arg!r}')
    c = pretrain_defaults('mae')
    c.model.name = 'mae_hivit_base_dec512d6b'
    c.method.mask_ratio = 0.75
    c.method.norm_pix_loss = True          # official: self.norm_pix_loss = True, hard-coded
    imagenet_data(c.data, 224, crop_scale=(0.2, 1.0), interpolation='bicubic')
    c.batch_size = BATCH
    c.total_steps = EPOCHS[arg] * ITERS_PER_EPOCH
    # --blr per 256 images; no clipping (engine_pretrain.py)
    mae_optim(c.optim, blr=1e-4, min_lr=0.0, warmup_steps=40 * ITERS_PER_EPOCH, betas=(0.9, 0.95))
    c.log_every = 100
    c.checkpoint_every = 20 * ITERS_PER_EPOCH
    c.keep_checkpoints = 3
    # Accelerators: bf16 forward / backward on float32 master weights, loss and AdamW state
    # (jaxmim.steps.accumulate_gradients); every family's loss tracks float32 within 0.5 % over 50 steps
    # (tests/test_bf16.py). --config.compute_dtype=float32 for full precision (on CPU bf16 is emulated, slower).
    c.compute_dtype = 'bfloat16'
    return c
