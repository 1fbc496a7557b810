r"""MAE ViT-B/16 pre-training, 1600 epochs: ``mae_vit_base_800ep.py`` with its ``1600ep`` variant.

    python -m jaxmim.main --config=configs/pretrain/mae_vit_base_1600ep.py --workdir=...
"""

import os

from jaxmim.config import load_config_file


def get_config(arg=None):
    del arg
    return load_config_file(os.path.join(os.path.dirname(__file__), 'mae_vit_base_800ep.py') + ':1600ep')
