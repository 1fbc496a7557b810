r"""Fine-tuning an MAE HiViT-B on ImageNet-1K at 224 px (zhangxiaosong18/hivit self_supervised).

    python -m jaxmim.main --config=configs/finetune/mae_hivit_base_100ep.py \
        --config.pretrained.workdir=<MAE HiViT pre-training workdir, or one made by convert.import> \
        --workdir=<out> --config.data.data_dir=/path/to/tensorflow_datasets

Recipe (``self_supervised/get_started.md:33-38``, ``main_finetune.py``, ``util/lr_decay.py``;
spec ``hivit.md`` §11): ``hivit_base`` with the relative position bias switched on, its tables
starting at exactly zero (``rpe_init='zeros'``: pre-training had none), APE and every block loaded
from pre-training, ``fc_norm`` and the head fresh (head N(0, 2e-5)); drop path 0.2; layer-wise lr
decay 0.85 over 30 ids (patch embed / APE 0, the 28 non-merge blocks 1-28, a merge inheriting the
id of the block before it, head 29); AdamW betas (0.9, 0.999), weight decay 0.05 (none on 1-D
tensors, biases, ``absolute_pos_embed``, ``*.relative_position_bias_table``); batch 1024
(8 x 64 x accum 2), base lr 5e-4 per 256 images (lr 2e-3), per-iteration warm-up over 5 epochs
then half-cycle cosine to 1e-6, no clipping, 100 epochs; timm augmentation (RandAugment
rand-m9-mstd0.5-inc1, random erasing 0.25, mixup 0.8 / cutmix 1.0, label smoothing 0.1);
evaluation resize 256 + centre crop 224. Reported: 84.6 top-1 (1600-epoch pre-training).
"""

from jaxmim.config import finetune_defaults, timm_recipe

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
    c.data.dataset = 'imagenet2012'
    c.data.train_split = 'train'
    c.data.eval_split = 'validation'
    c.data.image_size = 224
    c.batch_size = BATCH
    c.eval_batch_size = 1000
    c.total_steps = 100 * ITERS_PER_EPOCH
    c.optim.schedule = 'mae_cosine'
    c.optim.base_lr = 5e-4                 # --blr, per 256 images
    c.optim.lr_scale_batch = 256
    c.optim.lr_scale_fields = ('base_lr',)
    c.optim.warmup_lr = 0.0
    c.optim.min_lr = 1e-6
    c.optim.warmup_steps = 5 * ITERS_PER_EPOCH
    c.optim.betas = (0.9, 0.999)
    c.optim.weight_decay = 0.05
    c.optim.layer_decay = 0.85
    c.optim.clip_grad = 0.0
    c.pretrained.required = True
    c.log_every = 100
    c.eval_every = 5 * ITERS_PER_EPOCH
    c.checkpoint_every = 5 * ITERS_PER_EPOCH
    return c
