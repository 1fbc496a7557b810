r"""SimMIM-style masked pre-training of the small GroupMixFormer on Fashion-MNIST training images.

    python -m jaxmim.main --config=configs/demo/simmim_groupmixformer_fmnist.py --workdir=work/gmf/pretrain

No published code pre-trains GroupMixFormer with masking; this is jaxmim's own (see
``jaxmim.models.groupmixformer.GroupMixFormerForSimMIM``). The convolutions need the dense grid, so
masked tokens stay in place: masked pixels are zeroed before the stem and the stem output (stride
4, the token grid) at masked positions is replaced by a learnable mask token. SimMIM's 1x1-conv +
pixel-shuffle decoder reconstructs from the 1x1 final map (encoder stride 32), L1 loss on masked
pixels. Mask units of 8x8 pixels (2x2 tokens), ratio 0.6 (10 of 16 units masked).
"""

from jaxmim.config import pretrain_defaults
from jaxmim.recipes import demo_simmim_pretrain


def get_config(arg=None):
    del arg
    c = pretrain_defaults('simmim')
    c.model.name = 'simmim_groupmixformer_demo_32'
    c.method.encoder_stride = 32
    c.method.mask_patch_size = 8
    c.method.mask_ratio = 0.6
    return demo_simmim_pretrain(c, total_steps=800)
