r"""Supervised GroupMixFormer from scratch on ImageNet-1K, 300 epochs at 224 px; one variant per size.

    python -m jaxmim.main --config=configs/supervised/groupmixformer.py:small --workdir=<out> \
        --config.data.data_dir=/path/to/tensorflow_datasets

Variants ``mini`` (the official ``miny``), ``tiny``, ``small``, ``base``, ``large``: the model
``groupmixformer_<size>`` with the drop path of ``configs/groupmixformer_<size>.yaml``
(0.1 / 0.1 / 0.2 / 0.5 / 0.1). Reported (README, params / FLOPs / top-1): M 5.7M / 1.4G / 79.6,
T 11.0M / 3.7G / 82.6, S 22.4M / 5.2G / 83.4, B 45.8M / 17.6G / 84.7, L 70.3M / 36.1G / 85.0.
The L yaml starts with "# need to adjust" and its shapes give 71.83M / 38.25G, not the README's
figures; ``groupmixformer_large`` follows the yaml.

AILab-CVC/GroupMixFormer@3d3f40977c6a ``configs/groupmixformer_*.yaml``, ``config.py``,
``train.py:432-445`` (lr scaling), ``optimizer.py:4-42``, ``lr_scheduler.py:7-23``,
``data/build.py:56-62, 149-186`` (mixup, train and evaluation transforms):
batch 512 (8 GPUs x 64, README / ``run_train.sh``; which batch produced each released model is not
stated); AdamW betas (0.9, 0.999), eps 1e-8, weight decay 0.05 (none on 1-D tensors and biases;
conv kernels, depthwise included, are decayed); base lr 5e-4, warm-up lr 5e-7 and min lr 5e-6, all
three scaled by batch / 512; 20 warm-up epochs then timm's per-iteration cosine (jaxmim's
``'cosine'``), 300 epochs in all; gradient clipping at global norm 5.0; timm augmentation
(``jaxmim.recipes.timm_recipe``): RandomResizedCrop (0.08, 1) bicubic, flip, RandAugment
rand-m9-mstd0.5-inc1 (colour jitter 0.4 ignored beside it), random erasing 0.25 'pixel' x1, mixup
0.8 / cutmix 1.0 (switch 0.5, per batch), label smoothing 0.1 in the soft targets; evaluation
resize 256 bicubic + centre crop 224; no EMA, dropout 0. BatchNorm statistics (the official
SyncBatchNorm) are reduced over the global batch (``model_state``).

Mixed precision: the official apex O1 (fp16) is bf16 compute here (``compute_dtype='bfloat16'``;
BatchNorm computes its statistics in float32 and returns the input's dtype, see
tests/test_bf16_groupmixformer.py). Difference
left: one mixup lambda per global batch (timm draws one per GPU).
"""

from jaxmim.config import finetune_defaults
from jaxmim.recipes import imagenet_data, simmim_optim, timm_recipe

BATCH = 512
ITERS_PER_EPOCH = 1_281_167 // BATCH   # 2502
EPOCHS = 300
DROP_PATH = {'mini': 0.1, 'tiny': 0.1, 'small': 0.2, 'base': 0.5, 'large': 0.1}


def get_config(arg='small'):
    if arg not in DROP_PATH:
        raise ValueError(f'variant must be one of {list(DROP_PATH)}, got {arg!r}')
    c = timm_recipe(finetune_defaults())
    c.model.name = f'groupmixformer_{arg}'
    c.model.overrides.drop_path_rate = DROP_PATH[arg]
    imagenet_data(c.data, 224)
    c.batch_size = BATCH
    c.eval_batch_size = 1000
    c.total_steps = EPOCHS * ITERS_PER_EPOCH
    # timm CosineLRScheduler per iteration (lr_scheduler.py:7-23); train.py:432-445: all three lrs x batch / 512
    simmim_optim(c.optim, base_lr=5e-4, warmup_lr=5e-7, min_lr=5e-6, warmup_steps=20 * ITERS_PER_EPOCH)
    c.log_every = 100
    c.eval_every = 5 * ITERS_PER_EPOCH
    c.checkpoint_every = 5 * ITERS_PER_EPOCH
    # Accelerators: bf16 forward / backward on float32 master weights, loss and AdamW state
    # (jaxmim.steps.accumulate_gradients); every family's loss tracks float32 within 0.5 % over 50 steps
    # (tests/test_bf16.py). --config.compute_dtype=float32 for full precision (on CPU bf16 is emulated, slower).
    c.compute_dtype = 'bfloat16'
    return c
