"""The training-speed benchmark on the demo SimMIM config (8 fake CPU devices, see conftest).

The XLA FLOP count is checked against an analytic estimate written here from the Swin
architecture alone (no XLA): per block ``2 * linear_params * tokens`` for the qkv, proj and
MLP matrices plus ``2 * 2 * tokens * window_tokens * dim`` for q·kᵀ and attn·v; the patch
embedding, the patch mergings, the SimMIM decoder / classifier head; x3 for forward + backward.
"""

import json
import os
import subprocess
import sys

import jax
import pytest

from jaxmim import benchmark, profiling
from jaxmim.registry import model_defaults

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_config(rel_path, arg=None):
    from jaxmim.config import load_config_file
    return load_config_file(os.path.join(ROOT, rel_path) + (f':{arg}' if arg else ''))


def swin_train_flops(img_size, patch_size, in_chans, embed_dim, depths, num_heads, window_size,
                     mlp_ratio=4.0, num_classes=0, decoder_stride=None, **_):
    """Analytic training FLOPs per image (multiply-add = 2 FLOPs, backward = 2 x forward)."""
    del num_heads   # the head split does not change the FLOPs
    grid = img_size // patch_size
    fwd = 2 * (patch_size * patch_size * in_chans) * embed_dim * grid * grid        # patch embedding
    for i, depth in enumerate(depths):
        res, dim = grid // 2 ** i, embed_dim * 2 ** i
        tokens = res * res
        window_tokens = min(window_size, res) ** 2
        linear_params = 3 * dim * dim + dim * dim + 2 * int(mlp_ratio * dim) * dim   # qkv, proj, fc1, fc2
        block = 2 * linear_params * tokens + 2 * 2 * tokens * window_tokens * dim     # + q·kᵀ, attn·v
        fwd += depth * block
        if i < len(depths) - 1:
            fwd += 2 * (4 * dim) * (2 * dim) * (tokens // 4)                           # patch merging
    num_features = embed_dim * 2 ** (len(depths) - 1)
    fwd += 2 * num_features * num_classes                                              # classifier head
    if decoder_stride:                                                                 # SimMIM 1x1 conv
        fwd += 2 * num_features * decoder_stride ** 2 * in_chans * (img_size // decoder_stride) ** 2
    return 3 * fwd


@pytest.fixture(scope='module')
def demo_rows():
    config = _load_config('configs/demo/simmim_swin_fmnist.py')
    # Fewer XLA backend passes halve the CPU compile time; the HLO FLOP count is unchanged.
    previous = jax.config.read('jax_disable_most_optimizations')
    jax.config.update('jax_disable_most_optimizations', True)
    try:
        rows = benchmark.run_benchmark(config, steps=2, warmup=1, batch_size=16, num_classes=10,
                                       peak_tflops=1.0)
    finally:
        jax.config.update('jax_disable_most_optimizations', previous)
    return config, rows


def test_rows_and_flops(demo_rows):
    config, rows = demo_rows
    assert [r['kind'] for r in rows] == ['pretrain', 'finetune']
    n_dev = len(jax.devices())
    arch = model_defaults(config.model.name)
    in_chans = arch.get('in_chans', 3)
    for row in rows:
        assert row['devices'] == n_dev and row['batch_size'] == 16 and row['image_size'] == 32
        assert row['img_s'] > 0 and row['img_s_overall'] > 0 and row['compile_s'] > 0
        assert row['device_kind'] == jax.devices()[0].device_kind
        if row['kind'] == 'pretrain':
            expected = swin_train_flops(**{**arch, 'in_chans': in_chans},
                                        decoder_stride=config.method.encoder_stride)
        else:
            assert row['model'] == 'swin_demo_patch4_window4_32'
            expected = swin_train_flops(**{**arch, 'in_chans': in_chans, 'num_classes': 10})
        ratio = row['flops_per_image'] / expected
        assert 0.5 < ratio < 2.0, (row['kind'], row['flops_per_image'], expected)
        # The per-device (partitioned) and the global (unpartitioned) counts agree.
        assert row['flops_per_image_unpartitioned'] == pytest.approx(row['flops_per_image'], rel=0.5)
        # the MFU numerator: the lowered step's count (a reference config on a CPU mesh); the
        # compiled per-device count also holds the replicated optimizer update once per device
        assert row['model_flops_source'] == 'step'
        assert row['model_flops_per_image'] == row['flops_per_image_unpartitioned']
        assert row['achieved_tflops'] == pytest.approx(row['model_flops_per_image'] * row['img_s'] / 1e12)
        assert row['mfu'] == pytest.approx(row['achieved_tflops'] / n_dev)
        # host counters of the timed steps: CPU time is spent, and no more than the cores allow
        host = row['host_per_step']
        assert host['user_s'] > 0 and host['sys_s'] >= 0 and host['page_faults'] >= 0
        assert host['user_s'] + host['sys_s'] <= os.cpu_count() * row['step_time_max_s'] * 1.5 + 0.05
    table = benchmark.format_table(rows)
    assert 'pretrain' in table and 'finetune' in table and 'GFLOPs/img' in table and 'MFU' in table
    json.dumps(rows)


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='getrusage page-fault counts')
def test_host_counters_count_the_pages_a_step_touches():
    import mmap
    size = 32 << 20
    pages = size // mmap.PAGESIZE
    try:
        thp = open('/sys/kernel/mm/transparent_hugepage/enabled').read()
    except OSError:
        thp = ''
    # an anonymous map is faulted in page by page on first touch (2 MiB at a time under THP 'always')
    least = pages // 512 if '[always]' in thp else int(0.9 * pages)
    deltas = []
    buf = mmap.mmap(-1, size)
    try:
        profiling.counted(lambda: [buf.__setitem__(i, 1) for i in range(0, size, mmap.PAGESIZE)], deltas)
    finally:
        buf.close()
    (faults, sys_s, user_s), = deltas
    assert faults >= least, (faults, least)
    assert sys_s >= 0 and user_s >= 0
    # nothing touched: (almost) no faults
    quiet = []
    profiling.counted(lambda: None, quiet)
    assert quiet[0][0] < 64


def test_host_counter_means_are_per_step_means():
    means = profiling.host_counter_means([(100, 0.5, 2.0), (300, 0.25, 1.0)])
    assert means == {'page_faults': 200.0, 'sys_s': 0.375, 'user_s': 1.5}
    assert profiling.host_counter_means([]) is None


def test_finetune_step_uses_the_registered_classifier_and_errors():
    config = _load_config('configs/demo/simmim_swin_fmnist.py')
    ft = benchmark.finetune_config_from_pretrain(config, num_classes=7, layer_decay=0.9)
    assert ft.mode == 'finetune' and ft.model.name == 'swin_demo_patch4_window4_32'
    assert ft.model.overrides.num_classes == 7 and ft.optim.layer_decay == 0.9
    assert ft.data.image_size == 32 and ft.optim.base_lr == config.optim.base_lr
    orphan = _load_config('configs/demo/simmim_swin_fmnist.py')
    orphan.model.name = 'simmim_swin_large_patch4_window12_192'       # registers no classifier
    with pytest.raises(ValueError, match='registers no fine-tuning classifier'):
        benchmark.finetune_config_from_pretrain(orphan, num_classes=7, layer_decay=0.9)
    n_dev = len(jax.devices())
    if n_dev > 1:
        with pytest.raises(ValueError, match='multiple of the device count'):
            benchmark.run_benchmark(config, steps=1, warmup=0, batch_size=n_dev + 1)
    scratch = _load_config('configs/demo/finetune_swin_fmnist.py', 'scratch')
    with pytest.raises(ValueError, match='not available'):
        benchmark.run_benchmark(scratch, steps=1, warmup=0, kinds=['pretrain'])


def test_cli_rejects_indivisible_batch(tmp_path):
    """The command line reports a batch that does not split over the devices in one line."""
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2', JAX_PLATFORMS='cpu')
    proc = subprocess.run(
        [sys.executable, '-m', 'jaxmim.benchmark', '--config=configs/demo/simmim_swin_fmnist.py',
         '--batch_size=3', '--steps=1', '--warmup=0', f'--json_out={tmp_path / "b.json"}'],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert 'multiple of the device count 2' in proc.stderr


def test_cli_rejects_unknown_compute_dtype(tmp_path):
    """``--compute_dtypes`` names the accepted values in one line (exit 2) before compiling."""
    env = dict(os.environ, JAX_PLATFORMS='cpu')
    proc = subprocess.run(
        [sys.executable, '-m', 'jaxmim.benchmark', '--config=configs/demo/simmim_swin_fmnist.py',
         '--compute_dtypes=float32,float16', '--steps=1', '--warmup=0'],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "--compute_dtypes: ['float16'] not accepted; use ['float32', 'bfloat16']" in proc.stderr


def test_inference_throughput_the_official_way():
    """``--kinds=inference``: 50 warm-up then 30 timed evaluation forwards of the classifier; its
    XLA FLOPs per image cover at least the forward's multiply-adds (2 FLOPs each, counted from the
    jaxpr by ``jaxmim.summary``) and not much more (element-wise work)."""
    from flax import nnx

    from jaxmim.registry import create_model
    from jaxmim.summary import summarize

    config = _load_config('configs/demo/finetune_swin_fmnist.py', 'scratch')
    (row,) = benchmark.run_benchmark(config, batch_size=8, kinds=['inference'])
    assert row['kind'] == 'inference' and row['warmup'] == 50 and row['steps'] == 30
    assert row['img_s'] > 0 and row['batch_size'] == 8
    model = nnx.eval_shape(lambda: create_model(config.model.name, drop_path_rate=0.0))
    macs = summarize(model, 32, batch_size=1)['macs']
    assert 2 * macs <= row['flops_per_image'] <= 1.5 * 2 * macs
    with pytest.raises(ValueError, match="step kinds \\['bogus'\\]"):
        benchmark.run_benchmark(config, kinds=['bogus'])


def test_table_names_the_config_of_each_row():
    """Two rows of the same registered model (e.g. SimMIM at mask 0.6 and 0.75) are told apart by
    the ``config`` column, the last one, left-aligned; without labels the column is absent."""
    base = {'kind': 'pretrain', 'model': 'simmim_swin_base_patch4_window6_192', 'image_size': 224,
            'batch_size': 8, 'devices': 1, 'compile_s': 17.0, 'img_s': 0.9, 'img_s_overall': 0.9,
            'flops_per_image': 94.292e9, 'achieved_tflops': 0.085, 'device_memory_gib': 3.319}
    rows = [dict(base, config='configs/pretrain/simmim_swin_base_img224_window7.py:100ep'),
            dict(base, config='configs/pretrain/simmim_swin_base_img224_window7.py:mask75')]
    lines = benchmark.format_table(rows).splitlines()
    assert lines[0].split()[-1] == 'config'
    assert lines[2].endswith(':100ep') and lines[3].endswith(':mask75')
    assert '94.292' in lines[2] and '3.319' in lines[3]
    assert 'config' not in benchmark.format_table([base]).splitlines()[0]


def test_a_step_that_does_not_fit_keeps_its_row(monkeypatch):
    """A step the device cannot hold (RESOURCE_EXHAUSTED when it runs) does not end the run: its
    row keeps the FLOPs and the compiled memory, has no timings, and the table says OOM; any
    other runtime error still propagates."""
    config = _load_config('configs/demo/simmim_swin_fmnist.py')
    message = 'RESOURCE_EXHAUSTED: Out of memory allocating 36687552576 bytes.'

    def no_room(out):
        raise jax.errors.JaxRuntimeError(message)

    monkeypatch.setattr(benchmark, '_wait', no_room)
    (row,) = benchmark.run_benchmark(config, steps=2, warmup=1, batch_size=8, kinds=['pretrain'])
    assert row['out_of_memory'] == message
    assert row['img_s'] is None and row['step_time_median_s'] is None and row['final_loss'] is None
    assert row['flops_per_image'] > 0 and row['device_memory_gib'] > 0
    line = benchmark.format_table([row]).splitlines()[2]
    assert line.split()[6:8] == ['OOM', 'OOM']

    def broken(out):
        raise jax.errors.JaxRuntimeError('INTERNAL: something else')

    monkeypatch.setattr(benchmark, '_wait', broken)
    with pytest.raises(jax.errors.JaxRuntimeError, match='INTERNAL'):
        benchmark.run_benchmark(config, steps=1, warmup=0, batch_size=8, kinds=['pretrain'])


def mae_vit_train_flops(img_size, patch_size, in_chans, embed_dim, depth, decoder_embed_dim, decoder_depth,
                        mask_ratio, mlp_ratio=4.0):
    """Analytic training FLOPs per image of MAE on a ViT (multiply-add = 2 FLOPs, x3 for forward +
    backward): the patch embedding of every patch (the official code embeds all, then drops),
    encoder blocks on the kept patches + [CLS], the decoder embedding, decoder blocks on every
    patch + [CLS], the pixel prediction head."""
    n = (img_size // patch_size) ** 2
    keep = int(n * (1 - mask_ratio))
    p = patch_size * patch_size * in_chans

    def blocks(count, tokens, dim):
        linear = 4 * dim * dim + 2 * int(mlp_ratio * dim) * dim          # qkv + proj, fc1 + fc2
        return count * (2 * linear * tokens + 2 * 2 * tokens * tokens * dim)

    fwd = 2 * p * embed_dim * n + blocks(depth, keep + 1, embed_dim)
    fwd += 2 * embed_dim * decoder_embed_dim * (keep + 1) + blocks(decoder_depth, n + 1, decoder_embed_dim)
    fwd += 2 * decoder_embed_dim * p * (n + 1)
    return 3 * fwd


def test_model_flops_ignore_remat_and_scanned_blocks():
    """The MFU numerator is the model's work: the same for the plain step, a rematerialised one and
    one whose blocks run in a ``scan`` (whose body XLA's cost analysis of the compiled step counts
    once), and within 25 % of the analytic MAE-ViT count; the compiled count of the scanned,
    rematerialised step is far from it, which is why it is not the numerator."""
    from jaxmim import mesh as mesh_lib
    config = _load_config('configs/demo/mae_vit_fmnist.py')
    config.batch_size = 8
    mesh = mesh_lib.make_mesh(jax.devices()[:1])
    plain, source = benchmark.model_flops_per_image('pretrain', config, mesh)
    assert source == 'reference form, 1 CPU device'
    varied = config.copy_and_resolve_references()
    varied.model.overrides.remat = 'block'
    varied.model.overrides.scan_blocks = True
    again, _ = benchmark.model_flops_per_image('pretrain', varied, mesh)
    assert again == plain
    arch = model_defaults(config.model.name)
    expected = mae_vit_train_flops(arch['img_size'], arch['patch_size'], 3, arch['embed_dim'], arch['depth'],
                                   arch['decoder_embed_dim'], arch['decoder_depth'], config.method.mask_ratio)
    assert 0.8 < plain / expected < 1.25, (plain, expected)
    previous = jax.config.read('jax_disable_most_optimizations')
    jax.config.update('jax_disable_most_optimizations', True)
    try:
        (row,) = benchmark.run_benchmark(varied, steps=1, warmup=0, batch_size=8, kinds=['pretrain'],
                                         devices=jax.devices()[:1])
    finally:
        jax.config.update('jax_disable_most_optimizations', previous)
    assert row['model_flops_per_image'] == plain and row['model_flops_source'] == 'reference form, 1 CPU device'
    assert row['flops_per_image'] < 0.7 * plain      # six encoder blocks counted as one
    assert row['achieved_tflops'] == pytest.approx(plain * row['img_s'] / 1e12)


def test_model_flops_given_by_the_caller_are_used():
    config = _load_config('configs/demo/simmim_swin_fmnist.py')
    previous = jax.config.read('jax_disable_most_optimizations')
    jax.config.update('jax_disable_most_optimizations', True)
    try:
        (row,) = benchmark.run_benchmark(config, steps=1, warmup=0, batch_size=8, kinds=['pretrain'],
                                         devices=jax.devices()[:1], model_flops={'pretrain': 1e9}, peak_tflops=2.0)
    finally:
        jax.config.update('jax_disable_most_optimizations', previous)
    assert row['model_flops_per_image'] == 1e9 and row['model_flops_source'] == 'given'
    assert row['mfu'] == pytest.approx(1e9 * row['img_s'] / 2e12)
