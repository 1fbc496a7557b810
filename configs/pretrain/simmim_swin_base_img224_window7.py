r"""SimMIM Swin-B pre-training at 224 px / window 7: a BENCHMARK config, not an official recipe.

SimMIM pre-trains Swin-B at 192 px with window 6 (``simmim_swin_base_img192_window6.py``); HiViT's
speed claim (1.9x over Swin-B, HiViT paper, arXiv 2205.14949 v1 abstract) compares models at
224 px, so this config is that recipe with the input at 224 px and window 7 (the fine-tuning
geometry; 7x7 mask units of 32 px, 60% masked) for ``jaxmim.benchmark``:

    python -m jaxmim.benchmark --config=configs/pretrain/mae_hivit_base.py:1600ep --kinds=pretrain \
        --also=configs/pretrain/simmim_swin_base_img192_window6.py:100ep \
        --also=configs/pretrain/simmim_swin_base_img224_window7.py \
        --also=configs/pretrain/mae_vit_base_1600ep.py --batch_size=128 --steps=10 --warmup=2

Variants: ``100ep`` / ``800ep`` (the 192-px recipes, mask ratio 0.6) and ``mask75`` (``100ep`` at
GreenMIM's ratio 0.75, for a like-for-like figure against ``configs/pretrain/greenmim.py:swin_base_win7``).
"""

import os

from jaxmim.config import load_config_file


def get_config(arg='100ep'):
    if arg not in ('100ep', '800ep', 'mask75', None):
        raise ValueError(f"variant must be '100ep', '800ep' or 'mask75', got {arg!r}")
    recipe = '100ep' if arg in ('mask75', None) else arg
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                      f'simmim_swin_base_img192_window6.py:{recipe}'))
    if arg == 'mask75':
        c.method.mask_ratio = 0.75
    c.data.image_size = 224
    c.data.interpolation = 'bicubic'
    c.model.overrides.img_size = 224
    c.model.overrides.window_size = 7
    return c
