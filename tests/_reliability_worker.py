"""One process of the two-process stop-signal test (tests/test_reliability.py); not collected.

Usage: python tests/_reliability_worker.py PORT PROCESS_ID SIGNAL OUT_JSON. Both processes run
a host loop of steps with :class:`jaxmim.resilience.StopSignals` (boundaries every 5 steps);
process 1 sends itself ``SIGNAL`` at step 7. Writes the step each process stopped after.
"""

import json
import os
import signal
import sys
import time

os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=1'

import jax  # noqa: E402

jax.config.update('jax_cpu_collectives_implementation', 'gloo')
port, pid, sig, out_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
jax.distributed.initialize(coordinator_address=f'127.0.0.1:{port}', num_processes=2, process_id=pid)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from jaxmim import resilience  # noqa: E402

stopped = None
with resilience.StopSignals() as signals:
    for step in range(1, 400):
        time.sleep(0.02)
        if pid == 1 and step == 7:
            os.kill(os.getpid(), getattr(signal, sig))
        if signals.should_stop(step, boundary=step % 5 == 0):
            stopped = step
            break
with open(out_path, 'w') as f:
    json.dump({'stopped': stopped, 'signal': signals.signal_name}, f)
jax.distributed.shutdown()
