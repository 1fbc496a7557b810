"""What keeps a long run alive and its inputs honest: divergence guard, preemption stop, workdir
lock, pre-flight checks of every input, and the summary history across resumes.

The loops in :mod:`jaxmim.train` use these pieces; nothing here names a model or a method.

**Exit statuses** of ``python -m jaxmim.main`` (documented for launchers):

==== ==========================================================================================
0    the run finished
2    bad input (config field, config file, dataset, workdir, locked workdir): one ``error:`` line
3    the run diverged (non-finite loss or gradient norm with ``config.nonfinite='stop'``)
75   stopped by SIGTERM / SIGINT after saving the current step (``EX_TEMPFAIL``: requeue it)
==== ==========================================================================================

**Divergence.** :func:`guard_step` runs inside the jitted step: it tests the loss and the global
gradient norm for finiteness on device and counts non-finite steps in the state item ``guard``
(``{'nonfinite': int32 count, 'first_nonfinite': int32 step, 0 if none}``), so no step syncs
with the host. With ``config.nonfinite='skip'`` a non-finite step leaves every variable and the
optimizer state unchanged (only ``step`` advances, as large-scale trainers skip bad updates);
with ``'stop'`` the loop reads the counter at its log / checkpoint / eval boundaries, never
saves a state that went through a non-finite step, and stops naming the step and the last good
checkpoint (always the newest one, since nothing non-finite is ever saved; keep-N only removes
older steps).

**Preemption.** :class:`StopSignals` turns SIGTERM and SIGINT into a request to stop after the
current step: the loop saves that step, waits for the save to commit and raises
:class:`Preempted` (a ``SystemExit`` with status 75). A second SIGINT aborts at once. With
several processes (``jax.distributed``), SIGTERM is left to JAX's preemption service (the
coordination service propagates the notice and every process agrees on the step:
``multihost_utils.reached_preemption_sync_point``, polled every step without communication),
and a local SIGINT is OR-reduced over processes at the loop's log / checkpoint boundaries with
one ``process_allgather`` of a flag (a collective per boundary, not per step), so every process
stops, and saves, at the same step.

**One run per workdir.** :class:`WorkdirLock` holds an ``fcntl.flock`` on ``<workdir>/.lock``
(process 0 only) whose content names the holder (host, pid, start time). The kernel drops the
lock when the process dies, so a crash leaves no stale lock; a second process stops at once with
:class:`WorkdirLocked` naming the holder. (``flock`` on NFS is only as reliable as the server's
lock support.)

Sources: exit status 75 is ``EX_TEMPFAIL`` of BSD ``sysexits.h``; the preemption protocol is
``jax.experimental.multihost_utils.reached_preemption_sync_point`` (and orbax's
``PreemptionCheckpointingPolicy``, which polls it); skipping non-finite updates follows
``optax.apply_if_finite`` (here the loss, the gradient norm, every variable collection and the
EMA are covered); the TFRecord framing (``uint64 length, uint32 masked crc32c(length), data,
uint32 masked crc32c(data)``) is TensorFlow's ``tensorflow/core/lib/io/record_writer.cc``.
"""

from __future__ import annotations

import difflib
import fcntl
import json
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

EXIT_BAD_INPUT = 2
"""Exit status of the CLI for a bad input (one ``error:`` line)."""
EXIT_DIVERGED = 3
"""Exit status of the CLI when the run stops on a non-finite loss or gradient norm."""
EXIT_PREEMPTED = 75
"""Exit status after SIGTERM / SIGINT once the current step is saved (``EX_TEMPFAIL``: requeue)."""

NONFINITE_MODES = ('stop', 'skip')
"""Accepted values of ``config.nonfinite``."""


# ----------------------------------------------------------------------------------------
# Divergence guard (inside the jitted step).
# ----------------------------------------------------------------------------------------

def guard_init() -> dict[str, jax.Array]:
    """The ``guard`` item of a fresh train state: no non-finite step yet (int32 scalars)."""
    return {'nonfinite': jnp.zeros((), jnp.int32), 'first_nonfinite': jnp.zeros((), jnp.int32)}


def guard_step(new: dict, old: dict, metrics: dict, mode: str) -> tuple[dict, dict]:
    """Checks one step's loss and gradient norm on device (call inside ``jit``).

    Args:
      new: the state after the step (``'step'`` already advanced, ``'guard'`` carried over).
      old: the state before the step.
      metrics: the step's metrics; must hold scalar ``'loss'`` and ``'grad_norm'``.
      mode: ``'stop'`` (apply the update anyway; the loop stops at its next boundary and saves
        nothing) or ``'skip'`` (a non-finite step keeps every item of ``old`` except ``step``).

    Returns:
      ``(state, metrics)``: ``state['guard']`` counts non-finite steps (``nonfinite``) and keeps
      the first one's number (``first_nonfinite``, 1-based step, 0 while none); ``metrics``
      gains ``nonfinite_steps`` (the running count, float32).

    Raises:
      ValueError: an unknown ``mode``.
    """
    if mode not in NONFINITE_MODES:
        raise ValueError(f'config.nonfinite must be one of {list(NONFINITE_MODES)}, got {mode!r}')
    finite = jnp.isfinite(metrics['loss']) & jnp.isfinite(metrics['grad_norm'])
    g = old['guard']
    bad = (~finite).astype(jnp.int32)
    guard = {'nonfinite': g['nonfinite'] + bad,
             'first_nonfinite': jnp.where((g['first_nonfinite'] == 0) & ~finite, new['step'],
                                          g['first_nonfinite'])}
    if mode == 'skip':
        new = {k: (v if k in ('step', 'guard') else
                   jax.tree.map(lambda a, b: jnp.where(finite, a, b), v, old[k]))
               for k, v in new.items()}
    new = dict(new, guard=guard)
    return new, dict(metrics, nonfinite_steps=guard['nonfinite'].astype(jnp.float32))


class Diverged(FloatingPointError):
    """The loss or the gradient norm was not finite (``config.nonfinite='stop'``); attributes
    ``step`` (the first non-finite step) and ``last_good`` (newest checkpoint step or None)."""

    def __init__(self, message: str, step: int, last_good: int | None):
        super().__init__(message)
        self.step, self.last_good = step, last_good


def all_finite(tree) -> bool:
    """Whether every floating-point leaf of ``tree`` is finite (one host read of a device
    reduction; for checkpoints being restored, never per step)."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)]
    if not leaves:
        return True
    return bool(jax.device_get(jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))))


# ----------------------------------------------------------------------------------------
# Preemption: SIGTERM / SIGINT finish the current step, save it and exit 75.
# ----------------------------------------------------------------------------------------

class Preempted(SystemExit):
    """Raised by the loop after a stop signal once the current step is saved and committed.

    A ``SystemExit`` with ``code`` :data:`EXIT_PREEMPTED` (75), so any entry point exits with
    the requeue status; ``step`` is the saved step, ``message`` the line printed."""

    def __init__(self, message: str, step: int):
        super().__init__(EXIT_PREEMPTED)
        self.message, self.step = message, step

    def __str__(self) -> str:
        return self.message


def _preemption_service():
    """JAX's preemption sync manager when this is a multi-process job that runs it, else None."""
    if jax.process_count() == 1:
        return None
    try:
        from jax._src import distributed
        return distributed.global_state.preemption_sync_manager
    except Exception:  # pylint: disable=broad-except
        return None


class StopSignals:
    """Context manager: SIGTERM and SIGINT request a stop after the current step.

    Handlers are installed only from the main thread and restored on exit. In a multi-process
    job whose JAX preemption service is running, SIGTERM is left to that service (see the module
    docstring). A second SIGINT raises ``KeyboardInterrupt`` at once.

    Attributes:
      signal_name: the name of the first signal received (``'SIGTERM'``), or None.
    """

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame):
        del frame
        name = signal.Signals(signum).name
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt(f'second {name}: aborting without saving')
        if self.signal_name is None:
            self.signal_name = name
            if jax.process_index() == 0:
                print(f'{name} received: finishing the current step and saving it '
                      '(Ctrl-C again aborts without saving)', file=sys.stderr, flush=True)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        sigs = [signal.SIGINT]
        if _preemption_service() is None:
            sigs.append(signal.SIGTERM)
        for s in sigs:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()

    def should_stop(self, step: int, boundary: bool) -> bool:
        """Whether the loop stops after ``step`` (the same answer on every process).

        One process: the local flag, every step. Several: JAX's preemption sync point every step
        (no communication) or, at a ``boundary`` (log / checkpoint step), the local flags
        OR-reduced over processes."""
        if jax.process_count() == 1:
            return self.signal_name is not None
        service = _preemption_service()
        if service is not None:
            from jax.experimental import multihost_utils
            if multihost_utils.reached_preemption_sync_point(step):
                self.signal_name = self.signal_name or 'SIGTERM'
                return True
        if boundary:
            from jax.experimental import multihost_utils
            flags = multihost_utils.process_allgather(np.int32(self.signal_name is not None))
            if np.any(flags):
                self.signal_name = self.signal_name or 'a stop signal on another process'
                return True
        return False


# ----------------------------------------------------------------------------------------
# One run per workdir.
# ----------------------------------------------------------------------------------------

class WorkdirLocked(ValueError):
    """Another live process holds the workdir's lock (the message names it)."""


_HELD: dict[str, 'WorkdirLock'] = {}


class WorkdirLock:
    """An exclusive ``fcntl.flock`` on ``<workdir>/.lock`` naming its holder.

    Re-entrant within one process (a second ``acquire`` of a workdir this process already holds
    returns the same lock). Released by :meth:`release` or when the process exits, whatever the
    cause (the kernel drops ``flock`` locks with the file descriptor), so no lock is ever stale.

    Raises (``acquire``):
      WorkdirLocked: another process holds it; the message names host, pid and start time.
    """

    def __init__(self, workdir: str):
        self.path = os.path.join(os.path.abspath(workdir), '.lock')
        self._fd: int | None = None

    @classmethod
    def acquire(cls, workdir: str) -> 'WorkdirLock':
        """Takes the lock of ``workdir`` (created if missing) or raises :class:`WorkdirLocked`."""
        lock = cls(workdir)
        if lock.path in _HELD:
            return _HELD[lock.path]
        fd = os.open(lock.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(fd, 4096, 0).decode(errors='replace').strip() or 'unknown process'
            finally:
                os.close(fd)
            raise WorkdirLocked(
                f'workdir {os.path.dirname(lock.path)!r} is in use by another run ({holder}); '
                'wait for it to finish or stop it, or pass another --workdir') from None
        info = json.dumps({'host': socket.gethostname(), 'pid': os.getpid(),
                           'since': time.strftime('%Y-%m-%d %H:%M:%S %Z')})
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        lock._fd = fd
        _HELD[lock.path] = lock
        return lock

    def release(self) -> None:
        """Drops the lock (the file stays; its content is stale but harmless)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        _HELD.pop(self.path, None)


def release_workdir(workdir: str) -> None:
    """Releases this process's lock on ``workdir`` if it holds one."""
    lock = _HELD.get(os.path.join(os.path.abspath(workdir), '.lock'))
    if lock is not None:
        lock.release()


# ----------------------------------------------------------------------------------------
# Pre-flight: every input checked before anything is compiled.
# ----------------------------------------------------------------------------------------

def _close(name, names) -> str:
    close = difflib.get_close_matches(str(name), list(names), n=3, cutoff=0.5)
    return f'; did you mean {", ".join(map(repr, close))}?' if close else ''


def check_model_name(config) -> None:
    """``config.model.name`` is a registered model (``mode='finetune'``: a classifier of it).

    Raises:
      ValueError: naming the field, the close names and where the list is.
    """
    from jaxmim.registry import list_models
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


def latest_checkpoint_step(directory: str) -> int | None:
    """The newest complete step directory under ``directory`` (plain listing, no orbax), or
    None. Temporaries (``<step>.orbax-checkpoint-tmp-*``) and set-aside steps are not steps."""
    if not os.path.isdir(directory):
        return None
    steps = []
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if name.isdigit() and os.path.isdir(path) and os.path.exists(
                os.path.join(path, '_CHECKPOINT_METADATA')):
            steps.append(int(name))
    return max(steps) if steps else None


def check_resume(config, workdir: str) -> None:
    """``config.total_steps`` is not below the step of the run's newest checkpoint.

    Raises:
      ValueError: naming ``config.total_steps`` and the checkpoint step.
    """
    latest = latest_checkpoint_step(os.path.join(workdir, 'checkpoints'))
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


def check_data(config) -> None:
    """The dataset is known and prepared, the split names exist and the data fields are valid;
    the split's tfrecord files have the sizes the dataset info records (a truncated file is
    named here, before anything runs).

    Raises:
      ValueError: naming the ``config.data`` field (dataset, data_dir, train_split, ...) or file.
    """
    from jaxmim import config as config_lib
    from jaxmim.data import pipeline

    data_cfg = config_lib.resolve_data_config(config)
    splits = [('train_split', data_cfg.train_split)]
    if config.mode == 'finetune':
        splits.append(('eval_split', data_cfg.eval_split))
    try:
        for field, split in splits:
            try:
                n = pipeline.num_examples(data_cfg, split)
            except ValueError as e:
                raise ValueError(f'config.data.{field}={split!r}: {e}') from None
            if n == 0:
                raise ValueError(f'config.data.{field}={split!r} of {data_cfg.dataset!r} is empty')
    except pipeline.DatasetNotFoundError as e:
        raise ValueError(f'config.data.dataset={data_cfg.dataset!r} (data_dir '
                         f'{data_cfg.data_dir!r}): {e}') from None
    check_tfrecord_sizes(data_cfg)


def _split_files(data_cfg, split: str) -> list[str]:
    from jaxmim.data import pipeline
    builder = pipeline.get_dataset_builder(data_cfg.dataset, data_cfg.data_dir)
    base = split.split('[')[0]
    info = builder.info.splits[base]
    return [os.fspath(f) for f in info.filepaths]


def check_tfrecord_sizes(data_cfg) -> None:
    """Cheap truncation check: each tfrecord shard of the train split holds at least as many
    well-framed records as the dataset info says (reads only the 12-byte record headers).

    Raises:
      ValueError: naming the damaged file and ``config.data.data_dir``.
    """
    try:
        files = _split_files(data_cfg, data_cfg.train_split)
    except Exception:  # pylint: disable=broad-except  (non-tfrecord formats: nothing to check)
        return
    for path in files:
        if '://' in path:   # remote storage (gs://...): checked when read
            continue
        if path.endswith('.tfrecord') or '.tfrecord-' in os.path.basename(path):
            problem = _tfrecord_framing_problem(path)
            if problem:
                raise ValueError(f'corrupt tfrecord {path} ({problem}) in config.data.data_dir='
                                 f'{data_cfg.data_dir!r}; re-prepare the dataset')


def _tfrecord_framing_problem(path: str) -> str | None:
    """Walks the record headers of a TFRecord file (``uint64 length, uint32 crc, data, uint32
    crc``); returns what is wrong, or None. Reads 12 bytes per record, seeks over the data."""
    try:
        size = os.path.getsize(path)
        with open(path, 'rb') as f:
            pos = 0
            while pos < size:
                head = f.read(12)
                if len(head) < 12:
                    return f'truncated record header at byte {pos}'
                length = int.from_bytes(head[:8], 'little')
                pos += 12 + length + 4
                if pos > size:
                    return f'truncated: a record ends at byte {pos}, past the end of the {size}-byte file'
                f.seek(pos)
    except OSError as e:
        return str(e)
    return None


def find_corrupt_tfrecords(data_cfg, split: str) -> list[str]:
    """The tfrecord files of ``split`` that TensorFlow cannot read to the end (CRC or framing);
    reads the whole split once (called only after a read error)."""
    import tensorflow as tf
    bad = []
    try:
        files = _split_files(data_cfg, split)
    except Exception:  # pylint: disable=broad-except
        return bad
    for path in files:
        try:
            for _ in tf.data.TFRecordDataset(path):
                pass
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError):
            bad.append(path)
    return bad


def data_error(err: Exception, config) -> Exception:
    """The error to raise for an exception from the training input stream: a TensorFlow data-loss
    error becomes a ValueError naming the damaged tfrecord file(s); others are returned as is."""
    try:
        import tensorflow as tf
    except ImportError:
        return err
    if not isinstance(err, (tf.errors.DataLossError, tf.errors.InvalidArgumentError)):
        return err
    from jaxmim import config as config_lib
    data_cfg = config_lib.resolve_data_config(config)
    bad = find_corrupt_tfrecords(data_cfg, data_cfg.train_split)
    where = ', '.join(bad) if bad else 'a file of the split (none failed a re-read)'
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ValueError(f'corrupt tfrecord {where} of config.data.dataset={data_cfg.dataset!r} '
                      f'(config.data.data_dir={data_cfg.data_dir!r}): {first}; re-prepare the dataset')


def preflight(config, workdir: str):
    """Checks every input of a run before anything is built or compiled, then takes the
    workdir lock; returns the device mesh.

    In order: config keys and values (:func:`jaxmim.config.check_config`), model name, workdir
    writable, workdir lock, ``total_steps`` against the newest checkpoint, ``pretrained``,
    batch sizes against the device count, the dataset and its splits, and the model built
    abstractly (``nnx.eval_shape``: no arrays, no compilation) for its constructor overrides
    and image size.

    Raises:
      ValueError: one message naming the config field (or ``--workdir``) and what is accepted.
      WorkdirLocked: another process runs in ``workdir``.
    """
    from flax import nnx

    from jaxmim import config as config_lib
    from jaxmim import train

    config_lib.check_config(config)
    check_model_name(config)
    check_workdir(workdir)
    if jax.process_index() == 0:
        WorkdirLock.acquire(workdir)
    try:
        check_resume(config, workdir)
        if config.mode == 'finetune':
            check_pretrained(config)
        mesh = train.make_mesh()
        train._check_batch_sizes(config, mesh)  # pylint: disable=protected-access
        check_data(config)
        try:
            abstract = nnx.eval_shape(lambda: train.build_model(config))
        except TypeError as e:
            raise ValueError(f'config.model.overrides: {e}') from None
        except KeyError as e:
            raise ValueError(e.args[0] if e.args else str(e)) from None
        train._check_image_size(abstract, config)  # pylint: disable=protected-access
    except BaseException:
        release_workdir(workdir)
        raise
    return mesh


# ----------------------------------------------------------------------------------------
# History across resumes.
# ----------------------------------------------------------------------------------------

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
