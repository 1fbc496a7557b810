r"""Fine-tuning the small Swin on labelled Fashion-MNIST; evaluation on the test split.

    # from a SimMIM pre-training run:
    python -m jaxmim.main --config=configs/demo/finetune_swin_fmnist.py:pretrained \
        --config.pretrained.workdir=work/demo/pretrain --workdir=work/demo/finetune
    # the same architecture and budget from random initialisation:
    python -m jaxmim.main --config=configs/demo/finetune_swin_fmnist.py:scratch --workdir=work/demo/scratch

``:pretrained`` requires ``config.pretrained.workdir`` (``config.pretrained.required``): without it the
run stops with one line instead of training from scratch.
"""

from jaxmim.config import fashion_mnist_data, finetune_defaults


def get_config(arg='scratch'):
    if arg not in ('pretrained', 'scratch', None):
        raise ValueError(f"variant must be 'pretrained' or 'scratch', got {arg!r}")
    c = finetune_defaults()
    c.model.name = 'swin_demo_patch4_window4_32'
    c.model.overrides.drop_path_rate = 0.0
    fashion_mnist_data(c.data, crop_scale=(0.85, 1.0))
    c.batch_size = 128
    c.eval_batch_size = 500
    c.total_steps = 1000
    c.optim.base_lr = 8e-3          # per 512 images: 2e-3 at batch 128
    c.optim.warmup_lr = 1e-6
    c.optim.min_lr = 1e-6
    c.optim.warmup_steps = 50
    c.optim.weight_decay = 0.05
    c.optim.layer_decay = 0.9 if arg == 'pretrained' else 1.0
    c.pretrained.required = arg == 'pretrained'   # ':pretrained' without pretrained.workdir is an error
    c.label_smoothing = 0.1
    c.log_every = 50
    c.eval_every = 500
    c.checkpoint_every = 500
    return c
