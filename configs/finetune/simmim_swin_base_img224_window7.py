r"""Fine-tuning a SimMIM Swin-B on ImageNet-1K at 224 px, window 7 (microsoft/SimMIM@d3e29bc).

    python -m jaxmim.main --config=configs/finetune/simmim_swin_base_img224_window7.py:100ep \
        --config.pretrained.workdir=<pre-training workdir> --workdir=<out> \
        --config.data.data_dir=/path/to/tensorflow_datasets

Variants: 100ep (layer decay 0.9, after the 100-epoch pre-training; the paper's top-1
83.5 %) and 800ep (layer decay 0.8, after the 800-epoch pre-training; 84.0 %), ImageNet-1K
val, 224 px (microsoft/SimMIM@d3e29bc README.md:33-54; configs
swin_base__{100ep,800ep}/simmim_finetune__swin_base__img224_window7__{100ep,800ep}.yaml).
Shared (``config.py:13-194`` defaults, the yamls above, ``optimizer.py``, ``lr_scheduler.py:18-35``,
``data/data_finetune.py:51-114``, ``main_finetune.py:321-334``): 100 epochs, 20 warm-up epochs, base lr 1.25e-3,
warmup/min lr 2.5e-7 (per 512 images, x4 at batch 2048), lagged cosine per iteration, AdamW
(0.9, 0.999), weight decay 0.05, drop path 0.1, clip 5.0, and the timm recipe
(``jaxmim.recipes.timm_recipe``): RandomResizedCrop (0.08, 1) bicubic, flip, RandAugment
rand-m9-mstd0.5-inc1 (colour jitter 0.4 configured, unused beside it as in timm), random
erasing 0.25 pixel x1, Mixup 0.8 / CutMix 1.0 (switch 0.5, per-batch), label smoothing 0.1 in
soft targets, soft-target cross entropy; evaluation resize 256 bicubic, centre crop 224. No EMA.
The window-6 relative-position tables of the 192-px pre-training are resized 11x11 -> 13x13 on
load (SimMIM's geometric bicubic scheme).
Batch 2048 per optimizer update (16 GPUs x 128 in the paper); on fewer accelerators keep
``batch_size=2048`` and raise ``--config.accum_steps`` (the update is the same up to float
rounding; drop-path draws differ per micro-batch). Mixed precision: SimMIM's apex O1 (fp16) is bf16
compute here (``compute_dtype='bfloat16'``). Difference left: one mixup lambda per global batch where
SimMIM draws one per GPU.
"""

from jaxmim.config import finetune_defaults
from jaxmim.recipes import imagenet_data, simmim_optim, timm_recipe

ITERS_PER_EPOCH = 1_281_167 // 2048


def get_config(arg='100ep'):
    if arg not in ('100ep', '800ep'):
        raise ValueError(f"variant must be '100ep' or '800ep', got {arg!r}")
    c = timm_recipe(finetune_defaults())
    c.model.name = 'swin_base_patch4_window7_224'
    c.model.overrides.drop_path_rate = 0.1
    imagenet_data(c.data, 224)
    c.batch_size = 2048
    c.eval_batch_size = 1024
    c.total_steps = 100 * ITERS_PER_EPOCH
    simmim_optim(c.optim, base_lr=1.25e-3, warmup_lr=2.5e-7, min_lr=2.5e-7, warmup_steps=20 * ITERS_PER_EPOCH)
    c.optim.layer_decay = 0.9 if arg == '100ep' else 0.8
    c.accum_steps = 1                      # raise on fewer accelerators; batch_size stays 2048
    c.log_every = 100
    c.eval_every = 5 * ITERS_PER_EPOCH
    c.checkpoint_every = 5 * ITERS_PER_EPOCH
    # Accelerators: bf16 forward / backward on float32 master weights, loss and AdamW state
    # (jaxmim.steps.accumulate_gradients); every family's loss tracks float32 within 0.5 % over 50 steps
    # (tests/test_bf16.py). --config.compute_dtype=float32 for full precision (on CPU bf16 is emulated, slower).
    c.compute_dtype = 'bfloat16'
    return c
