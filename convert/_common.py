"""Shared pieces of the family modules (:mod:`convert.swin`, :mod:`convert.vit`).

* PyTorch twin building blocks common to the timm-era official code bases (timm 0.3.2 as used by
  ``facebookresearch/mae@efb2a80``, and ``microsoft/SimMIM@d3e29bc models/swin_transformer.py``):
  :func:`pair`, :func:`trunc_normal_`, :class:`DropPath`, :class:`Mlp`, :func:`init_linear_layernorm`.
* Conversion-side argument helper: :func:`square`.

Private to the :mod:`convert` package (not a model family: :mod:`convert.official` skips ``_``
modules). The family modules re-export :class:`DropPath` and :class:`Mlp` as part of their twins.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

__all__ = ['IntOr2', 'pair', 'trunc_normal_', 'DropPath', 'Mlp', 'init_linear_layernorm', 'square']

IntOr2 = Union[int, Sequence[int]]


def pair(v: IntOr2, name: str) -> Tuple[int, int]:
    """timm ``to_2tuple``: an int or a pair as an (h, w) tuple of positive ints.

    Raises:
        ValueError: not an int or a pair of ints, or a non-positive entry.
    """
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f'{name} must be an int or a pair of ints, got {v!r}')
        out = (int(v[0]), int(v[1]))
    else:
        out = (int(v), int(v))
    if out[0] <= 0 or out[1] <= 0:
        raise ValueError(f'{name} must be positive, got {v!r}')
    return out


def trunc_normal_(t: torch.Tensor, std: float = 0.02) -> torch.Tensor:
    """timm-era ``trunc_normal_(t, std)``: N(0, std^2) truncated at the ABSOLUTE bounds [-2, 2]
    (timm's ``trunc_normal_`` is the same algorithm as ``torch.nn.init.trunc_normal_``)."""
    return nn.init.trunc_normal_(t, mean=0.0, std=std, a=-2.0, b=2.0)


class DropPath(nn.Module):
    """Stochastic depth (timm ``DropPath`` semantics, as used by timm 0.3.2 and
    ``models/swin_transformer.py``).

    In training mode each sample of the batch (dim 0) is kept with probability
    ``keep = 1 - drop_prob`` and kept samples are divided by ``keep``; in eval mode, or when
    ``drop_prob == 0``, it is the identity.  Any shape (B, ...) and floating dtype; the Bernoulli
    draw is made on the input's device in the input's dtype.

    Raises:
        ValueError: if ``drop_prob`` is not in [0, 1).
    """

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        if not 0.0 <= float(drop_prob) < 1.0:
            raise ValueError(f'drop_prob must be in [0, 1), got {drop_prob}')
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply per-sample stochastic depth to ``x`` (B, ...); returns the same shape/dtype."""
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        random_tensor = keep + torch.rand(shape, dtype=x.dtype, device=x.device)
        random_tensor.floor_()
        return x.div(keep) * random_tensor

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob}'


class Mlp(nn.Module):
    """Transformer MLP (timm 0.3.2 ``Mlp``; ``models/swin_transformer.py`` ``Mlp``):
    ``fc1 -> GELU (exact erf) -> Dropout -> fc2 -> Dropout``.

    Input/output (..., in_features) -> (..., out_features) float.
    Submodules (state_dict order): ``fc1``, ``act``, ``fc2``, ``drop``.
    """

    def __init__(self, in_features: int, hidden_features: Optional[int] = None,
                 out_features: Optional[int] = None, act_layer=nn.GELU, drop: float = 0.0):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_features) -> (..., out_features)."""
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def init_linear_layernorm(m: nn.Module,
                          linear_weight_init: Callable[[torch.Tensor], Any] = trunc_normal_) -> None:
    """The official ``_init_weights`` hook applied with ``model.apply``: an ``nn.Linear`` gets its
    weight from ``linear_weight_init`` (default timm ``trunc_normal_(.02)``, timm 0.3.2 ViT and
    Swin; MAE pre-training passes ``nn.init.xavier_uniform_``) and its bias 0; an ``nn.LayerNorm``
    weight 1 and bias 0; other modules are left alone."""
    if isinstance(m, nn.Linear):
        linear_weight_init(m.weight)
        if m.bias is not None:
            nn.init.constant_(m.bias, 0)
    elif isinstance(m, nn.LayerNorm):
        nn.init.constant_(m.bias, 0)
        nn.init.constant_(m.weight, 1.0)


def square(value: Any, name: str, family: str) -> int:
    """An official int-or-pair size argument as one int (jaxmim ``family`` models are square).

    Raises:
        ValueError: a pair of two different sizes (or not of length 2).
    """
    if isinstance(value, (tuple, list)):
        if len(value) != 2 or int(value[0]) != int(value[1]):
            raise ValueError(f'{name} must be an int or a square pair, got {value!r} '
                             f'(jaxmim {family} supports square images and patches only)')
        value = value[0]
    return int(value)


def mlp_ratio_of(block: Any) -> float:
    """The MLP ratio of a jaxmim transformer block (``block.mlp.fc1``, an ``nnx.Linear`` whose kernel
    is ``(in, hidden)``): hidden width over input width, the official constructors' ``mlp_ratio``."""
    d_in, hidden = block.mlp.fc1.kernel.shape
    return hidden / d_in
