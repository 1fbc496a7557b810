"""Tests for jaxmim.data against the real Fashion-MNIST idx files (CPU, fast).

Expectations come from an independent minimal idx parser written here with
``gzip`` + ``struct`` (not from jaxmim.data's own reader).
"""

import gzip
import os
import shutil
import struct

import ml_collections
import numpy as np
import pytest

from jaxmim import data
from jaxmim.data import data_config

FMNIST_DIR = '/usr/share/datasets/fashion-mnist'

# `make test` installs Debian's dataset-fashion-mnist first; a missing file fails the tests
# (with the how-to message of the builder) instead of skipping them.


def _idx(name):
    """Independent idx reader: big-endian header via struct, then raw bytes."""
    with gzip.open(os.path.join(FMNIST_DIR, name), 'rb') as f:
        raw = f.read()
    magic, = struct.unpack('>i', raw[:4])
    ndim = raw[3]
    dims = struct.unpack('>' + 'i' * ndim, raw[4 : 4 + 4 * ndim])
    body = raw[4 + 4 * ndim :]
    assert (magic, ndim) in ((2049, 1), (2051, 3)) and len(body) == int(np.prod(dims))
    return np.frombuffer(body, np.uint8).reshape(dims)


@pytest.fixture(scope='module')
def raw():
    return {
        'train_images': _idx('train-images-idx3-ubyte.gz'),
        'train_labels': _idx('train-labels-idx1-ubyte.gz'),
        'test_images': _idx('t10k-images-idx3-ubyte.gz'),
        'test_labels': _idx('t10k-labels-idx1-ubyte.gz'),
    }


def _config(data_dir, **overrides):
    cfg = dict(
        dataset='fashion_mnist_local',
        data_dir=data_dir,
        train_split='train',
        eval_split='test',
        image_size=28,
        mean=data.IMAGENET_MEAN,
        std=data.IMAGENET_STD,
        crop_scale=(0.67, 1.0),
        crop_ratio=(3 / 4, 4 / 3),
        hflip=True,
        eval_crop_ratio=1.0,
        interpolation='bicubic',
        shuffle_buffer=1000,
        cache=False,
        prefetch=2,
    )
    cfg.update(overrides)
    return ml_collections.ConfigDict(cfg)


def _unnormalise(images):
    """float32 (B, H, W, 3) normalised -> [0, 255] pixel units."""
    mean = np.asarray(data.IMAGENET_MEAN, np.float32)
    std = np.asarray(data.IMAGENET_STD, np.float32)
    return (images * std + mean) * 255.0


def _eval_pass(cfg, batch_size, process_index, process_count):
    batches = list(
        data.create_split(
            cfg, train=False, batch_size=batch_size,
            process_index=process_index, process_count=process_count,
        )
    )
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}, len(batches)


# --------------------------------------------------------------------------
# The TFDS builder.


def test_builder_reads_the_real_files(data_dir, raw):
    import tensorflow_datasets as tfds

    builder = data.get_dataset_builder('fashion_mnist_local', data_dir)
    assert builder.info.splits['train'].num_examples == 60000
    assert builder.info.splits['test'].num_examples == 10000
    assert builder.info.features['label'].names[0] == 'T-shirt/top'
    assert builder.info.features['label'].num_classes == 10

    # tfds.load works like for any TFDS dataset, in idx-file order.
    first = tfds.as_numpy(tfds.load('fashion_mnist_local', data_dir=data_dir, split='train[:3]', batch_size=-1))
    assert first['image'].shape == (3, 28, 28, 1) and first['image'].dtype == np.uint8
    assert int(first['label'][0]) == int(raw['train_labels'][0]) == 9  # Ankle boot.
    np.testing.assert_array_equal(first['image'][..., 0], raw['train_images'][:3])
    assert first['image'][0, 14, 14, 0] == raw['train_images'][0, 14, 14]

    # Whole test split equals the idx bytes.
    test = tfds.as_numpy(builder.as_dataset(split='test', batch_size=-1))
    np.testing.assert_array_equal(test['image'][..., 0], raw['test_images'])
    np.testing.assert_array_equal(test['label'], raw['test_labels'])

    # Train label histogram: 6000 per class.
    labels = tfds.as_numpy(
        builder.as_dataset(split='train', batch_size=-1, decoders={'image': tfds.decode.SkipDecoding()})
    )['label']
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), [6000] * 10)
    np.testing.assert_array_equal(labels, raw['train_labels'])

    # Idempotent: preparing again reuses the data.
    again = data.prepare_fashion_mnist(data_dir=data_dir)
    assert again.info.splits['train'].num_examples == 60000


def test_missing_fashion_mnist_files_say_how_to_get_them(tmp_path):
    empty = tmp_path / 'manual'
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match='apt-get install dataset-fashion-mnist') as e:
        data.prepare_fashion_mnist(data_dir=str(tmp_path / 'tfds'), manual_dir=str(empty))
    assert 'train-images-idx3-ubyte.gz' in str(e.value)


def test_corrupt_idx_file_raises_value_error_naming_it(tmp_path):
    manual = tmp_path / 'manual'
    manual.mkdir()
    for name in os.listdir(FMNIST_DIR):
        if name.endswith('.gz'):
            shutil.copy(os.path.join(FMNIST_DIR, name), manual / name)
    bad = manual / 'train-images-idx3-ubyte.gz'
    compressed = bad.read_bytes()
    bad.write_bytes(compressed[: len(compressed) // 2])  # Truncated gzip stream.
    with pytest.raises(ValueError, match='train-images-idx3-ubyte.gz'):
        data.prepare_fashion_mnist(data_dir=str(tmp_path / 'tfds'), manual_dir=str(manual))

    # Valid gzip, but the payload is shorter than the header promises.
    with gzip.open(os.path.join(FMNIST_DIR, 't10k-images-idx3-ubyte.gz')) as f:
        head = f.read(16 + 784 * 5)
    short = tmp_path / 'short-images.gz'
    short.write_bytes(gzip.compress(head))
    with pytest.raises(ValueError, match='short-images.gz'):
        data.read_idx_images(str(short))

    # Labels file where images are expected: wrong magic number.
    with pytest.raises(ValueError, match='magic'):
        data.read_idx_images(os.path.join(FMNIST_DIR, 't10k-labels-idx1-ubyte.gz'))


# --------------------------------------------------------------------------
# The pipeline.


class _FakeTfConfig:
    """Stands in for ``tf.config`` on a machine with one GPU: records the calls it gets."""

    def __init__(self, refuse=()):
        self.visible = {'GPU': ['/physical_device:GPU:0'], 'TPU': []}
        self.refuse = refuse
        self.calls = []

    def list_physical_devices(self, kind):
        return {'GPU': ['/physical_device:GPU:0'], 'TPU': []}[kind]

    def get_visible_devices(self, kind):
        return list(self.visible[kind])

    def set_visible_devices(self, devices, kind):
        self.calls.append((list(devices), kind))
        if kind in self.refuse:
            raise RuntimeError('Visible devices cannot be modified after being initialized')
        self.visible[kind] = list(devices)


def test_hide_accelerators_hides_a_gpu_from_tensorflow(monkeypatch):
    import types

    from jaxmim.data import pipeline

    fake = _FakeTfConfig()
    monkeypatch.setattr(pipeline, 'tf', types.SimpleNamespace(config=fake))
    assert fake.get_visible_devices('GPU') == ['/physical_device:GPU:0']
    pipeline.hide_accelerators_from_tf()
    assert ([], 'GPU') in fake.calls and ([], 'TPU') in fake.calls
    assert fake.get_visible_devices('GPU') == []

    # Too late (TF already initialised its devices): a warning naming the kind, no exception,
    # and the other kind is still hidden.
    warnings = []
    monkeypatch.setattr(pipeline, 'logging', types.SimpleNamespace(
        warning=lambda msg, *args: warnings.append(msg % args)))
    late = _FakeTfConfig(refuse=('GPU',))
    monkeypatch.setattr(pipeline, 'tf', types.SimpleNamespace(config=late))
    pipeline.hide_accelerators_from_tf()
    assert late.calls == [([], 'GPU'), ([], 'TPU')]
    assert len(warnings) == 1 and 'GPU' in warnings[0] and 'cannot be modified' in warnings[0]


def test_eval_batches_are_normalised_raw_images(data_dir, raw):
    cfg = _config(data_dir, image_size=28, eval_crop_ratio=1.0)
    it = data.create_split(cfg, train=False, batch_size=256, process_index=0, process_count=1)
    batch = next(it)
    assert set(batch) == {'image', 'label', 'mask'}
    assert batch['image'].shape == (256, 28, 28, 3) and batch['image'].dtype == np.float32
    assert batch['label'].shape == (256,) and batch['label'].dtype == np.int32
    assert batch['mask'].shape == (256,) and batch['mask'].dtype == np.float32
    np.testing.assert_array_equal(batch['mask'], 1.0)
    np.testing.assert_array_equal(batch['label'], raw['test_labels'][:256])
    # Normalised: per-channel statistics differ, and undoing (x - mean)/std gives
    # the raw grey pixels replicated on the 3 channels (resize 28 -> 28 is exact).
    pixels = _unnormalise(batch['image'])
    for c in range(3):
        np.testing.assert_allclose(pixels[..., c], raw['test_images'][:256], atol=1e-3)
    assert abs(batch['image'][..., 0].mean() - batch['image'][..., 2].mean()) > 0.05


def test_eval_resize_and_center_crop(data_dir, raw):
    # 2x bilinear upsampling: 2x2 average pooling gives back about the original.
    cfg = _config(data_dir, image_size=56, interpolation='bilinear')
    batch = next(data.create_split(cfg, train=False, batch_size=64, process_index=0, process_count=1))
    assert batch['image'].shape == (64, 56, 56, 3)
    pooled = _unnormalise(batch['image'])[..., 0].reshape(64, 28, 2, 28, 2).mean(axis=(2, 4))
    err = np.abs(pooled - raw['test_images'][:64]).mean()
    assert err < 8.0, err  # Mean abs error in 0-255 units (edges blur a little).

    # Crop ratio 0.875: shorter side 28 -> floor(24 / 0.875) = 27, centre 24x24.
    cfg = _config(data_dir, image_size=24, eval_crop_ratio=0.875, interpolation='bilinear')
    batch = next(data.create_split(cfg, train=False, batch_size=8, process_index=0, process_count=1))
    assert batch['image'].shape == (8, 24, 24, 3)
    # The image border of Fashion-MNIST is mostly background (0); the centre crop
    # keeps the object, so its mean is above the full image's mean.
    cropped = _unnormalise(batch['image'])[..., 0].mean()
    assert cropped > raw['test_images'][:8].mean()


def test_eval_two_processes_disjoint_cover_and_padding(data_dir, raw):
    cfg = _config(data_dir, image_size=28)
    out0, n0 = _eval_pass(cfg, batch_size=2 * 384, process_index=0, process_count=2)
    out1, n1 = _eval_pass(cfg, batch_size=2 * 384, process_index=1, process_count=2)
    # 5000 examples per process, 384 per batch -> 14 batches, last one padded.
    assert n0 == n1 == 14
    assert out0['mask'].sum() == out1['mask'].sum() == 5000
    assert out0['mask'].sum() + out1['mask'].sum() == 10000  # Every example once.
    for out, lo, hi in ((out0, 0, 5000), (out1, 5000, 10000)):
        real = out['mask'] == 1
        assert real[:5000].all() and not real[5000:].any()  # Padding at the end.
        np.testing.assert_array_equal(out['label'][real], raw['test_labels'][lo:hi])
        np.testing.assert_allclose(_unnormalise(out['image'][real])[..., 0], raw['test_images'][lo:hi], atol=1e-3)
        np.testing.assert_array_equal(out['image'][~real], 0.0)


def test_eval_uneven_processes_same_steps_exact_counts(data_dir, raw):
    # 1000 examples over 3 processes (334/333/333), 64 per process per batch.
    cfg = _config(data_dir, image_size=28, eval_split='test[:1000]')
    masks, steps, labels = [], [], []
    for p in range(3):
        out, n = _eval_pass(cfg, batch_size=3 * 64, process_index=p, process_count=3)
        masks.append(out['mask'].sum())
        steps.append(n)
        labels.append(out['label'][out['mask'] == 1])
    assert steps == [6, 6, 6]  # ceil(334 / 64) on every process.
    assert masks == [334, 333, 333]
    np.testing.assert_array_equal(np.concatenate(labels), raw['test_labels'][:1000])
    assert data.num_examples(cfg, 'test[:1000]') == 1000
    assert data.num_examples(cfg, 'train') == 60000


def test_train_batches_shapes_range_and_determinism(data_dir):
    cfg = _config(data_dir, image_size=32)

    def take(seed, n=2):
        it = data.create_split(cfg, train=True, batch_size=64, seed=seed, process_index=0, process_count=1)
        return [next(it) for _ in range(n)]

    a, b, c = take(0), take(0), take(1)
    batch = a[0]
    assert set(batch) == {'image', 'label'}
    assert batch['image'].shape == (64, 32, 32, 3) and batch['image'].dtype == np.float32
    assert batch['label'].shape == (64,) and batch['label'].dtype == np.int32
    assert batch['label'].min() >= 0 and batch['label'].max() < 10
    pixels = _unnormalise(batch['image'])
    assert pixels.min() >= -1e-3 and pixels.max() <= 255 + 1e-3
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x['image'], y['image'])
        np.testing.assert_array_equal(x['label'], y['label'])
    assert not np.array_equal(a[0]['label'], c[0]['label'])
    assert not np.allclose(a[0]['image'], c[0]['image'])


def test_train_two_processes_see_disjoint_halves(data_dir, raw):
    # Identity augmentation: full-image crop, no flip, no resize.
    cfg = _config(data_dir, image_size=28, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=False)
    halves = [
        {raw['train_images'][i].tobytes() for i in range(0, 30000)},
        {raw['train_images'][i].tobytes() for i in range(30000, 60000)},
    ]
    for p in range(2):
        it = data.create_split(cfg, train=True, batch_size=2 * 128, seed=0, process_index=p, process_count=2)
        batch = next(it)
        assert batch['image'].shape == (128, 28, 28, 3)
        images = np.round(_unnormalise(batch['image'])[..., 0]).astype(np.uint8)
        assert all(img.tobytes() in halves[p] for img in images)
        assert not any(img.tobytes() in halves[1 - p] - halves[p] for img in images)


def test_batch_size_must_divide_by_process_count(data_dir):
    with pytest.raises(ValueError, match='divisible'):
        data.create_split(_config(data_dir), train=True, batch_size=10, process_index=0, process_count=3)


def test_missing_dataset_says_how_to_get_it(tmp_path):
    empty = str(tmp_path / 'empty')
    with pytest.raises(data.DatasetNotFoundError) as e:
        data.get_dataset_builder('imagenet2012', data_dir=empty)
    message = str(e.value)
    for text in ('imagenet2012', empty, 'ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar',
                 os.path.join('downloads', 'manual'), 'tfds build imagenet2012'):
        assert text in message, text
    cfg = _config(empty, dataset='imagenet2012', eval_split='validation', image_size=224)
    with pytest.raises(data.DatasetNotFoundError, match='ILSVRC2012_img_train.tar'):
        data.create_split(cfg, train=False, batch_size=8, process_index=0, process_count=1)


@pytest.mark.parametrize(
    'field, value',
    [
        ('image_size', 0),
        ('crop_scale', (0.9, 0.2)),
        ('crop_ratio', (4 / 3,)),
        ('mean', (124.0, 116.0, 104.0)),
        ('std', (0.2, 0.0, 0.2)),
        ('eval_crop_ratio', 1.5),
        ('interpolation', 'nearest'),
        ('hflip', 'yes'),
        ('shuffle_buffer', -1),
        ('dataset', ''),
    ],
)
def test_bad_config_value_names_the_field(field, value):
    cfg = _config(None, **{field: value})
    with pytest.raises(ValueError, match=repr(field)):
        data.create_split(cfg, train=True, batch_size=8, process_index=0, process_count=1)


def test_unknown_split_names_the_field(data_dir):
    cfg = _config(data_dir, eval_split='val')
    with pytest.raises(ValueError, match="'eval_split'") as e:
        data.create_split(cfg, train=False, batch_size=8, process_index=0, process_count=1)
    assert "'test'" in str(e.value)


# --------------------------------------------------------------------------
# Defaults: a partial data config is completed from jaxmim.config.data_defaults().


# The fields jaxmim.config may leave to the model (None there until resolve_data_config).
_MODEL_FIELDS = dict(image_size=28, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), eval_crop_ratio=1.0)


def test_partial_config_takes_the_defaults_of_jaxmim_config(monkeypatch):
    from jaxmim import config as config_lib

    base = config_lib.data_defaults

    def changed():
        d = base()
        d.eval_split = 'test[:10]'
        d.shuffle_buffer = 7
        d.crop_scale = (0.5, 0.75)
        return d

    monkeypatch.setattr(config_lib, 'data_defaults', changed)
    cfg = data_config.validate_config({'dataset': 'fashion_mnist_local', **_MODEL_FIELDS})
    # The caller's fields win; every other field follows jaxmim.config, even when it changes.
    assert (cfg.dataset, cfg.image_size, cfg.mean, cfg.std) == (
        'fashion_mnist_local', 28, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert (cfg.eval_split, cfg.shuffle_buffer, cfg.crop_scale) == ('test[:10]', 7, (0.5, 0.75))
    monkeypatch.setattr(config_lib, 'data_defaults', base)
    cfg = data_config.validate_config(ml_collections.ConfigDict(_MODEL_FIELDS))
    ref = base()
    for field in ref:
        if field not in _MODEL_FIELDS:
            assert getattr(cfg, field) == ref[field], field


def test_none_field_says_to_resolve_it_from_the_model(monkeypatch):
    from jaxmim import config as config_lib

    base = config_lib.data_defaults

    def unresolved():
        d = base()
        d.image_size = None
        return d

    monkeypatch.setattr(config_lib, 'data_defaults', unresolved)
    with pytest.raises(ValueError, match=r"'image_size' is None.*resolve_data_config"):
        data_config.validate_config({'dataset': 'fashion_mnist_local', 'mean': (0.5,) * 3, 'std': (0.25,) * 3,
                                   'eval_crop_ratio': 1.0})


def test_partial_config_reads_like_the_full_one(data_dir):
    from jaxmim.config import data_defaults

    # Fashion-MNIST has only 'train' and 'test': jaxmim.config's default eval split (ImageNet's
    # 'validation') is the one the pipeline reads.
    default_split = data_defaults().eval_split
    assert default_split not in ('train', 'test')
    with pytest.raises(ValueError, match=f"'eval_split' = {default_split!r}"):
        next(data.create_split({'dataset': 'fashion_mnist_local', 'data_dir': data_dir, **_MODEL_FIELDS},
                               train=False, batch_size=8, process_index=0, process_count=1))
    partial = {'dataset': 'fashion_mnist_local', 'data_dir': data_dir, **_MODEL_FIELDS, 'image_size': 24,
               'eval_crop_ratio': 0.875, 'eval_split': 'test[:16]'}
    full = data_defaults()
    full.update(partial)
    got = next(data.create_split(partial, train=False, batch_size=16, process_index=0, process_count=1))
    want = next(data.create_split(full, train=False, batch_size=16, process_index=0, process_count=1))
    for key in ('image', 'label', 'mask'):
        np.testing.assert_array_equal(got[key], want[key])


def test_unknown_config_field_names_it_and_the_close_ones():
    with pytest.raises(ValueError, match=r"'eval_splt'.*'eval_split'"):
        data.create_split({'dataset': 'fashion_mnist_local', **_MODEL_FIELDS, 'eval_splt': 'test'}, train=False,
                          batch_size=8, process_index=0, process_count=1)
    with pytest.raises(ValueError, match='ConfigDict or a mapping'):
        data.create_split(['fashion_mnist_local'], train=False, batch_size=8, process_index=0,
                          process_count=1)


def test_dataset_without_image_and_label_features_is_refused(monkeypatch):
    import types

    import tensorflow_datasets as tfds

    from jaxmim.data import pipeline

    features = {'img': tfds.features.Image(shape=(28, 28, 1)), 'label': tfds.features.ClassLabel(num_classes=10)}
    fake = types.SimpleNamespace(info=types.SimpleNamespace(features=features, full_name='fake/1.0.0'))
    monkeypatch.setattr(pipeline, 'get_dataset_builder', lambda name, data_dir=None: fake)
    with pytest.raises(ValueError, match=r"'fake/1.0.0' has features \['img', 'label'\]"):
        pipeline.create_split({'dataset': 'fake', **_MODEL_FIELDS}, train=True, batch_size=8,
                              process_index=0, process_count=1)
