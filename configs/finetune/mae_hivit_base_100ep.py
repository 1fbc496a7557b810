r"""Fine-tuning an MAE HiViT-B on ImageNet-1K at 224 px (zhangxiaosong18/hivit@2718339 self_supervised).

    python -m jaxmim.main --config=configs/finetune/mae_hivit_base_100ep.py \
        --config.pretrained.workdir=<MAE HiViT pre-training workdir, or one made by convert.import> \
        --workdir=<out> --config.data.data_dir=/path/to/tensorflow_datasets

Recipe (zhangxiaosong18/hivit@2718339 ``self_supervised/get_started.md:33-38``,
``main_finetune.py``, ``util/lr_decay.py:16-84``, ``util/datasets.py:31-65``): ``hivit_base`` with
the relative position bias switched on, its tables starting at exactly zero (``rpe_init='zeros'``:
pre-training had none), APE and every block loaded from pre-training, ``fc_norm`` and the head fresh
(head N(0, 2e-5)); drop path 0.2; layer-wise lr decay 0.85 over 30 ids (patch embed / APE 0, the 28
non-merge blocks 1-28, a merge inheriting the id of the block before it, head 29); AdamW betas (0.9,
0.999), weight decay 0.05 (none on 1-D tensors, biases, ``absolute_pos_embed``,
``*.relative_position_bias_table``); batch 1024 (8 x 64 x accum 2), base lr 5e-4 per 256 images (lr
2e-3), per-iteration warm-up over 5 epochs then half-cycle cosine to 1e-6, no clipping, 100 epochs;
timm augmentation (RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25, mixup 0.8 / cutmix 1.0,
label smoothing 0.1); evaluation resize 256 + centre crop 224. Reported: 84.6 top-1 (1600-epoch
pre-training).
"""

from jaxmim.config import finetune_defaults
from jaxmim.recipes import imagenet_data, mae_optim, timm_recipe

BATCH = 1024
ITERS_PER_EPOCH = 1_281_167 // BATCH   # 1251


def get_config(arg=None):
    del arg
    c = timm_recipe(finetune_defaults())
    c.model.name = 'hivit_base'
    c.model.overrides.drop_path_rate = 0.2
    c.model.overrides.rpe = True
    c.model.overrides.rpe_init = 'zeros'       # self_supervised/models/models_hivit.py:20-22
    c.model.overrides.head_init_std = 2e-5     # main_finetune.py:249
    imagenet_data(c.data, 224)
    c.batch_size = BATCH
    c.eval_batch_size = 1000
    c.total_steps = 100 * ITERS_PER_EPOCH
    mae_optim(c.optim, blr=5e-4, min_lr=1e-6, warmup_steps=5 * ITERS_PER_EPOCH, betas=(0.9, 0.999))
    c.optim.layer_decay = 0.85
    c.pretrained.required = True
    c.log_every = 100
    c.eval_every = 5 * ITERS_PER_EPOCH
    c.checkpoint_every = 5 * ITERS_PER_EPOCH
    # Accelerators: bf16 forward / backward on float32 master weights, loss and AdamW state
    # (jaxmim.steps.accumulate_gradients); every family's loss tracks float32 within 0.5 % over 50 steps
    # (tests/test_bf16.py). --config.compute_dtype=float32 for full precision (on CPU bf16 is emulated, slower).
    c.compute_dtype = 'bfloat16'
    return c
