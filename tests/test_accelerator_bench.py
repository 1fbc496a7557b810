"""``launch/accelerator_bench.py``: the one-command accelerator measurement, exercised on the CPU.

The plan covers the five target steps and the papers' baselines with configs that build; the
ratios and peaks follow their definitions; the whole two-phase run (parallel compilation into the
persistent cache, then the timed steps from it, the twin beside the JAX step, cuDNN refused on a CPU
and replaced by XLA's attention) runs on the demo configs; a run past its deadline still writes
its record.
"""

import json
import os
import subprocess
import sys

import pytest
from flax import nnx

from launch import accelerator_bench as ab

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_plan_covers_targets_and_baselines_in_priority_order():
    variants = ab.plan('accelerator')
    assert [v.group for v in variants] == sorted(v.group for v in variants)
    by_group = {g: [v for v in variants if v.group == g] for g in (1, 2, 3, 4, 5, 6)}
    assert {v.name for v in by_group[6]} == {f'{n}/bf16+fast_ops' for n in ab.FAST_OPS_TARGETS}
    assert all(v.env == (('JAXMIM_FAST_OPS', 'all'),) for v in by_group[6])
    assert {v.name for v in by_group[5]} == {f'{n}/bf16+scan' for n in ab.SCANNED}
    assert all(v.overrides == (('scan_blocks', True),) for v in by_group[5])
    targets = {'mae_vit_b', 'hivit_b_mae', 'simmim_swin_b_192', 'greenmim_swin_b', 'ummae_swin_t_256'}
    assert {v.name.split('/')[0] for v in by_group[1]} == targets
    assert all(v.compute_dtype == 'bfloat16' and v.attention == 'cudnn' and not v.torch for v in by_group[1])
    assert {v.name.split('/')[0] for v in by_group[3]} == targets
    assert all(v.compute_dtype == 'float32' and v.attention is None for v in by_group[3])
    assert all(v.torch and v.compute_dtype == 'bfloat16' for v in by_group[4])
    assert {v.name.split('/')[0] for v in by_group[4]} == targets - set(ab.NO_TORCH) == targets - {'greenmim_swin_b'}
    names = {v.name.split('/')[0] for v in variants}
    for _, num, den in ab.RATIOS['accelerator']:
        assert num in names and den in names
    assert len({v.name for v in variants}) == len(variants)
    with pytest.raises(ValueError, match="'accelerator' or 'smoke'"):
        ab.plan('gpu')


@pytest.mark.parametrize('name', sorted(set(ab.TARGETS) - set(ab.NO_TORCH)))
def test_every_timed_twin_exists_for_the_target_model(name):
    """Each target timed beside PyTorch has a twin (``convert.official.torch_twin``), checked on the
    abstract model's registered source: no weights are built."""
    from convert import official
    from jaxmim import rundir
    config = ab.variant_config(ab.Variant('x', ab.TARGETS[name], 'bfloat16', None, True, 4), None, 8)
    model = nnx.eval_shape(lambda: rundir.build_model(config))
    assert official.sources_for(model, with_twin=True)


@pytest.mark.parametrize('spec', sorted(set(ab.TARGETS.values()) | set(ab.BASELINES.values())))
def test_every_planned_config_builds_with_its_overrides(spec):
    """Each config takes the overrides the run sets (compute dtype, XLA attention, batch 128) and
    its model accepts ``attn_implementation`` (built abstractly: nothing is allocated)."""
    from jaxmim import rundir
    v = ab.Variant('x', spec, 'bfloat16', None, False, 1)
    config = ab.variant_config(v, 'xla', 128)
    assert config.compute_dtype == 'bfloat16' and config.batch_size == 128
    model = nnx.eval_shape(lambda: rundir.build_model(config))
    assert any(getattr(m, 'attn_implementation', None) == 'xla' for _, m in nnx.iter_modules(model))


def test_peak_and_ratios_follow_their_definitions():
    from jaxmim.model_flops import peak_tflops
    assert peak_tflops('NVIDIA H100 80GB HBM3') == 989.4
    assert peak_tflops('NVIDIA H100 PCIe') == 756.0
    assert peak_tflops('NVIDIA H200') == 989.4
    assert peak_tflops('TPU v4') == 275.0 and peak_tflops('TPU v5 lite') == 197.0
    assert peak_tflops('cpu') is None
    rows = [
        {'variant': 'greenmim_swin_b/bf16', 'compute_dtype': 'bfloat16', 'img_s': 300.0, 'device_memory_gib': 10.0},
        {'variant': 'simmim_swin_b_224/bf16', 'compute_dtype': 'bfloat16', 'img_s': 100.0, 'device_memory_gib': 25.0},
        {'variant': 'greenmim_swin_b/fp32', 'compute_dtype': 'float32', 'img_s': 50.0, 'device_memory_gib': 20.0},
        {'variant': 'hivit_b_mae/bf16+torch', 'compute_dtype': 'bfloat16', 'with_torch': True, 'img_s': 900.0},
    ]
    got = {q['numerator']: q for q in ab.ratios(rows, 'accelerator')}
    assert got['greenmim_swin_b']['img_s_ratio'] == 3.0
    assert got['greenmim_swin_b']['memory_ratio'] == 0.4
    assert got['hivit_b_mae']['img_s_ratio'] is None       # the twin's rows do not count
    assert got['ummae_swin_t_256']['img_s_ratio'] is None


def _run(tmp_path, *flags):
    cmd = [sys.executable, '-m', 'launch.accelerator_bench', '--plan=smoke', f'--out_dir={tmp_path}/out',
           f'--cache_dir={tmp_path}/cache', '--batch_size=8', '--steps=1', '--warmup=0', *flags]
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / 'out' / 'accelerator_bench.json') as f:
        report = json.load(f)
    with open(tmp_path / 'out' / 'accelerator_bench.md') as f:
        return report, f.read(), proc


def test_two_phase_run_on_the_demo_configs(tmp_path):
    report, table, _ = _run(tmp_path, '--compile_workers=2', '--notorch_compile')
    rows = {r['variant']: r for r in report['rows']}
    assert list(rows) == [v.name for v in ab.plan('smoke')]
    assert all(r['status'] == 'ok' and r['img_s'] > 0 for r in rows.values())
    # cuDNN asked for, refused on the CPU, XLA's attention measured instead, and the refusal kept
    bf16 = rows['mae_vit_demo/bf16']
    assert bf16['attention'] == 'xla' and 'cudnn' in bf16['attention_refused'][0]
    assert rows['mae_vit_demo/fp32']['attention'] == 'xla' and rows['mae_vit_demo/fp32']['attention_refused'] is None
    # phase 1 compiled each distinct step once; its model FLOPs reach the timed rows
    assert all(r['compile_s_cold'] > 0 and r['model_flops_source'] == 'given' for r in rows.values())
    assert rows['mae_vit_demo/bf16+torch']['model_flops_per_image'] == bf16['model_flops_per_image']
    # the scanned step: its compiled count holds the scanned body once, its model FLOPs do not change
    assert rows['mae_vit_demo/bf16+fast_ops']['env'] == {'JAXMIM_FAST_OPS': 'all'}
    scan = rows['mae_vit_demo/bf16+scan']
    assert scan['model_flops_per_image'] == bf16['model_flops_per_image']
    assert scan['flops_per_image'] < 0.7 * bf16['flops_per_image']
    assert os.listdir(tmp_path / 'cache' / 'jax')                   # the persistent compilation cache
    # the twin beside the JAX step, and its ratio by definition
    torch_row = rows['mae_vit_demo/bf16+torch']
    assert torch_row['torch_eager_img_s'] > 0 and torch_row['torch_compile_img_s'] is None
    assert torch_row['jax_over_torch_eager'] == pytest.approx(torch_row['img_s'] / torch_row['torch_eager_img_s'])
    (ratio,) = report['ratios']
    assert ratio['img_s_ratio'] == pytest.approx(bf16['img_s'] / rows['simmim_swin_demo/bf16']['img_s'])
    assert report['peak_tflops'] is None and report['platform'] == 'cpu'
    for name in rows:
        assert f'| {name} |' in table
    assert 'demo MAE ViT / demo SimMIM Swin' in table


def test_a_run_past_its_deadline_keeps_a_record(tmp_path):
    report, table, _ = _run(tmp_path, '--compile_workers=0', '--deadline_minutes=0', '--groups=3,5')
    assert [r['variant'] for r in report['rows']] == ['mae_vit_demo/fp32', 'mae_vit_demo/bf16+scan']
    assert all(r['status'].startswith('skipped') for r in report['rows'])
    assert '| mae_vit_demo/fp32 |' in table and 'skipped' in table


def test_unknown_variant_is_one_error_line(tmp_path):
    cmd = [sys.executable, '-m', 'launch.accelerator_bench', '--plan=smoke', f'--out_dir={tmp_path}',
           '--only=nope/bf16']
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and 'error: --only names' in proc.stderr and 'mae_vit_demo/bf16' in proc.stderr
    proc = subprocess.run(cmd[:-1] + ['--groups=7'], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "error: --groups names ['7']" in proc.stderr
    proc = subprocess.run(cmd[:-1] + ['--worker=nope/bf16'], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "--worker='nope/bf16' is not a variant of --plan=smoke" in proc.stderr
