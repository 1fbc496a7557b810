"""Exact resume in O(1) (issue 10 part 4): the training stream is a pure function of (seed, process,
position), a resumed run yields exactly the uninterrupted run's batches, and resuming at step 10,000
reads no more records than at step 10 (counted with jaxmim.data.resume.READ_COUNTER)."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from jaxmim.data import pipeline, resume


def _cfg(data_dir, **kw):
    """Identity augmentation (full-image crop, no flip, 28 px) unless overridden, so an image is its record."""
    c = dict(dataset='fashion_mnist_local', data_dir=data_dir, train_split='train[:203]', eval_split='test',
             image_size=28, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), crop_scale=(1.0, 1.0),
             crop_ratio=(1.0, 1.0), hflip=False, eval_crop_ratio=1.0, shuffle_buffer=64, prefetch=0)
    c.update(kw)
    return c


def _batches(cfg, n, start=0, batch_size=8, process_index=0, process_count=1, seed=3):
    it = pipeline.create_split(cfg, train=True, batch_size=batch_size, seed=seed, start_step=start,
                               process_index=process_index, process_count=process_count)
    return [next(it) for _ in range(n)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x['image'], y['image'])
        np.testing.assert_array_equal(x['label'], y['label'])


def _keys(batches):
    """Image bytes (uint8 pixels) of every example, in stream order."""
    return [np.round(im[..., 0] * 255).astype(np.uint8).tobytes() for b in batches for im in b['image']]


# -- the stream itself, with a fake reader (no files) -------------------------------------------------

def _fake_reader(table):
    """block ids -> the host indices of those blocks, in order (the record IS its index)."""
    starts, lengths = tf.constant(table.start), tf.constant(table.length)

    def read(ids):
        s = tf.gather(starts, ids)
        return tf.data.Dataset.from_tensor_slices(tf.ragged.range(s, s + tf.gather(lengths, ids)).flat_values)
    return read


@pytest.mark.parametrize('shuffle', [True, False])
def test_stream_is_a_pure_function_of_position(shuffle):
    n, block, k = 37, 5, 3                      # 8 blocks (last has 2 records), windows of 3 blocks
    table = resume.folder_blocks(n, block)
    assert table.length.tolist() == [5] * 7 + [2]

    def stream(start, count):
        ds = resume.train_stream(_fake_reader(table), table, seed=7, process_index=1, blocks_per_window=k,
                                 shuffle=shuffle, start_position=start, prefetch_window=False)
        return [(int(p), int(r)) for p, r in ds.take(count).as_numpy_iterator()]

    full = stream(0, 4 * n)
    assert [p for p, _ in full] == list(range(4 * n))                   # consecutive positions
    epochs = [[r for _, r in full[e * n:(e + 1) * n]] for e in range(4)]
    for e in epochs:                                                     # every record once per epoch
        assert sorted(e) == list(range(n))
    if shuffle:
        assert epochs[0] != list(range(n)) and epochs[0] != epochs[1]   # reshuffled each epoch
    else:
        assert epochs[0] == list(range(n))
    for start in (1, 14, 36, 37, 38, 2 * n + 20):                        # inside, at and across epoch ends
        assert stream(start, 4 * n - start) == full[start:]


# -- through create_split (Fashion-MNIST TFRecord) ---------------------------------------------------

@pytest.mark.parametrize('max_block', [1024, 16])   # 16: windows of 4 blocks from anywhere in the split
def test_resume_yields_the_uninterrupted_batches(data_dir, monkeypatch, max_block):
    monkeypatch.setattr(resume, 'MAX_BLOCK_SIZE', max_block)
    cfg = _cfg(data_dir)
    full = _batches(cfg, 60)                     # 203 records, 8 per step: epochs end inside steps 25 and 50
    seen = _keys(full)
    assert len(set(seen[:203])) == 203           # epoch 0: every record of train[:203] once
    assert sorted(seen[:203]) == sorted(seen[203:406])
    assert seen[:203] != seen[203:406]           # and a new order in epoch 1
    for n in (3, 25, 26, 51):                    # inside epoch 0; the step holding the epoch end; after it
        _assert_same(_batches(cfg, 60 - n, start=n), full[n:])


def test_resume_with_augmentation_and_the_recipe(data_dir):
    # Random crops, flips, RandAugment and erasing are keyed by (seed, process, position): resumed = same.
    cfg = _cfg(data_dir, image_size=24, crop_scale=(0.3, 1.0), crop_ratio=(0.75, 1.33), hflip=True,
               crop_impl='timm', auto_augment='rand-m9-mstd0.5-inc1', reprob=0.5)
    full = _batches(cfg, 8)
    _assert_same(_batches(cfg, 3, start=5), full[5:])
    assert not np.array_equal(full[0]['image'], _batches(_cfg(data_dir, image_size=24), 1)[0]['image'])


def test_resume_two_processes(data_dir):
    cfg = _cfg(data_dir)
    per_process = []
    for p in range(2):                           # 203 -> 102 / 101 records per process, 4 per step each
        full = _batches(cfg, 60, batch_size=8, process_index=p, process_count=2)
        for n in (5, 25, 26):
            _assert_same(_batches(cfg, 60 - n, start=n, batch_size=8, process_index=p, process_count=2), full[n:])
        per_process.append(set(_keys(full[:25])))
    assert len(per_process[0]) == 100 and len(per_process[1]) == 100
    assert not per_process[0] & per_process[1]   # disjoint shards


def _reads(cfg, start, batch_size=8):
    counter = resume.ReadCounter()
    resume.READ_COUNTER = counter
    try:
        it = pipeline.create_split(cfg, train=True, batch_size=batch_size, seed=0, start_step=start,
                                   process_index=0, process_count=1)
    finally:
        resume.READ_COUNTER = None
    batch = next(it)
    return counter.records, counter.skipped, batch


def test_resume_reads_do_not_grow_with_the_step(data_dir):
    # The whole 60,000-record split, windows of 1,000 records: the old repeat/shuffle/skip pipeline read
    # start * 8 records (80,000 at step 10,000) before the first batch.
    cfg = _cfg(data_dir, train_split='train', shuffle_buffer=1000)
    r10, s10, b10 = _reads(cfg, 10)
    r10k, s10k, b10k = _reads(cfg, 10_000)
    assert r10 == r10k == 1000                    # exactly one window read at either step
    assert s10 < 60_000 and s10k < 60_000         # header-only skip, inside the one 60k-record shard
    # ... and the batches are those of the uninterrupted run.
    counter = resume.ReadCounter()
    resume.READ_COUNTER = counter
    try:
        it = pipeline.create_split(cfg, train=True, batch_size=8, seed=0, process_index=0, process_count=1)
    finally:
        resume.READ_COUNTER = None
    full = [next(it) for _ in range(11)]
    np.testing.assert_array_equal(full[10]['image'], b10['image'])
    assert counter.records >= 1000                # the uninterrupted run reads as it goes


def test_image_folder_resume(tmp_path):
    for k, c in enumerate(('ant', 'bee', 'cat')):
        d = tmp_path / 'train' / c
        d.mkdir(parents=True)
        for i in range(7):
            Image.fromarray(np.full((12, 12, 3), 10 * (3 * i + k), np.uint8)).save(d / f'{i}.png')
    cfg = dict(dataset='image_folder', data_dir=str(tmp_path), train_split='train', eval_split='train',
               image_size=12, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), crop_scale=(1.0, 1.0),
               crop_ratio=(1.0, 1.0), hflip=False, eval_crop_ratio=1.0, shuffle_buffer=8, prefetch=0)
    full = _batches(cfg, 12, batch_size=4)       # 21 images, epochs end inside steps 5 and 10
    values = [int(round(b['image'][j, 0, 0, 0] * 255)) for b in full for j in range(4)]
    assert sorted(values[:21]) == [10 * v for v in range(21)] == sorted(values[21:42])
    for n in (2, 5, 6):
        _assert_same(_batches(cfg, 12 - n, start=n, batch_size=4), full[n:])
    counter = resume.ReadCounter()
    resume.READ_COUNTER = counter
    try:
        it = pipeline.create_split(cfg, train=True, batch_size=4, seed=3, start_step=1000,
                                   process_index=0, process_count=1)
    finally:
        resume.READ_COUNTER = None
    next(it)
    assert counter.records <= 16                  # at most two windows of 8 files, not 4,000
