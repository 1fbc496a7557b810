r"""Fine-tuning a SimMIM Swin-B on ImageNet-1K at 224 px, window 7 (microsoft/SimMIM@d3e29bc).

    python -m jaxmim.main --config=configs/finetune/simmim_swin_base_img224_window7.py:100ep \
        --config.pretrained.workdir=<pre-training workdir> --workdir=<out> \
        --config.data.data_dir=/path/to/tensorflow_datasets

Variants: 100ep (layer decay 0.9, after the 100-epoch pre-training) and 800ep (layer decay
0.8). Shared (spec simmim_swin.md §4.2): 100 epochs, 20 warm-up epochs, base lr 1.25e-3,
warmup/min lr 2.5e-7 (per 512 images, x4 at batch 2048), cosine, weight decay 0.05, drop path
0.1, label smoothing 0.1, clip 5.0. The window-6 relative-position tables of the 192-px
pre-training are resized 11x11 -> 13x13 on load (SimMIM's geometric bicubic scheme).
Not yet reproduced here: RandAugment, Mixup/CutMix and random erasing of the official recipe
(jaxmim applies random-resized-crop + flip), so expect a lower top-1 than the paper's 83.5/84.0.
"""

from jaxmim.config import finetune_defaults

ITERS_PER_EPOCH = 1_281_167 // 2048


def get_config(arg='100ep'):
    if arg not in ('100ep', '800ep'):
        raise ValueError(f"variant must be '100ep' or '800ep', got {arg!r}")
    c = finetune_defaults()
    c.model.name = 'swin_base_patch4_window7_224'
    c.model.overrides.drop_path_rate = 0.1
    c.data.dataset = 'imagenet2012'
    c.data.train_split = 'train'
    c.data.eval_split = 'validation'
    c.data.image_size = 224
    c.data.crop_scale = (0.08, 1.0)
    c.data.interpolation = 'bicubic'
    c.data.eval_crop_ratio = 224 / 256
    c.batch_size = 2048
    c.eval_batch_size = 1024
    c.total_steps = 100 * ITERS_PER_EPOCH
    c.optim.warmup_steps = 20 * ITERS_PER_EPOCH
    c.optim.schedule = 'cosine'
    c.optim.base_lr, c.optim.warmup_lr, c.optim.min_lr = 1.25e-3, 2.5e-7, 2.5e-7
    c.optim.weight_decay = 0.05
    c.optim.layer_decay = 0.9 if arg == '100ep' else 0.8
    c.label_smoothing = 0.1
    c.log_every = 100
    c.eval_every = 5 * ITERS_PER_EPOCH
    c.checkpoint_every = 5 * ITERS_PER_EPOCH
    return c
