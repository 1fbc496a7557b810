r"""UM-MAE pre-training of the PVT-S variant on ImageNet-1K at 256 px (implus/UM-MAE Makefile line 70).

    python -m jaxmim.main --config=configs/pretrain/ummae_pvt_small_256.py:200ep \
        --workdir=<out> --config.data.data_dir=/path/to/tensorflow_datasets
    # masks made by the input pipeline, as the official data loader does:
    ... --config.method.inputs_from=pipeline

Recipe (``make pretrain_mae_pvt_small_256_mask_vmr025_200e``; spec ``ummae.md`` §10): model
``mae_pvt_small_256`` (sr 4/2/1/1 on the half-resolution compact image, decoder 512 x 2 blocks),
Uniform Sampling of 16-px units (``--mask_regular``, mask ratio 0.75: 64 of 256 visible), Secondary
Masking 0.25 (16 of the 64 visible units become ``vis_mask_token``), norm-pix MSE on the masked
units; AdamW betas (0.9, 0.95), weight decay 0.05 (none on 1-D tensors and biases; mask tokens
decayed), no clipping; effective batch 4096 (128 x accum 4 x 8 GPUs), base lr 1.5e-4 per 256
images (lr 2.4e-3), per-iteration warm-up 10 epochs (40 for 800) from 0 then half-cycle cosine to
0; RandomResizedCrop(256, scale (0.2, 1), bicubic) + flip. Reported (200 epochs, then 100-epoch
fine-tuning): 79.31 top-1, 21.3 h pre-training on 8 GPUs (SimMIM baseline 79.28, 38.0 h).
``official_decoder_pos`` is False here (the corrected decoder placement, spec §17 #1).
"""

from jaxmim.config import pretrain_defaults

BATCH = 4096
ITERS_PER_EPOCH = 1_281_167 // BATCH   # 312
EPOCHS = {'200ep': (200, 10), '800ep': (800, 40)}


def get_config(arg='200ep'):
    if arg not in EPOCHS:
        raise ValueError(f'variant must be one of {list(EPOCHS)}, got {arg!r}')
    epochs, warmup = EPOCHS[arg]
    c = pretrain_defaults('ummae')
    c.model.name = 'mae_pvt_small_256'
    c.method.mask_ratio = 0.75
    c.method.vis_mask_ratio = 0.25
    c.method.sampling = 'uniform'
    c.method.norm_pix_loss = True
    c.data.dataset = 'imagenet2012'
    c.data.train_split = 'train'
    c.data.eval_split = 'validation'
    c.data.image_size = 256
    c.data.crop_scale = (0.2, 1.0)
    c.data.crop_ratio = (3.0 / 4.0, 4.0 / 3.0)
    c.data.interpolation = 'bicubic'
    c.data.hflip = True
    c.batch_size = BATCH
    c.accum_steps = 1                      # official --accum_iter 4 (128 x 4 x 8 GPUs); memory only: raise it if needed
    c.total_steps = epochs * ITERS_PER_EPOCH
    c.optim.schedule = 'mae_cosine'
    c.optim.base_lr = 1.5e-4               # --blr, per 256 images
    c.optim.lr_scale_batch = 256
    c.optim.lr_scale_fields = ('base_lr',)
    c.optim.warmup_lr = 0.0
    c.optim.min_lr = 0.0
    c.optim.warmup_steps = warmup * ITERS_PER_EPOCH
    c.optim.betas = (0.9, 0.95)
    c.optim.weight_decay = 0.05
    c.optim.clip_grad = 0.0
    c.log_every = 100
    c.checkpoint_every = 20 * ITERS_PER_EPOCH
    c.keep_checkpoints = 3
    return c
