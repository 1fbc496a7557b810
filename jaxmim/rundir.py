"""A run directory as files: its config, its model, its checkpoints and summary, and the
pre-flight checks of those inputs.

A run directory (``--workdir``) holds ``config.json`` (the resolved config, written by every
run and every import), ``checkpoints/<step>/`` (orbax items ``params``, ``model_state``,
``opt_state``, ``ema``, ``step``, ``guard``: :mod:`jaxmim.checkpoint`), ``tensorboard/`` and
``<mode>_summary.json``. The training loops, :mod:`jaxmim.visualize`, :mod:`jaxmim.benchmark`,
``convert.export`` and ``convert.import`` read and write runs through this module only.
"""

from __future__ import annotations

import difflib
import json
import os
import socket
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxmim import checkpoint as ckpt_lib
from jaxmim import config as config_lib
from jaxmim import files
from jaxmim import tree_util
from jaxmim.methods import create_mim_model
from jaxmim.registry import create_model, list_models, match_any

PyTree = Any

__all__ = ['build_model', 'split_variables', 'merge_variables', 'nonempty', 'load_run_config',
           'write_run_config', 'restore_model', 'encoder_variables', 'host_device', 'read_checkpoint_variables',
           'load_pretrained', 'load_variables',
           'save_model_checkpoint', 'previous_history', 'check_model_name', 'check_workdir',
           'check_resume', 'check_pretrained', 'check_image_size']


# ----------------------------------------------------------------------------------------
# The model of a run and its variables.
# ----------------------------------------------------------------------------------------

def build_model(config: ml_collections.ConfigDict) -> nnx.Module:
    """The model a run trains: the MIM method's pre-training model (``mode='pretrain'``) or the
    registered classifier (``mode='finetune'``), with ``config.model.overrides`` and ``config.seed``.

    Raises:
      KeyError: unknown model or method. TypeError: an unknown model override.
      ValueError: a method key the method does not accept.
    """
    overrides = config.model.overrides.to_dict() if hasattr(config.model.overrides, 'to_dict') \
        else dict(config.model.overrides)
    if config.mode == 'pretrain':
        block = config.method.to_dict() if hasattr(config.method, 'to_dict') else dict(config.method)
        return create_mim_model(block, config.model.name, overrides=overrides, seed=config.seed)
    return create_model(config.model.name, seed=config.seed, **overrides)


def split_variables(model: nnx.Module) -> tuple[Any, dict, dict]:
    """``(graphdef, params, model_state)``: the structure, the trained ``nnx.Param`` values and
    every other variable (BatchNorm statistics, fixed buffers), both as nested pure dicts."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(rest)


def merge_variables(graphdef, params: PyTree, model_state: PyTree) -> nnx.Module:
    """Inverse of :func:`split_variables` (works on traced values inside ``jit``)."""
    return nnx.merge(graphdef, params, model_state)


def nonempty(state: dict) -> dict:
    """The orbax items of ``state``: empty collections (a model without BatchNorm or buffers) are
    not saved."""
    return {k: v for k, v in state.items() if not (isinstance(v, dict) and not v)}


def check_image_size(model, config) -> None:
    """``config.data.image_size`` (resolved) equals the size ``model`` takes (``img_size``).

    Raises:
      ValueError: naming both sizes and the field to set.
    """
    size = config_lib.resolve_data_config(config).image_size
    expected = getattr(model, 'img_size', None)
    if expected is not None and int(size) != int(expected):
        raise ValueError(f'config.data.image_size={size} but model {config.model.name!r} takes '
                         f'{expected} px images; set config.data.image_size={expected} or override the '
                         f'model\'s img_size')


# ----------------------------------------------------------------------------------------
# The run's files: config, checkpoints, summary history.
# ----------------------------------------------------------------------------------------

def load_run_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run wrote to ``<workdir>/config.json`` (every run and import writes one).

    Raises:
      FileNotFoundError: no ``config.json`` in ``workdir``.
    """
    path = os.path.join(workdir, 'config.json')
    if not os.path.exists(path):
        raise FileNotFoundError(f'{path} not found: is {workdir!r} a jaxmim run directory?')
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def write_run_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Writes ``config`` as ``<workdir>/config.json`` (process 0 only), read back by
    :func:`load_run_config`."""
    if jax.process_index() == 0:
        files.write_text(os.path.join(workdir, 'config.json'), config.to_json_best_effort(indent=1))


def restore_model(model: nnx.Module, workdir: str, step: int | None = None) -> int:
    """Loads the parameters and model state of checkpoint ``step`` (default latest) of run
    ``workdir`` into ``model`` in place; returns the step.

    Raises:
      FileNotFoundError: no checkpoint (or not that step). ValueError: the checkpoint does not
      match the model's structure.
    """
    _, params, model_state = nnx.split(model, nnx.Param, ...)
    states = {'params': params, 'model_state': model_state}
    target = nonempty({k: nnx.to_pure_dict(v) for k, v in states.items()})
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), async_save=False, read_only=True)
    try:
        step = ckpt.resolve_step(step)
        restored = ckpt.restore(step, target=ckpt_lib.abstract_like(target))
    finally:
        ckpt.close()
    for key, values in restored.items():
        nnx.replace_by_pure_dict(states[key], values)
    nnx.update(model, params, model_state)
    return step


def encoder_variables(params: PyTree, model_state: PyTree | None = None) -> dict[str, Any]:
    """``{dotted name: array}`` of a model's variables given as nested pure dicts (``params`` and
    ``model_state``, as :func:`split_variables` and the train state hold them). A method that
    wraps its encoder (SimMIM) stores it under ``encoder``: that scope is unwrapped and the rest
    (decoder) dropped. The arrays are returned as they are (NumPy, or ``jax.Array`` on any device)."""
    flat = dict(tree_util.flatten_names(params))
    if model_state:
        flat.update(tree_util.flatten_names(model_state))
    if any(k.startswith('encoder.') for k in flat):
        flat = {k[len('encoder.'):]: v for k, v in flat.items() if k.startswith('encoder.')}
    return flat


def host_device() -> jax.Device:
    """A CPU device of this process (host memory) when JAX has its CPU backend (it has unless
    ``JAX_PLATFORMS`` leaves it out), else this process's first device."""
    try:
        return jax.local_devices(backend='cpu')[0]
    except RuntimeError:
        return jax.local_devices()[0]


def read_checkpoint_variables(workdir: str, step: int | None) -> dict[str, np.ndarray]:
    """``{dotted name: array}`` of every model variable (params and model_state) of a run's
    checkpoint; a wrapper's ``encoder`` scope is unwrapped (:func:`encoder_variables`).

    The tensors are read into host memory: restored onto this process's first CPU device
    (:func:`host_device`; every process reads the whole checkpoint itself), never replicated over
    the accelerators, which at this point may hold nothing yet (the model is laid out on the mesh
    afterwards).

    Returns:
      ``{dotted name: np.ndarray}`` with the stored shapes and dtypes.

    Raises:
      FileNotFoundError: no complete checkpoint (or not ``step``) in ``<workdir>/checkpoints``.
    """
    directory = os.path.join(workdir, 'checkpoints')
    host = jax.sharding.SingleDeviceSharding(host_device())
    params = ckpt_lib.restore_params(directory, step, key_path=('params',), sharding=host)
    try:
        model_state = ckpt_lib.restore_params(directory, step, key_path=('model_state',), sharding=host)
    except FileNotFoundError:
        model_state = None
    return {k: np.asarray(v) for k, v in encoder_variables(params, model_state).items()}


def load_pretrained(model: nnx.Module, pretrain_workdir: str, step: int = -1) -> dict[str, list[str]]:
    """Loads a pre-training (or imported) checkpoint into ``model`` in place, by variable name:
    :func:`read_checkpoint_variables` then :func:`load_variables`.

    Returns:
      The report ``{'loaded', 'resized', 'fresh', 'unused'}`` of dotted names.

    Raises:
      FileNotFoundError: no checkpoint in ``pretrain_workdir``.
      ValueError: see :func:`load_variables`.
    """
    src = read_checkpoint_variables(pretrain_workdir, None if step < 0 else step)
    return load_variables(model, src, pretrain_workdir)


def _host_array(x) -> np.ndarray:
    """A NumPy copy of ``x``; a ``jax.Array`` spread over several processes is gathered first."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils
        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)


def load_variables(model: nnx.Module, src: dict[str, Any], source: str) -> dict[str, list[str]]:
    """Loads the variables ``src`` (``{dotted name: array}``, e.g. from
    :func:`read_checkpoint_variables`, or :func:`encoder_variables` of an in-memory train state)
    into ``model`` in place, by variable name.

    Every variable of the model (parameters, BatchNorm statistics, buffers) takes the tensor of
    the same dotted name. The model's hooks decide the rest: ``adapt_pretrained`` turns tensors
    of another shape into the model's (relative-position tables of another window, position
    embeddings of another grid; on a host copy) and ``pretrained_fresh`` names what may keep its
    initial value (the head; ViT's ``fc_norm``). A tensor of the right shape is taken as it is
    (a ``jax.Array`` stays on its devices), cast to the model's dtype.
    Sources: ``microsoft/SimMIM@d3e29bc utils.py:98-204``; ``facebookresearch/mae main_finetune.py``.

    Args:
      model: the NNX model to fill.
      src: ``{dotted name: array}``.
      source: what ``src`` is (a workdir), named in the error.

    Returns:
      The report ``{'loaded', 'resized', 'fresh', 'unused'}`` of dotted names.

    Raises:
      ValueError: model variables missing from ``src`` that are not allowed to start fresh, or
        shapes the model cannot adapt (all named).
    """
    state = nnx.state(model)
    flat = tree_util.flatten_names(nnx.to_pure_dict(state))
    fresh_ok = model.pretrained_fresh()
    report = {'loaded': [], 'resized': [], 'fresh': [], 'unused': sorted(set(src) - set(flat))}
    missing, errors = [], []
    for name, value in flat.items():
        if name not in src:
            (report['fresh'] if match_any(name, fresh_ok) else missing).append(name)
            continue
        arr = src[name]
        if tuple(arr.shape) != tuple(value.shape):
            try:
                arr = np.asarray(model.adapt_pretrained(name, _host_array(arr), tuple(value.shape)))
            except ValueError as e:
                errors.append(str(e))
                continue
            report['resized'].append(name)
        else:
            report['loaded'].append(name)
        flat[name] = jnp.asarray(arr, value.dtype)
    if missing or errors:
        raise ValueError(f'cannot load {source} into {type(model).__name__}: '
                         + '; '.join(([f'missing from the checkpoint: {missing}'] if missing else []) + errors))
    nnx.replace_by_pure_dict(state, tree_util.unflatten_names(flat, nnx.to_pure_dict(state)))
    nnx.update(model, state)
    return report


def save_model_checkpoint(model: nnx.Module, workdir: str, config: ml_collections.ConfigDict,
                          step: int = 0) -> None:
    """Writes ``model``'s variables as an orbax checkpoint of run ``workdir`` (items ``params``,
    ``model_state``, ``step``) and ``config.json``: what ``convert.import`` produces, and what
    fine-tuning reads with ``config.pretrained.workdir=workdir``."""
    os.makedirs(workdir, exist_ok=True)
    _, params, model_state = split_variables(model)
    state = nonempty({'params': params, 'model_state': model_state,
                      'step': jnp.asarray(step, jnp.int32)})
    with ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), async_save=False) as ckpt:
        ckpt.save(step, state, force=True)
    write_run_config(config, workdir)


def previous_history(path: str, upto: int) -> tuple[list[dict], list[dict]]:
    """``(history, evals)`` entries of an earlier segment's summary JSON at ``path`` with
    ``step <= upto`` (later ones are recomputed by the resumed run); empty when no file."""
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        return [], []
    keep = lambda rows: [r for r in rows or [] if int(r.get('step', 0)) <= upto]
    return keep(old.get('history')), keep(old.get('evals'))


# ----------------------------------------------------------------------------------------
# Pre-flight checks of a run's inputs (composed by jaxmim.preflight).
# ----------------------------------------------------------------------------------------

def _close(name, names) -> str:
    close = difflib.get_close_matches(str(name), list(names), n=3, cutoff=0.5)
    return f'; did you mean {", ".join(map(repr, close))}?' if close else ''


def check_model_name(config) -> None:
    """``config.model.name`` is a registered model (``mode='finetune'``: a classifier of it).

    Raises:
      ValueError: naming the field, the close names and where the list is.
    """
    name = config.model.name
    names = list_models()
    if name not in names:
        raise ValueError(f'config.model.name={name!r} is not a registered model{_close(name, names)} '
                         f'(accepted: jaxmim.list_models(), {len(names)} names)')


def check_workdir(workdir: str) -> None:
    """``workdir`` exists after this (created) and can be written.

    Raises:
      ValueError: naming ``--workdir`` and the OS error.
    """
    if not workdir:
        raise ValueError('--workdir is empty; give the run directory')
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f'.write_test.{socket.gethostname()}.{os.getpid()}.{jax.process_index()}')
        with open(probe, 'w') as f:
            f.write('ok')
        os.remove(probe)
    except OSError as e:
        raise ValueError(f'--workdir={workdir!r} cannot be written ({e.strerror or e}); '
                         'give a writable directory') from None



def check_resume(config, workdir: str) -> None:
    """``config.total_steps`` is not below the step of the run's newest checkpoint.

    Raises:
      ValueError: naming ``config.total_steps`` and the checkpoint step.
    """
    directory = os.path.join(workdir, 'checkpoints')
    if not os.path.isdir(directory):
        return
    with ckpt_lib.Checkpointer(directory, async_save=False, read_only=True) as ckpt:
        latest = ckpt.latest_step()
    if latest is not None and latest > config.total_steps:
        raise ValueError(f'config.total_steps={config.total_steps} is below the step of the newest '
                         f'checkpoint in {workdir!r} ({latest}); set config.total_steps >= {latest} '
                         'to continue that run, or use another --workdir')


def check_pretrained(config) -> None:
    """``config.pretrained``: a config that requires a pre-trained model has ``workdir``; a given
    ``workdir`` holds a complete checkpoint (and ``step``, if not -1).

    Raises:
      ValueError: naming ``config.pretrained.workdir`` / ``config.pretrained.step``.
    """
    p = config.get('pretrained')
    if p is None:
        return
    if not p.workdir:
        if p.get('required', False):
            raise ValueError('config.pretrained.workdir is empty but this config fine-tunes a '
                             'pre-trained model (config.pretrained.required=True, e.g. the '
                             "':pretrained' variant); pass --config.pretrained.workdir=<pre-training "
                             'workdir>, or use the scratch variant')
        return
    ckpt_dir = os.path.join(p.workdir, 'checkpoints')
    if not os.path.isdir(p.workdir):
        raise ValueError(f'config.pretrained.workdir={p.workdir!r} does not exist; give a '
                         'pre-training workdir (or a convert.import workdir)')
    steps = sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit()) if os.path.isdir(ckpt_dir) else []
    if not steps:
        raise ValueError(f'config.pretrained.workdir={p.workdir!r} holds no checkpoint '
                         f'({ckpt_dir} has no step directory); give a pre-training workdir')
    if int(p.step) >= 0 and int(p.step) not in steps:
        raise ValueError(f'config.pretrained.step={p.step} is not a checkpoint of '
                         f'{p.workdir!r}; available: {steps} (or -1 for the latest)')

