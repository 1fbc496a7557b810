r"""Command-line entry point for pre-training and fine-tuning.

Usage::

    python -m jaxmim.main --config=configs/demo/simmim_swin_fmnist.py --workdir=work/pre \
        --config.total_steps=2000 --config.batch_size=256

``--config=path[:variant]`` selects an ml_collections config file (and the argument of its
``get_config``); ``--config.a.b=value`` overrides a field. An unknown field fails with the
close valid names. ``config.mode`` chooses the loop (``pretrain`` or ``finetune``).
Multi-host runs call ``jax.distributed.initialize`` first (``--distributed``; arguments are
auto-detected on Cloud TPU and SLURM, or given with ``--coordinator_address``,
``--num_processes``, ``--process_id``).
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


def _parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing that turns a bad ``--config...`` flag into one clear line and exit 2."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError) as e:
        msg = _explain_override(argv, e) if isinstance(e, (AttributeError, KeyError)) else str(e)
        print(f'error: {msg}', file=sys.stderr)
        sys.exit(2)


def main(argv: list[str]) -> None:
    """absl main: initialises multi-process JAX if asked, then runs the loop ``config.mode`` names.

    Exits with status 2 and one ``error:`` line on a config error (``ValueError``).
    """
    del argv
    if _CONFIG.value is None or _WORKDIR.value is None:
        raise app.UsageError('--config and --workdir are required')
    import jax
    if not flags.FLAGS['verbosity'].present:
        logging.set_verbosity(logging.WARNING)   # orbax is chatty at INFO; progress goes to the console
    if _DISTRIBUTED.value:
        jax.distributed.initialize(coordinator_address=_COORD.value, num_processes=_NPROC.value,
                                   process_id=_PID.value)
    from jaxmim import train
    logging.info('JAX devices: %s (process %d of %d)', jax.devices(), jax.process_index(), jax.process_count())
    try:
        _, summary = train.run(_CONFIG.value, _WORKDIR.value)
    except ValueError as e:   # config errors: one clear line, no traceback
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
    if summary.get('final_eval'):
        print(f"final eval: {summary['final_eval']}")


def run() -> None:
    """Console entry: ``python -m jaxmim.main``."""
    app.run(main, flags_parser=_parse_flags)


if __name__ == '__main__':
    run()
