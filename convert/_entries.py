"""Entry builders for the common PyTorch modules, used by the family modules of :mod:`convert`.

Each returns the :class:`convert.official.Entry` rows that map one official PyTorch submodule's
``state_dict`` keys to the NNX variables of its jaxmim counterpart (``nn.Linear``, ``nn.Conv2d``,
``nn.LayerNorm``, ``nn.BatchNorm*``), plus :func:`prefixed` to move a submodule's rows under a
prefix and :func:`layer_norm_eps` to read the eps of an official ``norm_layer`` argument.

Private to the :mod:`convert` package (not a model family: :mod:`convert.official` skips ``_``
modules).
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Any, Sequence

import numpy as np
from flax import nnx

from convert.official import CONV2D, LINEAR, ConstantEntry, Entry, OmittedEntry, VariableEntry

__all__ = ['linear_entries', 'conv_entries', 'layer_norm_entries', 'batch_norm_entries', 'prefixed', 'layer_norm_eps']



def linear_entries(key: str, path: tuple[Any, ...], module: nnx.Module) -> list[Entry]:
    """``nn.Linear`` ``key.weight`` (out, in) [, ``key.bias``] <-> ``nnx.Linear`` at ``path``
    (``kernel`` (in, out) [, ``bias``]); the bias entry exists when ``module.bias`` is not None."""
    out: list[Entry] = [VariableEntry(key + '.weight', path + ('kernel',), LINEAR)]
    if getattr(module, 'bias', None) is not None:
        out.append(VariableEntry(key + '.bias', path + ('bias',)))
    return out


def conv_entries(key: str, path: tuple[Any, ...], module: nnx.Module) -> list[Entry]:
    """``nn.Conv2d`` ``key.weight`` (O, I/g, kh, kw) [, ``key.bias``] <-> ``nnx.Conv`` at ``path``
    (``kernel`` (kh, kw, I/g, O) [, ``bias``])."""
    out: list[Entry] = [VariableEntry(key + '.weight', path + ('kernel',), CONV2D)]
    if getattr(module, 'bias', None) is not None:
        out.append(VariableEntry(key + '.bias', path + ('bias',)))
    return out


def layer_norm_entries(key: str, path: tuple[Any, ...]) -> list[Entry]:
    """``nn.LayerNorm`` ``key.weight``, ``key.bias`` <-> ``nnx.LayerNorm`` ``scale``, ``bias``."""
    return [VariableEntry(key + '.weight', path + ('scale',)), VariableEntry(key + '.bias', path + ('bias',))]


def batch_norm_entries(key: str, path: tuple[Any, ...], module: nnx.Module) -> list[Entry]:
    """``nn.BatchNorm{1,2}d`` / ``SyncBatchNorm`` <-> ``nnx.BatchNorm`` at ``path``.

    Official order (parameters, then buffers): ``weight`` <-> ``scale`` and ``bias`` <-> ``bias``
    (``nnx.Param``, present when the module has them, i.e. ``affine=True``), ``running_mean`` <->
    ``mean`` and ``running_var`` <-> ``var`` (``nnx.BatchStat``), then ``num_batches_tracked``
    (a :class:`ConstantEntry`, int64 scalar 0). Momentum conventions differ (torch 0.1 = Flax
    0.9) but are not part of the state_dict.
    """
    out: list[Entry] = []
    if getattr(module, 'scale', None) is not None:
        out.append(VariableEntry(key + '.weight', path + ('scale',)))
    if getattr(module, 'bias', None) is not None:
        out.append(VariableEntry(key + '.bias', path + ('bias',)))
    out += [VariableEntry(key + '.running_mean', path + ('mean',)),
            VariableEntry(key + '.running_var', path + ('var',)),
            ConstantEntry(key + '.num_batches_tracked', np.zeros((), np.int64),
                          'BatchNorm step counter; jaxmim keeps none (only used with momentum=None)')]
    return out


def prefixed(entries: Sequence[Entry], key_prefix: str, path_prefix: tuple[Any, ...] = ()) -> list[Entry]:
    """``entries`` of a submodule moved under ``key_prefix`` (official) and ``path_prefix`` (NNX)."""
    out: list[Entry] = []
    for e in entries:
        if isinstance(e, VariableEntry):
            out.append(dataclasses.replace(e, key=key_prefix + e.key, path=path_prefix + e.path))
        elif isinstance(e, OmittedEntry):
            out.append(dataclasses.replace(e, path=path_prefix + e.path))
        else:
            out.append(dataclasses.replace(e, key=key_prefix + e.key))
    return out


def layer_norm_eps(norm_layer: Any, default: float = 1e-5) -> float:
    """eps of an official ``norm_layer`` constructor argument.

    Accepts ``None`` (-> ``default``), ``torch.nn.LayerNorm`` (1e-5) and
    ``functools.partial(torch.nn.LayerNorm, eps=...)`` (affine keywords may only keep their
    defaults).

    Raises:
      ValueError: any other norm layer (jaxmim models here use LayerNorm only).
    """
    if norm_layer is None:
        return float(default)
    torch = sys.modules.get('torch')
    layer_norm = torch.nn.LayerNorm if torch is not None else None
    if layer_norm is not None and norm_layer is layer_norm:
        return 1e-5
    if (isinstance(norm_layer, functools.partial) and layer_norm is not None
            and norm_layer.func is layer_norm and not norm_layer.args):
        kw = dict(norm_layer.keywords)
        eps = float(kw.pop('eps', 1e-5))
        bad = {k: v for k, v in kw.items() if not (k in ('elementwise_affine', 'bias') and v is True)}
        if bad:
            raise ValueError(f'norm_layer: only the eps of torch.nn.LayerNorm can be changed, got {bad}')
        return eps
    raise ValueError('norm_layer must be torch.nn.LayerNorm or functools.partial(torch.nn.LayerNorm, '
                     f'eps=...), got {norm_layer!r}; these jaxmim models support LayerNorm only')
