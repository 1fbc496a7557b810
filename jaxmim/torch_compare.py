"""The PyTorch side of ``python -m jaxmim.benchmark --compare_torch``: the twin and its train step.

:func:`torch_twin` finds the PyTorch module that holds the same weights as a jaxmim model (the
conversion families of ``convert/``, :func:`convert.official.torch_twin`); :class:`TorchStep` runs
one train step of it the way the official trainers do, so the benchmark can time it beside the
JAX step. PyTorch is imported only when a step is built; ``convert`` is imported from the
repository root.
"""

from __future__ import annotations

from typing import Any

from absl import logging

__all__ = ['torch_twin', 'TorchStep', 'AUTOCAST_DTYPES', 'device_for']


def torch_twin(model) -> tuple[Any, str] | None:
    """The PyTorch twin of a jaxmim model, or None when there is none.

    Args:
      model: a built jaxmim model (an ``nnx.Module`` of the registry).

    Returns:
      ``(twin, source)``: the ``torch.nn.Module`` holding the same weights and the name of the
      conversion family that built it, from :func:`convert.official.torch_twin`; None (with a
      logged warning) when ``convert/`` cannot be imported (run from outside the repository
      root) or no family has a twin of this model: the comparison is then reported as
      unavailable.
    """
    try:
        from convert import official
    except ImportError as e:  # run from outside the repository root
        logging.warning('benchmark: cannot import convert/ (%s); no PyTorch comparison', e)
        return None
    try:
        return official.torch_twin(model)
    except LookupError as e:
        logging.warning('benchmark: %s', e)
        return None


AUTOCAST_DTYPES = ('bfloat16', 'float16')
"""``config.compute_dtype`` values the twin's step runs under ``torch.autocast`` (to the torch dtype
of that name); any other (``float32``) runs without autocast."""


def device_for(mesh) -> str:
    """The torch device of the twin of a step that runs on ``mesh``: ``'cuda'`` for a GPU mesh
    (:func:`jaxmim.ops.mesh_platform`), else ``'cpu'``."""
    from jaxmim import ops

    return 'cuda' if ops.mesh_platform(mesh) == 'gpu' else 'cpu'


class TorchStep:
    """One PyTorch train step of a twin, as the official trainers run it: forward and loss (under
    ``torch.autocast`` when the config computes in bfloat16 / float16), ``backward``,
    ``clip_grad_norm_`` (the config's ``optim.clip_grad``, when set), ``AdamW.step``.

    The batch is the JAX benchmark's synthetic batch moved to ``device`` (NCHW float32 images,
    int64 labels) with the JAX model's masking inputs drawn once by its ``host_inputs``; a
    classifier's loss is cross entropy with the config's label smoothing, a pre-training twin
    returns its own loss. ``compile=True`` wraps the twin in ``torch.compile`` (default inductor).
    The weights and AdamW's moments stay float32 (autocast's mixed precision, as the official
    trainers' ``--amp``), like the JAX step's master weights under ``compute_dtype``.

    Args:
      twin: the ``torch.nn.Module`` (moved to ``device`` and set to train mode here).
      config: the run's config (``optim.weight_decay``, ``optim.clip_grad``,
        ``label_smoothing``, ``compute_dtype`` are read).
      images: float32 ``(B, H, W, C)`` NHWC host array (transposed to NCHW).
      labels: integer ``(B,)`` host array (cast to int64).
      inputs: the masking inputs of a pre-training model (name -> host array, passed to the twin
        as keyword tensors); empty for a classifier.
      compile: wrap the twin in ``torch.compile``.
      device: ``'cpu'`` or ``'cuda'`` (the benchmark passes :func:`device_for` of the JAX step's
        mesh).

    Calling the step runs one iteration, waits for the device (``torch.cuda.synchronize``: the
    optimizer update is timed too) and returns its loss as a Python float.

    Raises:
      ValueError: an unknown ``device``.
      RuntimeError: from torch, e.g. ``'cuda'`` without a CUDA build or device.

    Source: the official trainers' loop, e.g. microsoft/SimMIM@d3e29bc ``main_simmim.py:156-171``
    (``backward``, ``clip_grad_norm_``, ``optimizer.step``); mixed precision as MAE's
    ``engine_pretrain.py:41-43`` (``torch.cuda.amp.autocast()`` around the forward and loss).
    """

    def __init__(self, twin, config, images, labels, inputs: dict, *, compile: bool = False, device: str = 'cpu'):
        import torch

        if device not in ('cpu', 'cuda'):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        self.torch = torch
        self.device = torch.device(device)
        self.module = twin.to(self.device).train()
        self.fn = torch.compile(self.module) if compile else self.module
        dtype = str(config.get('compute_dtype', 'float32'))
        self.autocast_dtype = getattr(torch, dtype) if dtype in AUTOCAST_DTYPES else None
        self.opt = torch.optim.AdamW(self.module.parameters(), lr=1e-4, weight_decay=float(config.optim.weight_decay))
        self.clip = config.optim.get('clip_grad')
        self.smoothing = float(config.get('label_smoothing', 0.0) or 0.0)
        self.images = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(self.device)
        self.labels = torch.from_numpy(labels.astype('int64')).to(self.device)
        self.inputs = {k: torch.from_numpy(v).to(self.device) for k, v in inputs.items()}
        self.classifier = not inputs

    def __call__(self) -> float:
        torch = self.torch
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            out = self.fn(self.images, **self.inputs)
            if self.classifier:
                loss = torch.nn.functional.cross_entropy(out, self.labels, label_smoothing=self.smoothing)
            else:
                loss = out['loss'] if isinstance(out, dict) else out
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), float(self.clip))
        self.opt.step()
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
        return float(loss.detach())

    def peak_memory_gib(self) -> float | None:
        """Peak memory of one step on a CUDA device, GiB (``torch.cuda.max_memory_allocated`` over
        one step run after resetting the peak; the twin's weights and AdamW state included), or
        None on the CPU. Runs one step."""
        torch = self.torch
        if self.device.type != 'cuda':
            return None
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self()
        return torch.cuda.max_memory_allocated(self.device) / 2 ** 30
