"""SimMIM (Xie et al., CVPR 2022): method ``'simmim'``.

* :mod:`~jaxmim.methods.simmim.model`: the :class:`SimMIM` model and method (one-layer decoder,
  masked L1 loss, :func:`pixel_shuffle`, :func:`masked_l1_loss`);
* :mod:`~jaxmim.methods.simmim.masking`: :class:`SimMIMMaskGenerator`, the random mask-unit masks.

The masked-input Swin encoder it wraps is a backbone: :class:`jaxmim.models.swin.SwinTransformerForSimMIM`.
"""

from jaxmim.methods.simmim import masking, model  # noqa: F401  (registers the method)
from jaxmim.methods.simmim.masking import SimMIMMaskGenerator
from jaxmim.methods.simmim.model import SimMIM, masked_l1_loss, patchify, pixel_shuffle, unpatchify

__all__ = ['SimMIM', 'SimMIMMaskGenerator', 'masked_l1_loss', 'pixel_shuffle', 'patchify', 'unpatchify']
