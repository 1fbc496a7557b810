"""The pre-training and fine-tuning loops.

Both loops share one shape (big_vision / flax-examples style): check every input and build the
mesh (:mod:`jaxmim.preflight`), the model (:mod:`jaxmim.rundir`), the optimizer and the jitted
step (:mod:`jaxmim.steps`); restore the newest readable checkpoint; run the step over global
batches sharded on the mesh's ``data`` axis; log window means, checkpoint and evaluate every N
steps. The step is compiled once per run (static shapes: batches have a fixed size, masking
inputs have fixed shapes whether drawn inside the step or carried by the batch).

The loops know no backbone and no method: the model's hooks and the method protocol are used
by :mod:`jaxmim.steps`; pictures of reconstructions come from a hook the caller passes in
(``picture_hook``, e.g. :func:`jaxmim.visualize.tensorboard_hook`).
"""

from __future__ import annotations

import functools
import os
import sys
import time
from typing import Any, Callable, Iterator

import jax
import ml_collections
import numpy as np
from absl import logging

from jaxmim import checkpoint as ckpt_lib
from jaxmim import config as config_lib
from jaxmim import files
from jaxmim import metrics as metrics_lib
from jaxmim import probe
from jaxmim import profiling
from jaxmim import resilience
from jaxmim import rundir
from jaxmim import steps
from jaxmim.data import checks as data_checks
from jaxmim.mesh import batch_sharding, data_shards, global_batch
from jaxmim.preflight import preflight

PyTree = Any
PictureHook = Callable[[ml_collections.ConfigDict, str, Any], Callable[[PyTree, int], None] | None]
"""``(config, workdir, graphdef) -> step_hook or None``: what :func:`pretrain` calls once the
step is built, e.g. :func:`jaxmim.visualize.tensorboard_hook`; the returned ``step_hook(state,
step)`` runs after every step."""

__all__ = ['pretrain', 'finetune', 'run', 'PictureHook']


class _Segment:
    """The bookkeeping of one run segment (from the resumed step to ``total_steps``): the
    checkpointer, TensorBoard writer, progress bar, metric window, history, timers and summary.

    Each method is one named step of :func:`_train_loop`; none of them runs the model.
    ``eval_fn`` runs every ``eval_every`` steps (default ``config.eval_every``) and at the end; its
    scalars are reported as ``<eval_kind>/<name>`` (fine-tuning: ``eval``, pre-training: ``knn``).
    """

    def __init__(self, config, workdir: str, trainer: steps.Trainer, eval_fn, extra_summary,
                 eval_kind: str = 'eval', eval_every: int | None = None):
        self.config, self.workdir, self.trainer = config, workdir, trainer
        self.eval_fn, self.extra_summary = eval_fn, extra_summary or {}
        self.eval_kind = eval_kind
        self.eval_every = eval_every if eval_every is not None else config.get('eval_every')
        self.is_main = jax.process_index() == 0
        self.mode = config.get('nonfinite', 'stop')
        self.summary_path = os.path.join(workdir, f'{config.mode}_summary.json')
        self.writer = self.bar = None
        try:
            self.ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                              save_interval_steps=config.checkpoint_every,
                                              max_to_keep=config.keep_checkpoints,
                                              async_save=config.async_checkpointing)
        except BaseException:
            resilience.release_workdir(workdir)
            raise
        self.window = metrics_lib.WindowMean()
        self.history, self.evals = [], []
        self.start, self.train_time, self.base_bad = 0, 0.0, 0
        self.num_devices = int(trainer.mesh.devices.size)
        self.throughput = {'devices': self.num_devices, 'model_flops_per_image': None, 'peak_tflops_per_device': None}

    # -- MFU ---------------------------------------------------------------------------------

    def count_flops(self) -> None:
        """Counts the model FLOPs per image of the run's step once, for the MFU of the train logs,
        when a peak is known (``config.peak_tflops`` > 0, or 0 and a device kind of
        :data:`jaxmim.model_flops.PEAK_BF16_TFLOPS`). The count is
        :func:`jaxmim.benchmark_steps.model_flops_per_image` (the lowered step of the config's
        reference form on this host's CPU: no remat, no scanned blocks, XLA's attention; masking
        inputs drawn in the step); a count that fails is a warning, not an error (MFU is a
        diagnostic: the run goes on without it)."""
        config = self.config
        peak = float(config.get('peak_tflops', 0.0))
        if peak < 0:
            return
        if peak == 0:
            from jaxmim import model_flops
            peak = model_flops.peak_tflops(self.trainer.mesh.devices.flat[0].device_kind)
            if peak is None:
                return
        from jaxmim import benchmark_steps
        t0 = time.perf_counter()
        try:
            # the counted batch carries no masking inputs: the step draws them (steps.masking_inputs)
            fpi, source = benchmark_steps.model_flops_per_image(config.mode, config, self.trainer.mesh)
        except Exception as e:  # noqa: BLE001  (a diagnostic: report it, train on)
            logging.warning('MFU not logged: counting the model FLOPs failed (%s: %s)', type(e).__name__, e)
            return
        if not fpi:
            logging.warning('MFU not logged: XLA reported no FLOP count for the step')
            return
        self.throughput.update(model_flops_per_image=fpi, peak_tflops_per_device=peak, flops_source=source)
        logging.info('MFU: %.2f GFLOPs per image (%s, counted in %.1fs) over %.1f TFLOP/s per device '
                     '(config.peak_tflops=-1 skips this)', fpi / 1e9, source, time.perf_counter() - t0, peak)

    # -- resume ------------------------------------------------------------------------------

    def resume(self, state: PyTree) -> PyTree:
        """Restores the newest readable checkpoint into ``state`` (damaged newer ones set aside
        with a message), writes ``config.json``, opens the writer and the bar, and takes back the
        earlier segments' history. When the workdir holds a checkpoint, the arrays of ``state``
        (the freshly initialised state, whose layout is the target) are deleted before it is read,
        so the peak is one train state.

        Raises:
          ValueError: ``config.total_steps`` below the checkpoint's step.
        """
        config = self.config

        def verify(step, restored):
            if not resilience.all_finite({k: v for k, v in restored.items() if k != 'guard'}):
                raise ValueError('it holds non-finite values')

        target = ckpt_lib.abstract_like(rundir.nonempty(state), rundir.nonempty(self.trainer.state_sharding))
        if self.ckpt.all_steps():
            # a checkpoint replaces the freshly initialised state: free its arrays first, so a resumed
            # run never holds two train states (the small guard and step stay: a step may lack the guard)
            for key, item in state.items():
                if key not in ('guard', 'step'):
                    for x in jax.tree.leaves(item):
                        x.delete()
        start, restored, damaged = self.ckpt.restore_newest_readable(target, verify=verify,
                                                                     optional_items=('guard',))
        for bad_step, why, moved in damaged:
            if self.is_main:
                print(f'warning: checkpoint step {bad_step} in {self.ckpt.directory} cannot be read ({why}); '
                      f'set aside as {moved}; resuming from step {start}', file=sys.stderr, flush=True)
        if start is not None:
            logging.info('Resuming from %s at step %d', self.ckpt.directory, start)
            state = {**state, **restored}
        self.start = int(start or 0)
        if self.start > config.total_steps:
            raise ValueError(f'config.total_steps={config.total_steps} is below the step of the checkpoint '
                             f'in {self.workdir!r} ({self.start}); set config.total_steps >= {self.start}')
        rundir.write_run_config(config, self.workdir)
        if self.is_main:
            from flax.metrics import tensorboard  # TF-backed writer; TF never takes an accelerator.
            self.writer = tensorboard.SummaryWriter(os.path.join(self.workdir, 'tensorboard'))
        import tqdm
        # disable=None: no bar when stdout is not a terminal (CI logs keep the metric lines only).
        self.bar = tqdm.tqdm(total=config.total_steps, initial=self.start,
                             disable=None if self.is_main and config.progress_bar else True,
                             dynamic_ncols=True, mininterval=0.5, desc=config.mode)
        if self.start:   # the history of earlier segments (up to the checkpoint resumed from) is kept
            self.history, self.evals = rundir.previous_history(self.summary_path, self.start)
        self.base_bad = int(jax.device_get(state['guard'])['nonfinite'])   # skipped in earlier segments
        self.t0, self.n0, self.paused, self.data_wait = time.perf_counter(), self.start, 0.0, 0.0
        return state

    def batches(self, data: Iterator[dict]) -> Iterator[dict]:
        """Global batches on the mesh from the per-process iterator ``data``; a corrupt tfrecord
        is named (:func:`jaxmim.data.checks.data_error`). The host time spent waiting for each
        batch (the pipeline and its transfer to the devices) adds to ``data_wait``."""
        sharding = batch_sharding(self.trainer.mesh)
        while True:
            t = time.perf_counter()
            try:
                local = next(data)
            except (StopIteration, KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:   # pylint: disable=broad-except
                err = data_checks.data_error(e, self.config)
                if err is e:
                    raise
                raise err from e
            batch = global_batch(local, sharding)
            self.data_wait += time.perf_counter() - t
            yield batch

    # -- per step ----------------------------------------------------------------------------

    def boundaries(self, step: int) -> tuple[bool, bool, bool]:
        """``(log, eval, save)``: whether ``step`` logs, evaluates, or saves by the schedule."""
        c, last = self.config, step == self.config.total_steps
        log = step % c.log_every == 0 or last
        evaluate = self.eval_fn is not None and (step % self.eval_every == 0 or last)
        return log, evaluate, self.ckpt.should_save(step) or last

    def check_guard(self, state: PyTree, metrics: dict, step: int, logging_step: bool) -> None:
        """The only host read of the divergence guard, at boundaries and before any save.

        Raises:
          jaxmim.resilience.Diverged: a non-finite step with ``config.nonfinite='stop'``.
        """
        guard = jax.device_get(state['guard'])
        if self.mode != 'stop' or int(guard['nonfinite']) <= self.base_bad:
            return
        self.ckpt.wait_until_finished()
        last = self.ckpt.latest_step()
        bad = int(guard['first_nonfinite'])
        loss = f' (loss={float(jax.device_get(metrics["loss"])):.4g} at step {step})' if logging_step else ''
        where = (f'the last good checkpoint is step {last} in {self.ckpt.directory} (kept; a restart '
                 'resumes from it)') if last is not None else 'no checkpoint was saved yet'
        self.write_summary()
        raise resilience.Diverged(
            f'non-finite loss or gradient norm at step {bad}{loss}; stopped at step {step} without saving '
            f"it; {where}. Lower optim.base_lr, check the data, or set config.nonfinite='skip' to skip "
            'such steps', bad, last)

    def log(self, step: int) -> None:
        """Reports the window's mean metrics and the throughput since the last log."""
        dt = time.perf_counter() - self.t0 - self.paused
        ips = (step - self.n0) * self.config.batch_size / max(dt, 1e-9)
        wait = self.data_wait
        self.t0, self.n0, self.paused, self.data_wait = time.perf_counter(), step, 0.0, 0.0
        scalars = self.window.compute() | {'images_per_sec': ips,
                                           'images_per_sec_per_device': ips / self.num_devices,
                                           'data_wait_share': min(wait / max(dt, 1e-9), 1.0)}
        fpi, peak = self.throughput['model_flops_per_image'], self.throughput['peak_tflops_per_device']
        postfix = {'loss': f"{scalars['loss']:.4f}", 'img_s': f'{ips:.0f}'}
        if fpi:
            scalars['tflops_per_device'] = fpi * ips / self.num_devices / 1e12
            scalars['mfu'] = scalars['tflops_per_device'] / peak
            postfix['mfu'] = f"{100 * scalars['mfu']:.1f}%"
        self.history.append({'step': step, **scalars})
        self.bar.set_postfix(**postfix)
        self.report('train', step, scalars)

    def report(self, kind: str, step: int, scalars: dict[str, float]) -> None:
        """Writes scalars to TensorBoard (``kind/name``), the log and the console."""
        if self.writer:
            for k, v in scalars.items():
                self.writer.scalar(f'{kind}/{k}', v, step)
        line = f'[{self.config.mode}] {kind} step {step}: ' + ', '.join(f'{k}={v:.4g}' for k, v in scalars.items())
        logging.info(line)
        if self.is_main:
            self.bar.write(line)

    def save(self, step: int, state: PyTree) -> None:
        """Checkpoints ``step`` (asynchronously) and rewrites the summary."""
        self.ckpt.save(step, rundir.nonempty(state), force=True)
        self.write_summary()

    def stop(self, step: int, signal_name: str, step_started: float) -> None:
        """After a stop signal: waits for the save of ``step`` to commit, then raises.

        Raises:
          jaxmim.resilience.Preempted: always (exit status 75).
        """
        self.ckpt.wait_until_finished()
        self.train_time += time.perf_counter() - step_started
        self.write_summary()
        msg = (f'[{self.config.mode}] stopped by {signal_name} after step {step}: checkpoint {step} saved in '
               f'{self.ckpt.directory}; run the same command again to resume '
               f'(exit status {resilience.EXIT_PREEMPTED})')
        if self.is_main:
            print(msg, file=sys.stderr, flush=True)
        raise resilience.Preempted(msg, step)

    def evaluate(self, state: PyTree, step: int) -> None:
        """Runs ``eval_fn`` (its time excluded from the throughput) and reports it."""
        t = time.perf_counter()
        res = self.eval_fn(state, step)
        self.paused += time.perf_counter() - t
        self.evals.append({'step': step, **res})
        self.report(self.eval_kind, step, res)

    # -- summary and exit ------------------------------------------------------------------

    def write_summary(self, final: bool = False) -> dict:
        """Writes ``<mode>_summary.json`` atomically (process 0) and returns its content."""
        out = {'mode': self.config.mode, 'start_step': self.start, 'total_steps': self.config.total_steps,
               'history': self.history, 'evals': self.evals, 'loop_seconds': self.train_time,
               'compilations': self.trainer.compilations, 'nonfinite': self.mode, 'finished': final,
               'throughput': self.throughput,
               **self.extra_summary}
        out['final_eval'] = self.evals[-1] if self.evals and final else None
        if self.is_main:
            files.write_json(self.summary_path, out)
        return out

    def finish(self, state: PyTree) -> dict:
        """Evaluates a run resumed from its last step if it has no final evaluation yet, closes
        the bar and the writer, and writes the final summary."""
        total = self.config.total_steps
        if self.eval_fn is not None and not any(e['step'] == total for e in self.evals):
            self.evaluate(state, total)
        self.bar.close()
        if self.writer:
            self.writer.flush()
        return self.write_summary(final=True)

    def close(self) -> None:
        """Commits every pending save (orbax writes to a temporary directory and renames it when
        complete, so no checkpoint is ever left half-written), closes the writer, and releases the
        workdir lock taken by :func:`jaxmim.preflight.preflight`."""
        self.ckpt.wait_until_finished()
        self.ckpt.close()
        if self.writer:
            self.writer.close()
        resilience.release_workdir(self.workdir)


def _train_loop(config, workdir: str, trainer: steps.Trainer, state: PyTree, data_fn: Callable[[int], Iterator],
                eval_fn: Callable[[PyTree, int], dict] | None = None, extra_summary: dict | None = None,
                step_hook: Callable[[PyTree, int], None] | None = None, eval_kind: str = 'eval',
                eval_every: int | None = None) -> tuple[PyTree, dict]:
    """Runs steps ``state.step .. total_steps`` with logging, checkpoints and evaluation.

    ``data_fn(start_step)`` returns the iterator of per-process batches positioned at
    ``start_step``; ``eval_fn(state, step)`` returns a dict of scalars; ``step_hook(state, step)``
    runs after every step; ``eval_kind`` / ``eval_every``: see :class:`_Segment`. Writes
    ``<workdir>/config.json`` and ``<workdir>/<mode>_summary.json`` (at every checkpoint and at
    the end; a resumed run keeps the earlier segments' history).
    Logged train metrics are means over the ``log_every`` window (:class:`jaxmim.metrics.WindowMean`),
    with the throughput since the last log: ``images_per_sec`` (global),
    ``images_per_sec_per_device``, ``data_wait_share`` (the share of that time the loop waited for
    the next batch: near 1, the input pipeline is the bottleneck; near 0, the devices are) and,
    when a peak is known (``config.peak_tflops``; :meth:`_Segment.count_flops`),
    ``tflops_per_device`` (model FLOPs, not the recomputation of ``remat``) and ``mfu`` (its share
    of the peak; Chowdhery et al. 2022, appendix B). Wall time between logs counts, data waits and
    the (asynchronous) checkpoint saves included; evaluation time does not.

    With ``config.profile_from > 0`` process 0 traces steps ``profile_from .. profile_from +
    profile_steps - 1`` into ``<workdir>/tensorboard/plugins/profile``
    (:class:`jaxmim.profiling.TraceWindow`).

    Reliability (:mod:`jaxmim.resilience`): resumes from the newest readable checkpoint; reads the
    non-finite counter only at log / checkpoint / eval boundaries and never saves a state that went
    through a non-finite step; SIGTERM / SIGINT finish the current step, save it and stop.

    Returns:
      ``(state, summary)``.

    Raises:
      jaxmim.resilience.Diverged: a non-finite loss or gradient norm with ``config.nonfinite='stop'``.
      jaxmim.resilience.Preempted: after SIGTERM / SIGINT, once the current step is committed.
      ValueError: ``config.total_steps`` below the checkpoint's step; a corrupt tfrecord (named).
    """
    seg = _Segment(config, workdir, trainer, eval_fn, extra_summary, eval_kind, eval_every)
    trace = profiling.TraceWindow(int(config.get('profile_from', 0)), int(config.get('profile_steps', 1)),
                                  os.path.join(workdir, 'tensorboard'), enabled=seg.is_main)
    try:
        seg.count_flops()
        state = seg.resume(state)
        batches = seg.batches(data_fn(seg.start))
        with resilience.StopSignals() as signals:
            for step in range(seg.start + 1, config.total_steps + 1):
                started = time.perf_counter()
                with trace.annotate(step):
                    state, metrics = trainer.train_step(state, next(batches))
                trace.after(step, metrics)
                seg.window.update(metrics)
                log_now, eval_now, save_now = seg.boundaries(step)
                stop_now = signals.should_stop(step, boundary=log_now or save_now)
                if log_now or save_now or stop_now or eval_now:
                    seg.check_guard(state, metrics, step, log_now)
                if log_now:
                    seg.log(step)
                seg.bar.update(1)
                if step_hook is not None:
                    step_hook(state, step)
                if save_now or stop_now:
                    seg.save(step, state)
                if stop_now:
                    seg.stop(step, signals.signal_name, started)
                if eval_now:
                    seg.evaluate(state, step)
                seg.train_time += time.perf_counter() - started
            return state, seg.finish(state)
    finally:
        trace.close()
        seg.close()


def _data_fn(config, mesh, model=None, *, train: bool):
    """``start_step -> iterator`` of per-process batches for the run's (resolved) data config.

    With ``config.method.inputs_from == 'pipeline'`` each batch also carries the method's masking
    inputs made on the host by ``model.host_inputs`` from a NumPy generator seeded by
    ``(seed, part, step)``, so a resumed run draws the same masks. ``part`` is this process's part
    of the batch (:func:`jaxmim.mesh.data_shards`: processes holding the same rows of ``mesh``'s
    batch load the same data and draw the same inputs).
    """
    from jaxmim.data import pipeline

    data_cfg = config_lib.resolve_data_config(config)
    from_pipeline = train and config.mode == 'pretrain' and config.method.inputs_from == 'pipeline'
    part, parts = data_shards(mesh)     # replica processes (a model axis across them) load the same part
    local_batch = config.batch_size // parts

    def make(start_step: int):
        it = pipeline.create_split(data_cfg, train=train, batch_size=config.batch_size, seed=config.seed,
                                   process_index=part, process_count=parts, start_step=start_step)
        if not from_pipeline:
            return it

        def with_inputs():
            for step, batch in enumerate(it, start=start_step):
                rng = np.random.default_rng((config.seed, part, step))
                yield {**batch, **model.host_inputs(rng, local_batch)}

        return with_inputs()

    return make


def pretrain(config: ml_collections.ConfigDict, workdir: str, *,
             picture_hook: PictureHook | None = None) -> tuple[PyTree, dict]:
    """Masked pre-training with any method of ``jaxmim.methods`` (``config.method.name``).

    Args:
      config: a pre-training config (see ``jaxmim.config.pretrain_defaults``).
      workdir: output directory (checkpoints, TensorBoard logs, config and summary JSON).
      picture_hook: see :data:`PictureHook`; ``python -m jaxmim.main`` passes
        :func:`jaxmim.visualize.tensorboard_hook` (reconstructions every
        ``config.visualize_every`` steps). Without it no pictures are drawn.

    With ``config.knn_every > 0`` the encoder of the in-memory state is evaluated by weighted
    k-NN (:func:`jaxmim.knn.make_train_hook`, settings in ``config.knn``) every ``knn_every``
    steps and at the end, logged as ``knn/top1`` and ``knn/top5``.

    Returns:
      ``(state, summary)``; ``summary['evals']`` holds the k-NN evaluations.

    Raises:
      ValueError: config errors (unknown keys, sizes that do not fit); with ``knn_every``, a model
        without classifier, a dataset without labels, ``config.knn.k`` above the train images.
    """
    # every input checked, workdir locked; the model as structure only: the state is built in place on the mesh
    mesh, model = preflight(config, workdir)
    trainer, state = steps.make_trainer(functools.partial(rundir.build_model, config), steps.mim_loss, config,
                                        mesh, abstract_model=model)
    hook = picture_hook(config, workdir, trainer.graphdef) if picture_hook is not None else None
    if picture_hook is None and int(config.get('visualize_every', 0) or 0) > 0:
        logging.warning('config.visualize_every=%s but no picture_hook was passed to pretrain(): no '
                        'reconstructions are drawn', config.visualize_every)
    knn_fn = None
    if int(config.get('knn_every', 0) or 0) > 0:
        from jaxmim import knn
        try:
            knn_fn = knn.make_train_hook(config, mesh, trainer.rules, state)
        except BaseException:
            resilience.release_workdir(workdir)
            raise
    return _train_loop(config, workdir, trainer, state, _data_fn(config, mesh, model, train=True), knn_fn,
                       step_hook=hook, eval_kind='knn', eval_every=int(config.get('knn_every', 0) or 0) or None)


def finetune(config: ml_collections.ConfigDict, workdir: str) -> tuple[PyTree, dict]:
    """Supervised fine-tuning (or training from scratch when ``config.pretrained.workdir`` is
    empty) with layer-wise lr decay, label smoothing, optional weight EMA and top-1/top-5
    evaluation (of the EMA weights too, as ``ema_top1`` ...). With ``config.probe='linear'`` the
    classifier (pre-trained weights loaded) is frozen and only a probe head is trained on its
    pooled features (:mod:`jaxmim.probe`; linear probing).

    Args:
      config: a fine-tuning config (see ``jaxmim.config.finetune_defaults``).
      workdir: output directory (checkpoints, TensorBoard logs, config and summary JSON).

    Returns:
      ``(state, summary)``; ``summary['final_eval']`` holds the last evaluation.

    Raises:
      ValueError: config errors, or a pre-trained checkpoint that does not fit.
    """
    from jaxmim.data import pipeline

    # every input checked, workdir locked; the model as structure only: without pre-training the
    # state is built in place on the mesh
    mesh, classifier = preflight(config, workdir)
    # config.probe: the classifier wrapped in its probe (frozen encoder + trained head; jaxmim.probe)
    build, model = probe.prepare(config, functools.partial(rundir.build_model, config), classifier)
    report = None
    if config.pretrained.workdir:
        # the pre-trained weights are read into the classifier in host memory (then wrapped in its
        # probe, if any), then laid out on the mesh
        with jax.default_device(rundir.host_device()):
            model = rundir.build_model(config)
            report = rundir.load_pretrained(model, config.pretrained.workdir, config.pretrained.step)
            model = probe.wrap(config, model)
        logging.info('Loaded %d pre-trained tensors (%d resized); fresh: %s', len(report['loaded']),
                     len(report['resized']), report['fresh'])
    loss_fn = functools.partial(steps.classification_loss, label_smoothing=config.label_smoothing,
                                num_classes=model.num_classes)
    trainer, state = steps.make_trainer(model if report is not None else build, loss_fn, config, mesh,
                                        batch_transform=steps.make_mixup_transform(config, model.num_classes, mesh),
                                        abstract_model=None if report is not None else model)
    layout = trainer.state_sharding
    eval_step = steps.make_eval_step(trainer.graphdef, mesh,
                                     {'params': layout['params'], 'model_state': layout['model_state']}, trainer.rules)
    sharding = batch_sharding(mesh)
    data_cfg = config_lib.resolve_data_config(config)

    def eval_fn(state, step):
        def run(variables):
            part, parts = data_shards(mesh)
            batches = pipeline.create_split(data_cfg, train=False, batch_size=config.eval_batch_size,
                                            seed=config.seed, process_index=part, process_count=parts)
            return steps.evaluate(eval_step, variables, batches, sharding)

        res = run({'params': state['params'], 'model_state': state['model_state']})
        if 'ema' in state:
            res |= {f'ema_{k}': v for k, v in run(state['ema']).items() if k != 'count'}
        return res

    return _train_loop(config, workdir, trainer, state, _data_fn(config, mesh, train=True), eval_fn,
                       extra_summary={'pretrained': report})


def run(config: ml_collections.ConfigDict, workdir: str, *,
        picture_hook: PictureHook | None = None) -> tuple[PyTree, dict]:
    """Dispatches on ``config.mode`` (``'pretrain'`` or ``'finetune'``); ``picture_hook`` goes to
    :func:`pretrain`."""
    config_lib.check_config(config)
    if config.mode == 'pretrain':
        return pretrain(config, workdir, picture_hook=picture_hook)
    return finetune(config, workdir)
