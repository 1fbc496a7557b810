r"""SimMIM-style masked pre-training of GroupMixFormer-S on ImageNet-1K at 224 px (jaxmim's own).

    python -m jaxmim.main --config=configs/pretrain/simmim_groupmixformer_small_img224.py \
        --workdir=<out> --config.data.data_dir=/path/to/tensorflow_datasets
    # then fine-tune with configs/supervised/groupmixformer.py:small plus
    #   --config.pretrained.workdir=<out> --config.optim.layer_decay=0.9 (the SimMIM fine-tuning habit)

No published code pre-trains GroupMixFormer with masking. This config applies SimMIM's 100-epoch
Swin-B recipe (microsoft/SimMIM@d3e29bc
``configs/swin_base__100ep/simmim_pretrain__swin_base__img192_window6__100ep.yaml``) to ``simmim_groupmixformer_small``
(``jaxmim.models.groupmixformer.GroupMixFormerForSimMIM``): masked pixels zeroed before the stem,
stem outputs at masked positions (the stride-4 token grid) replaced by a learnable mask token,
encoder stride 32 (7x7 final map), one-layer 1x1-conv + pixel-shuffle decoder, L1 loss on masked
pixels; 32-px mask units at ratio 0.6 (30 of 49 masked). 100 epochs, 10 warm-up, cosine, base lr
2e-4 / warm-up 1e-6 / min 1e-5 per 512 images (x4 at batch 2048), AdamW (0.9, 0.999), weight
decay 0.05, clip 5.0, drop path 0, RandomResizedCrop (0.67, 1) bilinear + flip. BatchNorm
statistics are computed over the global batch in training (masked tokens included). Untested at
this scale: no result is claimed.
"""

from jaxmim.config import pretrain_defaults
from jaxmim.recipes import imagenet_data, simmim_optim

ITERS_PER_EPOCH = 1_281_167 // 2048   # 625


def get_config(arg=None):
    del arg
    c = pretrain_defaults('simmim')
    c.model.name = 'simmim_groupmixformer_small'
    c.method.encoder_stride = 32
    c.method.mask_patch_size = 32
    c.method.mask_ratio = 0.6
    imagenet_data(c.data, 224, crop_scale=(0.67, 1.0), interpolation='bilinear')
    c.batch_size = 2048
    c.total_steps = 100 * ITERS_PER_EPOCH
    simmim_optim(c.optim, base_lr=2e-4, warmup_lr=1e-6, min_lr=1e-5, warmup_steps=10 * ITERS_PER_EPOCH)
    c.log_every = 100
    c.checkpoint_every = 5 * ITERS_PER_EPOCH
    c.keep_checkpoints = 3
    # Accelerators: bf16 forward / backward on float32 master weights, loss and AdamW state
    # (jaxmim.steps.accumulate_gradients); every family's loss tracks float32 within 0.5 % over 50 steps
    # (tests/test_bf16.py). --config.compute_dtype=float32 for full precision (on CPU bf16 is emulated, slower).
    c.compute_dtype = 'bfloat16'
    return c
