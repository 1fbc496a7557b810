r"""The SimMIM baselines of the UM-MAE repository at 256 px: PVT-S and Swin-T (Makefile lines 89 and 54).

    python -m jaxmim.main --config=configs/pretrain/ummae_simmim_256.py:pvt_small_200ep --workdir=<out> \
        --config.data.data_dir=/path/to/tensorflow_datasets
    python -m jaxmim.main --config=configs/pretrain/ummae_simmim_256.py:swin_tiny_200ep --workdir=<out> ...

Recipe (implus/UM-MAE@cb7776b ``Makefile`` lines 54 and 89, ``models_simmim_pvt.py:211-217``,
``models_simmim_swin.py:212-218``, ``main_pretrain.py:198-199``, ``mask_transform.py:58-63``):
``simmim_pvt_small_256`` (sr 8/4/2/1) / ``simmim_swin_tiny_256`` (window 16) on the full-resolution
image, masked tokens replaced by ``mask_token``, one linear layer + PixelShuffle(2) predicting 16-px
units, L1 on the masked units against the raw normalised pixels; random sampling of 16-px units,
ratio 0.75 (no ``--mask_regular``); AdamW betas (0.9, 0.95), weight decay 0.05, no clipping,
effective batch 4096 (PVT 128 x accum 4, Swin 64 x accum 8, x 8 GPUs), base lr 1.5e-4 per 256
images, warm-up 10 epochs, half-cycle cosine to 0, 200 epochs; RandomResizedCrop(256, (0.2, 1),
bicubic) + flip. Reported after 100-epoch fine-tuning: PVT-S 79.28 (38.0 h pre-training), Swin-T
82.20 (49.3 h).
"""

from jaxmim.config import pretrain_defaults
from jaxmim.recipes import imagenet_data, mae_optim

BATCH = 4096
ITERS_PER_EPOCH = 1_281_167 // BATCH   # 312
VARIANTS = {'pvt_small_200ep': ('simmim_pvt_small_256', 4), 'swin_tiny_200ep': ('simmim_swin_tiny_256', 8)}


def get_config(arg='swin_tiny_200ep'):
    if arg not in VARIANTS:
        raise ValueError(f'variant must be one of {list(VARIANTS)}, got {arg!r}')
    model, _ = VARIANTS[arg]
    c = pretrain_defaults('ummae_simmim')
    c.model.name = model
    c.method.mask_ratio = 0.75
    c.method.sampling = 'random'
    c.method.norm_pix_loss = False
    imagenet_data(c.data, 256, crop_scale=(0.2, 1.0), interpolation='bicubic')
    c.batch_size = BATCH
    c.accum_steps = 1                      # official --accum_iter: PVT 4, Swin 8; memory only
    c.total_steps = 200 * ITERS_PER_EPOCH
    mae_optim(c.optim, blr=1.5e-4, min_lr=0.0, warmup_steps=10 * ITERS_PER_EPOCH, betas=(0.9, 0.95))
    c.log_every = 100
    c.checkpoint_every = 20 * ITERS_PER_EPOCH
    c.keep_checkpoints = 3
    # Accelerators: bf16 forward / backward on float32 master weights, loss and AdamW state
    # (jaxmim.steps.accumulate_gradients); every family's loss tracks float32 within 0.5 % over 50 steps
    # (tests/test_bf16.py). --config.compute_dtype=float32 for full precision (on CPU bf16 is emulated, slower).
    c.compute_dtype = 'bfloat16'
    return c
