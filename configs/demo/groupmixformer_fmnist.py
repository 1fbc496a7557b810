r"""GroupMixFormer on labelled Fashion-MNIST (32x32 RGB), evaluated on the test split.

    # from scratch:
    python -m jaxmim.main --config=configs/demo/groupmixformer_fmnist.py:scratch --workdir=work/gmf/scratch
    # from a SimMIM pre-training run (configs/demo/simmim_groupmixformer_fmnist.py):
    python -m jaxmim.main --config=configs/demo/groupmixformer_fmnist.py:pretrained \
        --config.pretrained.workdir=work/gmf/pretrain --workdir=work/gmf/finetune

Model ``groupmixformer_demo_32``: embed_dims (40, 80, 160, 160), depths (1, 1, 3, 1), 8 heads,
stage maps 8, 4, 2, 1 (1.46 M parameters). BatchNorm statistics are in ``model_state`` (updated in
training, frozen in evaluation, global over devices). The variant only documents intent:
``:pretrained`` requires ``config.pretrained.workdir`` and turns on layer decay.
"""

from jaxmim.config import finetune_defaults
from jaxmim.recipes import demo_simmim_finetune


def get_config(arg='scratch'):
    c = finetune_defaults()
    c.model.name = 'groupmixformer_demo_32'
    return demo_simmim_finetune(c, arg, layer_decay=0.9)
