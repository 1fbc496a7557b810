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

__all__ = ['torch_twin', 'TorchStep']


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


class TorchStep:
    """One PyTorch train step of a twin, as the official trainers run it: forward, loss,
    ``backward``, ``clip_grad_norm_`` (the config's ``optim.clip_grad``, when set), ``AdamW.step``.

    The batch is the JAX benchmark's synthetic batch moved to the host (NCHW float32 images,
    int64 labels) with the JAX model's masking inputs drawn once by its ``host_inputs``; a
    classifier's loss is cross entropy with the config's label smoothing, a pre-training twin
    returns its own loss. ``compile=True`` wraps the twin in ``torch.compile`` (default inductor).

    Args:
      twin: the ``torch.nn.Module`` (set to train mode here).
      config: the run's config (``optim.weight_decay``, ``optim.clip_grad``,
        ``label_smoothing`` are read).
      images: float32 ``(B, H, W, C)`` NHWC host array (transposed to NCHW).
      labels: integer ``(B,)`` host array (cast to int64).
      inputs: the masking inputs of a pre-training model (name -> host array, passed to the twin
        as keyword tensors); empty for a classifier.
      compile: wrap the twin in ``torch.compile``.

    Calling the step runs one iteration and returns its loss as a Python float.

    Source: the official trainers' loop, e.g. microsoft/SimMIM@d3e29bc ``main_simmim.py:156-171``
    (``backward``, ``clip_grad_norm_``, ``optimizer.step``).
    """

    def __init__(self, twin, config, images, labels, inputs: dict, *, compile: bool = False):
        import torch

        self.torch = torch
        self.module = twin.train()
        self.fn = torch.compile(self.module) if compile else self.module
        self.opt = torch.optim.AdamW(self.module.parameters(), lr=1e-4, weight_decay=float(config.optim.weight_decay))
        self.clip = config.optim.get('clip_grad')
        self.smoothing = float(config.get('label_smoothing', 0.0) or 0.0)
        self.images = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
        self.labels = torch.from_numpy(labels.astype('int64'))
        self.inputs = {k: torch.from_numpy(v) for k, v in inputs.items()}
        self.classifier = not inputs

    def __call__(self) -> float:
        torch = self.torch
        self.opt.zero_grad(set_to_none=True)
        out = self.fn(self.images, **self.inputs)
        if self.classifier:
            loss = torch.nn.functional.cross_entropy(out, self.labels, label_smoothing=self.smoothing)
        else:
            loss = out['loss'] if isinstance(out, dict) else out
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), float(self.clip))
        self.opt.step()
        return float(loss.detach())
