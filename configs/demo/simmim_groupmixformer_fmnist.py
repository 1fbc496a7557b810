r"""SimMIM-style masked pre-training of the small GroupMixFormer on Fashion-MNIST training images.

    python -m jaxmim.main --config=configs/demo/simmim_groupmixformer_fmnist.py --workdir=work/gmf/pretrain

No published code pre-trains GroupMixFormer with masking; this is jaxmim's own (see
``jaxmim.models.groupmixformer.GroupMixFormerForSimMIM``). The convolutions need the dense grid, so
masked tokens stay in place: masked pixels are zeroed before the stem and the stem output (stride
4, the token grid) at masked positions is replaced by a learnable mask token. SimMIM's 1x1-conv +
pixel-shuffle decoder reconstructs from the 1x1 final map (encoder stride 32), L1 loss on masked
pixels. Mask units of 8x8 pixels (2x2 tokens), ratio 0.6 (10 of 16 units masked).
"""

from jaxmim.config import fashion_mnist_data, pretrain_defaults


def get_config(arg=None):
    del arg
    c = pretrain_defaults('simmim')
    c.model.name = 'simmim_groupmixformer_demo_32'
    c.method.encoder_stride = 32
    c.method.mask_patch_size = 8
    c.method.mask_ratio = 0.6
    fashion_mnist_data(c.data, crop_scale=(0.67, 1.0))   # SimMIM's pre-training crop area
    c.batch_size = 128
    c.total_steps = 800
    c.optim.base_lr = 4e-3          # per 512 images: 1e-3 at batch 128
    c.optim.warmup_lr = 1e-5
    c.optim.min_lr = 1e-5
    c.optim.warmup_steps = 50
    c.optim.weight_decay = 0.05
    c.log_every = 50
    c.checkpoint_every = 500
    return c
