r"""MAE pre-training of ViT-B/16 on ImageNet-1K, the official recipe (facebookresearch/mae@be47fef PRETRAIN.md).

    python -m jaxmim.main --config=configs/pretrain/mae_vit_base_800ep.py --workdir=gs://bucket/mae_vit_base_800ep \
        --config.data.data_dir=/path/to/tensorflow_datasets
    # the 1600-epoch schedule of the paper's best ViT-B:
    python -m jaxmim.main --config=configs/pretrain/mae_vit_base_800ep.py:1600ep --workdir=...

Recipe (He et al. 2022, Table 8 / PRETRAIN.md; ``main_pretrain.py``): mask ratio 0.75, norm-pixel
targets, decoder 8 blocks x 512; AdamW betas (0.9, 0.95), weight decay 0.05 (none on 1-D tensors
and biases), no gradient clipping; batch 4096, base lr 1.5e-4 per 256 images (lr 2.4e-3),
per-iteration linear warm-up over 40 epochs from 0 then half-cycle cosine to 0
(``util/lr_sched.py``); RandomResizedCrop(224, scale (0.2, 1.0), bicubic) + horizontal flip,
ImageNet mean/std. 312 iterations per epoch (1,281,167 images, last partial batch dropped).
Reported ImageNet-1K top-1 after fine-tuning (100 epochs): 83.6 (1600 ep, PRETRAIN.md).
ImageNet must be prepared with tfds first (manual download; ``tfds build imagenet2012``).
"""

from jaxmim.config import pretrain_defaults
from jaxmim.recipes import imagenet_data, mae_optim

BATCH = 4096
ITERS_PER_EPOCH = 1_281_167 // BATCH   # 312


def get_config(arg='800ep'):
    epochs = {'800ep': 800, '1600ep': 1600}
    if arg not in epochs:
        raise ValueError(f"variant must be one of {list(epochs)}, got {arg!r}")
    c = pretrain_defaults('mae')
    c.model.name = 'mae_vit_base_patch16_dec512d8b'
    c.method.mask_ratio = 0.75
    c.method.norm_pix_loss = True
    imagenet_data(c.data, 224, crop_scale=(0.2, 1.0), interpolation='bicubic')
    c.batch_size = BATCH
    c.total_steps = epochs[arg] * ITERS_PER_EPOCH
    # --blr per 256 images; MAE pre-training does not clip
    mae_optim(c.optim, blr=1.5e-4, min_lr=0.0, warmup_steps=40 * ITERS_PER_EPOCH, betas=(0.9, 0.95))
    c.log_every = 100
    c.checkpoint_every = 20 * ITERS_PER_EPOCH
    c.keep_checkpoints = 3
    # Accelerators: bf16 forward / backward on float32 master weights, loss and AdamW state
    # (jaxmim.steps.accumulate_gradients); every family's loss tracks float32 within 0.5 % over 50 steps
    # (tests/test_bf16.py). --config.compute_dtype=float32 for full precision (on CPU bf16 is emulated, slower).
    c.compute_dtype = 'bfloat16'
    return c
