r"""Fine-tuning the small ViT on labelled Fashion-MNIST (MAE's fine-tuning optimizer).

    # from an MAE pre-training run:
    python -m jaxmim.main --config=configs/demo/finetune_vit_fmnist.py:pretrained \
        --config.pretrained.workdir=work/demo_mae/pretrain --workdir=work/demo_mae/finetune
    # the same architecture and budget from random initialisation:
    python -m jaxmim.main --config=configs/demo/finetune_vit_fmnist.py:scratch --workdir=work/demo_mae/scratch

The variant only documents intent (and sets layer decay): ``:pretrained`` requires
``config.pretrained.workdir``.
"""

from jaxmim.config import finetune_defaults
from jaxmim.recipes import demo_mae_finetune


def get_config(arg='scratch'):
    c = finetune_defaults()
    c.model.name = 'vit_demo_patch4_32'
    return demo_mae_finetune(c, arg, layer_decay=0.75, drop_path_rate=0.1)
