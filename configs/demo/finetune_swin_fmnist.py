r"""Fine-tuning the small Swin on labelled Fashion-MNIST; evaluation on the test split.

    # from a SimMIM pre-training run:
    python -m jaxmim.main --config=configs/demo/finetune_swin_fmnist.py:pretrained \
        --config.pretrained.workdir=work/demo/pretrain --workdir=work/demo/finetune
    # the same architecture and budget from random initialisation:
    python -m jaxmim.main --config=configs/demo/finetune_swin_fmnist.py:scratch --workdir=work/demo/scratch

``:pretrained`` requires ``config.pretrained.workdir`` (``config.pretrained.required``): without it the
run stops with one line instead of training from scratch.
"""

from jaxmim.config import finetune_defaults
from jaxmim.recipes import demo_simmim_finetune


def get_config(arg='scratch'):
    c = finetune_defaults()
    c.model.name = 'swin_demo_patch4_window4_32'
    return demo_simmim_finetune(c, arg, layer_decay=0.9)
