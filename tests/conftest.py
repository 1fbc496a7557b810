"""Test-wide setup: 8 fake CPU devices so sharding/mesh code runs on a laptop or CI.

Must take effect before JAX initialises its backends, hence an environment variable set at
conftest import time (spec jax_practices.md section 1.9).
"""

import os

_FLAG = '--xla_force_host_platform_device_count=8'
if _FLAG.split('=')[0] not in os.environ.get('XLA_FLAGS', ''):
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + _FLAG).strip()
