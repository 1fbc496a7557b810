"""Per-stage summary of a registered model: output shapes, parameters and multiply-adds.

``python -m jaxmim.summary MODEL [--img_size=N] [--batch=1] [--depth=1] [--overrides=JSON]``
prints, for every registered model (classifiers, pre-training encoders and full pre-training
models alike), one row per stage -- the model's direct submodules, with lists such as
``layers`` / ``blocks`` expanded to their items -- and a total::

    stage             output shape        params      GMACs
    patch_embed       (1, 56, 56, 96)      4,896      0.014
    layers.0          (1, 28, 28, 192)   ...

FLOPs are counted the way the papers' tables count them (fvcore / mmcv ``get_flops``): one
multiply-add of a matrix product or a convolution is one FLOP ("GMACs"); element-wise ops,
softmax and normalisation are not counted. The count walks the ``jax.make_jaxpr`` of the forward
pass (``dot_general`` and ``conv_general_dilated`` equations, nested jaxprs included), so it is
exact for the traced shapes and independent of the XLA backend (whose ``cost_analysis`` counts
two FLOPs per multiply-add and, on GPU, omits cuBLAS calls). Written by hand because neither
flax's ``nnx.tabulate`` (XLA cost analysis per call) nor any maintained JAX tool counts
multiply-adds the fvcore way.

``python -m jaxmim.summary --sharding --config=CFG[:VARIANT] --mesh=fsdp:8`` prints instead the
layout of the run's train state on the devices there are (:func:`sharding_lines`; on CPU,
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` gives 8 devices).

The inputs come from :func:`example_inputs`: images of the model's registered data size for a
classifier, plus the masking inputs of a pre-training model (``sample_inputs``), or the
arguments a backbone's ``summary_inputs(key, batch_size)`` hook returns (e.g. a SimMIM encoder's
mask).
"""

from __future__ import annotations

import inspect
import json
import sys
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

__all__ = ['count_macs', 'example_inputs', 'stage_rows', 'summarize', 'format_table', 'sharding_lines']


# --------------------------------------------------------------------------
# Multiply-add counting over a jaxpr.

def _eqn_macs(eqn) -> int:
    prim = eqn.primitive.name
    if prim == 'dot_general':
        (lhs_contract, _), _ = eqn.params['dimension_numbers']
        lhs = eqn.invars[0].aval.shape
        out = eqn.outvars[0].aval.shape
        return int(np.prod(out, dtype=np.int64)) * int(np.prod([lhs[d] for d in lhs_contract], dtype=np.int64))
    if prim == 'conv_general_dilated':
        dn = eqn.params['dimension_numbers']
        rhs = eqn.invars[1].aval.shape
        out = eqn.outvars[0].aval.shape
        # rhs_spec = (out feature dim, in feature dim, *spatial dims)
        rhs_spec = dn.rhs_spec
        per_output = rhs[rhs_spec[1]] * int(np.prod([rhs[d] for d in rhs_spec[2:]], dtype=np.int64))
        # feature_group_count already folded into rhs's in-feature size; batch_group_count splits outputs.
        return int(np.prod(out, dtype=np.int64)) * int(per_output) // int(eqn.params.get('batch_group_count', 1))
    return 0


def _sub_jaxprs(eqn):
    """(jaxpr, multiplicity) pairs nested in ``eqn`` (pjit, remat, custom_jvp/vjp, scan, cond)."""
    prim = eqn.primitive.name
    out = []
    for name, val in eqn.params.items():
        vals = val if isinstance(val, (tuple, list)) else (val,)
        for v in vals:
            jx = getattr(v, 'jaxpr', v)  # ClosedJaxpr -> Jaxpr
            if hasattr(jx, 'eqns'):
                mult = int(eqn.params['length']) if prim == 'scan' and name == 'jaxpr' else 1
                out.append((jx, mult, name))
    if prim == 'cond':  # count the most expensive branch once
        branches = [(j, m, n) for j, m, n in out if n == 'branches']
        if branches:
            best = max(branches, key=lambda t: _jaxpr_macs(t[0]))
            return [best]
    # custom_vjp carries its forward twice (fun_jaxpr and the fwd); count the primal only.
    if prim.startswith('custom_vjp'):
        out = [t for t in out if t[2] in ('call_jaxpr', 'fun_jaxpr')][:1]
    return out


def _jaxpr_macs(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        total += _eqn_macs(eqn)
        for sub, mult, _ in _sub_jaxprs(eqn):
            total += mult * _jaxpr_macs(sub)
    return total


def count_macs(fn: Callable, *args, **kwargs) -> int:
    """Multiply-adds of matrix products and convolutions in ``fn(*args, **kwargs)``.

    One ``dot_general`` producing ``out`` with contracted size ``K`` costs ``numel(out) * K``;
    a convolution costs ``numel(out) * (C_in / groups) * prod(kernel)``. Nested jaxprs (``jit``,
    ``remat``, ``custom_jvp``, ``scan`` times its length, the largest ``cond`` branch) are
    included. This is the "FLOPs" of fvcore and of most vision papers' tables.

    Args:
      fn: a JAX-traceable callable; ``args`` / ``kwargs`` arrays or ``jax.ShapeDtypeStruct``.

    Returns:
      The count as a Python int (per call, i.e. for the whole batch given).
    """
    closed = jax.make_jaxpr(lambda *a: fn(*a, **kwargs))(*args)
    return _jaxpr_macs(closed.jaxpr)


# --------------------------------------------------------------------------
# Inputs and stages.

def example_inputs(model: nnx.Module, image_size: int, batch_size: int = 1,
                   key: jax.Array | None = None) -> tuple[tuple, dict]:
    """The positional and keyword arguments to call ``model`` with for a summary.

    - a model with a ``summary_inputs(key, batch_size)`` method: what it returns;
    - a pre-training model (``input_keys`` + ``sample_inputs``): ``(images,)`` and its masking
      inputs plus ``train=False, rng=key``;
    - a masked-input encoder (the SimMIM encoder protocol, ``encoder(images, mask, ...)`` with a
      required ``mask``): ``(images, zeros (B, H/patch, W/patch))`` -- the cost does not depend
      on the mask;
    - otherwise a classifier / backbone: ``(images,)`` and ``train=False``.

    Images are zeros ``(batch_size, image_size, image_size, in_chans)`` float32 (NHWC);
    ``in_chans`` is the model's ``in_chans`` attribute (3 when absent).
    """
    key = jax.random.key(0) if key is None else key
    in_chans = int(getattr(model, 'in_chans', 3))
    images = jnp.zeros((batch_size, image_size, image_size, in_chans), jnp.float32)
    if hasattr(model, 'summary_inputs'):
        return model.summary_inputs(key, batch_size)
    if hasattr(model, 'input_keys') and hasattr(model, 'sample_inputs'):
        return (images,), dict(model.sample_inputs(key, batch_size), train=False, rng=key)
    params = inspect.signature(type(model).__call__).parameters
    mask = params.get('mask')
    if mask is not None and mask.default is inspect.Parameter.empty and hasattr(model, 'patch_size'):
        g = image_size // int(model.patch_size)
        return (images, jnp.zeros((batch_size, g, g), jnp.float32)), dict(train=False)
    return (images,), dict(train=False)


def stage_rows(model: nnx.Module, depth: int = 1) -> list[tuple[str, nnx.Module]]:
    """``(dotted path, module)`` of the summary's rows: submodules at most ``depth`` attribute
    levels below ``model``; list / tuple indices do not count as a level (``layers.0`` is at
    depth 1), and a container (``nnx.List``) is replaced by its items."""
    rows = []
    for path, node in nnx.iter_graph(model):
        if not path or not isinstance(node, nnx.Module):
            continue
        level = sum(1 for p in path if not isinstance(p, int))
        if level > depth or isinstance(node, nnx.List):
            continue
        if level == depth or isinstance(path[-1], int) or not any(
                isinstance(n, nnx.Module) for _, n in nnx.iter_children(node)):
            rows.append(('.'.join(str(p) for p in path), node))
    # keep rows disjoint: drop a row nested inside another row
    keep = []
    for name, node in rows:
        if not any(name.startswith(k + '.') for k, _ in keep):
            keep.append((name, node))
    return keep


def _num_params(module: nnx.Module) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(module, nnx.Param))))


def _shape_repr(out: Any) -> str:
    leaves = jax.tree.leaves(out)
    shapes = [tuple(x.shape) for x in leaves if hasattr(x, 'shape')]
    return ', '.join(str(s) for s in shapes[:3]) + (' ...' if len(shapes) > 3 else '')


def summarize(model: nnx.Module, image_size: int, batch_size: int = 1, depth: int = 1) -> dict[str, Any]:
    """Per-stage output shapes, parameter counts and multiply-adds of ``model``'s forward pass.

    Every row's module is intercepted while the whole model is traced once with
    :func:`example_inputs`; a row's multiply-adds are those of its own calls (summed when it is
    called more than once). ``other`` is what runs outside the rows (e.g. a top-level head
    matmul written inline). Parameters count ``nnx.Param`` only (not BatchNorm statistics or
    fixed ``Buffer`` tables; ``params_all`` counts every variable).

    Returns:
      ``{'rows': [{'name', 'type', 'output', 'params', 'macs'}], 'params', 'params_all', 'macs',
      'image_size', 'batch_size'}``; ``macs`` are per batch of ``batch_size``.
    """
    graphdef, state = nnx.split(model)
    rows = stage_rows(model, depth)
    info = {name: dict(name=name, type=type(m).__name__, output='(not called)', params=_num_params(m), macs=0)
            for name, m in rows}
    order: list[str] = []
    classes = {type(m) for _, m in rows}
    originals = {cls: cls.__call__ for cls in classes}
    targets: dict[int, str] = {}
    active: list[str] = []

    def wrap(cls):
        orig = originals[cls]

        def call(self, *a, **k):
            name = targets.get(id(self))
            if name is None or active:
                return orig(self, *a, **k)
            active.append(name)
            try:
                closed = jax.make_jaxpr(lambda *aa: orig(self, *aa, **k))(*a)
                info[name]['macs'] += _jaxpr_macs(closed.jaxpr)
                out = orig(self, *a, **k)
            finally:
                active.pop()
            info[name]['output'] = _shape_repr(out)
            if name not in order:
                order.append(name)
            return out
        return call

    args, kwargs = example_inputs(model, image_size, batch_size)

    def forward(st, *a):
        m = nnx.merge(graphdef, st)
        targets.clear()
        targets.update({id(mod): name for name, mod in stage_rows(m, depth)})
        return m(*a, **kwargs)

    try:
        for cls in classes:
            cls.__call__ = wrap(cls)
        total = _jaxpr_macs(jax.make_jaxpr(forward)(state, *args).jaxpr)
    finally:
        for cls, orig in originals.items():
            cls.__call__ = orig
    rows = sorted(rows, key=lambda r: order.index(r[0]) if r[0] in order else len(order))
    out_rows = [info[name] for name, _ in rows]
    other = total - sum(r['macs'] for r in out_rows)
    other_params = _num_params(model) - sum(r['params'] for r in out_rows)
    if other or other_params:  # top-level tensors (class token, position tables) and inline ops
        out_rows.append(dict(name='other', type='', output='', params=other_params, macs=other))
    all_vars = sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model)) if hasattr(x, 'shape'))
    return dict(rows=out_rows, params=_num_params(model), params_all=int(all_vars), macs=int(total),
                image_size=image_size, batch_size=batch_size)


def format_table(name: str, summary: dict[str, Any]) -> str:
    """The summary as a fixed-width text table (GMACs per image)."""
    b = summary['batch_size']
    lines = [f"{name} at {summary['image_size']} px (batch {b}; GMACs per image, fvcore-style FLOPs)"]
    w = max([len(r['name']) for r in summary['rows']] + [5])
    ws = max([len(r['output']) for r in summary['rows']] + [12])
    lines.append(f"{'stage':<{w}}  {'type':<22}  {'output shape':<{ws}}  {'params':>13}  {'GMACs':>9}")
    for r in summary['rows']:
        lines.append(f"{r['name']:<{w}}  {r['type']:<22}  {r['output']:<{ws}}  {r['params']:>13,}  "
                     f"{r['macs'] / b / 1e9:>9.3f}")
    lines.append(f"{'total':<{w}}  {'':<22}  {'':<{ws}}  {summary['params']:>13,}  "
                 f"{summary['macs'] / b / 1e9:>9.3f}")
    if summary['params_all'] != summary['params']:
        lines.append(f"(plus {summary['params_all'] - summary['params']:,} non-trainable values: "
                     'BatchNorm statistics, fixed tables)')
    return '\n'.join(lines)


# --------------------------------------------------------------------------
# CLI.

FLAGS = flags.FLAGS
flags.DEFINE_integer('img_size', None, 'input size in pixels (default: the model\'s registered data size)')
flags.DEFINE_integer('batch', 1, 'batch size to trace with (figures are per image)')
flags.DEFINE_integer('depth', 1, 'attribute levels of submodules shown as rows')
flags.DEFINE_string('overrides', '{}', 'JSON dict of constructor overrides, e.g. \'{"num_classes": 10}\'')
flags.DEFINE_bool('all', False, 'summarise every registered model (totals only)')
flags.DEFINE_bool('sharding', False, 'print the layout of the train state of --config on --mesh (no model named)')
flags.DEFINE_string('mesh', None, 'with --sharding: LAYOUT[:FSDP[xMODEL]], e.g. dp, fsdp:8, fsdp_tp:4x2 '
                    '(overrides config.mesh; data takes the remaining devices)')
_CONFIG = None


def _config_flag():
    global _CONFIG
    if _CONFIG is None:
        from ml_collections import config_flags
        _CONFIG = config_flags.DEFINE_config_file('config', None, 'with --sharding: a run config, path[:variant]; '
                                                  'fields overridable as --config.mesh.fsdp=8', lock_config=True)
    return _CONFIG


def sharding_lines(config, mesh) -> list[str]:
    """The sharding report of the train state ``config`` trains, on ``mesh``
    (:class:`jaxmim.sharding.ShardingReport`): every parameter's shape, logical axes and
    ``PartitionSpec``, the parameters of at least ``config.mesh.min_shard_bytes`` a sharded layout
    leaves replicated, and a last line ``state bytes per device: X MiB (replicated: Y MiB, ratio
    R)`` over parameters + optimizer state + EMA. Nothing is allocated or compiled: the model and
    the state are ``eval_shape``'d.

    Raises:
      ValueError: a bad config (named field) or mesh.
    """
    from jaxmim import rundir, sharding, steps
    abstract = nnx.eval_shape(lambda: rundir.build_model(config))
    layout = steps.abstract_train_state(abstract, config, mesh)
    sharded = config.mesh.layout != 'dp'   # under dp every parameter is replicated by design: no warnings
    report = sharding.sharding_report(layout.logical['params'], layout.shapes, layout.specs, mesh,
                                      int(config.mesh.get('min_shard_bytes', 2 ** 20)) if sharded else None)
    head = (f'model {config.model.name} ({config.mode}), mesh '
            f'{dict(zip(mesh.axis_names, mesh.devices.shape))}, layout {config.mesh.layout}')
    return [head] + report.lines()


def _sharding_main() -> None:
    from jaxmim import config as config_lib
    from jaxmim import mesh as mesh_lib
    config = _config_flag().value
    if config is None:
        raise app.UsageError('--sharding needs --config=path[:variant]')
    if FLAGS.mesh:
        try:
            override = mesh_lib.parse_mesh_flag(FLAGS.mesh)
        except ValueError as e:
            raise app.UsageError(str(e))
        for k, v in override.items():
            config.mesh[k] = v
    try:
        config_lib.check_config(config)
        mesh = mesh_lib.make_mesh(mesh_config=config.mesh)
        lines = sharding_lines(config, mesh)
    except (ValueError, KeyError) as e:
        sys.exit(f'error: {e}')
    print('\n'.join(lines))


def _build(name: str, overrides: dict[str, Any]) -> nnx.Module:
    from jaxmim.registry import create_model
    return nnx.eval_shape(lambda: create_model(name, **overrides))


def main(argv: Sequence[str]) -> None:
    """absl main: prints each named model's (or, with ``--all``, every model's) parameter/MAC table.

    With ``--sharding`` it runs the sharding report instead. Exits non-zero when ``--all`` could not trace a model.

    Raises:
      app.UsageError: no model named (and no ``--all``), ``--overrides`` is not valid JSON, an unknown model,
        or ``--sharding`` without ``--config`` (or with a bad ``--mesh``).
    """
    from jaxmim.registry import list_models, model_data_defaults
    if FLAGS.sharding:
        return _sharding_main()
    names = list(argv[1:])
    if FLAGS.all:
        names = list_models()
    if not names:
        raise app.UsageError('name a registered model (or --all); accepted: ' + ', '.join(list_models()))
    try:
        overrides = json.loads(FLAGS.overrides)
    except json.JSONDecodeError as e:
        raise app.UsageError(f'--overrides must be a JSON object: {e}')
    failed = []
    for name in names:
        if name not in list_models():
            import difflib
            close = difflib.get_close_matches(name, list_models(), n=5)
            raise app.UsageError(f'unknown model {name!r}; close names: {close or list_models()}')
        model = _build(name, overrides)
        size = FLAGS.img_size or int(model_data_defaults(name)['image_size'])
        try:
            s = summarize(model, size, FLAGS.batch, FLAGS.depth if not FLAGS.all else 0)
        except Exception as e:  # noqa: BLE001  (--all goes on past a model it cannot trace)
            if not FLAGS.all:
                raise
            failed.append(name)
            print(f'{name:<45} {size:>4} px  error: {type(e).__name__}: {str(e).splitlines()[0][:120]}')
            continue
        if FLAGS.all:
            print(f"{name:<45} {size:>4} px  {s['params'] / 1e6:>9.2f} M params  "
                  f"{s['macs'] / FLAGS.batch / 1e9:>8.2f} GMACs")
        else:
            print(format_table(name, s))
            print()
    if failed:
        sys.exit(f'{len(failed)} model(s) could not be summarised: {failed}')


if __name__ == '__main__':
    _config_flag()
    app.run(main)
