"""``python -m launch.demo`` end to end with tiny budgets on the real Fashion-MNIST (CPU).

The demo prepares Fashion-MNIST (Debian's idx files, as ``make test`` installs them) into its own
workdir, pre-trains, fine-tunes twice and writes ``results.json`` and ``reconstructions.png``.
Its flags shrink the steps, the batch, the evaluated test images and the shuffle buffer (a run
shorter than the configs' 50 warm-up steps warms up over its first tenth). Whole test: about a
minute on 2 CPU cores.
"""

import json
import math
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EVAL_EXAMPLES = 256
STEPS = 4
BATCH = 16
KNN_TRAIN = 64

def _png_size(path):
    """(width, height) from the PNG signature and IHDR chunk (PNG spec, ISO/IEC 15948)."""
    with open(path, 'rb') as f:
        head = f.read(24)
    assert head[:8] == b'\x89PNG\r\n\x1a\n', head[:8]
    assert head[12:16] == b'IHDR'
    return struct.unpack('>II', head[16:24])


def _is_hits_percentage(value, count):
    """``value`` is 100 * k / count for an integer k, up to the 2-decimal rounding of the demo."""
    k = round(value * count / 100.0)
    return 0 <= k <= count and abs(value - 100.0 * k / count) <= 0.005 + 1e-9


def test_demo_writes_results_and_reconstructions(tmp_path):
    import matplotlib.image as mpimg

    workdir = tmp_path / 'demo'
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([ROOT] + [p for p in [env.get('PYTHONPATH')] if p])
    env['JAX_PLATFORMS'] = 'cpu'
    # One CPU device: the 8 fake devices of conftest.py only slow the demo down on 2 cores.
    env['XLA_FLAGS'] = ' '.join(f for f in env.get('XLA_FLAGS', '').split()
                                if not f.startswith('--xla_force_host_platform_device_count'))
    proc = subprocess.run(
        [sys.executable, '-m', 'launch.demo', f'--workdir={workdir}', f'--pretrain_steps={STEPS}',
         f'--finetune_steps={STEPS}', f'--scratch_steps={STEPS}', f'--batch_size={BATCH}',
         f'--eval_examples={EVAL_EXAMPLES}', '--shuffle_buffer=256', '--evaluate_encoders',
         f'--probe_steps={STEPS}', f'--knn_train_examples={KNN_TRAIN}'],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert 'warning: could not draw reconstructions' not in proc.stdout, proc.stdout

    results = json.loads((workdir / 'results.json').read_text())
    assert set(results) == {'dataset', 'method', 'model', 'devices', 'rows', 'pretrain_final_loss', 'encoders'}
    # --evaluate_encoders: k-NN and a linear probe of the pre-trained encoder and of a random one
    enc = results['encoders']
    assert [e['encoder'] for e in enc] == ['pre-trained', 'random init']
    for e in enc:
        assert (e['knn_train_images'], e['linprobe_steps']) == (KNN_TRAIN, STEPS)
        assert _is_hits_percentage(e['knn_top1'], EVAL_EXAMPLES) and _is_hits_percentage(e['linprobe_top1'], EVAL_EXAMPLES)
    for name, pretrained in (('pre_trained', str(workdir / 'pretrain')), ('random_init', '')):
        probe_config = json.loads((workdir / f'linprobe_{name}' / 'config.json').read_text())
        assert (probe_config['probe'], probe_config['pretrained']['workdir']) == ('linear', pretrained)
    assert json.loads((workdir / 'pretrain' / 'knn_random.json').read_text())['random_init'] is True
    assert f"{enc[1]['knn_top1']:16.2f}%" in proc.stdout
    assert (results['method'], results['model']) == ('ummae', 'pvt_demo_32')
    assert results['devices'] == '[CpuDevice(id=0)]'
    rows = results['rows']
    assert [r['method'] for r in rows] == ['ummae pre-trained + fine-tuned', 'from scratch']
    assert [r['backbone'] for r in rows] == ['pvt_demo_32'] * 2
    assert [r['pretrain_steps'] for r in rows] == [STEPS, 0]
    for r in rows:
        assert set(r) == {'method', 'backbone', 'pretrain_steps', 'finetune_steps', 'top1', 'top5', 'wall_time_s',
                          'batch_size', 'step_seconds', 'evals'}
        assert r['step_seconds'] > 0
        assert (r['finetune_steps'], r['batch_size']) == (STEPS, BATCH)
        assert [(e['step'], e['count']) for e in r['evals']] == [(STEPS, EVAL_EXAMPLES)]
        assert (r['top1'], r['top5']) == (r['evals'][-1]['top1'], r['evals'][-1]['top5'])
        # top-1 / top-5 are hit counts over the 256 evaluated images, in percent.
        assert _is_hits_percentage(r['top1'], EVAL_EXAMPLES), r['top1']
        assert _is_hits_percentage(r['top5'], EVAL_EXAMPLES), r['top5']
        assert r['wall_time_s'] > 0
    # the pre-trained row's wall time counts the pre-training too (stage times kept in the workdir)
    stages = json.loads((workdir / 'stage_seconds.json').read_text())
    assert stages['scratch_steps'] == STEPS
    assert rows[0]['wall_time_s'] == pytest.approx(stages['pretrain'] + stages['pretrained'], abs=0.1)
    assert rows[1]['wall_time_s'] == pytest.approx(stages['scratch'], abs=0.1)
    # The fine-tuning runs are the ones the rows describe: pre-trained from the demo's own
    # pre-training directory, or from scratch.
    for variant, pretrained in (('pretrained', str(workdir / 'pretrain')), ('scratch', '')):
        ft_config = json.loads((workdir / f'finetune_{variant}' / 'config.json').read_text())
        assert ft_config['pretrained']['workdir'] == pretrained
        assert ft_config['total_steps'] == STEPS
        assert ft_config['optim']['warmup_steps'] == 1 and ft_config['data']['shuffle_buffer'] == 256
    summary = json.loads((workdir / 'pretrain' / 'pretrain_summary.json').read_text())
    assert summary['history'][-1]['step'] == STEPS
    assert results['pretrain_final_loss'] == summary['history'][-1]['loss']
    assert math.isfinite(results['pretrain_final_loss']) and results['pretrain_final_loss'] > 0

    # reconstructions.png: 3 rows (original, masked, reconstruction) x 8 test images, drawn on a
    # 1.4*8 x 4.6 inch figure at 120 dpi (1344 x 552 px) and cropped to its content
    # (bbox_inches='tight'), so at most that size plus the 0.1-inch pad.
    path = workdir / 'reconstructions.png'
    width, height = _png_size(path)
    image = mpimg.imread(path)
    assert image.shape[:2] == (height, width) and image.shape[2] in (3, 4)
    assert image.dtype == np.float32 and image.min() >= 0.0 and image.max() <= 1.0
    assert 0.6 * 1344 <= width <= 1344 + 24 and 0.6 * 552 <= height <= 552 + 24, (width, height)
    assert width > 1.5 * height                    # 8 columns of square panels, 3 rows
    assert image[..., :3].std() > 0.05             # not a blank canvas


def test_equal_time_steps_give_scratch_the_pretraining_time():
    from launch.budget import equal_time_steps, step_seconds
    # 600 s of pre-training at 0.25 s per fine-tuning step buys 2,400 more steps
    assert equal_time_steps(1000, 600.0, 0.25) == 3400
    assert equal_time_steps(1000, 0.0, 0.25) == 1000
    with pytest.raises(ValueError, match='step_s'):
        equal_time_steps(10, 5.0, 0.0)
    # the first log point (compilation inside) is left out; the median of the rest
    history = [{'step': 50, 'images_per_sec': 10.0}, {'step': 100, 'images_per_sec': 500.0},
               {'step': 150, 'images_per_sec': 400.0}, {'step': 200, 'images_per_sec': 640.0}]
    assert step_seconds(history, 128) == pytest.approx(128 / 500.0)
    with pytest.raises(ValueError, match='images_per_sec'):
        step_seconds([{'step': 1}], 128)
