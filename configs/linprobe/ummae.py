r"""Linear probing of the UM-MAE (or SimMIM-baseline) pyramid encoders on ImageNet-1K at 256 px.

    python -m jaxmim.main --config=configs/linprobe/ummae.py:pvt_small_256 \
        --config.pretrained.workdir=<UM-MAE pre-training workdir (configs/pretrain/ummae*.py), or convert.import> \
        --workdir=<out> --config.data.data_dir=/path/to/tensorflow_datasets

Variants: ``pvt_small_256`` (PVT-S, sr 8/4/2/1) and ``swin_tiny_256`` (Swin-T, window 16), the
classifiers of ``configs/finetune/ummae_finetune.py``. Their pooled features are the mean of the
last stage through ``fc_norm``, which pre-training does not train (``main_finetune.py`` asserts it
missing): at scale 1 / bias 0 it standardises each vector before the probe's BatchNorm. Evaluation
as UM-MAE's fine-tuning: the 256-px image, crop ratio 1.0 (``util/datasets.py``). The recipe is
MAE ViT-B's probe (``jaxmim.recipes.linprobe``: LARS, blr 0.1, batch 16384 as 4 x 4096, 90 epochs,
10 warm-up, crop + flip only).

No published number: implus/UM-MAE@cb7776b (README "Main Results on ImageNet-1K", FINETUNE.md)
reports fine-tuning only (PVT-S 79.31, Swin-T 82.04 after 200 epochs) and ships no linear-probing
script; the UM-MAE paper (arXiv:2205.10063) gives no linear-probing figure for these encoders as far
as its repository documents, so these runs have no reference to match.
"""

from jaxmim.config import finetune_defaults
from jaxmim.recipes import imagenet_data, linprobe

VARIANTS = ('pvt_small_256', 'swin_tiny_256')


def get_config(arg='pvt_small_256'):
    if arg not in VARIANTS:
        raise ValueError(f'variant must be one of {list(VARIANTS)}, got {arg!r}')
    c = finetune_defaults()
    c.model.name = arg
    c.model.overrides.drop_path_rate = 0.0
    imagenet_data(c.data, 256)
    c.data.eval_crop_ratio = 1.0
    linprobe(c, blr=0.1, epochs=90, warmup_epochs=10, batch_size=16384, accum_steps=4)
    c.eval_batch_size = 1000
    c.pretrained.required = True
    c.log_every = 20
    c.compute_dtype = 'bfloat16'
    return c
