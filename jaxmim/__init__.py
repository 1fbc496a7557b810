"""jaxmim: masked image modeling for hierarchical vision transformers in JAX/Flax NNX.

Public entry points: :func:`create_model`, :func:`list_models`; the training loops live in
``jaxmim.train`` and the command-line entry in ``jaxmim.main``.
"""

from jaxmim import methods, models  # noqa: F401  (register the methods and backbones)
from jaxmim.registry import create_model, list_models, model_defaults, register_model  # noqa: F401

__version__ = '0.1.0'
