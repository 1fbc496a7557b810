r"""Linear probing of an MAE HiViT-B on ImageNet-1K at 224 px (MAE's linear-probing recipe).

    python -m jaxmim.main --config=configs/linprobe/mae_hivit_base.py \
        --config.pretrained.workdir=<MAE HiViT pre-training workdir, or one made by convert.import> \
        --workdir=<out> --config.data.data_dir=/path/to/tensorflow_datasets

``hivit_base`` as pre-trained (``rpe=False``: MAE HiViT pre-trains without relative position
bias; the fine-tuning config's fresh RPE tables would change the frozen function), frozen; its
pooled features are the mean of the main-stage tokens through ``fc_norm``
(``models_hivit.py:274-279``), which pre-training does not train: at scale 1 / bias 0 it
standardises each vector before the probe's BatchNorm. The rest is MAE ViT-B's probe
(``configs/linprobe/mae_vit_base.py``, ``jaxmim.recipes.linprobe``): LARS, blr 0.1, batch 16384
(4 x 4096), 90 epochs, 10 warm-up, crop + flip only.

No published number: the HiViT paper (arXiv:2205.14949) and zhangxiaosong18/hivit@2718339 (README,
``self_supervised/``) report fine-tuning (84.6 % after 1600 epochs) and ship no linear-probing
script, so this run has no reference to match.
"""

from jaxmim.config import finetune_defaults
from jaxmim.recipes import imagenet_data, linprobe


def get_config(arg=None):
    del arg
    c = finetune_defaults()
    c.model.name = 'hivit_base'
    c.model.overrides.rpe = False
    c.model.overrides.drop_path_rate = 0.0
    imagenet_data(c.data, 224)
    c.data.eval_crop_ratio = 224 / 256
    linprobe(c, blr=0.1, epochs=90, warmup_epochs=10, batch_size=16384, accum_steps=4)
    c.eval_batch_size = 1000
    c.pretrained.required = True
    c.log_every = 20
    c.compute_dtype = 'bfloat16'
    return c
