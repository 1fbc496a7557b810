r"""Fine-tuning the GreenMIM demo encoder (patch-2 Swin) on labelled Fashion-MNIST.

    python -m jaxmim.main --config=configs/demo/finetune_greenmim_fmnist.py:pretrained \
        --config.pretrained.workdir=work/demo_greenmim/pretrain --workdir=work/demo_greenmim/finetune
    python -m jaxmim.main --config=configs/demo/finetune_greenmim_fmnist.py:scratch --workdir=work/demo_greenmim/scratch

Classifier ``swin_demo_patch2_window4_32``: the GreenMIM demo encoder's Swin (patch 2, window 4,
embed 32, depths (2, 2, 2), heads (2, 4, 8)) with a 10-class head. The visible-token encoder's
variables carry the Swin names, so only ``head`` starts fresh when loading the pre-training run.
Optimizer as the demo Swin fine-tuning (``configs/demo/finetune_swin_fmnist.py``).
"""

from jaxmim.config import fashion_mnist_data, finetune_defaults


def get_config(arg='scratch'):
    if arg not in ('pretrained', 'scratch', None):
        raise ValueError(f"variant must be 'pretrained' or 'scratch', got {arg!r}")
    c = finetune_defaults()
    c.model.name = 'swin_demo_patch2_window4_32'
    c.model.overrides.drop_path_rate = 0.0
    fashion_mnist_data(c.data, crop_scale=(0.85, 1.0))
    c.batch_size = 128
    c.eval_batch_size = 500
    c.total_steps = 1100           # 2.3 epochs; the scratch run of `make demo` gets more (equal wall-clock)
    c.optim.base_lr = 8e-3          # per 512 images: 2e-3 at batch 128
    c.optim.warmup_lr = 1e-6
    c.optim.min_lr = 1e-6
    c.optim.warmup_steps = 50
    c.optim.weight_decay = 0.05
    c.optim.layer_decay = 0.9 if arg == 'pretrained' else 1.0
    c.pretrained.required = arg == 'pretrained'   # ':pretrained' without pretrained.workdir is an error
    c.label_smoothing = 0.1
    c.log_every = 50
    c.eval_every = 550
    c.checkpoint_every = 550
    return c
