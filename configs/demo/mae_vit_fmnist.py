r"""MAE pre-training of a small ViT on Fashion-MNIST training images (labels unused).

    python -m jaxmim.main --config=configs/demo/mae_vit_fmnist.py --workdir=work/demo_mae/pretrain
    python -m jaxmim.main --config=configs/demo/finetune_vit_fmnist.py:pretrained \
        --config.pretrained.workdir=work/demo_mae/pretrain --workdir=work/demo_mae/finetune

Images: 28x28 grey, resized to 32x32 and repeated to 3 channels. ViT demo: patch 4 (8x8 = 64
tokens), embed 128, depth 6, 4 heads; decoder 2 blocks of 128; 75% of the patches masked
(16 visible), norm-pixel targets; MAE's optimizer (betas 0.9/0.95, per-iteration warm-up then
half-cycle cosine).
"""

from jaxmim.config import pretrain_defaults
from jaxmim.recipes import demo_mae_pretrain


def get_config(arg=None):
    del arg
    c = pretrain_defaults('mae')
    c.model.name = 'mae_vit_demo_patch4_32_dec128d2b'
    c.method.mask_ratio = 0.75
    c.method.norm_pix_loss = True
    return demo_mae_pretrain(c, total_steps=800)
