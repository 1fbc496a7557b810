"""``launch.compare``: flag checks, the equal-time step arithmetic, resume of finished and
interrupted stages, exit statuses of stage processes, and the report (Markdown + PNG)."""

import json
import os
import struct
import sys

import pytest

from launch import compare, compare_report


def test_check_flags_minutes_and_order():
    pairs, minutes = compare.check_flags(8, 'fashion_mnist_local', ['mae_vit', 'simmim_swin'], None, None, 50)
    assert pairs == ['simmim_swin', 'mae_vit']          # the order of PAIRS, not of the flag
    assert minutes == {'pretrain': 8, 'finetune': 4.0, 'probe': 2.0, 'scratch': 12.0}
    _, minutes = compare.check_flags(6, 'fashion_mnist_local', ['mae_vit'], 5, 1, 1)
    assert minutes['scratch'] == 11 and minutes['probe'] == 1


@pytest.mark.parametrize('args, match', [
    ((None, 'fashion_mnist_local', ['mae_vit'], None, None, 50), '--budget_minutes must be > 0'),
    ((0, 'fashion_mnist_local', ['mae_vit'], None, None, 50), '--budget_minutes must be > 0'),
    ((5, 'imagenet2012', ['mae_vit'], None, None, 50), r"--dataset='imagenet2012' is not supported; accepted: \['fashion_mnist_local'\]"),
    ((5, 'fashion_mnist_local', ['mae_vitt'], None, None, 50), r"unknown pair\(s\) \['mae_vitt'\]; accepted: \['simmim_swin'"),
    ((5, 'fashion_mnist_local', [], None, None, 50), '--methods is empty'),
    ((5, 'fashion_mnist_local', ['mae_vit'], -1, None, 50), '--finetune_minutes must be > 0'),
    ((5, 'fashion_mnist_local', ['mae_vit'], None, None, 0), '--min_steps must be >= 1'),
])
def test_check_flags_errors(args, match):
    with pytest.raises(ValueError, match=match):
        compare.check_flags(*args)


def test_pairs_cover_the_issue_and_their_configs_exist():
    methods = {(p.method, os.path.basename(p.pretrain)) for p in compare.PAIRS.values()}
    assert len(compare.PAIRS) >= 6
    for pair in compare.PAIRS.values():
        for rel in (pair.pretrain, pair.finetune):
            assert os.path.exists(os.path.join(compare.ROOT, rel)), rel
    assert ('GreenMIM', 'greenmim_swin_fmnist.py') in methods and ('UM-MAE', 'ummae_pvt_fmnist.py') in methods


def test_steps_for_and_warmup():
    assert compare.steps_for(2.0, 0.5) == 240               # 120 s / 0.5 s
    assert compare.steps_for(0.001, 10.0) == 1              # never zero steps
    with pytest.raises(ValueError, match='step time must be > 0'):
        compare.steps_for(1, 0)
    assert compare.warmup_for(1000, 50) == 50
    assert compare.warmup_for(120, 50) == 12                # 50 > 120 // 4: a tenth of the run


def _runner(tmp_path):
    state = compare.State(str(tmp_path / 'comparison.json'), {'pairs': ['mae_vit']})
    runner = compare.Runner(str(tmp_path), state, {'pretrain': 1.0}, str(tmp_path / 'tfds'), 0, total_stages=1)
    return state, runner


def test_finished_stage_is_not_run_again_and_time_adds_up(tmp_path):
    calls = []
    state, runner = _runner(tmp_path)

    def interrupted():
        calls.append('first')
        raise compare.Stopped('stopped')

    with pytest.raises(compare.Stopped):
        runner.timed('mae_vit/knn', interrupted)
    first = json.load(open(tmp_path / 'comparison.json'))['stages']['mae_vit/knn']
    assert first['done'] is False and first['wall_seconds'] > 0
    # a new process: the record is read back, the stage runs again, its time is added to the first attempt's
    state, runner = _runner(tmp_path)
    rec = runner.timed('mae_vit/knn', lambda: calls.append('second') or {'top1': 81.5})
    assert rec['done'] and rec['top1'] == 81.5 and rec['wall_seconds'] >= first['wall_seconds']
    state, runner = _runner(tmp_path)
    runner.timed('mae_vit/knn', lambda: calls.append('third'))
    assert calls == ['first', 'second']


def test_steps_fixed_once_and_min_steps_skip(tmp_path, monkeypatch):
    state, runner = _runner(tmp_path)
    monkeypatch.setattr(runner, 'calibrate', lambda *a, **k: 3.0)   # 3 s a step
    rec = runner.train('mae_vit/pretrain', 'configs/demo/mae_vit_fmnist.py', 'pretrain', 1.0, 50, min_steps=50)
    assert rec['steps'] == 20 and rec['done'] and '20 steps in 1 min (< --min_steps=50)' in rec['skipped']


def test_stage_exit_statuses(tmp_path):
    log = str(tmp_path / 'logs' / 'x.log')
    compare.run_process([sys.executable, '-c', 'pass'], log)
    with pytest.raises(compare.Stopped):
        compare.run_process([sys.executable, '-c', 'import sys; sys.exit(75)'], log)
    with pytest.raises(compare.StageFailed, match='exit status 3'):
        compare.run_process([sys.executable, '-c', 'import sys; sys.exit(3)'], log)
    text = open(log).read()
    assert text.count('exit status') == 3 and 'exit status 75' in text


def _record():
    stages = {
        'mae_vit/pretrain': {'done': True, 'steps': 400, 'wall_seconds': 480.0, 'backbone': 'vit_demo_patch4_32',
                             'method': 'MAE'},
        'mae_vit/knn': {'done': True, 'top1': 70.25},
        'mae_vit/linprobe': {'done': True, 'top1': 65.5},
        'mae_vit/finetune': {'done': True, 'top1': 88.125, 'backbone': 'vit_demo_patch4_32', 'wall_seconds': 258.0},
        'scratch/vit_demo_patch4_32': {'done': True, 'top1': 86.0, 'steps': 900, 'wall_seconds': 720.0},
        'ummae_pvt/pretrain': {'done': True, 'steps': 3, 'skipped': '3 steps in 8 min (< --min_steps=50)',
                               'backbone': 'pvt_demo_32'},
        'simmim_swin/pretrain': {'done': False, 'steps': 300, 'wall_seconds': 100.0,
                                 'backbone': 'swin_demo_patch4_window4_32'},
    }
    return {'settings': {'dataset': 'fashion_mnist_local', 'pairs': ['simmim_swin', 'mae_vit', 'ummae_pvt'],
                         'minutes': {'pretrain': 8, 'finetune': 4, 'probe': 2, 'scratch': 12},
                         'knn': {'k': 20, 'temperature': 0.07}, 'machine': 'test cpu'}, 'stages': stages}


def test_rows_and_markdown():
    table = compare_report.rows(_record())
    by_pair = {r['pair']: r for r in table}
    assert [r['pair'] for r in table] == ['simmim_swin', 'mae_vit', 'ummae_pvt', 'scratch/vit_demo_patch4_32']
    assert (by_pair['mae_vit']['knn'], by_pair['mae_vit']['linprobe'], by_pair['mae_vit']['finetune']) == (70.25, 65.5, 88.125)
    assert by_pair['simmim_swin']['finetune'] is None                      # still running
    md = compare_report.markdown(_record(), table)
    # wall: (480 + 258) s / 60 = 12.3 min for the pair, 720 s / 60 = 12.0 min from scratch
    assert '| MAE | vit_demo_patch4_32 | 400 | 70.25 | 65.50 | 88.12 | 12.3 |' in md
    assert '| from scratch | vit_demo_patch4_32 | 0 (900 supervised steps) | — | — | 86.00 | 12.0 |' in md
    assert '| simmim_swin | swin_demo_patch4_window4_32 | 300 | — | — | — | — |' in md   # still running: no wall yet
    assert 'does not fit: 3 steps in 8 min' in md
    assert 'pre-training 8 min' in md and 'from scratch 12 min' in md


def test_report_writes_png(tmp_path):
    paths = compare_report.write_report(_record(), str(tmp_path))
    with open(paths['chart'], 'rb') as f:
        head = f.read(24)
    assert head[:8] == b'\x89PNG\r\n\x1a\n'
    width, height = struct.unpack('>II', head[16:24])
    assert width > 600 and height > 400
    assert open(paths['markdown']).read() == compare_report.markdown(_record(), compare_report.rows(_record()))


def test_state_adds_pairs_of_a_later_run_and_refuses_other_settings(tmp_path):
    path = str(tmp_path / 'comparison.json')
    five = {'pairs': ['mae_vit', 'simmim_swin'], 'minutes': {'pretrain': 5, 'finetune': 2.5}, 'dataset': 'fmnist'}
    state = compare.State(path, five)
    state.stage('mae_vit/knn').update(done=True, top1=80.0)
    state.save()
    # completing the comparison one pair at a time: the recorded pairs stay, in the order of PAIRS
    later = compare.State(path, {**five, 'pairs': ['simmim_groupmixformer']})
    assert later.data['settings']['pairs'] == ['simmim_swin', 'mae_vit', 'simmim_groupmixformer']
    assert later.data['stages']['mae_vit/knn']['top1'] == 80.0
    with pytest.raises(ValueError, match=r"minutes=\{'pretrain': 5, 'finetune': 2.5\}.*minutes=\{'pretrain': 8"):
        compare.State(path, {**five, 'minutes': {'pretrain': 8, 'finetune': 4}})
    with pytest.raises(ValueError, match='dataset=fmnist, this run has dataset=imagenet2012'):
        compare.State(path, {**five, 'dataset': 'imagenet2012'})
