"""One process of the two-process test (tests/test_multiprocess.py); not collected by pytest.

Usage: python tests/_multiprocess_worker.py PORT PROCESS_ID OUT_PREFIX CASE PRETRAINED. CASE (a key
of ``tests.test_multiprocess.CASES``) gives the fake CPU devices per process and ``config.mesh``;
each process feeds its part of a fixed global batch, runs two SimMIM steps, reads the checkpoint
of run PRETRAINED as fine-tuning does (``rundir.read_checkpoint_variables``) and writes
OUT_PREFIX.PROCESS_ID.json.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.test_multiprocess import CASES, GLOBAL_BATCH, pretrained_sums, run_steps  # noqa: E402

port, pid, out_prefix, case, pretrained = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
per_process, mesh_config = CASES[case]
os.environ['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={per_process}'

import jax  # noqa: E402

jax.config.update('jax_cpu_collectives_implementation', 'gloo')
jax.distributed.initialize(coordinator_address=f'127.0.0.1:{port}', num_processes=2, process_id=pid)

assert jax.process_count() == 2 and jax.local_device_count() == per_process
losses, checksum, part = run_steps(jax.devices(), GLOBAL_BATCH(), mesh_config)
sums = pretrained_sums(pretrained)
with open(f'{out_prefix}.{pid}.json', 'w') as f:
    json.dump({'losses': losses, 'checksum': checksum, 'part': part, 'pretrained': sums}, f)
jax.distributed.shutdown()
