r"""UM-MAE pre-training on ImageNet-1K: a variant per target of the official Makefile (implus/UM-MAE),
plus the 800-epoch PVT-S and Swin-T runs (40 warm-up epochs), which are jaxmim's own (no Makefile
target).

    python -m jaxmim.main --config=configs/pretrain/ummae.py:swin_tiny_200ep \
        --workdir=<out> --config.data.data_dir=/path/to/tensorflow_datasets
    # masks made by the input pipeline, as the official data loader does:
    ... --config.method.inputs_from=pipeline

Variants (``<model>_<epochs>``; implus/UM-MAE@cb7776b ``Makefile``, lines as below):

=====================  ==================================  ====================================================
variant                model                               official target; reported top-1 after 100-ep fine-tune
=====================  ==================================  ====================================================
``pvt_small_200ep``    ``mae_pvt_small_256``               ``pretrain_mae_pvt_small_256_mask_vmr025_200e`` (line
``pvt_small_800ep``    (sr 4/2/1/1 on the half-resolution  70): 79.31, 21.3 h on 8 GPUs (SimMIM 79.28, 38.0 h)
                       compact image, decoder 512 x 2)
``swin_tiny_200ep``    ``mae_swin_tiny_256`` (window 8 on  ``pretrain_mae_swin_tiny_256_mask_vmr025_200e`` (line
``swin_tiny_800ep``    the compact image, log-MLP position 35, PRETRAIN.md): 82.04, 25.0 h (SimMIM 82.20,
                       bias, decoder 512 x 2)              49.3 h)
``swin_large_800ep``   ``mae_swin_large_256`` (embed 192,  ``..._swin_large_256_mask_vmr025_800e`` (line 105):
                       depths 2/2/18/2, decoder 512 x 8)   85.2 (SimMIM Swin-L 800 ep: 85.4); 64 x accum 8
``vit_base_mae_200ep`` ``mae_vit_base_patch16_dec512d2b``  line 1: MAE baseline, random sampling, 224 px: 82.88
``vit_base_200ep``     (ViT-B/16, decoder 512 x 2)         line 17: Uniform Sampling + Secondary Masking: 82.88
=====================  ==================================  ====================================================

Common recipe: Uniform Sampling of the mask units (``--mask_regular``; 16-px units on the 256-px
pyramids, the 14 x 14 patch grid on ViT), mask ratio 0.75, Secondary Masking 0.25 (a quarter of the
visible units become ``vis_mask_token``), norm-pix MSE on the masked units; AdamW betas (0.9, 0.95),
weight decay 0.05 (none on 1-D tensors and biases; mask tokens decayed, posmlp conv kernels too), no
clipping; effective batch 4096 (128 x accum 4 x 8 GPUs), base lr 1.5e-4 per 256 images (lr 2.4e-3),
per-iteration warm-up 10 epochs (40 for 800) from 0 then half-cycle cosine to 0;
RandomResizedCrop(size, scale (0.2, 1), bicubic) + flip. ``official_decoder_pos`` is False (the
corrected decoder placement; the official ``models_mae_pvt.py:358-407`` and
``models_mae_swin.py:499-548`` give visible tokens raster-order decoder positions). The SimMIM
baselines are ``configs/pretrain/ummae_simmim_256.py``; the facebookresearch/mae recipe (8-block
decoder, argsort masking) is ``configs/pretrain/mae_vit_base_800ep.py``.
"""

from jaxmim.config import pretrain_defaults
from jaxmim.recipes import imagenet_data, mae_optim

BATCH = 4096
ITERS_PER_EPOCH = 1_281_167 // BATCH   # 312
# variant: (model, image size, epochs, warm-up epochs, sampling, vis_mask_ratio)
VARIANTS = {
    'pvt_small_200ep': ('mae_pvt_small_256', 256, 200, 10, 'uniform', 0.25),
    'pvt_small_800ep': ('mae_pvt_small_256', 256, 800, 40, 'uniform', 0.25),
    'swin_tiny_200ep': ('mae_swin_tiny_256', 256, 200, 10, 'uniform', 0.25),
    'swin_tiny_800ep': ('mae_swin_tiny_256', 256, 800, 40, 'uniform', 0.25),
    'swin_large_800ep': ('mae_swin_large_256', 256, 800, 40, 'uniform', 0.25),
    'vit_base_mae_200ep': ('mae_vit_base_patch16_dec512d2b', 224, 200, 10, 'random', 0.0),
    'vit_base_200ep': ('mae_vit_base_patch16_dec512d2b', 224, 200, 10, 'uniform', 0.25),
}


def get_config(arg='swin_tiny_200ep'):
    if arg not in VARIANTS:
        raise ValueError(f'variant must be one of {list(VARIANTS)}, got {arg!r}')
    model, size, epochs, warmup, sampling, vis_mask_ratio = VARIANTS[arg]
    c = pretrain_defaults('ummae')
    c.model.name = model
    c.method.mask_ratio = 0.75
    c.method.vis_mask_ratio = vis_mask_ratio
    c.method.sampling = sampling
    c.method.norm_pix_loss = True
    imagenet_data(c.data, size, crop_scale=(0.2, 1.0), interpolation='bicubic')
    c.batch_size = BATCH
    c.accum_steps = 1     # official --accum_iter 4 (8 for Swin-L): memory only, raise it if needed
    c.total_steps = epochs * ITERS_PER_EPOCH
    mae_optim(c.optim, blr=1.5e-4, min_lr=0.0, warmup_steps=warmup * ITERS_PER_EPOCH, betas=(0.9, 0.95))
    c.log_every = 100
    c.checkpoint_every = 20 * ITERS_PER_EPOCH
    c.keep_checkpoints = 3
    # Accelerators: bf16 forward / backward on float32 master weights, loss and AdamW state
    # (jaxmim.steps.accumulate_gradients); every family's loss tracks float32 within 0.5 % over 50 steps
    # (tests/test_bf16.py). --config.compute_dtype=float32 for full precision (on CPU bf16 is emulated, slower).
    c.compute_dtype = 'bfloat16'
    return c
