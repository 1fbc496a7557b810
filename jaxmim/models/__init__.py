"""Backbones. Importing this package imports every module in it, which registers its models
(see :func:`jaxmim.registry.register_model`): adding a backbone is adding a file here."""

import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith('_'):
        importlib.import_module(f'{__name__}.{_info.name}')
del _info
