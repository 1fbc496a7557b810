"""The ``'greenmim'`` method block: GreenMIM pre-training of a registered GreenMIM model.

Huang et al., "Green Hierarchical Vision Transformer for Masked Image Modeling", NeurIPS 2022; the
block's keys follow ``LayneH/GreenMIM@b981012 main_pretrain.py`` (``--mask_ratio``,
``--norm_pix_loss``), plus jaxmim's ``mask_mode`` and ``planner_workers``. The models it builds:
:class:`jaxmim.methods.greenmim.swin.GreenMIMSwin` and :class:`jaxmim.methods.greenmim.twins.GreenMIMTwins`.
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from jaxmim.methods.registry import register_method
from jaxmim.registry import create_model

__all__ = ['GreenMIMMethod']


@register_method('greenmim')
class GreenMIMMethod:
    """The GreenMIM method block: ``mask_ratio`` (0.75), ``norm_pix_loss`` (False; the scripts pass
    ``--norm_pix_loss``), ``mask_mode`` (``'batch'``), ``planner_workers`` (0: per-sample plans
    in the input pipeline's process; N >= 2: on N host processes,
    :class:`~jaxmim.methods.greenmim.grouping.PlannerPool`, for ``mask_mode='sample'`` at
    accelerator speed; ignored in ``'batch'`` mode, one plan per step)."""

    @classmethod
    def config_defaults(cls) -> dict[str, Any]:
        """``{'mask_ratio': 0.75, 'norm_pix_loss': False, 'mask_mode': 'batch', 'planner_workers': 0}``."""
        return {'mask_ratio': 0.75, 'norm_pix_loss': False, 'mask_mode': 'batch', 'planner_workers': 0}

    @classmethod
    def build(cls, model_name: str, *, overrides: dict[str, Any], seed: int, mask_ratio: float,
              norm_pix_loss: bool, mask_mode: str, planner_workers: int = 0) -> nnx.Module:
        """``create_model(model_name, seed=seed, mask_ratio=, norm_pix_loss=, mask_mode=, **overrides)``
        with ``planner_workers`` set on the model (a host-side setting, not a variable).

        Raises:
          ValueError: an override contradicting the method block; a negative or non-integer
            ``planner_workers``.
        """
        if int(planner_workers) != planner_workers or planner_workers < 0:
            raise ValueError(f'config.method.planner_workers must be an integer >= 0 (0 or 1: in-process; '
                             f'N >= 2: N planner processes), got {planner_workers!r}')
        kwargs = dict(overrides)
        for key, value in (('mask_ratio', mask_ratio), ('norm_pix_loss', norm_pix_loss), ('mask_mode', mask_mode)):
            if key in kwargs and kwargs[key] != value:
                raise ValueError(f'model override {key}={kwargs[key]!r} contradicts config.method.{key}={value!r}; '
                                 'set it in config.method')
            kwargs[key] = value
        model = create_model(model_name, seed=seed, **kwargs)
        model.planner_workers = int(planner_workers)
        return model
