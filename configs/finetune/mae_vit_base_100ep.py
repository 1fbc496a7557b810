r"""Fine-tuning an MAE ViT-B/16 on ImageNet-1K at 224 px (facebookresearch/mae@be47fef FINETUNE.md).

    python -m jaxmim.main --config=configs/finetune/mae_vit_base_100ep.py \
        --config.pretrained.workdir=<MAE pre-training workdir, or one made by convert.import> \
        --workdir=<out> --config.data.data_dir=/path/to/tensorflow_datasets

Recipe (``main_finetune.py``, FINETUNE.md): ViT-B/16 with global average pooling and ``fc_norm``
(fresh, with the head), drop path 0.1, layer-wise lr decay 0.65 (14 layer ids), AdamW betas
(0.9, 0.999), weight decay 0.05 (none on 1-D tensors, biases, ``pos_embed``, ``cls_token``), batch
1024, base lr 5e-4 per 256 images (lr 2e-3), per-iteration warm-up over 5 epochs from 0 then
half-cycle cosine to 1e-6 (MAE's schedule scales min lr by each layer's factor too), label
smoothing 0.1, 100 epochs; evaluation: resize to 256 (bicubic) and centre crop 224; and the timm
augmentation of ``util/datasets.py`` / ``main_finetune.py`` defaults (``jaxmim.recipes.timm_recipe``):
RandomResizedCrop (0.08, 1) bicubic, flip, RandAugment rand-m9-mstd0.5-inc1, no colour jitter
(MAE's ``--color_jitter`` is None and unused beside RandAugment), random erasing 0.25 pixel x1,
Mixup 0.8 / CutMix 1.0 (switch 0.5, mode batch), label smoothing 0.1 in soft targets,
soft-target cross entropy. No EMA (MAE has none). No gradient clipping.
Expected: 83.6 % top-1 on ImageNet-1K val after the 1600-epoch MAE pre-training
(facebookresearch/mae FINETUNE.md / README "ViT-Base fine-tuned 83.6"); the run was
32 GPUs x 32 images (accum 1) in FINETUNE.md; on fewer accelerators keep ``batch_size=1024`` and
raise ``--config.accum_steps``. Mixed precision: MAE's fp16 autocast is bf16 compute here
(``compute_dtype='bfloat16'``). Difference left: one mixup lambda per global batch where MAE draws one per GPU.
"""

from jaxmim.config import finetune_defaults
from jaxmim.recipes import imagenet_data, mae_optim, timm_recipe

BATCH = 1024
ITERS_PER_EPOCH = 1_281_167 // BATCH   # 1251


def get_config(arg=None):
    del arg
    c = timm_recipe(finetune_defaults())
    c.data.color_jitter = (0.0, 0.0, 0.0)  # MAE: --color_jitter None (unused beside RandAugment anyway)
    c.model.name = 'vit_base_patch16_224'
    c.model.overrides.drop_path_rate = 0.1
    c.model.overrides.global_pool = True
    imagenet_data(c.data, 224)
    c.batch_size = BATCH
    c.eval_batch_size = 1000
    c.total_steps = 100 * ITERS_PER_EPOCH
    mae_optim(c.optim, blr=5e-4, min_lr=1e-6, warmup_steps=5 * ITERS_PER_EPOCH, betas=(0.9, 0.999))
    c.optim.layer_decay = 0.65
    c.log_every = 100
    c.eval_every = 5 * ITERS_PER_EPOCH
    c.checkpoint_every = 5 * ITERS_PER_EPOCH
    # Accelerators: bf16 forward / backward on float32 master weights, loss and AdamW state
    # (jaxmim.steps.accumulate_gradients); every family's loss tracks float32 within 0.5 % over 50 steps
    # (tests/test_bf16.py). --config.compute_dtype=float32 for full precision (on CPU bf16 is emulated, slower).
    c.compute_dtype = 'bfloat16'
    return c
