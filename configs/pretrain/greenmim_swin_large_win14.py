r"""GreenMIM pre-training of Swin-L window 14 at 224 px on ImageNet-1K, the official recipe.

    python -m jaxmim.main --config=configs/pretrain/greenmim_swin_large_win14.py --workdir=gs://bucket/greenmim_swin_large_win14 \
        --config.data.data_dir=/path/to/tensorflow_datasets

Recipe (LayneH/GreenMIM@b981012 scripts/srun_greenmim_swin_large_win14.sh (blr 1e-4, 256/GPU, 800 ep, warm-up 40); main_pretrain.py; spec greenmim.md §10): model
``green_mim_swin_large_patch4_win14_dec512b1`` (encoder on the 12 visible of 49 32-px units, decoder 1 block x 512), mask ratio
0.75 with one mask per batch, norm-pixel targets; AdamW betas (0.9, 0.95), weight decay 0.05
(none on 1-D tensors, biases, ``*position_bias*`` and ``*token*``), no gradient clipping;
effective batch 2048 (256 per task, the launcher's NTASKS taken as 8), lr = blr x batch / 256, per-iteration linear warm-up over
40 epochs then half-cycle cosine to 0; RandomResizedCrop(224, scale (0.2, 1.0), bicubic) +
horizontal flip, ImageNet mean/std. The official run used fp16 autocast. Grouping indices are
computed on the host (``inputs_from='pipeline'``: NumPy in the input pipeline).
"""

from jaxmim.config import pretrain_defaults

BATCH = 2048
ITERS_PER_EPOCH = 1_281_167 // BATCH   # 625


def get_config(arg=None):
    del arg
    c = pretrain_defaults('greenmim')
    c.model.name = 'green_mim_swin_large_patch4_win14_dec512b1'
    c.method.mask_ratio = 0.75
    c.method.norm_pix_loss = True
    c.method.mask_mode = 'batch'
    c.method.inputs_from = 'pipeline'
    c.data.dataset = 'imagenet2012'
    c.data.train_split = 'train'
    c.data.eval_split = 'validation'
    c.data.image_size = 224
    c.data.crop_scale = (0.2, 1.0)
    c.data.crop_ratio = (3.0 / 4.0, 4.0 / 3.0)
    c.data.interpolation = 'bicubic'
    c.data.hflip = True
    c.batch_size = BATCH
    c.total_steps = 800 * ITERS_PER_EPOCH
    c.optim.schedule = 'mae_cosine'
    c.optim.base_lr = 1.0e-4               # --blr, per 256 images
    c.optim.lr_scale_batch = 256
    c.optim.lr_scale_fields = ('base_lr',)
    c.optim.warmup_lr = 0.0
    c.optim.min_lr = 0.0
    c.optim.warmup_steps = 40 * ITERS_PER_EPOCH
    c.optim.betas = (0.9, 0.95)
    c.optim.weight_decay = 0.05
    c.optim.clip_grad = 0.0
    c.log_every = 100
    c.checkpoint_every = 20 * ITERS_PER_EPOCH
    c.keep_checkpoints = 3
    return c
