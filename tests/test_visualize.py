"""Reconstruction pictures (jaxmim.visualize): norm-pix de-normalisation, panel layout, the PNG
of the command line and the TensorBoard grid of the pre-training loop on tiny demo runs."""

import glob
import os

import numpy as np
import pytest

from jaxmim import visualize as V

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _norm_pix_by_hand(images, u):
    """Norm-pix targets written out unit by unit: (x - mean) / sqrt(var_unbiased + 1e-6)."""
    b, h, w, c = images.shape
    out = np.zeros((b, (h // u) * (w // u), u * u * c))
    for n in range(b):
        for i in range(h // u):
            for j in range(w // u):
                vals = [images[n, i * u + p, j * u + q, ch] for p in range(u) for q in range(u) for ch in range(c)]
                m = sum(vals) / len(vals)
                var = sum((v - m) ** 2 for v in vals) / (len(vals) - 1)
                out[n, i * (w // u) + j] = [(v - m) / (var + 1e-6) ** 0.5 for v in vals]
    return out


def test_denormalize_inverts_norm_pix_on_written_out_example():
    # one 2x2 unit, one channel: values 1, 2, 3, 6 -> mean 3, unbiased var (4 + 1 + 0 + 9) / 3 = 14/3
    img = np.array([[1.0, 2.0], [3.0, 6.0]]).reshape(1, 2, 2, 1)
    s = np.sqrt(14.0 / 3.0 + 1e-6)
    target = np.array([[[-2.0 / s, -1.0 / s, 0.0, 3.0 / s]]])
    np.testing.assert_allclose(_norm_pix_by_hand(img, 2), target, rtol=1e-14)
    np.testing.assert_allclose(V.denormalize_units(target, img, 2), [[[1.0, 2.0, 3.0, 6.0]]], rtol=1e-12)
    # random images, 3 channels, 4x4 units: de-normalising the targets gives back the pixels
    rng = np.random.default_rng(0)
    imgs = rng.normal(size=(2, 8, 12, 3))
    back = V.denormalize_units(_norm_pix_by_hand(imgs, 4), imgs, 4)
    units = imgs.reshape(2, 2, 4, 3, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 6, 48)
    np.testing.assert_allclose(back, units, rtol=0, atol=1e-12)


def test_unit_size_from_shapes():
    assert V.unit_size((2, 16, 4 * 4 * 3), (2, 16, 16, 3)) == 4
    assert V.unit_size((1, 4, 16 * 16), (1, 32, 32, 1)) == 16
    with pytest.raises(ValueError, match='pred'):
        V.unit_size((2, 15, 48), (2, 16, 16, 3))


def test_panels_of_a_perfect_norm_pix_prediction():
    rng = np.random.default_rng(1)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    imgs = rng.uniform(-1.0, 1.0, size=(2, 8, 8, 3))          # stays inside [0, 1] after de-normalising
    pred = _norm_pix_by_hand(imgs, 4)
    mask = np.array([[1, 0, 0, 1], [0, 1, 1, 1]], bool)
    sec = np.array([[0, 1, 0, 0], [1, 0, 0, 0]], bool)
    p = V.panels(imgs, pred, mask, sec, True, mean, std)
    assert p.shape == (2, 4, 8, 8, 3)
    pixels = imgs * np.array(std) + np.array(mean)
    np.testing.assert_allclose(p[:, 0], pixels, atol=1e-6)          # original
    np.testing.assert_allclose(p[:, 2], pixels, atol=1e-5)          # reconstruction == original
    np.testing.assert_allclose(p[:, 3], pixels, atol=1e-5)          # pasted == original
    # masked input: unit (0, 0) of image 0 masked -> grey; unit (0, 1) secondary -> tinted; (1, 0) visible
    np.testing.assert_allclose(p[0, 1, :4, :4], V.MASK_GREY)
    np.testing.assert_allclose(p[0, 1, :4, 4:], 0.5 * pixels[0, :4, 4:] + 0.5 * V.SECONDARY_TINT, atol=1e-6)
    np.testing.assert_allclose(p[0, 1, 4:, :4], pixels[0, 4:, :4], atol=1e-6)
    # pasted column takes the prediction at masked units only
    wrong = pred + 1.0
    q = V.panels(imgs, wrong, mask, None, False, (0.0,) * 3, (1.0,) * 3)
    np.testing.assert_allclose(q[0, 3, 4:, :4], np.clip(imgs[0, 4:, :4], 0, 1), atol=1e-6)   # visible: original
    rec = V._unpatchify(wrong, 4, 8, 8)
    np.testing.assert_allclose(q[0, 3, :4, :4], np.clip(rec[0, :4, :4], 0, 1), atol=1e-6)   # masked: prediction


def test_grid_image_shape():
    g = V.grid_image(np.zeros((3, 4, 10, 12, 3), np.float32), pad=2)
    assert g.shape == (3 * 12 + 2, 4 * 14 + 2, 3)
    assert g[0, 0, 0] == 1.0 and g[2, 2, 0] == 0.0


def _tiny_run(config_file, overrides, data_dir, workdir):
    from jaxmim import train
    from jaxmim.config import load_config_file
    cfg = load_config_file(os.path.join(ROOT, config_file))
    cfg.data.data_dir = data_dir
    cfg.data.cache = False
    cfg.data.shuffle_buffer = 100
    cfg.model.overrides = type(cfg.model.overrides)(overrides)
    cfg.batch_size = 8
    cfg.total_steps = 2
    cfg.optim.warmup_steps = 1
    cfg.log_every = 1
    cfg.checkpoint_every = 2
    cfg.progress_bar = False
    cfg.visualize_every = 2
    train.pretrain(cfg, workdir, picture_hook=V.tensorboard_hook)   # the hook main.py passes
    return cfg


def _tb_image_tags(workdir):
    import tensorflow as tf
    tags = []
    for f in glob.glob(os.path.join(workdir, 'tensorboard', 'events.*')):
        for ev in tf.compat.v1.train.summary_iterator(f):
            for v in ev.summary.value:
                if v.tag == 'reconstructions':
                    t = tf.make_ndarray(v.tensor)        # [width, height, encoded png ...]
                    tags.append((ev.step, int(t[0]), int(t[1])))
    return tags


@pytest.mark.parametrize('config_file,overrides,norm_pix', [
    ('configs/demo/mae_vit_fmnist.py', dict(embed_dim=16, depth=1, num_heads=2, decoder_embed_dim=16,
                                            decoder_depth=1, decoder_num_heads=2), True),
    ('configs/demo/simmim_swin_fmnist.py', dict(embed_dim=16, num_heads=(1, 2, 4)), False),
])
def test_png_and_tensorboard_for_demo_runs(data_dir, tmp_path, config_file, overrides, norm_pix):
    import matplotlib.image as mpimg
    workdir = str(tmp_path / 'run')
    cfg = _tiny_run(config_file, overrides, data_dir, workdir)
    from jaxmim import rundir
    assert V.norm_pix_flag(rundir.build_model(cfg), cfg) is norm_pix
    # the loop logged one grid of 8 rows x 4 columns of 32x32 tiles at step 2
    assert _tb_image_tags(workdir) == [(2, 4 * 34 + 2, 8 * 34 + 2)]
    out = V.main(['--workdir', workdir, '--num_images', '3'])
    assert out == os.path.join(workdir, 'reconstructions_step2.png')
    assert mpimg.imread(out).shape[:2] == (3 * 150, 4 * 150)   # B rows x 4 columns of 1.5-inch cells at 100 dpi


def test_ummae_secondary_units_are_marked():
    """A UM-MAE model reports its secondary-masked units; the masked-input column tints exactly
    those, greys the primary-masked ones and leaves the others as in the original."""
    import jax
    from jaxmim.methods import create_mim_model, method_config_defaults
    model = create_mim_model(method_config_defaults('ummae'), 'mae_pvt_demo_32',
                             overrides=dict(embed_dims=(16, 32, 48), num_heads=(1, 2, 2), decoder_embed_dim=16,
                                            decoder_num_heads=2, decoder_depth=1))
    imgs = np.random.RandomState(0).uniform(-1, 1, size=(2, 32, 32, 3)).astype(np.float32)
    r = V.reconstruct(model, imgs, jax.random.key(0))
    u = V.unit_size(r['pred'].shape, imgs.shape)
    assert u == 8 and r['mask'].sum(1).tolist() == [12, 12] and r['secondary'].sum(1).tolist() == [1, 1]
    assert not (r['mask'] & r['secondary']).any() and V.norm_pix_flag(model)
    mean, std = (0.5,) * 3, (0.25,) * 3
    p = V.panels(imgs, r['pred'], r['mask'], r['secondary'], True, mean, std)
    pixels = imgs * 0.25 + 0.5
    for b in range(2):
        for unit in range(16):
            i, j = divmod(unit, 4)
            tile = p[b, 1, i * 8:(i + 1) * 8, j * 8:(j + 1) * 8]
            orig = pixels[b, i * 8:(i + 1) * 8, j * 8:(j + 1) * 8]
            if r['mask'][b, unit]:
                np.testing.assert_allclose(tile, V.MASK_GREY)
            elif r['secondary'][b, unit]:
                np.testing.assert_allclose(tile, 0.5 * orig + 0.5 * V.SECONDARY_TINT, atol=1e-6)
            else:
                np.testing.assert_allclose(tile, orig, atol=1e-6)
