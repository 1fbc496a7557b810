"""MAE (He et al., CVPR 2022): method ``'mae'`` and its pre-training models.

* :mod:`~jaxmim.methods.mae.method`: :class:`MAEMethod`, the ``'mae'`` method block;
* :mod:`~jaxmim.methods.mae.vit`: :class:`MaskedAutoencoderViT` (``mae_vit_*``) with MAE's
  :func:`random_masking`, :func:`mae_loss` and :func:`norm_pix_target`;
* :mod:`~jaxmim.methods.mae.hivit`: :class:`HiViTMaskedAutoencoder` (``mae_hivit_*``), HiViT's
  official MAE, trained by the same method.
"""

from jaxmim.methods.mae import hivit, method, vit  # noqa: F401  (registers the method and models)
from jaxmim.methods.mae.hivit import HiViTMaskedAutoencoder, masking_ids
from jaxmim.methods.mae.method import MAEMethod
from jaxmim.methods.mae.vit import (MaskedAutoencoderViT, mae_loss, norm_pix_target, patchify, random_masking,
                                    unpatchify)

__all__ = ['MAEMethod', 'MaskedAutoencoderViT', 'random_masking', 'norm_pix_target', 'mae_loss', 'patchify',
           'unpatchify', 'HiViTMaskedAutoencoder', 'masking_ids']
