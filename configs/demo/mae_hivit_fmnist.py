r"""MAE pre-training of a small HiViT on Fashion-MNIST training images (labels unused).

    python -m jaxmim.main --config=configs/demo/mae_hivit_fmnist.py --workdir=work/demo_hivit/pretrain
    python -m jaxmim.main --config=configs/demo/finetune_hivit_fmnist.py:pretrained \
        --config.pretrained.workdir=work/demo_hivit/pretrain --workdir=work/demo_hivit/finetune

Images: 28x28 grey, resized to 32x32 and repeated to 3 channels. HiViT demo
(``mae_hivit_demo_patch4_32_dec128d2b``): 4x4-px units (8x8 = 64 units) of 1x1-px inner tokens
(inner_patches 4, a per-pixel stem), stage widths 32 / 64 / 128, depths (1, 1, 6) (2 MLP
blocks, merge, 2 MLP blocks, merge, 6 attention blocks), 4 heads, no RPE, hifeat encoder
output (512 + 256 + 128 = 896 per unit); decoder 2 blocks of 128; 75% of the units masked (16
visible), norm-pixel targets; MAE's optimizer (betas 0.9/0.95, per-iteration warm-up then
half-cycle cosine), the same schedule as the ViT demo (``mae_vit_fmnist.py``).
"""

from jaxmim.config import fashion_mnist_data, pretrain_defaults


def get_config(arg=None):
    del arg
    c = pretrain_defaults('mae')
    c.model.name = 'mae_hivit_demo_patch4_32_dec128d2b'
    c.method.mask_ratio = 0.75
    c.method.norm_pix_loss = True
    fashion_mnist_data(c.data, crop_scale=(0.2, 1.0))   # MAE's pre-training crop area
    c.batch_size = 128
    c.total_steps = 800
    c.optim.schedule = 'mae_cosine'
    c.optim.base_lr = 1.5e-3        # per 256 images: 7.5e-4 at batch 128
    c.optim.lr_scale_batch = 256
    c.optim.lr_scale_fields = ('base_lr',)
    c.optim.warmup_lr = 0.0
    c.optim.min_lr = 0.0
    c.optim.warmup_steps = 50
    c.optim.betas = (0.9, 0.95)
    c.optim.weight_decay = 0.05
    c.optim.clip_grad = 0.0
    c.log_every = 50
    c.checkpoint_every = 500
    return c
