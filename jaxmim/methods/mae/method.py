"""The ``'mae'`` method block: MAE pre-training of a registered MAE model (ViT or HiViT).

He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022; the block's keys are
``facebookresearch/mae@efb2a80 main_pretrain.py:53-58`` (``--mask_ratio``, ``--norm_pix_loss``). The
models it builds: :class:`jaxmim.methods.mae.vit.MaskedAutoencoderViT` and
:class:`jaxmim.methods.mae.hivit.HiViTMaskedAutoencoder`.
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from jaxmim.methods.registry import register_method
from jaxmim.registry import create_model

__all__ = ['MAEMethod']


@register_method('mae')
class MAEMethod:
    """The MAE method block: ``mask_ratio`` (0.75) and ``norm_pix_loss``.

    ``norm_pix_loss`` defaults to False, the ``main_pretrain.py`` argparse default; the official
    recipe (PRETRAIN.md) passes ``--norm_pix_loss``, so recipe configs set it True.
    """

    @classmethod
    def config_defaults(cls) -> dict[str, Any]:
        """``{'mask_ratio': 0.75, 'norm_pix_loss': False}`` (``main_pretrain.py:53-58``)."""
        return {'mask_ratio': 0.75, 'norm_pix_loss': False}

    @classmethod
    def build(cls, model_name: str, *, overrides: dict[str, Any], seed: int, mask_ratio: float,
              norm_pix_loss: bool) -> nnx.Module:
        """``create_model(model_name, seed=seed, mask_ratio=..., norm_pix_loss=..., **overrides)``.

        Raises:
          ValueError: ``overrides`` sets ``mask_ratio`` / ``norm_pix_loss`` to another value than
            the method block. KeyError / TypeError: from :func:`jaxmim.registry.create_model`.
        """
        kwargs = dict(overrides)
        for key, value in (('mask_ratio', mask_ratio), ('norm_pix_loss', norm_pix_loss)):
            if key in kwargs and kwargs[key] != value:
                raise ValueError(f'model override {key}={kwargs[key]!r} contradicts '
                                 f'config.method.{key}={value!r}; set it in config.method')
            kwargs[key] = value
        return create_model(model_name, seed=seed, **kwargs)
