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

from jaxmim.config import pretrain_defaults
from jaxmim.recipes import demo_mae_pretrain


def get_config(arg=None):
    del arg
    c = pretrain_defaults('mae')
    c.model.name = 'mae_hivit_demo_patch4_32_dec128d2b'
    c.method.mask_ratio = 0.75
    c.method.norm_pix_loss = True
    return demo_mae_pretrain(c, total_steps=800)
