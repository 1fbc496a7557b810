"""A folder of class sub-folders of images as a dataset (jaxmim.data.image_folder), with a corrupt
file in 'raise' and 'skip' modes, through the real pipeline."""

import numpy as np
import pytest
from PIL import Image

from jaxmim.data import datasets, image_folder, pipeline

CLASSES = ('ant', 'bee', 'cat')


@pytest.fixture()
def root(tmp_path):
    """train: 4 images per class (JPEG and PNG, several sizes) + one corrupt JPEG in 'bee';
    val: 2 per class. Pixel value 40 * (class + 1) everywhere, so labels can be read back."""
    for split, n in (('train', 4), ('val', 2)):
        for k, c in enumerate(CLASSES):
            d = tmp_path / split / c
            d.mkdir(parents=True)
            for i in range(n):
                img = Image.fromarray(np.full((20 + 3 * i, 24, 3), 40 * (k + 1), np.uint8))
                img.save(d / (f'{i}.png' if i % 2 else f'{i}.jpg'), quality=100)
    (tmp_path / 'train' / 'bee' / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 not a jpeg')
    (tmp_path / 'train' / 'bee' / 'notes.txt').write_text('ignored: not an image')
    return str(tmp_path)


def _cfg(root, **kw):
    return dict(dict(dataset='image_folder', data_dir=root, train_split='train', eval_split='val', image_size=16,
                     mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), eval_crop_ratio=1.0, shuffle_buffer=0, prefetch=0),
                **kw)


def test_corrupt_image_raises_with_its_name(root):
    with pytest.raises(image_folder.CorruptImageError, match='broken.jpg') as e:
        pipeline.create_split(_cfg(root), train=True, batch_size=4, process_index=0, process_count=1)
    assert "on_decode_error='skip'" in str(e.value)


def test_corrupt_image_is_skipped_and_counted(root, caplog):
    cfg = _cfg(root, on_decode_error='skip')
    with caplog.at_level('WARNING'):
        assert datasets.num_examples(cfg, 'train') == 12             # 13 image files, 1 corrupt
    assert 'skipped 1 corrupt image' in caplog.text and 'broken.jpg' in caplog.text
    builder = pipeline.get_dataset_builder('image_folder', root, 'skip')
    builder.files('train')
    assert [p.rsplit('/', 1)[-1] for p in builder.skipped['train']] == ['broken.jpg']
    assert builder.info.features['label'].names == list(CLASSES)
    # Evaluation visits every good image once, labels from the folder names (val: 2 per class).
    batches = list(pipeline.create_split(cfg, train=False, batch_size=4, process_index=0, process_count=1))
    mask = np.concatenate([b['mask'] for b in batches]) == 1
    labels = np.concatenate([b['label'] for b in batches])[mask]
    images = np.concatenate([b['image'] for b in batches])[mask]
    assert len(labels) == 6 and np.bincount(labels).tolist() == [2, 2, 2]
    # pixel 40 (k + 1) normalised with mean = std = 0.5
    np.testing.assert_allclose(images.mean(axis=(1, 2, 3)), (40 * (labels + 1) / 255 - 0.5) / 0.5, atol=0.02)
    # Training (with the recipe on) streams the 12 good images per epoch, two processes split them.
    cfg_t = dict(cfg, crop_impl='timm', auto_augment='rand-m9-mstd0.5-inc1', reprob=0.25)
    it = pipeline.create_split(cfg_t, train=True, batch_size=4, process_index=0, process_count=1)
    seen = np.concatenate([next(it)['label'] for _ in range(3)])
    assert sorted(seen.tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    sizes = [datasets.num_examples(dict(cfg, train_split=s), s) for s in ('train[:50%]', 'train[50%:]')]
    assert sizes == [6, 6]


def test_bad_folder_and_mode(tmp_path, root):
    with pytest.raises(FileNotFoundError, match='image_folder'):
        pipeline.create_split(_cfg(str(tmp_path / 'missing')), train=True, batch_size=4, process_index=0,
                              process_count=1)
    with pytest.raises(ValueError, match='on_decode_error'):
        pipeline.create_split(_cfg(root, on_decode_error='ignore'), train=True, batch_size=4, process_index=0,
                              process_count=1)
