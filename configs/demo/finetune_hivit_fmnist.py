r"""Fine-tuning the small HiViT on labelled Fashion-MNIST (HiViT's MAE fine-tuning recipe, scaled down).

    # from an MAE HiViT pre-training run (configs/demo/mae_hivit_fmnist.py):
    python -m jaxmim.main --config=configs/demo/finetune_hivit_fmnist.py:pretrained \
        --config.pretrained.workdir=work/demo_hivit/pretrain --workdir=work/demo_hivit/finetune
    # the same architecture and budget from random initialisation:
    python -m jaxmim.main --config=configs/demo/finetune_hivit_fmnist.py:scratch --workdir=work/demo_hivit/scratch

``hivit_demo_patch4_32``: the demo encoder with the relative position bias switched on (tables
starting at zero, as HiViT's fine-tuning does after MAE), mean pooling, ``fc_norm`` and a 10-class
head (N(0, 2e-5)); loaded by name from the pre-training checkpoint (``absolute_pos_embed``,
``patch_embed``, ``blocks``; the RPE tables, ``fc_norm`` and the head start fresh). Layer decay
0.85 over the HiViT layer ids with ``:pretrained``; drop path 0.1; label smoothing 0.1.
"""

from jaxmim.config import finetune_defaults
from jaxmim.recipes import demo_mae_finetune


def get_config(arg='scratch'):
    c = finetune_defaults()
    c.model.name = 'hivit_demo_patch4_32'
    return demo_mae_finetune(c, arg, layer_decay=0.85, drop_path_rate=0.1)
