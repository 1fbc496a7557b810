r"""GreenMIM pre-training on ImageNet-1K at 224 px, one variant per official launcher (LayneH/GreenMIM).

    python -m jaxmim.main --config=configs/pretrain/greenmim.py:twins_large --workdir=gs://bucket/greenmim_twins_large \
        --config.data.data_dir=/path/to/tensorflow_datasets

Variants (``LayneH/GreenMIM@b981012 scripts/*.sh``, ``main_pretrain.py:121-180``, ``util/lr_sched.py:9-21``):

===================  ==============================================  ======  ===========  ======  =======
variant              model                                           blr     batch        epochs  warm-up
===================  ==============================================  ======  ===========  ======  =======
``swin_base_win7``   ``green_mim_swin_base_patch4_dec512b1``         1.0e-4  256 x 8      800     40
``swin_base_win14``  ``green_mim_swin_base_patch4_win14_dec512b1``   1.5e-4  256 x 8      800     40
``swin_large_win14`` ``green_mim_swin_large_patch4_win14_dec512b1``  1.0e-4  256 x 8      800     40
``twins_large``      ``green_mim_twins_large_patch4_dec512b1``       1.5e-4  512 x 8      100     40
===================  ==============================================  ======  ===========  ======  =======

Swin: the ``srun_*`` launchers (the paper-like settings; ``srun_greenmim_swin_base.sh``'s model
name carries the v1 typo ``_dec5121b1``), NTASKS taken as 8. Twins-L: ``run_greenmim_twins_large.sh``
(``BS=512``, ``NPROC=8`` processes, although it exposes 4 GPUs), effective batch 4096,
``--save_freq 25``; GreenMIM has no Twins fine-tuning recipe and jaxmim no Twins classifier.
Every variant (the encoder on the 12 visible of 49 32-px units, decoder 1 block x 512): mask ratio
0.75 with one mask per batch, norm-pixel targets; AdamW betas (0.9, 0.95), weight decay 0.05 (none
on 1-D tensors, biases, ``*position_bias*`` and ``*token*``), no gradient clipping;
lr = blr x batch / 256, per-iteration linear warm-up then half-cycle cosine to 0;
RandomResizedCrop(224, scale (0.2, 1.0), bicubic) + horizontal flip, ImageNet mean/std. The
official runs used fp16 autocast. Grouping / block indices are computed on the host
(``inputs_from='pipeline'``: NumPy in the input pipeline).
"""

from jaxmim.config import pretrain_defaults
from jaxmim.recipes import imagenet_data, mae_optim

IMAGENET_TRAIN = 1_281_167
# variant: (model, blr, per-device batch, devices, epochs, warm-up epochs, checkpoint every (epochs))
VARIANTS = {
    'swin_base_win7': ('green_mim_swin_base_patch4_dec512b1', 1.0e-4, 256, 8, 800, 40, 20),
    'swin_base_win14': ('green_mim_swin_base_patch4_win14_dec512b1', 1.5e-4, 256, 8, 800, 40, 20),
    'swin_large_win14': ('green_mim_swin_large_patch4_win14_dec512b1', 1.0e-4, 256, 8, 800, 40, 20),
    'twins_large': ('green_mim_twins_large_patch4_dec512b1', 1.5e-4, 512, 8, 100, 40, 25),
}


def get_config(arg='swin_base_win7'):
    if arg not in VARIANTS:
        raise ValueError(f'variant must be one of {list(VARIANTS)}, got {arg!r}')
    model, blr, per_device, devices, epochs, warmup, save_every = VARIANTS[arg]
    batch = per_device * devices
    iters_per_epoch = IMAGENET_TRAIN // batch
    c = pretrain_defaults('greenmim')
    c.model.name = model
    c.method.mask_ratio = 0.75
    c.method.norm_pix_loss = True
    c.method.mask_mode = 'batch'
    c.method.inputs_from = 'pipeline'
    imagenet_data(c.data, 224, crop_scale=(0.2, 1.0), interpolation='bicubic')
    c.batch_size = batch
    c.total_steps = epochs * iters_per_epoch
    mae_optim(c.optim, blr=blr, min_lr=0.0, warmup_steps=warmup * iters_per_epoch, betas=(0.9, 0.95))
    c.log_every = 100
    c.checkpoint_every = save_every * iters_per_epoch
    c.keep_checkpoints = 3
    # Accelerators: bf16 forward / backward on float32 master weights, loss and AdamW state
    # (jaxmim.steps.accumulate_gradients); every family's loss tracks float32 within 0.5 % over 50 steps
    # (tests/test_bf16.py). --config.compute_dtype=float32 for full precision (on CPU bf16 is emulated, slower).
    c.compute_dtype = 'bfloat16'
    return c
