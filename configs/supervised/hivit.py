r"""Supervised HiViT from scratch on ImageNet-1K, 300 epochs at 224 px; one variant per size and recipe.

    # zhangxiaosong18/hivit supervised/ (Swin code base):
    python -m jaxmim.main --config=configs/supervised/hivit.py:tiny --workdir=<out> \
        --config.data.data_dir=/path/to/tensorflow_datasets
    # mmpretrain configs/hivit/hivit-tiny-p16_16xb64_in1k.py:
    python -m jaxmim.main --config=configs/supervised/hivit.py:tiny_mmpretrain --workdir=<out> ...

Variants ``tiny``, ``small``, ``base`` (the repository's recipe, model ``hivit_<size>``) and
``tiny_mmpretrain``, ``small_mmpretrain``, ``base_mmpretrain`` (mmpretrain's, model
``hivit_<size>_mmpretrain``); drop path 0.05 / 0.3 / 0.5 by size.

Official (zhangxiaosong18/hivit@2718339 ``supervised/configs/hivit_<size>_224.yaml``,
``supervised/config.py:110-172`` defaults, ``supervised/get_started.md:27-44``,
``supervised/main.py:349-351`` lr scaling, ``supervised/data/build.py:100-137``): APE + RPE, tables
N(0, .02), LN eps 1e-6, ``fc_norm``; batch 1024 (8 x 128); AdamW eps 1e-8, betas (0.9, 0.999),
weight decay 0.05 (none on 1-D tensors, biases, ``absolute_pos_embed``,
``*relative_position_bias_table``); base lr 5e-4, warm-up lr 5e-7, min lr 5e-6, all three scaled by
batch / 512 (lr 1e-3); 20 warm-up epochs then timm's per-iteration cosine (the Swin code base's
scheduler: jaxmim's ``'cosine'``); no gradient clipping (``CLIP_GRAD: None`` in every HiViT yaml);
label smoothing 0.1; timm augmentation (RandAugment rand-m9-mstd0.5-inc1 with the 0.4 colour jitter
ignored, random erasing 0.25 'pixel', mixup 0.8 / cutmix 1.0, switch 0.5); evaluation resize 256 +
centre crop 224; no EMA.

mmpretrain (open-mmlab/mmpretrain@ee7f2e88501f ``configs/hivit/hivit-tiny-p16_16xb64_in1k.py``,
``configs/_base_/schedules/imagenet_bs1024_adamw_hivit.py``): LN eps 1e-5, no final LayerNorm (GAP
neck + linear head); its base is 512 / [2, 2, 24] / 8 heads, NOT the paper's HiViT-B; batch 1024 (16
x 64); AdamW lr 5e-4 x 1024 / 512 = 1e-3, weight decay 0.05 (none on norms, biases, 1-D tensors,
``pos_embed``, RPE tables); gradient clipping at global norm 5.0; linear warm-up over 20 epochs per
iteration (mmpretrain starts it at 1e-3 x lr, here at 0), then cosine to 1e-5 (mmpretrain steps it
per epoch, here per iteration: ``'mae_cosine'``, the re-based half cycle); same augmentation family
(its RandomErasing mode 'rand' equals timm 'pixel'; Mixup or CutMix chosen with equal probability).

Reported: mmpretrain tiny from scratch 82.1 top-1 (``configs/hivit/README.md``); the paper's
supervised S / B accuracies are in neither repository.
"""

from jaxmim.config import finetune_defaults
from jaxmim.recipes import imagenet_data, mae_optim, simmim_optim, timm_recipe

BATCH = 1024
ITERS_PER_EPOCH = 1_281_167 // BATCH   # 1251
EPOCHS = 300
DROP_PATH = {'tiny': 0.05, 'small': 0.3, 'base': 0.5}
VARIANTS = tuple(DROP_PATH) + tuple(f'{s}_mmpretrain' for s in DROP_PATH)


def get_config(arg='tiny'):
    if arg not in VARIANTS:
        raise ValueError(f'variant must be one of {VARIANTS}, got {arg!r}')
    size = arg.split('_')[0]
    official = not arg.endswith('_mmpretrain')
    c = timm_recipe(finetune_defaults())
    c.model.name = f'hivit_{size}' if official else f'hivit_{size}_mmpretrain'
    c.model.overrides.drop_path_rate = DROP_PATH[size]
    imagenet_data(c.data, 224)
    c.batch_size = BATCH
    c.eval_batch_size = 1000
    c.total_steps = EPOCHS * ITERS_PER_EPOCH
    if official:
        # timm CosineLRScheduler, per iteration (supervised/lr_scheduler.py); CLIP_GRAD: None
        simmim_optim(c.optim, base_lr=5e-4, warmup_lr=5e-7, min_lr=5e-6, warmup_steps=20 * ITERS_PER_EPOCH,
                     clip_grad=0.0)
    else:
        # mmpretrain: lr 5e-4 x batch / 512, linear warm-up from 0, re-based cosine to 1e-5, clip 5.0
        mae_optim(c.optim, blr=5e-4, min_lr=1e-5, warmup_steps=20 * ITERS_PER_EPOCH, betas=(0.9, 0.999))
        c.optim.lr_scale_batch = 512
        c.optim.clip_grad = 5.0
    c.log_every = 100
    c.eval_every = 5 * ITERS_PER_EPOCH
    c.checkpoint_every = 5 * ITERS_PER_EPOCH
    # Accelerators: bf16 forward / backward on float32 master weights, loss and AdamW state
    # (jaxmim.steps.accumulate_gradients); every family's loss tracks float32 within 0.5 % over 50 steps
    # (tests/test_bf16.py). --config.compute_dtype=float32 for full precision (on CPU bf16 is emulated, slower).
    c.compute_dtype = 'bfloat16'
    return c
