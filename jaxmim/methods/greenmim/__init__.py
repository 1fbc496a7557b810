"""GreenMIM (Huang et al., NeurIPS 2022): method ``'greenmim'`` and its visible-token encoders.

* :mod:`~jaxmim.methods.greenmim.method`: :class:`GreenMIMMethod`, the ``'greenmim'`` method block;
* :mod:`~jaxmim.methods.greenmim.grouping`: Group Window Attention with static shapes (window ids,
  knapsack grouping, :class:`WindowGrouping` / :class:`StageSpec` layouts, the host-side
  :class:`GreenSwinPlanner` and its process pool, the device-side attention term);
* :mod:`~jaxmim.methods.greenmim.sparse_conv`: the Twins encoder's sparse convolutions as dense,
  static-shape operations;
* :mod:`~jaxmim.methods.greenmim.swin`: the visible-token Swin encoder and the pre-training model
  :class:`GreenMIMSwin` (``green_mim_swin_*``);
* :mod:`~jaxmim.methods.greenmim.twins`: the visible-token Twins-SVT encoder and
  :class:`GreenMIMTwins` (``green_mim_twins_*``).

The dense Swin classifiers :class:`GreenMIMSwin` fine-tunes into are backbones, :mod:`jaxmim.models.swin`.
"""

from jaxmim.methods.greenmim import grouping, method, sparse_conv, swin, twins  # noqa: F401  (registration)
from jaxmim.methods.greenmim.grouping import GreenSwinPlanner, PlannerPool, StageSpec, WindowGrouping, planner_pool
from jaxmim.methods.greenmim.method import GreenMIMMethod
from jaxmim.methods.greenmim.swin import GreenMIMSwin, GreenSwinBlock, GreenSwinTransformer
from jaxmim.methods.greenmim.twins import GreenMIMTwins, GreenTwinsPlanner, GreenTwinsTransformer

__all__ = ['GreenMIMMethod', 'GreenSwinPlanner', 'PlannerPool', 'StageSpec', 'WindowGrouping', 'planner_pool',
           'GreenMIMSwin', 'GreenSwinBlock', 'GreenSwinTransformer', 'GreenMIMTwins', 'GreenTwinsPlanner',
           'GreenTwinsTransformer']
