r"""GreenMIM pre-training of a small visible-token Swin on Fashion-MNIST training images (labels unused).

    python -m jaxmim.main --config=configs/demo/greenmim_swin_fmnist.py --workdir=work/demo_greenmim/pretrain

Images: 28x28 grey, resized to 32x32 and repeated to 3 channels. Model
``green_mim_swin_demo_patch2_32_dec64b1``: patch 2 (16x16 tokens), window 4, embed 32, depths
(2, 2, 2), heads (2, 4, 8); mask units of 8x8 pixels (4x4 of them, 4 visible at ratio 0.75,
one mask per batch), decoder 1 block of 64, norm-pixel targets. Stage 1 (64 visible tokens)
runs grouped window attention, stages 2-3 the masked single-group mode. Optimizer as the
official GreenMIM/MAE pre-training (betas 0.9/0.95, per-iteration warm-up then half-cycle cosine).
Fine-tune the encoder with ``configs/demo/finetune_greenmim_fmnist.py:pretrained`` (classifier
``swin_demo_patch2_window4_32``, the same Swin with a head).
"""

from jaxmim.config import pretrain_defaults
from jaxmim.recipes import demo_mae_pretrain


def get_config(arg=None):
    del arg
    c = pretrain_defaults('greenmim')
    c.model.name = 'green_mim_swin_demo_patch2_32_dec64b1'
    c.method.mask_ratio = 0.75
    c.method.norm_pix_loss = True
    c.method.mask_mode = 'batch'
    return demo_mae_pretrain(c, total_steps=1500)   # 3.2 epochs; about 2.5 minutes of `make demo` on 2 CPU cores
