r"""Fine-tuning of the UM-MAE (and SimMIM-baseline) encoders on ImageNet-1K (implus/UM-MAE@cb7776b FINETUNE.md).

    python -m jaxmim.main --config=configs/finetune/ummae_finetune.py:swin_tiny_256 \
        --config.pretrained.workdir=<pre-training workdir (configs/pretrain/ummae_*.py), or convert.import> \
        --workdir=<out> --config.data.data_dir=/path/to/tensorflow_datasets

Variants (implus/UM-MAE@cb7776b ``Makefile`` ``finetune_*`` targets, lines 127-215;
``main_finetune.py:244-271`` loads the encoder):

| variant | classifier | layer decay | drop path | batch (GPU x accum x 8) | eval |
|---|---|---|---|---|---|
| ``pvt_small_256`` | ``pvt_small_256`` (sr 8/4/2/1) | 0.85 | 0.1 | 64 x 2 | 256, crop 1.0 |
| ``swin_tiny_256`` | ``swin_tiny_256`` (window 16) | 0.85 | 0.1 | 64 x 2 | 256, crop 1.0 |
| ``swin_large_256`` | ``swin_large_256`` | 0.7 | 0.2 | 32 x 4 | 256, crop 1.0 |
| ``vit_base_224`` | ``vit_base_patch16_224`` | 0.8 | 0.1 | 64 x 2 | resize 256, crop 224 |

The same variants fine-tune the SimMIM baselines (``configs/pretrain/ummae_simmim_256.py``): the
classifier loads ``patch_embed``, ``pos_embed`` (PVT) and every block, only ``head`` and ``fc_norm``
start fresh (``main_finetune.py`` asserts exactly that); the pre-training ``norm``, decoder and mask
tokens are dropped. Recipe (``main_finetune.py``, ``util/datasets.py:77-86``): effective batch 1024,
base lr 5e-4 per 256 images (lr 2e-3), AdamW (0.9, 0.999), weight decay 0.05 (none on 1-D tensors,
biases and PVT's ``pos_embed``), layer-wise lr decay over ``len(blocks) + 2`` ids
(``util/lr_decay.py:13-74``), warm-up 5 epochs from 0 then half-cycle cosine to 1e-6, no clipping,
100 epochs; timm augmentation (RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25, mixup 0.8 /
cutmix 1.0, label smoothing 0.1); ``head`` N(0, 2e-5). Reported top-1 after 200-epoch UM-MAE
pre-training: PVT-S 79.31, Swin-T 82.04, ViT-B 82.88; Swin-L (800 epochs) 85.2. The Makefile's
Swin-L target loads a stale ``..._200e/checkpoint-199.pth`` path (``Makefile`` line 215): point
``pretrained.workdir`` at the 800-epoch run.
"""

from jaxmim.config import finetune_defaults
from jaxmim.recipes import imagenet_data, mae_optim, timm_recipe

BATCH = 1024
ITERS_PER_EPOCH = 1_281_167 // BATCH   # 1251
VARIANTS = {   # classifier, layer decay, drop path, accum, image size, eval crop ratio
    'pvt_small_256': ('pvt_small_256', 0.85, 0.1, 2, 256, 1.0),
    'swin_tiny_256': ('swin_tiny_256', 0.85, 0.1, 2, 256, 1.0),
    'swin_large_256': ('swin_large_256', 0.7, 0.2, 4, 256, 1.0),
    'vit_base_224': ('vit_base_patch16_224', 0.8, 0.1, 2, 224, 224 / 256),
}


def get_config(arg='swin_tiny_256'):
    if arg not in VARIANTS:
        raise ValueError(f'variant must be one of {list(VARIANTS)}, got {arg!r}')
    model, layer_decay, drop_path, accum, size, crop = VARIANTS[arg]
    c = timm_recipe(finetune_defaults())
    c.model.name = model
    c.model.overrides.drop_path_rate = drop_path
    c.model.overrides.head_init_std = 2e-5         # main_finetune.py: trunc_normal_(head.weight, std=2e-5)
    if model.startswith('vit'):
        c.model.overrides.global_pool = True
    imagenet_data(c.data, size)
    c.data.eval_crop_ratio = crop                  # util/datasets.py: crop_pct 1.0 at 256 px
    c.batch_size = BATCH
    c.accum_steps = accum                          # --accum_iter (memory only)
    c.eval_batch_size = 1000
    c.total_steps = 100 * ITERS_PER_EPOCH
    mae_optim(c.optim, blr=5e-4, min_lr=1e-6, warmup_steps=5 * ITERS_PER_EPOCH, betas=(0.9, 0.999))
    c.optim.layer_decay = layer_decay
    c.pretrained.required = True
    c.log_every = 100
    c.eval_every = 5 * ITERS_PER_EPOCH
    c.checkpoint_every = 5 * ITERS_PER_EPOCH
    # Accelerators: bf16 forward / backward on float32 master weights, loss and AdamW state
    # (jaxmim.steps.accumulate_gradients); every family's loss tracks float32 within 0.5 % over 50 steps
    # (tests/test_bf16.py). --config.compute_dtype=float32 for full precision (on CPU bf16 is emulated, slower).
    c.compute_dtype = 'bfloat16'
    return c
