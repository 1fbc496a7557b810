"""The steps :mod:`jaxmim.benchmark` measures, built as the training loops build them, their
synthetic batch, and the model FLOPs of a step (the MFU numerator, :mod:`jaxmim.model_flops`).

Names no model: every step comes from :func:`jaxmim.rundir.build_model` and
:func:`jaxmim.steps.make_trainer`, the fine-tuning classifier of a pre-training model from the
registry (``classifier=`` of :func:`jaxmim.registry.register_model`).
"""

from __future__ import annotations

import functools

import ml_collections
from flax import nnx

from jaxmim import config as config_lib
from jaxmim import mesh as mesh_lib
from jaxmim import model_flops as model_flops_lib
from jaxmim import ops, probe, registry, rundir, torch_compare
from jaxmim import steps as steps_lib

__all__ = ['finetune_config_from_pretrain', 'build_step', 'synthetic_batch', 'abstract_batch', 'model_flops_per_image',
           'build_model_shape']


def finetune_config_from_pretrain(config, num_classes: int, layer_decay: float):
    """A fine-tuning config with the pre-training run's image size, batch, optimizer and seed;
    the model is the classifier the pre-training model registered (``classifier=`` of
    :func:`jaxmim.registry.register_model`) with ``num_classes`` classes.

    Raises:
      ValueError: the pre-training model registered no classifier.
    """
    classifier = registry.classifier_for(config.model.name)
    if classifier is None:
        raise ValueError(f'model {config.model.name!r} registers no fine-tuning classifier '
                         '(register_model(..., classifier=...)); run with --kinds=pretrain')
    ft = config_lib.finetune_defaults()
    ft.seed = config.seed
    ft.batch_size = config.batch_size
    ft.total_steps = config.total_steps
    ft.data.image_size = config_lib.resolve_data_config(config).image_size
    for key, value in config.optim.items():
        ft.optim[key] = value
    ft.optim.layer_decay = layer_decay
    ft.model.name = classifier
    with ft.unlocked():
        ft.model.overrides = ml_collections.ConfigDict({'num_classes': num_classes})
    return ft


def build_step(kind: str, config, mesh, *, with_twin: bool = False, abstract_state: bool = False):
    """``(model_name, trainer, state, num_classes, in_chans, twin)`` of one step kind, built as
    the training loops of :mod:`jaxmim.train` build them (the model's hooks included).

    The model is built eagerly and its weights laid out on the mesh; with ``abstract_state`` it is
    only traced (``nnx.eval_shape``) and the state is ``jax.ShapeDtypeStruct`` leaves with their
    shardings, enough to lower and compile the step with nothing initialised. ``twin`` is
    ``(torch module holding the same weights, source name)`` when ``with_twin`` (else None).
    A fine-tuning config with ``probe='linear'`` gives the probe's step (frozen classifier, trained
    head: :func:`jaxmim.probe.wrap`), as :func:`jaxmim.train.finetune` runs it. The step has no
    mixup / cutmix (elementwise work on the batch; the loop's step has it when the config asks).

    Raises:
      ValueError: ``with_twin`` together with ``abstract_state`` (a twin needs the weights) or with
        a probe config (no PyTorch twin of a probe); the config errors of
        :func:`jaxmim.steps.make_trainer`.
    """
    if with_twin and abstract_state:
        raise ValueError('build_step: with_twin=True needs the weights; abstract_state must be False')
    probe_kind = kind == 'finetune' and config.get('probe', '')
    if with_twin and probe_kind:
        raise ValueError(f'build_step: config.probe={probe_kind!r} has no PyTorch twin; with_twin must be False')
    build = functools.partial(rundir.build_model, config)
    if probe_kind:
        build = functools.partial(lambda b: probe.wrap(config, b()), build)
    model = nnx.eval_shape(build) if abstract_state else build()
    twin = torch_compare.torch_twin(model) if with_twin else None
    if kind == 'pretrain':
        loss_fn, num_classes = steps_lib.mim_loss, 1
    else:
        num_classes = model.num_classes
        loss_fn = functools.partial(steps_lib.classification_loss, label_smoothing=config.label_smoothing,
                                    num_classes=num_classes)
    trainer, state = steps_lib.make_trainer(model, loss_fn, config, mesh, abstract_state=abstract_state)
    return config.model.name, trainer, state, num_classes, getattr(model, 'in_chans', 3), twin


def synthetic_batch(mesh, batch_size: int, image_size: int, in_chans: int, num_classes: int,
                    seed: int = 0) -> dict:
    """A device-resident global batch sharded on ``data``: ``image`` float32
    ``(B, S, S, in_chans)`` standard normal, ``label`` int32 ``(B,)`` uniform in
    ``[0, num_classes)``. Generated on the devices (no host transfer)."""
    import jax
    import jax.numpy as jnp


    sharding = mesh_lib.batch_sharding(mesh)

    @functools.partial(jax.jit, out_shardings={'image': sharding, 'label': sharding})
    def make(key):
        k_img, k_lab = jax.random.split(key)
        return {'image': jax.random.normal(k_img, (batch_size, image_size, image_size, in_chans), jnp.float32),
                'label': jax.random.randint(k_lab, (batch_size,), 0, max(num_classes, 1), jnp.int32)}

    return make(jax.random.key(seed))


def abstract_batch(mesh, batch_size: int, image_size: int, in_chans: int) -> dict:
    """The shapes and layout of :func:`synthetic_batch`'s batch, as ``jax.ShapeDtypeStruct``
    (``image`` float32 ``(B, S, S, in_chans)``, ``label`` int32 ``(B,)``, both sharded on
    ``data``): to lower or compile a step without allocating it."""
    import jax
    import jax.numpy as jnp

    sharding = mesh_lib.batch_sharding(mesh)
    return {'image': jax.ShapeDtypeStruct((batch_size, image_size, image_size, in_chans), jnp.float32,
                                          sharding=sharding),
            'label': jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=sharding)}


def model_flops_per_image(kind: str, config, mesh, step_flops: float | None = None) -> tuple[float | None, str]:
    """Model FLOPs per image of one step kind (the MFU numerator, :mod:`jaxmim.model_flops`) and
    where they were counted.

    The count is XLA's cost analysis of the lowered (unoptimised) train step of the config's
    reference form (:func:`jaxmim.model_flops.reference_config`: no remat, no scanned blocks, XLA's
    attention) on one CPU device: the CPU count of the same step, which every backend shares (a
    GPU's cost analysis leaves the cuBLAS and cuDNN calls out). When the step itself already is that
    (reference config on a CPU mesh) and ``step_flops`` is given, that count of its own lowered
    module is used.

    Args:
      kind: ``'pretrain'`` or ``'finetune'``; config: the step's config (not modified); mesh: the
        mesh the step runs on; step_flops: XLA's count of the step's own lowered module (the global
        batch; ``lowered.cost_analysis()``), if at hand.

    Returns:
      ``(flops per image or None, source)`` with source ``'step'`` or ``'reference form, 1 CPU
      device'`` (``'reference form, 1 device'``: this process's first device, where
      ``JAX_PLATFORMS`` leaves the CPU backend out).
    """
    batch_size = int(config.batch_size)
    if step_flops and model_flops_lib.is_reference(config) and ops.mesh_platform(mesh) == 'cpu':
        return step_flops / batch_size, 'step'
    host = rundir.host_device()      # this process's own CPU device (multi-process runs included)
    cpu_mesh = mesh_lib.make_mesh([host])
    ref = model_flops_lib.reference_config(config)
    _, trainer, state, _, in_chans, _ = build_step(kind, ref, cpu_mesh, abstract_state=True)
    size = int(config_lib.resolve_data_config(ref).image_size)
    batch = abstract_batch(cpu_mesh, batch_size, size, in_chans)
    fpi = model_flops_lib.lowered_flops_per_image(lambda: trainer.train_step.lower(state, batch), batch_size)
    return fpi, 'reference form, 1 CPU device' if host.platform == 'cpu' else 'reference form, 1 device'


def build_model_shape(config):
    """The config's model with abstract weights (for its ``host_inputs``; nothing allocated)."""
    return nnx.eval_shape(lambda: rundir.build_model(config))
