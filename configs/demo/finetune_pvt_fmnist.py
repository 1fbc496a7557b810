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

from jaxmim.config import fashion_mnist_data, finetune_defaults


def get_config(arg='scratch'):
    if arg not in ('pretrained', 'scratch', None):
        raise ValueError(f"variant must be 'pretrained' or 'scratch', got {arg!r}")
    c = finetune_defaults()
    c.model.name = 'pvt_demo_32'
    c.model.overrides.drop_path_rate = 0.0
    fashion_mnist_data(c.data, crop_scale=(1.0, 1.0))   # area 1: the whole image, no random crop
    c.data.hflip = False
    c.batch_size = 128
    c.eval_batch_size = 500
    c.total_steps = 2000           # 4.3 epochs; the scratch run of `make demo` gets more (equal wall-clock)
    c.optim.schedule = 'mae_cosine'
    c.optim.base_lr = 4e-3          # per 256 images: 2e-3 at batch 128
    c.optim.lr_scale_batch = 256
    c.optim.lr_scale_fields = ('base_lr',)
    c.optim.warmup_lr = 0.0
    c.optim.min_lr = 1e-6
    c.optim.warmup_steps = 50
    c.optim.betas = (0.9, 0.999)
    c.optim.weight_decay = 0.05
    c.optim.clip_grad = 0.0
    c.optim.layer_decay = 0.9 if arg == 'pretrained' else 1.0
    c.pretrained.required = arg == 'pretrained'
    c.label_smoothing = 0.1
    c.log_every = 50
    c.eval_every = 1000
    c.checkpoint_every = 500
    return c
