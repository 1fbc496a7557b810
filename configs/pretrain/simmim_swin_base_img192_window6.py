r"""SimMIM pre-training of Swin-B on ImageNet-1K, the official recipe (microsoft/SimMIM@d3e29bc).

    python -m jaxmim.main --config=configs/pretrain/simmim_swin_base_img192_window6.py:100ep \
        --workdir=gs://bucket/simmim_swin_base_100ep --config.data.data_dir=/path/to/tensorflow_datasets

Variants (``configs/swin_base__{100,800}ep/simmim_pretrain__swin_base__img192_window6__*.yaml``;
``config.py:13-194`` defaults; lr scaling ``main_simmim.py:217-230``):
  100ep: cosine, base lr 2e-4, warmup lr 1e-6, min lr 1e-5 (per 512 images), 10 warm-up epochs.
  800ep: multistep (x0.1 at epoch 700), base lr 1e-4, warmup lr 5e-7, 10 warm-up epochs.
Shared: 192 px, window 6, mask units 32 px at ratio 0.6 (22 of 36 masked), encoder stride 32,
drop path 0, AdamW (0.9, 0.999) with weight decay 0.05, gradient clip 5.0, total batch 2048
(the paper's; lrs are scaled by batch/512, i.e. x4), 625 iterations per epoch
(1,281,167 images, last partial batch dropped). Crops: RandomResizedCrop scale (0.67, 1),
ratio (3/4, 4/3), bilinear; horizontal flip; ImageNet mean/std.
ImageNet must be prepared with tfds first (manual download; `tfds build imagenet2012`).
Reported ImageNet-1K top-1 after fine-tuning at 224: 83.5 (100 ep), 84.0 (800 ep).
"""

from jaxmim.config import pretrain_defaults
from jaxmim.recipes import imagenet_data, simmim_optim

ITERS_PER_EPOCH = 1_281_167 // 2048   # 625


def get_config(arg='100ep'):
    if arg not in ('100ep', '800ep'):
        raise ValueError(f"variant must be '100ep' or '800ep', got {arg!r}")
    c = pretrain_defaults('simmim')
    c.model.name = 'simmim_swin_base_patch4_window6_192'
    c.method.encoder_stride = 32
    c.method.mask_patch_size = 32
    c.method.mask_ratio = 0.6
    imagenet_data(c.data, 192, crop_scale=(0.67, 1.0), interpolation='bilinear')
    c.batch_size = 2048
    if arg == '100ep':
        c.total_steps = 100 * ITERS_PER_EPOCH
        simmim_optim(c.optim, base_lr=2e-4, warmup_lr=1e-6, min_lr=1e-5, warmup_steps=10 * ITERS_PER_EPOCH)
    else:
        c.total_steps = 800 * ITERS_PER_EPOCH
        simmim_optim(c.optim, base_lr=1e-4, warmup_lr=5e-7, min_lr=5e-6, warmup_steps=10 * ITERS_PER_EPOCH)
        c.optim.schedule = 'multistep'
        c.optim.milestones = (700 * ITERS_PER_EPOCH,)
        c.optim.gamma = 0.1
    c.log_every = 100
    c.checkpoint_every = 5 * ITERS_PER_EPOCH
    c.keep_checkpoints = 3
    # Accelerators: bf16 forward / backward on float32 master weights, loss and AdamW state
    # (jaxmim.steps.accumulate_gradients); every family's loss tracks float32 within 0.5 % over 50 steps
    # (tests/test_bf16.py). --config.compute_dtype=float32 for full precision (on CPU bf16 is emulated, slower).
    c.compute_dtype = 'bfloat16'
    return c
