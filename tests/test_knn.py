"""``jaxmim.knn``: DINO's weighted k-NN (``facebookresearch/dino@7c446df eval_knn.py:143-182``).

* The sharded, chunked core against a brute-force NumPy k-NN written out here, on the 8 fake CPU
  devices of ``tests/conftest.py`` (train rows split over them).
* The command line on a tiny real MAE pre-training run: its figure equals a NumPy k-NN of the
  pooled features of the loaded classifier on the same images, and the in-loop evaluation
  (``config.knn_every``) logged the same figure for the same weights; every bad input is one
  ``error:`` line and exit status 2.
"""

import glob
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxmim import knn
from jaxmim.mesh import make_mesh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = dict(embed_dim=16, depth=1, num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
TRAIN_N, EVAL_SPLIT, EVAL_N, K, BATCH = 40, 'test[:24]', 24, 5, 16


def brute_force_knn(train, train_labels, queries, k, temperature, num_classes):
    """Class votes written out: cosine similarity to every train row, the k largest, each adding
    exp(s / T) to its class (float64)."""
    a = train / np.linalg.norm(train, axis=1, keepdims=True)
    b = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = b.astype(np.float64) @ a.T.astype(np.float64)
    votes = np.zeros((len(queries), num_classes))
    for i, row in enumerate(sims):
        for j in np.argsort(-row)[:k]:
            votes[i, train_labels[j]] += np.exp(row[j] / temperature)
    return votes


def brute_force_accuracy(votes, labels, k):
    """Top-1 / top-5 (%) of the votes; top-5 ranks min(5, k) classes (DINO)."""
    order = np.argsort(-votes, axis=1, kind='stable')
    top1 = np.mean(order[:, 0] == labels) * 100
    top5 = np.mean((order[:, :min(5, k)] == labels[:, None]).any(1)) * 100
    return top1, top5


# ----------------------------------------------------------------------------------------
# The core.
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize('n,k,temperature,chunk,train_block,sharded', [
    (203, 1, 0.07, 5, None, False),     # 203 rows: padded to 208 over 8 devices; 61 queries in chunks of 5
    (200, 20, 0.07, 16, 7, True),       # row blocks of 7 (25 rows per device: a partial block)
    (200, 5, 0.5, 64, 3, True),         # one chunk larger than the queries
    (203, 7, 0.01, 13, None, False),    # exp(1 / 0.01) overflows float32: the votes are scaled
])
def test_scores_match_brute_force_on_8_devices(n, k, temperature, chunk, train_block, sharded):
    assert jax.device_count() == 8
    mesh = make_mesh()
    rng = np.random.default_rng(n + k)
    num_classes, q = 9, 61
    train = rng.normal(size=(n, 12)).astype(np.float32)
    labels = rng.integers(0, num_classes, n)
    queries = rng.normal(size=(q, 12)).astype(np.float32)
    query_labels = rng.integers(0, num_classes, q)
    valid = np.ones(n, bool)
    valid[::11] = False                                   # padding rows never vote
    args = (train, labels, valid)
    if sharded:
        rows = NamedSharding(mesh, P(('data', 'fsdp')))
        args = tuple(jax.device_put(a, rows) for a in args)
        assert len(args[0].sharding.device_set) == 8
    got = knn.knn_class_scores(*args, queries, k=k, temperature=temperature, num_classes=num_classes, mesh=mesh,
                               chunk=chunk, train_block=train_block)
    assert got.shape == (q, num_classes) and got.dtype == jnp.float32
    ref = brute_force_knn(train[valid], labels[valid], queries, k, temperature, num_classes) * np.exp(-1 / temperature)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=2e-5, atol=1e-6 * ref.max())
    counts = knn.knn_counts(got, query_labels, np.ones(q, bool), k=k, mesh=mesh)
    top1, top5 = brute_force_accuracy(ref, query_labels, k)
    assert counts['count'] == q
    assert 100 * counts['top1'] / q == pytest.approx(top1) and 100 * counts['top5'] / q == pytest.approx(top5)


def test_masked_queries_do_not_count():
    mesh = make_mesh()
    scores = jnp.asarray([[0.0, 1.0, 0.5], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    labels = jnp.asarray([1, 1, 2])
    out = knn.knn_counts(scores, labels, jnp.asarray([1.0, 1.0, 0.0]), k=2, mesh=mesh)
    # query 0: right at top-1; query 1: class 1 is second of min(5, k) = 2 ranked; query 2: masked
    assert out == {'top1': 1.0, 'top5': 2.0, 'count': 2.0}


# ----------------------------------------------------------------------------------------
# A tiny pre-training run with knn_every, and the command line on it.
# ----------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def run(data_dir, tmp_path_factory):
    """A 4-step MAE pre-training of a tiny ViT on Fashion-MNIST with k-NN every 2 steps."""
    from jaxmim import train
    from jaxmim.config import load_config_file
    cfg = load_config_file(os.path.join(ROOT, 'configs/demo/mae_vit_fmnist.py'))
    cfg.data.data_dir = data_dir
    cfg.data.eval_split = EVAL_SPLIT
    cfg.data.shuffle_buffer = 100
    cfg.model.overrides = type(cfg.model.overrides)(OVERRIDES)
    cfg.batch_size = 8
    cfg.total_steps = 4
    cfg.optim.warmup_steps = 1
    cfg.log_every = 2
    cfg.checkpoint_every = 4
    cfg.progress_bar = False
    cfg.knn_every = 2
    cfg.knn.k, cfg.knn.train_examples, cfg.knn.batch_size = K, TRAIN_N, BATCH
    workdir = str(tmp_path_factory.mktemp('knn') / 'pre')
    _, summary = train.pretrain(cfg, workdir)
    return workdir, cfg, summary


def _tb_scalars(workdir):
    import tensorflow as tf
    out = {}
    for f in glob.glob(os.path.join(workdir, 'tensorboard', 'events.*')):
        for ev in tf.compat.v1.train.summary_iterator(f):
            for v in ev.summary.value:
                if v.tag.startswith('knn/'):
                    out[(v.tag, ev.step)] = float(tf.make_ndarray(v.tensor))
    return out


def test_knn_every_logs_top1_and_top5(run):
    workdir, _, summary = run
    assert [e['step'] for e in summary['evals']] == [2, 4]
    with open(os.path.join(workdir, 'pretrain_summary.json')) as f:
        assert json.load(f)['evals'] == summary['evals']
    tb = _tb_scalars(workdir)
    assert sorted(tb) == [('knn/top1', 2), ('knn/top1', 4), ('knn/top5', 2), ('knn/top5', 4)]
    for e in summary['evals']:
        assert tb[('knn/top1', e['step'])] == pytest.approx(e['top1'])
        assert 0.0 <= e['top1'] <= e['top5'] <= 100.0
        assert e['top1'] * EVAL_N / 100 == pytest.approx(round(e['top1'] * EVAL_N / 100))   # whole images


def _cli(argv, capsys):
    """``main(argv)`` -> (exit status, stdout lines, stderr lines)."""
    capsys.readouterr()   # drop what fixtures printed
    try:
        knn.main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out.strip().splitlines(), out.err.strip().splitlines()


def _numpy_knn_accuracy(model, cfg):
    """(top-1, top-5) of a brute-force NumPy k-NN on ``model.pooled_features`` of the first
    ``TRAIN_N`` train images against the ``EVAL_SPLIT`` images (the run's evaluation transform)."""
    from jaxmim.config import resolve_data_config
    from jaxmim.data import pipeline
    data = resolve_data_config(cfg)

    def split(name):
        data.eval_split = name
        batch = next(iter(pipeline.create_split(data, train=False, batch_size=64, seed=0)))
        n = int(batch['mask'].sum())
        return np.asarray(model.pooled_features(jnp.asarray(batch['image'][:n]))), batch['label'][:n]

    train_f, train_l = split(f'train[:{TRAIN_N}]')
    eval_f, eval_l = split(EVAL_SPLIT)
    return brute_force_accuracy(brute_force_knn(train_f, train_l, eval_f, K, 0.07, 10), eval_l, K)


def test_cli_equals_numpy_knn_of_the_loaded_encoder(run, capsys):
    from jaxmim import rundir
    from jaxmim.registry import classifier_for, create_model
    workdir, cfg, summary = run
    code, out, err = _cli(['--workdir', workdir, '--train_examples', str(TRAIN_N), '--batch_size', str(BATCH)], capsys)
    assert code == 0, err
    with open(os.path.join(workdir, 'knn.json')) as f:
        res = json.load(f)
    assert out == [f"knn: top1={res['top1']:.2f} top5={res['top5']:.2f} (k={K}, T=0.07, {TRAIN_N} train, {EVAL_N} eval)"]
    assert res['step'] == 4 and res['k'] == K and res['num_classes'] == 10
    # the same weights in memory at step 4 (the in-loop evaluation) give the same figures
    assert (res['top1'], res['top5']) == (summary['evals'][-1]['top1'], summary['evals'][-1]['top5'])

    # independently: the classifier loaded from the checkpoint, features of the same images
    model = create_model(classifier_for(cfg.model.name), embed_dim=16, depth=1, num_heads=2)
    rundir.load_pretrained(model, workdir)
    top1, top5 = _numpy_knn_accuracy(model, cfg)
    assert res['top1'] == pytest.approx(top1) and res['top5'] == pytest.approx(top5)
    assert res['top1'] > 100 / 10 + 5   # well above chance: the features carry the classes


def test_random_init_baseline_is_the_seeded_classifier(run, capsys):
    """``--random_init``: the classifier at its initialisation from ``config.seed``, no checkpoint
    read, written to ``knn_random.json``; checked against a NumPy k-NN of that model's features."""
    from jaxmim.registry import classifier_for, create_model
    workdir, cfg, _ = run
    code, out, err = _cli(['--workdir', workdir, '--train_examples', str(TRAIN_N), '--batch_size', str(BATCH),
                           '--random_init'], capsys)
    assert code == 0, err
    with open(os.path.join(workdir, 'knn_random.json')) as f:
        res = json.load(f)
    assert res['random_init'] is True and res['step'] == 0
    model = create_model(classifier_for(cfg.model.name), seed=int(cfg.seed), embed_dim=16, depth=1, num_heads=2)
    top1, top5 = _numpy_knn_accuracy(model, cfg)
    assert res['top1'] == pytest.approx(top1) and res['top5'] == pytest.approx(top5)


@pytest.fixture(scope='module')
def unlabelled_dataset(data_dir):
    """A prepared tfds dataset whose examples have an image and no label."""
    import tensorflow_datasets as tfds

    class UnlabelledSquares(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version('1.0.0')

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {'image': tfds.features.Image(shape=(8, 8, 1))}))

        def _split_generators(self, dl_manager):
            return {'train': self._generate_examples(), 'test': self._generate_examples()}

        def _generate_examples(self):
            for i in range(4):
                yield i, {'image': np.full((8, 8, 1), i, np.uint8)}

    UnlabelledSquares(data_dir=data_dir).download_and_prepare()
    return 'unlabelled_squares'


def _copy_run(run, tmp_path, **changes):
    """A copy of the run directory whose config.json has ``changes`` (dotted keys)."""
    workdir = str(tmp_path / 'copy')
    shutil.copytree(run[0], workdir)
    path = os.path.join(workdir, 'config.json')
    with open(path) as f:
        config = json.load(f)
    for key, value in changes.items():
        node = config
        *parents, last = key.split('.')
        for p in parents:
            node = node[p]
        node[last] = value
    with open(path, 'w') as f:
        json.dump(config, f)
    return workdir


@pytest.mark.parametrize('case', ['no_dir', 'no_config', 'no_checkpoint', 'k_above_train_examples',
                                  'k_above_split', 'no_labels', 'no_classifier', 'bad_batch'])
def test_cli_errors_are_one_line_and_status_2(case, run, tmp_path, capsys, request):
    argv, expected = [], None
    if case == 'no_dir':
        workdir, expected = str(tmp_path / 'missing'), 'does not exist'
    elif case == 'no_config':
        workdir, expected = str(tmp_path), 'has no config.json'
    elif case == 'no_checkpoint':
        workdir = str(tmp_path / 'empty')
        os.makedirs(workdir)
        shutil.copy(os.path.join(run[0], 'config.json'), workdir)
        expected = 'has no checkpoint'
    elif case == 'k_above_train_examples':
        workdir, argv = run[0], ['--k', '50', '--train_examples', '40']
        expected = '--k=50 is larger than the 40 train images (--train_examples=40); lower k'
    elif case == 'k_above_split':
        workdir = _copy_run(run, tmp_path, **{'data.train_split': 'train[:10]'})
        argv = ['--train_examples', '0', '--k', '20']
        expected = "--k=20 is larger than the 10 train images (split 'train[:10]'); lower k"
    elif case == 'no_labels':
        dataset = request.getfixturevalue('unlabelled_dataset')
        workdir = _copy_run(run, tmp_path, **{'data.dataset': dataset})
        expected = f"config.data.dataset='{dataset}' has no label feature"
    elif case == 'no_classifier':
        workdir = _copy_run(run, tmp_path, **{'model.name': 'green_mim_twins_demo_patch2_32_dec64b1'})
        expected = 'registers no classifier'
    else:
        workdir, argv, expected = run[0], ['--batch_size', '12'], 'must be a multiple of 8'
    code, out, err = _cli(['--workdir', workdir] + argv, capsys)
    assert code == 2 and out == []
    assert len(err) == 1 and err[0].startswith('error: ') and expected in err[0], err


def test_module_entry_point_exit_status(tmp_path):
    proc = subprocess.run([sys.executable, '-m', 'jaxmim.knn', f'--workdir={tmp_path / "nowhere"}'],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: --workdir='{tmp_path / 'nowhere'}' does not exist"]


@pytest.mark.parametrize('field,value,message', [
    ('knn.k', 0, 'config.knn.k=0: must be an integer >= 1'),
    ('knn.temperature', 0.0, 'config.knn.temperature=0.0: must be a number > 0'),
    ('knn_every', -1, 'config.knn_every=-1: must be an integer >= 0'),
    ('knn.train_examples', 10, 'config.knn.k=20 is larger than config.knn.train_examples=10'),
])
def test_config_checks_the_knn_fields(field, value, message):
    from jaxmim.config import check_config, load_config_file
    cfg = load_config_file(os.path.join(ROOT, 'configs/demo/mae_vit_fmnist.py'))
    node, _, last = field.rpartition('.')
    setattr(cfg.knn if node else cfg, last, value)
    with pytest.raises(ValueError, match='^' + message.replace('.', r'\.').replace('(', r'\(')):
        check_config(cfg)
