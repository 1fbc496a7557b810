r"""Linear probing of a demo encoder on labelled Fashion-MNIST (MAE's linear-probing recipe, scaled down).

    python -m jaxmim.main --config=configs/demo/linprobe_fmnist.py:pvt \
        --config.pretrained.workdir=work/demo/pretrain --workdir=work/demo/linprobe
    # any pre-training run of a demo family, e.g. MAE on the small ViT:
    python -m jaxmim.main --config=configs/demo/linprobe_fmnist.py:vit \
        --config.pretrained.workdir=work/demo_mae/pretrain --workdir=work/demo_mae/linprobe --config.total_steps=600

The classifier of each family (the model of its ``configs/demo/finetune_*_fmnist.py``) is built,
the pre-training run's encoder loaded into it and frozen; a BatchNorm (no affine) + linear head is
trained on its pooled features (``jaxmim.probe``) with LARS, warm-up and half-cycle cosine, no
regularisation (``jaxmim.recipes.demo_linprobe``: batch 256, no accumulation, 5 epochs by default,
crop area 0.85-1 and flips). ``config.pretrained.workdir`` is required.

| variant | classifier | pre-training configs it reads |
|---|---|---|
| ``vit`` | ``vit_demo_patch4_32``, class token (``global_pool=False``, as MAE's probe) | ``mae_vit_fmnist.py`` |
| ``swin`` | ``swin_demo_patch4_window4_32`` | ``simmim_swin_fmnist.py`` |
| ``pvt`` | ``pvt_demo_32`` | ``ummae_pvt_fmnist.py`` (UM-MAE or its SimMIM baseline) |
| ``hivit`` | ``hivit_demo_patch4_32`` (token mean + ``fc_norm``) | ``mae_hivit_fmnist.py`` |
| ``greenmim_swin`` | ``swin_demo_patch2_window4_32`` | ``greenmim_swin_fmnist.py`` |
| ``groupmixformer`` | ``groupmixformer_demo_32`` | ``simmim_groupmixformer_fmnist.py`` |

A pyramid's ``fc_norm`` (PVT) and HiViT's ``fc_norm`` are not pre-trained: they stay at scale 1,
bias 0, i.e. standardise each feature vector before the probe's BatchNorm. The GroupMixFormer's
BatchNorms run on the statistics of pre-training (frozen). No paper reports a Fashion-MNIST probe:
these are jaxmim's own settings.
"""

from jaxmim.config import finetune_defaults
from jaxmim.recipes import demo_linprobe

MODELS = {
    'vit': 'vit_demo_patch4_32',
    'swin': 'swin_demo_patch4_window4_32',
    'pvt': 'pvt_demo_32',
    'hivit': 'hivit_demo_patch4_32',
    'greenmim_swin': 'swin_demo_patch2_window4_32',
    'groupmixformer': 'groupmixformer_demo_32',
}
# per 256 images: the lr at batch 256 (jaxmim.recipes.demo_linprobe explains the scale). Top-1 on 2,000
# test images after 300 steps (warm-up 30) on a demo ViT pre-trained with MAE for 300 steps:
# blr 0.1 (MAE's) 27.1 %, 2 59.8 %, 8 67.3 %, 32 71.2 % (the loss rose to 4.0 during the warm-up).
BLR = 8.0


def get_config(arg='pvt'):
    if arg not in MODELS:
        raise ValueError(f'variant must be one of {list(MODELS)}, got {arg!r}')
    c = finetune_defaults()
    c.model.name = MODELS[arg]
    if arg == 'vit':
        c.model.overrides.global_pool = False   # the class token after the final norm (main_linprobe.py --cls_token)
    return demo_linprobe(c, blr=BLR)
