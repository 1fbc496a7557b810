"""UM-MAE (Li et al., 2022) and its SimMIM baselines as jaxmim methods.

``'ummae'`` builds the UM-MAE pre-training models (``mae_pvt_small_256``, ``mae_swin_tiny_256``,
``mae_swin_large_256``, ``mae_vit_base_patch16_dec512d2b`` and demo variants:
:mod:`jaxmim.methods.ummae.pvt`, :mod:`jaxmim.methods.ummae.swin`, :mod:`jaxmim.methods.ummae.vit`)
with Uniform Sampling, Secondary Masking and the pyramid decoder; ``'ummae_simmim'`` builds the
repository's SimMIM baselines (``simmim_pvt_small_256``, ``simmim_swin_tiny_256``). Both models
take their masks as inputs (``mask`` and, for UM-MAE, the Secondary Masking ``noise``), drawn in
the step or made by the input pipeline (``config.method.inputs_from``), as
``implus/UM-MAE@cb7776b`` makes them in its data loader (``mask_transform.py:7-53``); the block
defaults are the Makefile's runs (lines 17-116).
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from jaxmim.methods.registry import register_method
from jaxmim.methods.ummae.masking import SAMPLINGS
from jaxmim.registry import create_model

__all__ = ['UMMAEMethod', 'UMMAESimMIMMethod']


def _build(model_name: str, overrides: dict[str, Any], seed: int, block: dict[str, Any]) -> nnx.Module:
    if block.get('sampling') not in SAMPLINGS:
        raise ValueError(f'config.method.sampling must be one of {SAMPLINGS}, got {block.get("sampling")!r}')
    kwargs = dict(overrides)
    for key, value in block.items():
        if key in kwargs and kwargs[key] != value:
            raise ValueError(f'model override {key}={kwargs[key]!r} contradicts config.method.{key}={value!r}; '
                             'set it in config.method')
        kwargs[key] = value
    return create_model(model_name, seed=seed, **kwargs)


@register_method('ummae')
class UMMAEMethod:
    """The UM-MAE method block.

    Keys (defaults = the paper's runs, Makefile lines 17-116): ``mask_ratio`` 0.75;
    ``vis_mask_ratio`` 0.25 (Secondary Masking; 0 disables it and drops ``vis_mask_token``);
    ``sampling`` ``'uniform'`` (balanced pool, ``--mask_regular``), ``'uniform_block'`` (i.i.d. per
    block) or ``'random'`` (RS, ViT only: the pyramids need one visible unit per block);
    ``norm_pix_loss`` True (``--norm_pix_loss``); ``official_decoder_pos`` False (True reproduces the
    official pyramid decoder's visible pos-embed order, ``models_mae_pvt.py:358-386``, e.g. to run
    official checkpoints as trained).
    """

    @classmethod
    def config_defaults(cls) -> dict[str, Any]:
        """See the class docstring."""
        return {'mask_ratio': 0.75, 'vis_mask_ratio': 0.25, 'sampling': 'uniform', 'norm_pix_loss': True,
                'official_decoder_pos': False}

    @classmethod
    def build(cls, model_name: str, *, overrides: dict[str, Any], seed: int, **block: Any) -> nnx.Module:
        """``create_model(model_name, seed=seed, **overrides, **block)``.

        Raises:
          ValueError: unknown sampling, an override contradicting the block, or a model that
            rejects the settings (e.g. 'random' on a pyramid). KeyError / TypeError: from
            :func:`jaxmim.registry.create_model`.
        """
        return _build(model_name, overrides, seed, block)


@register_method('ummae_simmim')
class UMMAESimMIMMethod:
    """The SimMIM baselines of the UM-MAE repository (``models_simmim_{pvt,swin}.py``).

    Keys: ``mask_ratio`` 0.75 on 16-px units; ``sampling`` ``'random'`` (Makefile lines 54, 89:
    no ``--mask_regular``; ``'uniform'`` runs the baseline on UM-MAE's masks); ``norm_pix_loss``
    False (L1 on raw normalised pixels).
    """

    @classmethod
    def config_defaults(cls) -> dict[str, Any]:
        """See the class docstring."""
        return {'mask_ratio': 0.75, 'sampling': 'random', 'norm_pix_loss': False}

    @classmethod
    def build(cls, model_name: str, *, overrides: dict[str, Any], seed: int, **block: Any) -> nnx.Module:
        """``create_model(model_name, seed=seed, **overrides, **block)`` (errors as :class:`UMMAEMethod`)."""
        return _build(model_name, overrides, seed, block)
