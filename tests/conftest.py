"""Test-wide setup: 8 fake CPU devices so sharding/mesh code runs on a laptop or CI.

Must take effect before JAX initialises its backends, hence an environment variable set at
conftest import time (XLA reads ``--xla_force_host_platform_device_count`` once, when the CPU
backend starts; see ``docs/design.md``, "Tests").
"""

import os

_FLAG = '--xla_force_host_platform_device_count=8'
if _FLAG.split('=')[0] not in os.environ.get('XLA_FLAGS', ''):
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + _FLAG).strip()


import shutil

import pytest


@pytest.fixture(scope='session')
def _fmnist_prepared(tmp_path_factory):
    """Fashion-MNIST prepared once per test session as the tfds dataset ``fashion_mnist_local``."""
    from jaxmim.data import prepare_fashion_mnist
    d = str(tmp_path_factory.mktemp('tfds_session'))
    prepare_fashion_mnist(data_dir=d)
    return d


@pytest.fixture(scope='module')
def data_dir(_fmnist_prepared, tmp_path_factory):
    """A test module's own copy of the prepared Fashion-MNIST tfds directory (a module may
    corrupt or extend its copy without touching the others')."""
    d = str(tmp_path_factory.mktemp('tfds'))
    shutil.copytree(_fmnist_prepared, d, dirs_exist_ok=True)
    return d
