r"""Where a train step's time goes: per-op cost tables, host counters and XLA's step analyses.

Used by ``python -m jaxmim.benchmark`` (see :mod:`jaxmim.benchmark`); the per-op tables by its
``--profile=DIR``::

    python -m jaxmim.benchmark --config=configs/demo/simmim_swin_fmnist.py --kinds=finetune \
        --compare_torch --notorch_compile --profile=work/profile --profile_top=12

JAX side: the compiled step runs ``steps`` times under :func:`jax.profiler.trace`; the trace's
host plane (``/host:CPU``; on an accelerator the device plane) holds one event per executed
XLA thunk, named after its HLO instruction. Durations are summed per instruction and joined with
the optimized HLO (``compiled.as_text()``): opcode, fusion kind, the JAX primitive path that
produced it (``metadata op_name``) and its source line. Costs are *thread time* (on a 2-thread
CPU two thunks may overlap), reported per step and as a share of the profiled total.

PyTorch side: the same number of eager steps under :mod:`torch.profiler`; costs are each
operator's *self* CPU time (``key_averages()``), so nested operators are not counted twice.

The tables group costs by what a reader can act on: JAX rows by ``(primitive, source line)``
(``dot_general @ swin.py:131``), PyTorch rows by ATen operator (``aten::mm``).

Every timed step also gets its host counters (:func:`host_counters`, :func:`counted`): minor page
faults and kernel / user CPU time of the process, and every compiled step XLA's own FLOP count
(:func:`total_flops`) and device memory (:func:`memory_gib`).
"""

from __future__ import annotations

import collections
import glob
import math
import os
import re
from typing import Any, Callable, Sequence

from absl import logging


def _frame_source(index, frame_id: int) -> str:
    """``file:line`` of the innermost frame of ``frame_id`` outside JAX / Flax / the standard
    library (the model code that issued the op); '' when none."""
    seen = 0
    while frame_id > 0 and seen < 64:
        frame = index.stack_frames[frame_id - 1]
        loc = index.file_locations[frame.file_location_id - 1]
        path = index.file_names[loc.file_name_id - 1]
        if not re.search(r'(site-packages|dist-packages|/jax/|/flax/|/optax/|python3\.\d+/)', path):
            return f'{os.path.basename(path)}:{loc.line}'
        frame_id, seen = frame.parent_frame_id, seen + 1
    return ''


def hlo_instructions(compiled) -> dict[str, dict]:
    """The instructions of a compiled executable's optimized HLO as ``{name: {'opcode', 'kind',
    'op_name', 'source'}}``: ``kind`` is the fusion kind ('' for other opcodes), ``op_name`` the JAX
    primitive path from the metadata, ``source`` the model code's ``file:line`` that issued it
    ('' when unknown). A fusion without metadata takes those of the first annotated instruction
    of its fused computation."""
    from tensorflow.compiler.xla.service import hlo_pb2  # noqa: PLC0415  (TF ships the proto)

    module = hlo_pb2.HloModuleProto()
    module.ParseFromString(compiled.runtime_executable().hlo_modules()[0].as_serialized_hlo_module_proto())
    index = module.stack_frame_index
    out: dict[str, dict] = {}
    first: dict[int, tuple[str, str]] = {}
    calls: dict[str, int] = {}
    for comp in module.computations:
        for ins in comp.instructions:
            md = ins.metadata
            src = _frame_source(index, md.stack_frame_id) if md.stack_frame_id else (
                f'{os.path.basename(md.source_file)}:{md.source_line}' if md.source_file else '')
            out[ins.name] = {'opcode': ins.opcode, 'kind': ins.fusion_kind if ins.opcode == 'fusion' else '',
                             'op_name': md.op_name, 'source': src}
            if md.op_name and comp.id not in first:
                first[comp.id] = (md.op_name, src)
            if ins.opcode == 'fusion' and ins.called_computation_ids:
                calls[ins.name] = ins.called_computation_ids[0]
    for name, cid in calls.items():
        if not out[name]['op_name'] and cid in first:
            out[name]['op_name'], out[name]['source'] = first[cid]
    return out


def primitive_of(op_name: str) -> str:
    """The JAX primitive at the end of an HLO ``op_name`` path, with the autodiff context:
    ``'jit(f)/transpose(jvp(Model))/blocks/dot_general'`` -> ``'dot_general (backward)'``."""
    if not op_name:
        return '?'
    last = op_name.rstrip('/').split('/')[-1]
    last = re.sub(r'\[.*$', '', last)
    backward = 'transpose(' in op_name
    return f'{last} (backward)' if backward else last


def _newest_xplane(trace_dir: str) -> str:
    paths = sorted(glob.glob(os.path.join(trace_dir, '**', '*.xplane.pb'), recursive=True), key=os.path.getmtime)
    if not paths:
        raise FileNotFoundError(f'no *.xplane.pb under {trace_dir}: the profiler wrote no trace')
    return paths[-1]


def xplane_op_times(path: str) -> dict[str, float]:
    """Seconds per event name summed over the executor threads of an ``*.xplane.pb`` trace:
    the XLA thunks of the host plane's ``XLAPjRtCpuClient`` / ``XLAEigen`` lines, or every line
    of a device plane (``/device:...``). Bookkeeping events (``end: ...``, waits, thread-pool
    regions) are dropped."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: PLC0415  (TF ships the proto)

    space = xplane_pb2.XSpace()
    with open(path, 'rb') as f:
        space.ParseFromString(f.read())
    times: dict[str, float] = collections.defaultdict(float)
    device_planes = [p for p in space.planes if p.name.startswith('/device:')]
    planes = device_planes or [p for p in space.planes if p.name == '/host:CPU']
    for plane in planes:
        md = plane.event_metadata
        for line in plane.lines:
            if not device_planes and 'XLA' not in line.name:
                continue
            for e in line.events:
                name = md[e.metadata_id].name
                if name.startswith('end: ') or '::' in name or name.startswith('$'):
                    continue
                times[name] += e.duration_ps * 1e-12
    return dict(times)


def profile_jax_step(compiled, state, batch, *, steps: int, trace_dir: str) -> tuple[list[dict], Any]:
    """Runs ``compiled(state, batch)`` ``steps`` times under the JAX profiler and returns
    ``(rows, state)``: one row per ``(primitive, source)`` group with ``name``, ``seconds_per_step``
    (thread time), ``share`` of the profiled total, ``count`` (HLO instructions in the group)
    and ``example`` (the costliest instruction and its opcode / fusion kind), largest first.

    Raises:
      FileNotFoundError: the profiler wrote no trace.
    """
    import jax

    hlo = hlo_instructions(compiled)
    out = compiled(state, batch)
    jax.block_until_ready(out)
    state = out[0]
    with jax.profiler.trace(trace_dir):
        for _ in range(steps):
            out = compiled(state, batch)
            jax.block_until_ready(out)
            state = out[0]
    times = xplane_op_times(_newest_xplane(trace_dir))
    groups: dict[tuple[str, str], dict] = {}
    for name, secs in times.items():
        info = hlo.get(name, {'opcode': '?', 'kind': '', 'op_name': '', 'source': ''})
        key = (primitive_of(info['op_name']), info['source'])
        g = groups.setdefault(key, {'seconds': 0.0, 'count': 0, 'best': (0.0, '')})
        g['seconds'] += secs
        g['count'] += 1
        if secs > g['best'][0]:
            g['best'] = (secs, f"{name} ({info['opcode']}{'/' + info['kind'] if info['kind'] else ''})")
    total = sum(g['seconds'] for g in groups.values()) or 1.0
    rows = [{'name': f'{prim} @ {src}' if src else prim, 'seconds_per_step': g['seconds'] / steps,
             'share': g['seconds'] / total, 'count': g['count'], 'example': g['best'][1]}
            for (prim, src), g in groups.items()]
    rows.sort(key=lambda r: -r['seconds_per_step'])
    return rows, state


def profile_torch_step(step: Callable[[], Any], *, steps: int) -> list[dict]:
    """Runs ``step()`` ``steps`` times under :mod:`torch.profiler` (CPU activity) and returns one
    row per ATen operator: ``name``, ``seconds_per_step`` (self CPU time), ``share``, ``count``
    (calls per step), largest first."""
    import torch

    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    rows = [{'name': e.key, 'seconds_per_step': e.self_cpu_time_total * 1e-6 / steps,
             'share': e.self_cpu_time_total / total, 'count': e.count / steps, 'example': ''}
            for e in events if e.self_cpu_time_total > 0]
    rows.sort(key=lambda r: -r['seconds_per_step'])
    return rows


def format_costs(title: str, rows: Sequence[dict], top: int = 10) -> str:
    """A text table of the ``top`` largest rows of :func:`profile_jax_step` or
    :func:`profile_torch_step`, with their cumulated share."""
    lines = [title, f"{'#':>2}  {'ms/step':>8}  {'share':>6}  {'cum':>6}  {'n':>6}  what"]
    cum = 0.0
    for i, r in enumerate(rows[:top], 1):
        cum += r['share']
        extra = f"   [{r['example']}]" if r.get('example') else ''
        lines.append(f"{i:>2}  {1e3 * r['seconds_per_step']:8.2f}  {100 * r['share']:5.1f}%  {100 * cum:5.1f}%  "
                     f"{r['count']:>6g}  {r['name']}{extra}")
    return '\n'.join(lines)


# ----------------------------------------------------------------------------------------
# Host counters of a step.
# ----------------------------------------------------------------------------------------

def host_counters() -> tuple[int, float, float] | None:
    """This process's ``(minor page faults, kernel CPU s, user CPU s)`` so far, summed over all
    its threads (``getrusage(RUSAGE_SELF)``), or None where the ``resource`` module is missing
    (Windows). Differences around a step give its page faults and CPU time: on the CPU backend
    XLA maps a step's temporaries afresh every step, and the faults show up here
    (docs/performance.md, "Session 8")."""
    try:
        import resource  # noqa: PLC0415  (Unix only)
    except ImportError:
        return None
    r = resource.getrusage(resource.RUSAGE_SELF)
    return int(r.ru_minflt), float(r.ru_stime), float(r.ru_utime)


def host_counter_means(deltas: Sequence[tuple[int, float, float]]) -> dict[str, float] | None:
    """Per-step means of :func:`host_counters` differences: ``{'page_faults': ..., 'sys_s': ...,
    'user_s': ...}`` (faults per step, kernel and user CPU seconds per step, all threads), or None
    for no steps."""
    if not deltas:
        return None
    n = len(deltas)
    return {'page_faults': sum(d[0] for d in deltas) / n, 'sys_s': sum(d[1] for d in deltas) / n,
            'user_s': sum(d[2] for d in deltas) / n}


def counted(fn: Callable[[], Any], into: list) -> Any:
    """Runs ``fn()`` and appends its :func:`host_counters` difference ``(faults, sys_s, user_s)``
    to ``into`` (nothing where the counters are unknown); returns ``fn()``'s result."""
    before = host_counters()
    out = fn()
    after = host_counters()
    if before is not None and after is not None:
        into.append((after[0] - before[0], after[1] - before[1], after[2] - before[2]))
    return out


def format_host(c: dict[str, float] | None, before: str = '; ', after: str = '') -> str:
    """One log fragment for :func:`host_counter_means`' dict, ``before`` and ``after`` around
    ``'N page faults, X s kernel + Y s user CPU'``; '' for None or an empty dict."""
    if not c:
        return ''
    return (f'{before}{c["page_faults"]:,.0f} page faults, {c["sys_s"]:.2f} s kernel + {c["user_s"]:.2f} s '
            f'user CPU{after}')


# ----------------------------------------------------------------------------------------
# XLA's analyses of a compiled step.
# ----------------------------------------------------------------------------------------

def total_flops(cost: Any) -> float | None:
    """The ``flops`` of a cost analysis (``compiled.cost_analysis()`` or
    ``lowered.cost_analysis()``: a dict, a list of dicts, or None), summed; None if absent,
    non-finite or not positive."""
    if cost is None:
        return None
    entries = [cost] if isinstance(cost, dict) else list(cost)
    values = [float(e['flops']) for e in entries if isinstance(e, dict) and e.get('flops') is not None]
    if not values or not all(math.isfinite(v) for v in values):
        return None
    return sum(values) if sum(values) > 0 else None


def safe_analysis(fn: Callable[[], Any]) -> Any:
    """``fn()``, or None with a logged warning when it raises: XLA's cost and memory analyses
    are optional on some backends."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001  (cost/memory analyses are optional on some backends)
        logging.warning('benchmark: analysis unavailable: %s', e)
        return None


def memory_gib(compiled) -> float | None:
    """Device memory of a compiled executable per device, GiB: arguments + outputs + temporaries
    - aliased (donated) buffers from ``compiled.memory_analysis()``; None when unavailable."""
    m = safe_analysis(compiled.memory_analysis)
    if m is None:
        return None
    try:
        total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                 - m.alias_size_in_bytes)
    except AttributeError:
        return None
    return total / 2 ** 30


class TraceWindow:
    """Traces steps ``first .. first + count - 1`` of a training loop with the JAX profiler, for
    TensorBoard's profile tab (``tensorboard --logdir WORKDIR/tensorboard``, with the
    ``tensorboard-plugin-profile`` / xprof package) or Perfetto.

    The trace starts before step ``first`` runs and stops once step ``first + count - 1`` has
    finished on the devices (``jax.block_until_ready`` of its output, so the window holds whole
    steps); each step inside is annotated with ``jax.profiler.StepTraceAnnotation('train',
    step_num=step)``. :func:`jax.profiler.start_trace` writes
    ``<log_dir>/plugins/profile/<timestamp>/<host>.xplane.pb``. A run resumed past ``first``
    traces nothing. Settings of the loops: ``config.profile_from`` (``first``; 0: off) and
    ``config.profile_steps`` (``count``); only process 0 traces (several processes of one host
    would write the same file).

    Args:
      first: the first traced step (1-based, as the loop counts); 0 turns the window off.
      count: how many steps (>= 1).
      log_dir: the trace's root directory (the run's TensorBoard directory).
      enabled: False turns the window off (e.g. on processes other than 0).

    Raises:
      ValueError: ``first`` < 0 or ``count`` < 1.

    Source: JAX manual, "Profiling computation" (``jax.profiler.start_trace`` / ``stop_trace``,
    ``StepTraceAnnotation``); the step window follows MaxText's ``profiler_steps`` setting.
    """

    def __init__(self, first: int, count: int, log_dir: str, enabled: bool = True):
        if first < 0 or count < 1:
            raise ValueError(f'TraceWindow: first={first} must be >= 0 (0: off) and count={count} >= 1')
        self.first, self.last, self.log_dir = int(first), int(first) + int(count) - 1, log_dir
        self.enabled = bool(enabled) and first > 0
        self.active = False

    def annotate(self, step: int):
        """The context of one step: starts the trace at ``first``; a step annotation inside the
        window, a null context outside."""
        import contextlib

        import jax

        if self.enabled and step == self.first and not self.active:
            os.makedirs(self.log_dir, exist_ok=True)
            jax.profiler.start_trace(self.log_dir)
            self.active = True
            logging.info('Profiling steps %d-%d into %s', self.first, self.last, self.log_dir)
        if self.active:
            return jax.profiler.StepTraceAnnotation('train', step_num=step)
        return contextlib.nullcontext()

    def after(self, step: int, outputs: Any) -> None:
        """Stops the trace after step ``last`` once ``outputs`` (that step's results) are ready."""
        if self.active and step >= self.last:
            import jax
            jax.block_until_ready(outputs)
            self.close()

    def close(self) -> None:
        """Stops an open trace (the loop's ``finally``: a run that ends or fails inside the window
        still writes what it traced)."""
        if self.active:
            import jax
            self.active = False
            jax.profiler.stop_trace()
            logging.info('Profile of steps %d-%d written under %s', self.first, self.last, self.log_dir)
