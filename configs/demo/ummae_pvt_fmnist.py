r"""UM-MAE pre-training of a small PVT on Fashion-MNIST training images (labels unused).

    python -m jaxmim.main --config=configs/demo/ummae_pvt_fmnist.py --workdir=work/demo_ummae/pretrain
    python -m jaxmim.main --config=configs/demo/finetune_pvt_fmnist.py:pretrained \
        --config.pretrained.workdir=work/demo_ummae/pretrain --workdir=work/demo_ummae/finetune
    # the SimMIM baseline on the same backbone:
    python -m jaxmim.main --config=configs/demo/ummae_pvt_fmnist.py:simmim --workdir=work/demo_ummae/simmim

This is the pre-training stage of ``make demo`` (``launch/demo.py``).

Images: 28x28 grey, resized to 32x32 and repeated to 3 channels. ``mae_pvt_demo_32``: patch 4,
8-px mask units (a 4x4 unit grid), embed dims 64/128/256, depths 2/2/2, heads 1/2/4, sr 2/1/1 on
the 16x16-px compact image. The decoder is narrowed here to 96 x 1 block (the registered default
is 128 x 2): the decoder is most of a pre-training step's FLOPs on this small encoder, and one
96-wide block makes the step about 1.8x faster (1,520 against 830 images/s on 2 CPU cores).
At equal time that buys more pre-training epochs, which fine-tuned better on Fashion-MNIST (README,
"What the demo does"). MAE (He et al. 2022, Table 1a) finds fine-tuning insensitive to decoder depth.
Uniform Sampling keeps one unit per 2x2 block (4 of 16 visible), Secondary Masking 0.25 turns 1 of
them into ``vis_mask_token``; norm-pix MSE. MAE's optimizer (betas 0.9/0.95, per-iteration warm-up,
half-cycle cosine). The ``simmim`` variant trains ``simmim_pvt_demo_32`` (full resolution, sr
4/2/1, random 75 % masks, L1).
"""

from jaxmim.config import pretrain_defaults
from jaxmim.recipes import demo_mae_pretrain


def get_config(arg='ummae'):
    if arg not in ('ummae', 'simmim'):
        raise ValueError(f"variant must be 'ummae' or 'simmim', got {arg!r}")
    if arg == 'ummae':
        c = pretrain_defaults('ummae')
        c.model.name = 'mae_pvt_demo_32'
        c.method.vis_mask_ratio = 0.25
        c.method.sampling = 'uniform'
        c.method.norm_pix_loss = True
        c.model.overrides.decoder_embed_dim = 96
        c.model.overrides.decoder_depth = 1
    else:
        c = pretrain_defaults('ummae_simmim')
        c.model.name = 'simmim_pvt_demo_32'
        c.method.sampling = 'random'
    c.method.mask_ratio = 0.75
    return demo_mae_pretrain(c, total_steps=2400)   # 5.1 epochs; about 5 minutes of `make demo` on 2 CPU cores
