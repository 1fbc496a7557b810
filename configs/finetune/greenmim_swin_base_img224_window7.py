r"""Fine-tuning a GreenMIM-pre-trained Swin-Base (window 7) on ImageNet-1K at 224 px through the SimMIM path.

    python -m jaxmim.main --config=configs/finetune/greenmim_swin_base_img224_window7.py \
        --config.pretrained.workdir=<GreenMIM pre-training workdir> --workdir=<out> \
        --config.data.data_dir=/path/to/tensorflow_datasets

LayneH/GreenMIM@b981012 ft_configs/greenmim_finetune_swin_base_img224_win7.yaml (identical to SimMIM's simmim_finetune__swin_base__img224_window7__100ep.yaml but name and tag), run with
SimMIM's main_finetune.py (spec greenmim.md §13): 100 epochs, 20 warm-up, BASE_LR 1.25e-3 /
WARMUP_LR 2.5e-7 / MIN_LR 2.5e-7 per 512 images, weight decay 0.05, layer decay 0.9, drop path
0.1, and SimMIM's inherited defaults (AdamW (0.9, 0.999) eps 1e-8, clip 5.0, lagged cosine per
iteration, label smoothing 0.1, Mixup 0.8 / CutMix 1.0, RandAugment rand-m9-mstd0.5-inc1, random
erasing 0.25, bicubic, centre-crop evaluation; ``jaxmim.config.timm_recipe``). Batch 768 (README:
48 x 16 GPUs). README top-1: 83.8. The classifier's LayerNorm eps is 1e-5 (SimMIM's Swin) while
pre-training used 1e-6; the pre-trained encoder (``encoder.*``, official Swin names) is
unwrapped by ``jaxmim.train.load_pretrained``; the window is the pre-training window, so no
bias-table resize.
"""

from jaxmim.config import finetune_defaults, timm_recipe

BATCH = 768
ITERS_PER_EPOCH = 1_281_167 // BATCH


def get_config(arg=None):
    del arg
    c = timm_recipe(finetune_defaults())
    c.model.name = 'swin_base_patch4_window7_224'
    c.model.overrides.drop_path_rate = 0.1
    c.data.dataset = 'imagenet2012'
    c.data.train_split = 'train'
    c.data.eval_split = 'validation'
    c.data.image_size = 224
    c.data.crop_scale = (0.08, 1.0)
    c.data.interpolation = 'bicubic'
    c.data.eval_crop_ratio = 224 / 256
    c.batch_size = BATCH
    c.eval_batch_size = 1024
    c.total_steps = 100 * ITERS_PER_EPOCH
    c.optim.warmup_steps = 20 * ITERS_PER_EPOCH
    c.optim.schedule = 'cosine'
    c.optim.base_lr, c.optim.warmup_lr, c.optim.min_lr = 1.25e-3, 2.5e-7, 2.5e-7
    c.optim.weight_decay = 0.05
    c.optim.layer_decay = 0.9
    c.optim.clip_grad = 5.0
    c.accum_steps = 1
    c.label_smoothing = 0.1
    c.log_every = 100
    c.eval_every = 5 * ITERS_PER_EPOCH
    c.checkpoint_every = 5 * ITERS_PER_EPOCH
    return c
