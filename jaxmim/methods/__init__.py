"""Masked-image-modeling methods: one package per method, and their registry.

* :mod:`jaxmim.methods.registry`: :func:`register_method`, :func:`create_mim_model` and the method
  protocol every method follows (re-exported here);
* :mod:`jaxmim.methods.simmim`: SimMIM (model, masked L1 loss) and its mask generator;
* :mod:`jaxmim.methods.mae`: MAE on ViT and on HiViT;
* :mod:`jaxmim.methods.ummae`: UM-MAE (Uniform Sampling, Secondary Masking) and its SimMIM
  baselines, with their pre-training models on PVT, Swin and ViT;
* :mod:`jaxmim.methods.greenmim`: GreenMIM (Group Window Attention, sparse convolutions, the
  visible-token Swin and Twins-SVT encoders).

Importing this package imports every module and subpackage in it, which registers the methods and
their pre-training models: adding a method is adding a package here. Method modules import the
registry from :mod:`jaxmim.methods.registry`, never from this package.
"""

import importlib
import pkgutil

from jaxmim.methods.registry import (INPUTS_FROM, create_mim_model, get_method, list_methods,  # noqa: F401
                                     method_config_defaults, register_method)

__all__ = ['register_method', 'get_method', 'list_methods', 'method_config_defaults', 'create_mim_model',
           'INPUTS_FROM']

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith('_'):
        importlib.import_module(f'{__name__}.{_info.name}')
del _info
