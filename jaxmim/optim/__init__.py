"""Optimizer, parameter groups, layer-wise lr decay and lr schedules (SimMIM and MAE recipes).

Builds, as one optax chain, what microsoft/SimMIM@d3e29bc (``optimizer.py``, ``lr_scheduler.py``,
``main_simmim.py:156-230``) and facebookresearch/mae@be47fef (``util/lr_sched.py``,
``util/lr_decay.py``, ``main_pretrain.py``) build in PyTorch:

* torch AdamW (decoupled weight decay ``p <- p - lr wd p``) whose decay is switched off for 1-D
  tensors, biases and the fnmatch patterns of the model's ``no_weight_decay()`` hook; or MAE's
  LARS (``name='lars'``: trust ratio and momentum, facebookresearch/mae ``util/lars.py``);
* layer-wise lr decay: every parameter gets a layer id from the model's ``layer_id`` hook and
  the lr multiplier ``layer_decay ** (num_layer_ids - 1 - id)``; one ``optax.partition`` label
  per distinct multiplier;
* per-iteration (or per-epoch) schedules chosen by name (:data:`SCHEDULES`);
* global-norm gradient clipping with PyTorch's coefficient ``max_norm / (norm + 1e-6)``.

Parameter trees are the nested dicts of ``nnx.to_pure_dict(nnx.state(model, nnx.Param))`` (an
``nnx.State`` works as well). A leaf is named by its keys joined with ``'.'``, e.g.
``'encoder.layers.0.blocks.1.attn.qkv.kernel'``; these names mirror the PyTorch ``state_dict``
names with ``weight`` spelled ``kernel`` / ``scale``.

Typical use (the hooks come from the model, see :mod:`jaxmim.registry`)::

    ocfg = scaled_optim_config(config.optim.to_dict(), config.batch_size)
    tx, lr_fn = build_optimizer(ocfg, params, total_steps,
                                layer_id_fn=model.layer_id, num_layer_ids=model.num_layer_ids,
                                no_weight_decay=model.no_weight_decay())
    opt_state = tx.init(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)

The package holds one concern per module:

* :mod:`jaxmim.optim.groups`: dotted parameter names, the weight-decay mask, layer-decay scales;
* :mod:`jaxmim.optim.schedules`: the named lr schedules;
* :mod:`jaxmim.optim.scaling`: linear lr scaling by batch size;
* :mod:`jaxmim.optim.clipping`: the global gradient norm and torch-style clipping;
* :mod:`jaxmim.optim.lars`: MAE's LARS (``optim.name='lars'``, linear probing) up to the lr;
* :mod:`jaxmim.optim.build`: :func:`build_optimizer`;
* :mod:`jaxmim.optim.checks`: the argument checks they share.

Which pieces are optax and which are hand-written (and why):

* optax: ``cosine_decay_schedule`` (both cosines), ``piecewise_constant_schedule`` (multistep),
  ``join_schedules`` (warm-up -> decay), ``constant_schedule``, ``partition`` (per-group lr),
  ``scale_by_learning_rate``, ``scale_by_adam``, ``add_decayed_weights``, ``chain``; LARS:
  ``scale_by_trust_ratio``, ``masked``, ``trace`` (not ``optax.lars``: see :mod:`jaxmim.optim.lars`).
* hand-written: the float32-accurate linear warm-up and the step remapping (the schedulers'
  one-update lag, epoch holding), explained in :mod:`jaxmim.optim.schedules`, and
  :func:`clip_by_global_norm_torch` (``optax.clip_by_global_norm`` uses ``max_norm / norm``,
  without torch's ``+ 1e-6``).
"""

from jaxmim.optim.build import OPTIMIZERS, build_optimizer
from jaxmim.optim.clipping import clip_by_global_norm_torch, global_norm
from jaxmim.optim.groups import layer_decay_scales, path_names, weight_decay_mask
from jaxmim.optim.lars import lars_direction, lars_mask
from jaxmim.optim.scaling import LR_SCALE_FIELDS, scale_lrs, scaled_optim_config
from jaxmim.optim.schedules import (
    SCHEDULE_UNITS,
    SCHEDULES,
    lr_schedule,
    mae_lr_schedule,
    simmim_lr_schedule,
)

__all__ = [
    'SCHEDULES',
    'SCHEDULE_UNITS',
    'LR_SCALE_FIELDS',
    'path_names',
    'weight_decay_mask',
    'layer_decay_scales',
    'simmim_lr_schedule',
    'mae_lr_schedule',
    'lr_schedule',
    'scale_lrs',
    'scaled_optim_config',
    'global_norm',
    'clip_by_global_norm_torch',
    'build_optimizer',
    'OPTIMIZERS',
    'lars_mask',
    'lars_direction',
]
