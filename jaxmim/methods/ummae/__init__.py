"""UM-MAE (Li et al., arXiv 2205.10063): methods ``'ummae'`` and ``'ummae_simmim'`` and their models.

* :mod:`~jaxmim.methods.ummae.method`: the method blocks :class:`UMMAEMethod` and
  :class:`UMMAESimMIMMethod`;
* :mod:`~jaxmim.methods.ummae.masking`: Uniform Sampling, random sampling, Secondary Masking and
  compaction (host and device versions);
* :mod:`~jaxmim.methods.ummae.common`: argument checks, :class:`MaskingInputs` (the masking
  protocol of every UM-MAE model) and :func:`norm_pix_target`;
* :mod:`~jaxmim.methods.ummae.decoder`: the pyramid MAE decoder and the SimMIM baselines' head;
* pre-training models: :mod:`~jaxmim.methods.ummae.pvt` (:class:`MaskedAutoencoderPVT`,
  :class:`SimMIMPVT`), :mod:`~jaxmim.methods.ummae.swin` (:class:`MaskedAutoencoderSwin`,
  :class:`SimMIMSwin`), :mod:`~jaxmim.methods.ummae.vit` (:class:`MaskedAutoencoderViTUM`).

Their backbones and fine-tuning classifiers are in :mod:`jaxmim.models.pvt`,
:mod:`jaxmim.models.ummae_swin` and :mod:`jaxmim.models.vit`.
"""

from jaxmim.methods.ummae import common, decoder, masking, method, pvt, swin, vit  # noqa: F401  (registration)
from jaxmim.methods.ummae.common import MaskingInputs, norm_pix_target
from jaxmim.methods.ummae.decoder import PyramidMAEDecoder, SimMIMHead
from jaxmim.methods.ummae.method import UMMAEMethod, UMMAESimMIMMethod
from jaxmim.methods.ummae.pvt import MaskedAutoencoderPVT, SimMIMPVT
from jaxmim.methods.ummae.swin import MaskedAutoencoderSwin, SimMIMSwin
from jaxmim.methods.ummae.vit import MaskedAutoencoderViTUM

__all__ = ['UMMAEMethod', 'UMMAESimMIMMethod', 'MaskingInputs', 'norm_pix_target', 'PyramidMAEDecoder',
           'SimMIMHead', 'MaskedAutoencoderPVT', 'SimMIMPVT', 'MaskedAutoencoderSwin', 'SimMIMSwin',
           'MaskedAutoencoderViTUM']
