r"""Fine-tuning the GreenMIM demo encoder (patch-2 Swin) on labelled Fashion-MNIST.

    python -m jaxmim.main --config=configs/demo/finetune_greenmim_fmnist.py:pretrained \
        --config.pretrained.workdir=work/demo_greenmim/pretrain --workdir=work/demo_greenmim/finetune
    python -m jaxmim.main --config=configs/demo/finetune_greenmim_fmnist.py:scratch --workdir=work/demo_greenmim/scratch

Classifier ``swin_demo_patch2_window4_32``: the GreenMIM demo encoder's Swin (patch 2, window 4,
embed 32, depths (2, 2, 2), heads (2, 4, 8)) with a 10-class head. The visible-token encoder's
variables carry the Swin names, so only ``head`` starts fresh when loading the pre-training run.
Optimizer as the demo Swin fine-tuning (``configs/demo/finetune_swin_fmnist.py``).
"""

from jaxmim.config import finetune_defaults
from jaxmim.recipes import demo_simmim_finetune


def get_config(arg='scratch'):
    c = finetune_defaults()
    c.model.name = 'swin_demo_patch2_window4_32'
    # 2.3 epochs; the scratch run of `make demo` gets more (equal wall-clock)
    return demo_simmim_finetune(c, arg, layer_decay=0.9, total_steps=1100, eval_every=550, checkpoint_every=550)
