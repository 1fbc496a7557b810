r"""N JAX processes on this machine, as N hosts of a multi-host run would be (CPU rehearsal).

    python -m launch.local_multiprocess --num_processes=2 --devices_per_process=4 -- \
        jaxmim.main --config=configs/demo/simmim_swin_fmnist.py --workdir=work/mh \
        --config.mesh.layout=fsdp --config.mesh.fsdp=4 --config.mesh.data=2 --config.mesh.dcn_data=2

Everything after ``--`` is a Python module and its arguments. Process ``i`` of ``N`` runs

    python -m <module> --distributed --coordinator_address=127.0.0.1:<port> \
        --num_processes=<N> --process_id=<i> <arguments...>

(the flags :mod:`jaxmim.main` takes to call ``jax.distributed.initialize``; another module must
accept them too) with ``XLA_FLAGS=--xla_force_host_platform_device_count=<K>`` (``K`` fake CPU
devices each, ``N x K`` in all), ``JAX_PLATFORMS=cpu`` and the gloo CPU collectives
(``JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo``, JAX's ``jax_cpu_collectives_implementation``, which
must be set before ``jax.distributed.initialize``; the environment may override either). Every
output line of process ``i`` is printed prefixed with ``[i]``. When one process exits with a
non-zero status the others are stopped (SIGTERM, then SIGKILL after ``--grace_s``), and the
launcher exits with that first non-zero status (128 + signal number for a process killed by a
signal); 0 when all succeed. ``--port`` picks the coordinator port (default: a free one);
``--timeout_s`` stops them all after that many seconds (exit status 124).

On a CPU mesh a process is a DCN granule, so ``--config.mesh.dcn_data=N`` builds the hybrid
mesh of a multi-host run (:func:`jaxmim.mesh.make_mesh`). Real clusters: ``launch/tpu_pod.sh``
(Cloud TPU pod slices) and ``launch/slurm.sbatch`` (multi-node GPUs).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Mapping, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEVICE_COUNT_FLAG = '--xla_force_host_platform_device_count'

__all__ = ['launch', 'free_port', 'process_env', 'process_command']


def free_port(host: str = '127.0.0.1') -> int:
    """A TCP port free on ``host`` right now (the kernel's pick for port 0)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def process_env(devices_per_process: int, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of each process: ``os.environ`` updated with ``env``, ``XLA_FLAGS`` with
    its device count replaced by ``devices_per_process``, ``JAX_PLATFORMS=cpu`` and
    ``JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo`` unless already set, the repository root first on
    ``PYTHONPATH`` and unbuffered Python output (lines reach the prefixer as they are written)."""
    out = dict(os.environ)
    out.update(env or {})
    flags = [f for f in out.get('XLA_FLAGS', '').split() if not f.startswith(_DEVICE_COUNT_FLAG)]
    out['XLA_FLAGS'] = ' '.join(flags + [f'{_DEVICE_COUNT_FLAG}={devices_per_process}'])
    out.setdefault('JAX_PLATFORMS', 'cpu')
    out.setdefault('JAX_CPU_COLLECTIVES_IMPLEMENTATION', 'gloo')
    out['PYTHONPATH'] = os.pathsep.join([ROOT] + [p for p in [out.get('PYTHONPATH')] if p])
    out['PYTHONUNBUFFERED'] = '1'
    return out


def process_command(module_args: Sequence[str], process_id: int, num_processes: int, port: int) -> list[str]:
    """``python -m <module> --distributed --coordinator_address=127.0.0.1:<port>
    --num_processes=<N> --process_id=<i> <arguments>`` for ``module_args = [module, *arguments]``."""
    module, *args = module_args
    return [sys.executable, '-m', module, '--distributed', f'--coordinator_address=127.0.0.1:{port}',
            f'--num_processes={num_processes}', f'--process_id={process_id}', *args]


def _pump(index: int, stream, out, lock: threading.Lock) -> None:
    for line in iter(stream.readline, ''):
        with lock:
            out.write(f'[{index}] {line if line.endswith(chr(10)) else line + chr(10)}')
            out.flush()
    stream.close()


def _status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def _stop(procs: list[subprocess.Popen], grace_s: float) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def launch(module_args: Sequence[str], num_processes: int, devices_per_process: int, port: int | None = None,
           env: Mapping[str, str] | None = None, *, grace_s: float = 10.0, timeout_s: float | None = None,
           out=None) -> int:
    """Runs ``python -m <module_args...>`` as ``num_processes`` JAX processes on 127.0.0.1 with
    ``devices_per_process`` CPU devices each, and waits for them.

    Args:
      module_args: the module, then its arguments, e.g. ``['jaxmim.main', '--config=...',
        '--workdir=...']``; each process gets ``--distributed --coordinator_address=127.0.0.1:<port>
        --num_processes=<N> --process_id=<i>`` inserted after the module (:func:`process_command`).
      num_processes: N >= 1.
      devices_per_process: fake CPU devices per process (``--xla_force_host_platform_device_count``).
      port: the coordinator's port on 127.0.0.1 (None: a free one, :func:`free_port`).
      env: environment variables set on top of ``os.environ`` for every process
        (:func:`process_env`; e.g. ``{'JAX_PLATFORMS': ...}`` overrides the CPU default).
      grace_s: seconds the other processes get to exit after SIGTERM when one fails, before SIGKILL.
      timeout_s: stop every process (as for a failure) after this many seconds and return 124,
        the status of coreutils ``timeout`` (None: wait as long as they run).
      out: where the ``[i]``-prefixed output lines go (default ``sys.stdout``).

    Returns:
      0 when every process exits with 0, else the first non-zero exit status seen (128 + N for a
      process killed by signal N); the others are stopped as soon as it is seen. 124 after
      ``timeout_s``.

    Raises:
      ValueError: no module, or a count below 1.
    """
    if not module_args:
        raise ValueError('launch: module_args is empty; give a module, e.g. jaxmim.main, and its arguments')
    if num_processes < 1 or devices_per_process < 1:
        raise ValueError(f'launch: num_processes={num_processes} and devices_per_process={devices_per_process} '
                         'must be >= 1')
    out = sys.stdout if out is None else out
    port = free_port() if port is None else port
    penv = process_env(devices_per_process, env)
    lock = threading.Lock()
    procs: list[subprocess.Popen] = []
    pumps: list[threading.Thread] = []
    status = 0
    try:
        for i in range(num_processes):
            p = subprocess.Popen(process_command(module_args, i, num_processes, port), cwd=os.getcwd(), env=penv,
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, errors='replace', bufsize=1)
            procs.append(p)
            t = threading.Thread(target=_pump, args=(i, p.stdout, out, lock), daemon=True)
            t.start()
            pumps.append(t)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while [p.poll() for p in procs].count(None):   # poll every process: sets each returncode
            if deadline is not None and time.monotonic() > deadline:
                with lock:
                    out.write(f'launch: timeout after {timeout_s:g} s; stopping the {num_processes} processes\n')
                status = 124
                _stop(procs, grace_s)
                break
            failed = [p for p in procs if p.returncode not in (None, 0)]
            if failed:
                status = _status(failed[0].returncode)
                _stop(procs, grace_s)
                break
            time.sleep(0.1)
        if not status:
            status = next((_status(p.returncode) for p in procs if p.returncode), 0)
    except BaseException:   # KeyboardInterrupt in the launcher: take the processes down with it
        _stop(procs, grace_s)
        raise
    finally:
        for t in pumps:
            t.join(timeout=5)
    return status


def main(argv: Sequence[str]) -> None:
    """absl main: runs the module after ``--`` as ``--num_processes`` local processes (:func:`launch`).

    Exits with :func:`launch`'s status.

    Raises:
      SystemExit: with the usage line, when no module is given.
    """
    from absl import flags
    module_args = list(argv[1:])
    if not module_args:
        raise SystemExit('usage: python -m launch.local_multiprocess --num_processes=N --devices_per_process=K '
                         '[--port=P] -- MODULE [ARGS...]')
    sys.exit(launch(module_args, flags.FLAGS.num_processes, flags.FLAGS.devices_per_process, flags.FLAGS.port,
                    grace_s=flags.FLAGS.grace_s, timeout_s=flags.FLAGS.timeout_s))


if __name__ == '__main__':   # flags defined here only: jaxmim.main, imported beside this module, has --num_processes too
    from absl import app, flags

    flags.DEFINE_integer('num_processes', 2, 'Number of JAX processes to start.', lower_bound=1)
    flags.DEFINE_integer('devices_per_process', 1, 'Fake CPU devices per process.', lower_bound=1)
    flags.DEFINE_integer('port', None, 'Coordinator port on 127.0.0.1 (default: a free one).')
    flags.DEFINE_float('grace_s', 10.0, 'Seconds between SIGTERM and SIGKILL when stopping the others.')
    flags.DEFINE_float('timeout_s', None, 'Stop every process after this many seconds (exit status 124).')
    app.run(main)
