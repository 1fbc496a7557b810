"""jaxmim.host: the opt-in CPU allocator settings of the command-line entry points (issue 12).

A worker thread that allocates, touches and frees a 96 MiB buffer, as XLA's CPU runtime does with
a step's temporaries, page-faults on every page each time under glibc's defaults (the buffer is
``mmap``'d and returned), and only on the first time once :func:`jaxmim.host.tune_malloc` ran.
Counted with ``getrusage(RUSAGE_THREAD)`` in a fresh interpreter, since the settings are
process-wide.
"""

import json
import os
import subprocess
import sys

import pytest

from jaxmim import host

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUFFER = 96 << 20
PAGES = BUFFER // 4096

_PROBE = r'''
import ctypes, json, resource, sys, threading
from jaxmim import host
applied = host.tune_malloc(sys.argv[1])
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.restype, libc.memset.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
faults = []
def work():
    for _ in range(4):
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        p = libc.malloc(%d)
        libc.memset(p, 1, %d)
        libc.free(p)
        faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
t = threading.Thread(target=work)
t.start(); t.join()
print(json.dumps({'applied': applied, 'faults': faults}))
''' % (BUFFER, BUFFER)


def _probe(mode):
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop('JAXMIM_MALLOC', None)
    out = subprocess.run([sys.executable, '-c', _PROBE, mode], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc settings')
def test_tuned_malloc_reuses_freed_memory_without_page_faults():
    tuned = _probe('tuned')
    assert tuned['applied'] == {'M_ARENA_MAX': 1, 'M_MMAP_MAX': 0, 'M_TRIM_THRESHOLD': -1}
    assert tuned['faults'][0] >= PAGES // 512          # the first touch maps the pages (>= 1 per 2 MiB)
    assert all(f < 64 for f in tuned['faults'][1:]), tuned['faults']   # then the same memory again
    default = _probe('default')
    assert default['applied'] is None
    # glibc's default: a fresh mmap each time, at least one fault per 2 MiB (per 4 KiB without
    # transparent huge pages)
    assert all(f >= PAGES // 512 for f in default['faults']), default['faults']
    assert sum(default['faults'][1:]) > 10 * sum(tuned['faults'][1:]) + 100


def test_modes_and_bad_values(monkeypatch):
    monkeypatch.setenv('JAXMIM_MALLOC', 'fast')
    with pytest.raises(ValueError, match=r"JAXMIM_MALLOC must be one of \['default', 'tuned'\], got 'fast'"):
        host.tune_malloc()
    with pytest.raises(ValueError, match='malloc mode must be one of'):
        host.tune_malloc('auto')
    monkeypatch.setenv('JAXMIM_MALLOC', 'default')
    assert host.malloc_mode() == 'default' and host.tune_malloc() is None
    monkeypatch.delenv('JAXMIM_MALLOC')
    assert host.malloc_mode() == 'default' and host.tune_malloc() is None     # off unless asked
    monkeypatch.setenv('JAXMIM_MALLOC', ' Tuned ')
    assert host.malloc_mode() == 'tuned'


def test_bad_env_value_is_one_error_line_from_the_cli(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, JAXMIM_MALLOC='fast')
    out = subprocess.run([sys.executable, '-m', 'jaxmim.main', '--config=configs/demo/simmim_swin_fmnist.py',
                          f'--workdir={tmp_path}'], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "error: JAXMIM_MALLOC must be one of ['default', 'tuned'], got 'fast'")
