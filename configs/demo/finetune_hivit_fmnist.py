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

from jaxmim.config import fashion_mnist_data, finetune_defaults


def get_config(arg='scratch'):
    if arg not in ('pretrained', 'scratch', None):
        raise ValueError(f"variant must be 'pretrained' or 'scratch', got {arg!r}")
    c = finetune_defaults()
    c.model.name = 'hivit_demo_patch4_32'
    c.model.overrides.drop_path_rate = 0.1
    fashion_mnist_data(c.data, crop_scale=(0.85, 1.0))
    c.batch_size = 128
    c.eval_batch_size = 500
    c.total_steps = 1000
    c.optim.schedule = 'mae_cosine'
    c.optim.base_lr = 2e-3          # per 256 images: 1e-3 at batch 128
    c.optim.lr_scale_batch = 256
    c.optim.lr_scale_fields = ('base_lr',)
    c.optim.warmup_lr = 0.0
    c.optim.min_lr = 1e-6
    c.optim.warmup_steps = 50
    c.optim.betas = (0.9, 0.999)
    c.optim.weight_decay = 0.05
    c.optim.clip_grad = 0.0
    c.optim.layer_decay = 0.85 if arg == 'pretrained' else 1.0
    c.pretrained.required = arg == 'pretrained'   # ':pretrained' without pretrained.workdir is an error
    c.label_smoothing = 0.1
    c.log_every = 50
    c.eval_every = 500
    c.checkpoint_every = 500
    return c
