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
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file, path[:variant].', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory (checkpoints, logs, results).')
_DISTRIBUTED = flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize() first.')
_COORD = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (multi-process).')
_NPROC = flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-process).')
_PID = flags.DEFINE_integer('process_id', None, 'This process index (multi-process).')


def _parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing that turns ml_collections' unknown-key traceback into one clear line."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        cause = e.__cause__ or e.__context__
        text = str(cause if cause is not None else e)
        match = re.search(r"'\\?'?([A-Za-z_0-9]+)\\?'?", text)
        hint = re.search(r'Did you mean "([^"]+)"', text)
        bad = next((a for a in argv if a.startswith('--config.') and match and match.group(1) in a), None)
        msg = f'error: {bad or text}: unknown config field'
        if hint:
            msg += f'; did you mean {hint.group(1)!r}?'
        elif match and '--config' in ' '.join(argv):
            msg = f'error: {text}'
        print(msg, file=sys.stderr)
        sys.exit(2)


def main(argv: list[str]) -> None:
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
