r"""SimMIM pre-training of a small Swin on Fashion-MNIST training images (labels unused).

    python -m jaxmim.main --config=configs/demo/simmim_swin_fmnist.py --workdir=work/demo/pretrain

Images: 28x28 grey, resized to 32x32 and repeated to 3 channels. Swin demo variant: patch 4
(8x8 tokens), window 4, embed_dim 64, depths (2, 2, 2), heads (2, 4, 8); encoder stride 16
(the decoder predicts 16x16-pixel units); mask units of 8x8 pixels (4x4 of them, 10 masked at
ratio 0.6), i.e. 2x2 model patches each.
"""

from jaxmim.config import pretrain_defaults
from jaxmim.recipes import demo_simmim_pretrain


def get_config(arg=None):
    del arg
    c = pretrain_defaults('simmim')
    c.model.name = 'simmim_swin_demo_patch4_window4_32'
    c.method.encoder_stride = 16
    c.method.mask_patch_size = 8
    c.method.mask_ratio = 0.6
    return demo_simmim_pretrain(c, total_steps=800)
