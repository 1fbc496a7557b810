"""Model FLOPs of a train step, the numerator of MFU, independent of how the step is executed.

MFU (model FLOPs utilisation, Chowdhery et al. 2022, "PaLM", appendix B) divides the FLOPs the
*model* needs per step by the device's peak; recomputation (rematerialisation) and the way a kernel
is fused do not count. XLA's count of the compiled step is not that figure in three cases the
benchmark meets:

* ``remat`` (any policy but ``'none'``) recomputes forward work in the backward pass: the
  compiled count grows (MAE ViT-B at 224 px: 59.4 -> 72.6 GFLOPs per image with ``'block'``);
* ``scan_blocks=True`` puts a stage's blocks in a ``while`` loop, whose body XLA's cost analysis
  counts once (MAE ViT-B: 59.4 -> 8.0 GFLOPs per image);
* ``attn_implementation='cudnn'`` is a custom call that XLA does not count, and on GPU every
  cuBLAS product of the *compiled* module is one too (the H200 run of ``docs/`` saw 2.8 GFLOPs
  per image for steps of 60 and 70).

So the model FLOPs are taken from the *reference form* of the same step: the same config with the
model overrides ``remat='none'``, ``scan_blocks=False``, ``attn_implementation=None`` (only where
the config sets them: a model without one of these arguments is not given it), lowered but not
compiled, and counted by XLA's cost analysis of that lowered, unoptimised module
(``jax.stages.Lowered.cost_analysis``): plain ``dot`` and ``convolution`` operations on every
backend, before the backend turns them into library calls. On the CPU the lowered count agrees with
the compiled one within 1 % (MAE ViT-B: 59.06 against 59.43 GFLOPs per image). The count includes
the backward pass, the elementwise work and the optimizer update, as the benchmark's FLOPs always
have (``jaxmim.benchmark``).
"""

from __future__ import annotations

from typing import Any, Callable

import ml_collections

from jaxmim import profiling

__all__ = ['REFERENCE_OVERRIDES', 'PEAK_BF16_TFLOPS', 'reference_config', 'is_reference', 'lowered_flops_per_image',
           'peak_tflops']

REFERENCE_OVERRIDES: dict[str, Any] = {'remat': 'none', 'scan_blocks': False, 'attn_implementation': None}
"""Model overrides that change how a step runs but not what it computes, with the value of the
reference form: no rematerialisation, blocks unrolled, XLA's attention."""


def _overrides(config: ml_collections.ConfigDict) -> dict:
    o = config.model.get('overrides', None)
    if o is None:
        return {}
    return o.to_dict() if hasattr(o, 'to_dict') else dict(o)


def is_reference(config: ml_collections.ConfigDict) -> bool:
    """Whether ``config`` already runs the reference form (none of :data:`REFERENCE_OVERRIDES` is
    set to another value in ``config.model.overrides``)."""
    o = _overrides(config)
    return all(o[k] == v for k, v in REFERENCE_OVERRIDES.items() if k in o)


def reference_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of ``config`` whose model overrides of :data:`REFERENCE_OVERRIDES` take the reference
    values; everything else (model, method, image size, batch, compute dtype, seed) is kept.
    ``config`` is not modified."""
    ref = config.copy_and_resolve_references()
    overrides = _overrides(ref)
    with ref.unlocked():
        ref.model.overrides = ml_collections.ConfigDict(
            {k: (REFERENCE_OVERRIDES[k] if k in REFERENCE_OVERRIDES else v) for k, v in overrides.items()})
    return ref


def lowered_flops_per_image(lower: Callable[[], Any], batch_size: int) -> float | None:
    """FLOPs per image of a train step from XLA's cost analysis of its lowered module.

    Args:
      lower: a callable returning the ``jax.stages.Lowered`` train step of a global batch of
        ``batch_size`` images (e.g. ``lambda: trainer.train_step.lower(state, batch)``).
      batch_size: the global batch (the lowered module is the unpartitioned program).

    Returns:
      FLOPs per image (float), or None when XLA reports no count.

    Raises:
      ValueError: ``batch_size`` < 1.
    """
    if batch_size < 1:
        raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    flops = profiling.total_flops(profiling.safe_analysis(lower().cost_analysis))
    return flops / batch_size if flops else None


PEAK_BF16_TFLOPS = (('H200', 989.4), ('H100 PCIe', 756.0), ('H100', 989.4), ('A100', 312.0),
                    ('TPU v6', 918.0), ('TPU v5p', 459.0), ('TPU v5', 197.0), ('TPU v4', 275.0))
"""Dense bfloat16 peaks per device (vendor data sheets), matched in order as substrings of the
device kind: an H100 / H200 SXM 989.4 TFLOP/s, an H100 PCIe 756, an A100 312, TPU v4 275, v5e 197,
v5p 459, v6e 918."""


def peak_tflops(device_kind: str) -> float | None:
    """The dense bf16 peak of one device of this kind (:data:`PEAK_BF16_TFLOPS`), or None."""
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in device_kind.lower():
            return value
    return None
