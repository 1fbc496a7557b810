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

from jaxmim.config import fashion_mnist_data, finetune_defaults


def get_config(arg='scratch'):
    if arg not in ('pretrained', 'scratch', None):
        raise ValueError(f"variant must be 'pretrained' or 'scratch', got {arg!r}")
    c = finetune_defaults()
    c.model.name = 'groupmixformer_demo_32'
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
