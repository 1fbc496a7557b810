"""The real timm and Hugging Face ``transformers`` libraries, for the interop tests (imported as
``interop``: pytest puts ``tests/`` on ``sys.path``).

Both are test references, installed by ``make test`` from ``tests/requirements-interop.txt`` with
``requirements.txt`` as constraints (the CPU ``torch==2.13.0`` is kept). By hand::

    .venv/bin/pip install -r tests/requirements-interop.txt -c requirements.txt

timm imports torchvision, and PyPI's torchvision 0.28.0 wheel is linked against the CUDA build of
torch 2.13: beside the CPU build its C++ operators (``nms``, ``roi_align``, ...) do not load, and
``import torchvision`` then fails registering a fake kernel for ``torchvision::nms`` and
``torchvision::qnms``, the two registrations it does not guard (``torchvision/_meta_registrations.py``).
:func:`timm` declares those two operator schemas (no kernels) first, so torchvision's Python
package and timm import; the models under test (Swin, ViT) never call a torchvision operator.
"""

import importlib

import pytest


def _declare_torchvision_ops() -> None:
    """Declares ``torchvision::nms`` / ``qnms`` when torchvision's C++ extension cannot supply them."""
    import torch
    if hasattr(torch.ops, 'torchvision') and hasattr(torch.ops.torchvision, 'nms'):
        return
    try:
        torch.ops.torchvision.nms   # the extension may already be loaded
        return
    except (AttributeError, RuntimeError):
        pass
    lib = torch.library.Library('torchvision', 'FRAGMENT')
    for name in ('nms', 'qnms'):
        lib.define(f'{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')
    _declare_torchvision_ops.lib = lib   # keep the library object (and its definitions) alive


def timm(version='1.0.31'):
    """The real ``timm`` module (version checked); skips the test with the install command when
    it is missing or does not import."""
    try:
        _declare_torchvision_ops()
        mod = importlib.import_module('timm')
    except Exception as err:   # ImportError, or torchvision failing to import
        pytest.skip(f'timm=={version} is not importable ({type(err).__name__}: {err}); install it with '
                    '.venv/bin/pip install -r tests/requirements-interop.txt -c requirements.txt')
    if mod.__version__ != version:
        pytest.skip(f'timm {mod.__version__} installed, the interop tests pin {version}')
    return mod


def transformers(version='5.23.0'):
    """The real ``transformers`` module (version checked); skips like :func:`timm` (its model
    modules import torchvision when it is installed, hence the same operator declarations)."""
    try:
        _declare_torchvision_ops()
        mod = importlib.import_module('transformers')
    except Exception as err:
        pytest.skip(f'transformers=={version} is not importable ({type(err).__name__}: {err}); install it '
                    'with .venv/bin/pip install -r tests/requirements-interop.txt -c requirements.txt')
    if mod.__version__ != version:
        pytest.skip(f'transformers {mod.__version__} installed, the interop tests pin {version}')
    return mod
