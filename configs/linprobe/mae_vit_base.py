r"""Linear probing of an MAE ViT-B/16 on ImageNet-1K at 224 px (facebookresearch/mae ``main_linprobe.py``).

    python -m jaxmim.main --config=configs/linprobe/mae_vit_base.py \
        --config.pretrained.workdir=<MAE pre-training workdir, or one made by convert.import> \
        --workdir=<out> --config.data.data_dir=/path/to/tensorflow_datasets

Recipe (``jaxmim.recipes.linprobe``; facebookresearch/mae@6a2ba40 ``main_linprobe.py``, FINETUNE.md
"Linear Probing", MAE paper Appendix A (implementation details), "Linear probing"): ``vit_base_patch16_224`` with
``global_pool=False`` (the class token after the pre-trained final norm: ``--cls_token``), frozen;
``BatchNorm1d(affine=False, eps=1e-6)`` + linear head (trunc_normal 0.01, bias 0); LARS (momentum
0.9, weight decay 0, trust coefficient 1e-3), blr 0.1 (lr 6.4 at batch 16384), 10 warm-up epochs
then half-cycle cosine to 0, 90 epochs of 78 iterations; RandomResizedCrop (0.08, 1) bicubic + flip,
no other augmentation, no label smoothing, no mixup; evaluation resize 256, centre crop 224. Batch
16384 per update (MAE: 512 x 32 GPUs); here 4 micro-batches of 4096 (``accum_steps=4``, 512
images per device on 8 accelerators; the encoder runs forward only). Raise ``--config.accum_steps``
on fewer devices, lower it with more memory: the update is the same but for the head's BatchNorm
statistics, taken per micro-batch (MAE's per-GPU BatchNorm1d sees 512 images).

Expected: 68.0 % top-1 after the 1600-epoch MAE pre-training (FINETUNE.md "Linear Probing": paper
(TF/TPU) ViT-B 68.0, the PyTorch repository 67.8).
"""

from jaxmim.config import finetune_defaults
from jaxmim.recipes import imagenet_data, linprobe


def get_config(arg=None):
    del arg
    c = finetune_defaults()
    c.model.name = 'vit_base_patch16_224'
    c.model.overrides.global_pool = False      # main_linprobe.py: --cls_token (global_pool=False)
    c.model.overrides.drop_path_rate = 0.0     # main_linprobe.py builds the ViT without drop path
    imagenet_data(c.data, 224)
    c.data.eval_crop_ratio = 224 / 256
    linprobe(c, blr=0.1, epochs=90, warmup_epochs=10, batch_size=16384, accum_steps=4)
    c.eval_batch_size = 1024
    c.pretrained.required = True
    c.log_every = 20
    # Accelerators: bf16 forward on bf16 copies of the frozen float32 weights (jaxmim.probe casts
    # them with the images), float32 head, BatchNorm statistics and LARS state.
    c.compute_dtype = 'bfloat16'
    return c
