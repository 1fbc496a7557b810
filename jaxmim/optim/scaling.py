"""Linear lr scaling by batch size: the configured lrs refer to a reference batch.

SimMIM scales ``BASE_LR``, ``WARMUP_LR`` and ``MIN_LR`` by ``total batch / 512``
(microsoft/SimMIM@d3e29bc ``main_simmim.py:217-230``); MAE scales only ``--blr`` by
``effective batch / 256`` (facebookresearch/mae@be47fef ``main_pretrain.py``). The optimizer
config names the reference batch (``lr_scale_batch``) and the scaled fields
(``lr_scale_fields``); :func:`scaled_optim_config` applies the rule before
:func:`jaxmim.optim.build_optimizer`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax

from jaxmim.optim.checks import as_int

__all__ = ['LR_SCALE_FIELDS', 'scale_lrs', 'scaled_optim_config']


LR_SCALE_FIELDS = ('base_lr', 'warmup_lr', 'min_lr')
"""The optimizer-config fields that ``lr_scale_fields`` may name."""


def scale_lrs(lr, batch_size_total: int, reference: int = 512):
    """Linear lr scaling ``lr * batch_size_total / reference``.

    SimMIM multiplies BASE_LR, WARMUP_LR and MIN_LR each by ``BATCH_SIZE * world_size / 512``
    (times ACCUMULATION_STEPS when > 1); MAE multiplies only ``--blr`` by ``eff_batch / 256``.

    Args:
        lr: a float, or a pytree of floats (e.g. ``(base_lr, warmup_lr, min_lr)`` or a dict).
        batch_size_total: images per optimizer step over all devices and accumulation steps (> 0).
        reference: the batch size the configured lrs refer to (SimMIM: 512, MAE: 256).

    Returns:
        ``lr`` scaled, with the same structure (floats for float input).

    Raises:
        ValueError: if ``batch_size_total`` or ``reference`` is not a positive integer.

    Source: microsoft/SimMIM@d3e29bc ``main_simmim.py:217-230``,
    ``main_finetune.py:321-334``; facebookresearch/mae@be47fef ``main_pretrain.py`` (``args.lr =
    args.blr * eff_batch_size / 256``).
    """
    batch_size_total = as_int('batch_size_total', batch_size_total, minimum=1)
    reference = as_int('reference', reference, minimum=1)
    factor = batch_size_total / reference
    return jax.tree.map(lambda x: float(x) * factor, lr)


def scaled_optim_config(optim_config, batch_size: int) -> dict:
    """The optimizer config with the linear lr scaling rule applied, ready for build_optimizer.

    Pops ``lr_scale_batch`` (the reference batch; 0 or None disables scaling) and
    ``lr_scale_fields`` (which of :data:`LR_SCALE_FIELDS` scale; default all three) and
    multiplies each listed field by ``batch_size / lr_scale_batch``:

    * SimMIM: ``lr_scale_batch=512``, ``lr_scale_fields=('base_lr', 'warmup_lr', 'min_lr')``
      (all three scale);
    * MAE: ``lr_scale_batch=256``, ``lr_scale_fields=('base_lr',)`` (``base_lr`` is MAE's
      ``--blr``; ``min_lr`` is absolute).

    Args:
        optim_config: mapping (or ``ml_collections.ConfigDict``) of optimizer fields including
            ``lr_scale_batch``; not modified.
        batch_size: images per optimizer step over all devices and accumulation steps (> 0).

    Returns:
        A new ``dict`` without ``lr_scale_batch`` / ``lr_scale_fields``, the listed fields
        scaled (floats), everything else unchanged.

    Raises:
        ValueError: if ``lr_scale_batch`` is missing or not a non-negative integer,
            ``lr_scale_fields`` is not a tuple/list of distinct names among
            :data:`LR_SCALE_FIELDS`, a listed field is absent, or ``batch_size < 1``.

    Source: microsoft/SimMIM@d3e29bc ``main_simmim.py:217-230``, ``main_finetune.py:321-334``;
    facebookresearch/mae@be47fef ``main_pretrain.py``, ``main_finetune.py``.
    """
    config = dict(optim_config.to_dict() if hasattr(optim_config, 'to_dict') else optim_config)
    if 'lr_scale_batch' not in config:
        raise ValueError("optimizer config is missing the required field 'lr_scale_batch' "
                         "(reference batch size of the lrs; 0 disables the scaling)")
    reference = config.pop('lr_scale_batch')
    fields = config.pop('lr_scale_fields', LR_SCALE_FIELDS)
    if isinstance(fields, (str, bytes)) or not isinstance(fields, Sequence):
        raise ValueError(f'lr_scale_fields must be a tuple of names among {LR_SCALE_FIELDS}, '
                         f'got {fields!r}')
    fields = tuple(fields)
    unknown = [f for f in fields if f not in LR_SCALE_FIELDS]
    if unknown or len(set(fields)) != len(fields):
        raise ValueError(f'lr_scale_fields must be distinct names among {LR_SCALE_FIELDS}, '
                         f'got {fields!r}')
    if reference is None or reference == 0:
        return config
    reference = as_int('lr_scale_batch', reference, minimum=0)
    batch_size = as_int('batch_size', batch_size, minimum=1)
    for field in fields:
        if field not in config:
            raise ValueError(f'lr_scale_fields names {field!r}, which the optimizer config lacks')
        config[field] = scale_lrs(config[field], batch_size, reference)
    return config
