r"""Fine-tuning the small PVT on labelled Fashion-MNIST (UM-MAE's fine-tuning optimizer).

    # from a UM-MAE (or SimMIM-baseline) pre-training run of configs/demo/ummae_pvt_fmnist.py:
    python -m jaxmim.main --config=configs/demo/finetune_pvt_fmnist.py:pretrained \
        --config.pretrained.workdir=work/demo_ummae/pretrain --workdir=work/demo_ummae/finetune
    # the same architecture and budget from random initialisation:
    python -m jaxmim.main --config=configs/demo/finetune_pvt_fmnist.py:scratch --workdir=work/demo_ummae/scratch

``pvt_demo_32``: the encoder of ``mae_pvt_demo_32`` with the fine-tuning sr 4/2/1 (the
full-resolution image: the same key/value grid as pre-training's sr 2/1/1 on the compact image),
mean pool, ``fc_norm`` and a 10-class ``head`` (both fresh when loading).

This is the fine-tuning and from-scratch stage of ``make demo`` (``launch/demo.py``). The recipe is
tuned for its short budget (about 4 epochs), where both arms underfit rather than overfit. On
1,000-step fine-tunes of the same pre-trained encoder (README, "What the demo does"):
- dropping the 0.85-1.0 random-resized crop gained 0.9 points of top-1;
- dropping horizontal flips as well gained 0.5 more;
- doubling the learning rate lost 1.5.
So the demo trains without augmentation: the whole 28x28 image is resized to 32x32, not flipped.
It uses no drop path, layer decay 0.9 and 2e-3 at batch 128. The scratch arm uses the same recipe
without layer decay.
"""

from jaxmim.config import finetune_defaults
from jaxmim.recipes import demo_mae_finetune


def get_config(arg='scratch'):
    c = finetune_defaults()
    c.model.name = 'pvt_demo_32'
    # area 1 and no flips: the whole image, no random crop; 4.3 epochs (the scratch run of
    # `make demo` gets more, equal wall-clock); 4e-3 per 256 images: 2e-3 at batch 128
    return demo_mae_finetune(c, arg, layer_decay=0.9, drop_path_rate=0.0, blr=4e-3, crop_scale=(1.0, 1.0),
                             hflip=False, total_steps=2000, eval_every=1000)
