"""One process of the two-process test (tests/test_multiprocess.py); not collected by pytest.

Usage: python tests/_multiprocess_worker.py PORT PROCESS_ID OUT_JSON. Each process has 2 fake
CPU devices (4 global), feeds its half of a fixed global batch and runs two SimMIM steps.
"""

import json
import os
import sys

os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=2'

import jax  # noqa: E402

jax.config.update('jax_cpu_collectives_implementation', 'gloo')
port, pid, out_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
jax.distributed.initialize(coordinator_address=f'127.0.0.1:{port}', num_processes=2, process_id=pid)

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.test_multiprocess import GLOBAL_BATCH, run_steps  # noqa: E402

assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2
images = GLOBAL_BATCH()
half = images.shape[0] // 2
losses, checksum = run_steps(jax.devices(), images[pid * half:(pid + 1) * half])
if pid == 0:
    with open(out_path, 'w') as f:
        json.dump({'losses': losses, 'checksum': checksum}, f)
jax.distributed.shutdown()
