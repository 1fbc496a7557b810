r"""Command-line entry point for pre-training and fine-tuning.

Usage::

    python -m jaxmim.main --config=configs/demo/simmim_swin_fmnist.py --workdir=work/pre \
        --config.total_steps=2000 --config.batch_size=256

``--config=path[:variant]`` selects an ml_collections config file (and the argument of its
``get_config``); ``--config.a.b=value`` overrides a field. An unknown field fails with the
close valid names. ``config.mode`` chooses the loop (``pretrain`` or ``finetune``).
Multi-host runs call ``jax.distributed.initialize`` first (``--distributed``; arguments are
auto-detected on Cloud TPU and SLURM, or given with ``--coordinator_address``,
``--num_processes``, ``--process_id``). ``JAXMIM_MALLOC=tuned`` in the environment switches
glibc's allocator to one arena without ``mmap`` or trimming (:mod:`jaxmim.host`: no page faults
in the step, at the cost of a shared ``malloc`` lock).

Exit statuses (:mod:`jaxmim.resilience`): 0 done; 2 a bad input, reported as one ``error:``
line before anything is compiled (the config field and what it accepts); 3 the run diverged
(non-finite loss or gradient norm, ``config.nonfinite='stop'``); 75 (``EX_TEMPFAIL``) stopped
by SIGTERM / SIGINT after saving the current step: rerun the same command to resume.
"""

from __future__ import annotations

import difflib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, path[:variant].',
    # The file's ConfigDict is locked except model.overrides, which takes new keys (constructor
    # arguments checked by create_model), e.g. --config.model.overrides.drop_path_rate=0.2.
    lock_config=False, accept_new_attributes=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory (checkpoints, logs, results).')
_DISTRIBUTED = flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize() first.')
_COORD = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (multi-process).')
_NPROC = flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-process).')
_PID = flags.DEFINE_integer('process_id', None, 'This process index (multi-process).')


def _explain_override(argv: list[str], error: Exception) -> str:
    """One line naming the unknown ``--config.a.b`` field and the close valid fields."""
    spec = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
    for arg in argv:
        if not arg.startswith('--config.'):
            continue
        path = arg[len('--config.'):].split('=', 1)[0].split('.')
        try:
            from jaxmim.config import load_config_file
            node = load_config_file(spec)
        except Exception:  # the file itself is broken: report the original error
            return str(error)
        for i, key in enumerate(path):
            keys = list(node.keys()) if hasattr(node, 'keys') else []
            if key not in keys:
                parent = '.'.join(path[:i]) or '<top level>'
                close = difflib.get_close_matches(key, keys, n=3)
                hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ''
                return (f"unknown config field {'.'.join(path)!r} (no {key!r} under {parent}){hint} "
                        f'Valid fields there: {sorted(keys)}')
            node = node[key]
    return str(error)


def _explain_config_file(argv: list[str], error: Exception) -> str:
    """One line for a ``--config=path[:variant]`` that cannot be loaded (missing file, a variant
    the file's ``get_config`` refuses), else the flag error on one line."""
    spec = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
    if spec is not None:
        from jaxmim.config import load_config_file
        try:
            load_config_file(spec)
        except FileNotFoundError as e:
            return f'--config={spec}: {e}'
        except Exception as e:  # pylint: disable=broad-except  (the file's get_config refused the variant)
            path, _, variant = spec.partition(':')
            what = f'variant {variant!r} of {path}' if variant else path
            return f'--config={spec}: {what} cannot be loaded: {type(e).__name__}: {e}'
    return ' '.join(str(error).split())


def _parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing that turns a bad ``--config...`` flag into one clear line and exit 2."""
    try:
        rest = flags.FLAGS(argv)
        if _CONFIG.value is not None:
            _CONFIG.value.keys()   # a config file that failed to load raises here (OSError)
        return rest
    except (flags.Error, AttributeError, KeyError, ValueError, OSError) as e:
        if isinstance(e, (AttributeError, KeyError)):
            msg = _explain_override(argv, e)
        else:
            msg = _explain_config_file(argv, e)
        print(f'error: {msg}', file=sys.stderr)
        sys.exit(2)


def main(argv: list[str]) -> None:
    """absl main: initialises multi-process JAX if asked, then runs the loop ``config.mode`` names.

    Exits with status 2 and one ``error:`` line on a bad input (``ValueError``,
    ``FileNotFoundError``), 3 and one line when the run diverges
    (:class:`jaxmim.resilience.Diverged`), 75 after a stop signal
    (:class:`jaxmim.resilience.Preempted`, which prints its own line).

    Raises:
      app.UsageError: ``--config`` or ``--workdir`` is missing.
    """
    del argv
    if _CONFIG.value is None or _WORKDIR.value is None:
        raise app.UsageError('--config and --workdir are required')
    from jaxmim import host, resilience
    host.tune_malloc_or_exit(resilience.EXIT_BAD_INPUT)   # before JAX's first computation
    import jax
    if not flags.FLAGS['verbosity'].present:
        logging.set_verbosity(logging.WARNING)   # orbax is chatty at INFO; progress goes to the console
    if _DISTRIBUTED.value:
        jax.distributed.initialize(coordinator_address=_COORD.value, num_processes=_NPROC.value,
                                   process_id=_PID.value)
    from jaxmim import train, visualize
    logging.info('JAX devices: %s (process %d of %d)', jax.devices(), jax.process_index(), jax.process_count())
    try:
        _, summary = train.run(_CONFIG.value, _WORKDIR.value, picture_hook=visualize.tensorboard_hook)
    except (ValueError, FileNotFoundError) as e:   # bad input: one clear line, no traceback
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(resilience.EXIT_BAD_INPUT)
    except resilience.Diverged as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(resilience.EXIT_DIVERGED)
    if summary.get('final_eval'):
        print(f"final eval: {summary['final_eval']}")


def run() -> None:
    """Console entry: ``python -m jaxmim.main``."""
    app.run(main, flags_parser=_parse_flags)


if __name__ == '__main__':
    run()
