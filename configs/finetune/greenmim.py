r"""Fine-tuning a GreenMIM-pre-trained Swin on ImageNet-1K at 224 px through the SimMIM path.

    python -m jaxmim.main --config=configs/finetune/greenmim.py:swin_base_win7 \
        --config.pretrained.workdir=<GreenMIM pre-training workdir> --workdir=<out> \
        --config.data.data_dir=/path/to/tensorflow_datasets

Variants (``LayneH/GreenMIM@b981012 ft_configs/*.yaml`` run with ``microsoft/SimMIM@d3e29bc
main_finetune.py``; per-512-image learning rates):

====================  ================================  ============================  ====  ========  ======
variant               classifier                        BASE / WARMUP / MIN lr        LD    drop path  top-1
====================  ================================  ============================  ====  ========  ======
``swin_base_win7``    ``swin_base_patch4_window7_224``   1.25e-3 / 2.5e-7 / 2.5e-7    0.9   0.1       83.8
``swin_large_win14``  ``swin_large_patch4_window14_224`` 1.0e-3 / 2.0e-7 / 3.5e-7     0.8   0.3       85.1
====================  ================================  ============================  ====  ========  ======

``greenmim_finetune_swin_base_img224_win7.yaml`` is SimMIM's
``simmim_finetune__swin_base__img224_window7__100ep.yaml`` but for its name and tag. Both: 100
epochs, 20 warm-up, weight decay 0.05, and SimMIM's inherited defaults (AdamW (0.9, 0.999) eps 1e-8,
clip 5.0, lagged cosine per iteration, label smoothing 0.1, Mixup 0.8 / CutMix 1.0, RandAugment
rand-m9-mstd0.5-inc1, random erasing 0.25, bicubic, centre-crop evaluation;
``jaxmim.recipes.timm_recipe``). Batch 768 (README: 48 x 16 GPUs); top-1 as the GreenMIM README
reports. The classifier's LayerNorm eps is 1e-5 (SimMIM's Swin) while pre-training used 1e-6; the
pre-trained encoder (``encoder.*``, official Swin names) is unwrapped by
``jaxmim.train.load_pretrained`` (or extract it first with ``python -m convert.extract_backbone``);
the window is the pre-training window, so no bias-table resize.
"""

from jaxmim.config import finetune_defaults
from jaxmim.recipes import imagenet_data, simmim_optim, timm_recipe

BATCH = 768
ITERS_PER_EPOCH = 1_281_167 // BATCH
# variant: (classifier, drop path, (base, warm-up, min) lr per 512 images, layer decay)
VARIANTS = {
    'swin_base_win7': ('swin_base_patch4_window7_224', 0.1, (1.25e-3, 2.5e-7, 2.5e-7), 0.9),
    'swin_large_win14': ('swin_large_patch4_window14_224', 0.3, (1.0e-3, 2.0e-7, 3.5e-7), 0.8),
}


def get_config(arg='swin_base_win7'):
    if arg not in VARIANTS:
        raise ValueError(f'variant must be one of {list(VARIANTS)}, got {arg!r}')
    model, drop_path, (base_lr, warmup_lr, min_lr), layer_decay = VARIANTS[arg]
    c = timm_recipe(finetune_defaults())
    c.model.name = model
    c.model.overrides.drop_path_rate = drop_path
    imagenet_data(c.data, 224)
    c.batch_size = BATCH
    c.eval_batch_size = 1024
    c.total_steps = 100 * ITERS_PER_EPOCH
    simmim_optim(c.optim, base_lr=base_lr, warmup_lr=warmup_lr, min_lr=min_lr, warmup_steps=20 * ITERS_PER_EPOCH)
    c.optim.layer_decay = layer_decay
    c.accum_steps = 1
    c.log_every = 100
    c.eval_every = 5 * ITERS_PER_EPOCH
    c.checkpoint_every = 5 * ITERS_PER_EPOCH
    # Accelerators: bf16 forward / backward on float32 master weights, loss and AdamW state
    # (jaxmim.steps.accumulate_gradients); every family's loss tracks float32 within 0.5 % over 50 steps
    # (tests/test_bf16.py). --config.compute_dtype=float32 for full precision (on CPU bf16 is emulated, slower).
    c.compute_dtype = 'bfloat16'
    return c
