r"""Reconstruction pictures for any masked-image-modeling run.

For a few evaluation images, a grid with one row per image and four columns, as the UM-MAE
notebook draws them (``implus/UM-MAE@cb7776b visual/ummae_visualize.ipynb``) and MAE's demo
notebook (``facebookresearch/mae@be47fef demo/mae_visualize.ipynb``):

  original | masked input | reconstruction | reconstruction with the visible units pasted back

The masked input shows masked units in grey and, when the model reports them (an output
``'secondary_mask'`` or ``'vis_mask'``, e.g. UM-MAE's Secondary Masking), the visible units that the
encoder saw as a learnable token tinted red. With norm-pixel targets the predictions are
de-normalised with each unit's own mean and (unbiased) variance from the original image
(:func:`denormalize_units`), then every panel is mapped back to [0, 1] pixels with the data
mean/std.

Command line (any pre-training run directory written by ``jaxmim.main``)::

    python -m jaxmim.visualize --workdir=work/demo_mae/pretrain --num_images=8 \
        [--step=800] [--output=recon.png] [--seed=0]

writes ``<workdir>/reconstructions_step<step>.png`` by default. The pre-training loop writes the
same grid to TensorBoard (tag ``reconstructions``) every ``config.visualize_every`` steps
(:func:`tensorboard_hook`; 0 = off).

Generic over methods: nothing here names a model. The mask-unit size comes from the model's own
outputs (``pred`` is ``(B, L, u*u*C)`` with ``L = (H/u) * (W/u)``), the norm-pixel flag from the
model (``norm_pix_loss`` attribute) or else from the run config (``method.norm_pix_loss``, then
``model.overrides.norm_pix_loss``).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxmim import rundir

__all__ = ['COLUMNS', 'SECONDARY_KEYS', 'TENSORBOARD_IMAGES', 'unit_size', 'norm_pix_flag', 'denormalize_units', 'reconstruct',
           'panels', 'grid_image', 'save_png', 'eval_images', 'visualize_run', 'tensorboard_hook', 'main']

COLUMNS = ('original', 'masked input', 'reconstruction', 'reconstruction + visible')
"""Titles of the four columns, left to right."""

SECONDARY_KEYS = ('secondary_mask', 'vis_mask')
"""Model outputs read, if present, as the (B, L) mask of visible units replaced by a token."""

MASK_GREY = 0.5
"""Display value of masked units in the masked-input column (in [0, 1] pixels)."""
SECONDARY_TINT = np.array([1.0, 0.15, 0.15])
"""Colour blended 50 % over secondary-masked units in the masked-input column."""
TENSORBOARD_IMAGES = 8
"""Rows of the grid the pre-training loop logs (the first evaluation images)."""


def _patchify(x: np.ndarray, u: int) -> np.ndarray:
    """(B, H, W, C) -> (B, (H/u)(W/u), u*u*C), units in raster order, pixels (p, q, c)."""
    b, h, w, c = x.shape
    return x.reshape(b, h // u, u, w // u, u, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, u * u * c)


def _unpatchify(x: np.ndarray, u: int, h: int, w: int) -> np.ndarray:
    """Inverse of :func:`_patchify`: (B, (h/u)(w/u), u*u*C) -> (B, h, w, C)."""
    b, _, d = x.shape
    c = d // (u * u)
    return x.reshape(b, h // u, w // u, u, u, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def unit_size(pred_shape: tuple[int, ...], image_shape: tuple[int, ...]) -> int:
    """Side ``u`` in pixels of the units a model predicts, from ``pred`` ``(B, L, u*u*C)`` and
    images ``(B, H, W, C)``.

    Raises:
      ValueError: the shapes are not those of ``u x u`` units tiling the image.
    """
    _, h, w, c = image_shape
    if len(pred_shape) != 3 or pred_shape[-1] % c:
        raise ValueError(f"model output 'pred' must be (B, L, u*u*C) with C={c}, got {tuple(pred_shape)}")
    u = int(round((pred_shape[-1] // c) ** 0.5))
    if u * u * c != pred_shape[-1] or h % u or w % u or (h // u) * (w // u) != pred_shape[1]:
        raise ValueError(f"model output 'pred' {tuple(pred_shape)} does not tile images {tuple(image_shape)} "
                         'with square units in raster order')
    return u


def norm_pix_flag(model: Any, config: ml_collections.ConfigDict | None = None) -> bool:
    """Whether the model's targets are per-unit normalised pixels: ``model.norm_pix_loss`` when
    the model has it, else ``config.method.norm_pix_loss``, else
    ``config.model.overrides.norm_pix_loss``, else False."""
    value = getattr(model, 'norm_pix_loss', None)
    if value is None and config is not None:
        for block in (config.get('method'), config.get('model', {}).get('overrides')):
            if block is not None and block.get('norm_pix_loss') is not None:
                value = block.get('norm_pix_loss')
                break
    return bool(value)


def denormalize_units(pred: np.ndarray, images: np.ndarray, u: int, eps: float = 1e-6) -> np.ndarray:
    """Maps norm-pixel predictions back to the image's value range with each unit's own
    statistics: ``pred * sqrt(var + eps) + mean``, mean and unbiased variance (``ddof=1``) over
    the ``u*u*C`` values of the same unit of ``images``. Exact inverse of the norm-pix target
    ``(t - mean) / sqrt(var + eps)`` (MAE ``models_mae.py:195-212``, UM-MAE
    ``implus/UM-MAE@cb7776b models_mae_pvt.py:398-401``).

    Args:
      pred: (B, L, u*u*C) float, units in raster order.
      images: (B, H, W, C) float (the normalised model input).
      u: unit side in pixels.

    Returns:
      float64 (B, L, u*u*C).
    """
    target = _patchify(np.asarray(images, np.float64), u)
    mean = target.mean(-1, keepdims=True)
    var = target.var(-1, ddof=1, keepdims=True)
    return np.asarray(pred, np.float64) * np.sqrt(var + eps) + mean


@functools.lru_cache(maxsize=4)
def _forward(graphdef: Any) -> Callable:
    """The jitted eval forward of a model structure (cached, so the training loop's picture hook
    compiles once): ``(state, images, inputs | None, k_mask, k_call) -> {'pred', 'mask', ...}``."""

    @jax.jit
    def run(state, images, inputs, k_mask, k_call):
        m = nnx.merge(graphdef, state)
        if inputs is None:
            inputs = m.sample_inputs(k_mask, images.shape[0])
        out = m(images, train=False, rng=k_call, **dict(inputs))
        return {k: v for k, v in out.items() if k in ('pred', 'mask') + SECONDARY_KEYS}

    return run


def reconstruct(model: nnx.Module, images: np.ndarray, key: jax.Array,
                inputs: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Runs a pre-training model (``jaxmim.methods`` protocol) in eval mode.

    Args:
      model: a MIM model (``input_keys``, ``sample_inputs``, ``__call__``).
      images: (B, H, W, C) float32 normalised images.
      key: masking inputs are drawn from it with ``model.sample_inputs`` unless ``inputs`` is given.
      inputs: the masking inputs (e.g. a pipeline mask) to use as they are.

    Returns:
      ``{'pred': (B, L, u*u*C), 'mask': (B, L) bool, 'secondary': (B, L) bool}`` as NumPy
      (``secondary`` all False when the model reports none).

    Raises:
      ValueError: the model returns no ``pred`` / ``mask`` or ones of the wrong shape.
    """
    images = jnp.asarray(images, jnp.float32)
    k_mask, k_call = jax.random.split(key)
    graphdef, state = nnx.split(model)
    out = _forward(graphdef)(state, images, None if inputs is None else dict(inputs), k_mask, k_call)
    if 'pred' not in out or 'mask' not in out:
        raise ValueError(f"the model must return 'pred' and 'mask' to be visualised, got keys {sorted(out)}")
    pred = np.asarray(jax.device_get(out['pred']), np.float32)
    unit_size(pred.shape, images.shape)
    mask = np.asarray(jax.device_get(out['mask'])).reshape(pred.shape[:2]) > 0.5
    secondary = np.zeros_like(mask)
    for k in SECONDARY_KEYS:
        if k in out:
            secondary = np.asarray(jax.device_get(out[k])).reshape(pred.shape[:2]) > 0.5
            break
    return {'pred': pred, 'mask': mask, 'secondary': secondary}


def panels(images: np.ndarray, pred: np.ndarray, mask: np.ndarray, secondary: np.ndarray | None,
           norm_pix: bool, mean: Any, std: Any) -> np.ndarray:
    """The four display panels of each image.

    Args:
      images: (B, H, W, C) normalised model input.
      pred: (B, L, u*u*C) predictions (norm-pixel space when ``norm_pix``), raster units.
      mask: (B, L) bool, True = masked unit.
      secondary: (B, L) bool visible units replaced by a token, or None.
      norm_pix: de-normalise ``pred`` with :func:`denormalize_units` first.
      mean, std: per-channel data normalisation (C values, [0, 1] pixel units).

    Returns:
      float32 (B, 4, H, W, 3) in [0, 1] (grey images repeated to RGB), columns as :data:`COLUMNS`.
    """
    images = np.asarray(images, np.float64)
    b, h, w, c = images.shape
    u = unit_size(pred.shape, images.shape)
    rec = denormalize_units(pred, images, u) if norm_pix else np.asarray(pred, np.float64)
    m = np.asarray(mask, bool)[..., None]
    pasted = np.where(m, rec, _patchify(images, u))
    mean = np.asarray(mean, np.float64).reshape(1, 1, 1, -1)
    std = np.asarray(std, np.float64).reshape(1, 1, 1, -1)

    def show(x):   # normalised (B, H, W, C) -> [0, 1] RGB
        x = np.clip(x * std + mean, 0.0, 1.0)
        return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x[..., :3]

    orig = show(images)
    up = lambda mm: _unpatchify(np.repeat(mm[..., None].astype(np.float64), u * u, -1), u, h, w)  # noqa: E731
    masked = np.where(up(np.asarray(mask, bool)) > 0.5, MASK_GREY, orig)
    if secondary is not None and np.any(secondary):
        s = up(np.asarray(secondary, bool)) > 0.5
        masked = np.where(s, 0.5 * masked + 0.5 * SECONDARY_TINT, masked)
    cols = [orig, masked, show(_unpatchify(rec, u, h, w)), show(_unpatchify(pasted, u, h, w))]
    return np.stack(cols, axis=1).astype(np.float32)


def grid_image(p: np.ndarray, pad: int = 2) -> np.ndarray:
    """Tiles panels (B, 4, H, W, 3) into one float32 image of B rows and 4 columns, ``pad``
    white pixels between and around tiles: shape ``(B*(H+pad)+pad, 4*(W+pad)+pad, 3)``."""
    b, ncol, h, w, _ = p.shape
    out = np.ones((b * (h + pad) + pad, ncol * (w + pad) + pad, 3), np.float32)
    for i in range(b):
        for j in range(ncol):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y:y + h, x:x + w] = p[i, j]
    return out


def save_png(p: np.ndarray, path: str, *, cell_inches: float = 1.5, dpi: int = 100, title: str = '') -> tuple[int, int]:
    """Draws panels (B, 4, H, W, 3) with matplotlib as a B x 4 grid of axes with column titles
    and writes a PNG of exactly ``(round(4 * cell_inches * dpi), round(B * cell_inches * dpi))``
    pixels (width, height). Returns that (width, height)."""
    import matplotlib
    matplotlib.use('Agg', force=False)
    import matplotlib.pyplot as plt

    b, ncol = p.shape[:2]
    fig, axes = plt.subplots(b, ncol, figsize=(ncol * cell_inches, b * cell_inches), dpi=dpi, squeeze=False)
    for i in range(b):
        for j in range(ncol):
            ax = axes[i, j]
            ax.imshow(p[i, j], interpolation='nearest')
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(COLUMNS[j], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.92 if title else 0.95, wspace=0.05, hspace=0.05)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return round(ncol * cell_inches * dpi), round(b * cell_inches * dpi)


def eval_images(config: ml_collections.ConfigDict, num_images: int) -> tuple[np.ndarray, Any, Any]:
    """The first ``num_images`` images of the run's evaluation split (eval transform: resize and
    centre crop, normalised) and the data mean/std. Returns ``(images (N, H, W, C) float32, mean,
    std)``."""
    from jaxmim import config as config_lib
    from jaxmim.data import pipeline
    data_cfg = config_lib.resolve_data_config(config)
    it = pipeline.create_split(data_cfg, train=False, batch_size=num_images, seed=int(config.seed),
                               process_index=0, process_count=1)
    images = np.asarray(next(iter(it))['image'], np.float32)[:num_images]
    return images, tuple(data_cfg.mean), tuple(data_cfg.std)


def _model_panels(model, config, images, mean, std, key) -> np.ndarray:
    r = reconstruct(model, images, key)
    return panels(images, r['pred'], r['mask'], r['secondary'], norm_pix_flag(model, config), mean, std)


def visualize_run(workdir: str, num_images: int = 8, step: int | None = None, output: str | None = None,
                  seed: int = 0) -> str:
    """Writes the reconstruction grid of a pre-training run's checkpoint as a PNG.

    Loads ``<workdir>/config.json`` (:func:`jaxmim.rundir.load_run_config`), builds the model
    and restores checkpoint ``step`` (default latest; :func:`jaxmim.rundir.restore_model`), takes
    the first ``num_images`` evaluation images, draws masks from ``seed``.

    Returns:
      The PNG path (default ``<workdir>/reconstructions_step<step>.png``).

    Raises:
      ValueError: not a pre-training run, or ``num_images < 1``. FileNotFoundError: no config
      or checkpoint.
    """
    if num_images < 1:
        raise ValueError(f'num_images must be >= 1, got {num_images}')
    config = rundir.load_run_config(workdir)
    if config.get('mode') != 'pretrain':
        raise ValueError(f"{workdir!r} is a {config.get('mode')!r} run; reconstructions need a pre-training run")
    model = rundir.build_model(config)
    step = rundir.restore_model(model, workdir, step)
    images, mean, std = eval_images(config, num_images)
    p = _model_panels(model, config, images, mean, std, jax.random.key(seed))
    output = output or os.path.join(workdir, f'reconstructions_step{step}.png')
    save_png(p, output, title=f'{config.model.name} ({config.method.name}), step {step}')
    return output


def tensorboard_hook(config: ml_collections.ConfigDict, workdir: str, graphdef: Any
                     ) -> Callable[[dict, int], None] | None:
    """The pre-training loop's picture logger: ``hook(state, step)`` writes the reconstruction
    grid (:func:`grid_image`) of :data:`TENSORBOARD_IMAGES` evaluation images to TensorBoard
    (``<workdir>/tensorboard``, tag ``reconstructions``) at every multiple of
    ``config.visualize_every`` and at the last step; the images are read once, the masks are drawn
    from ``config.seed``, so every picture shows the same masks. Only process 0 writes. Returns
    None when ``visualize_every`` is 0 (off) or absent. ``state`` is the train state
    (``params``, ``model_state``); ``graphdef`` the model's NNX graph definition.
    """
    every = int(config.get('visualize_every', 0) or 0)
    if every <= 0 or jax.process_index() != 0:
        return None
    cache: dict[str, Any] = {}

    def host(tree):
        return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)) if isinstance(a, jax.Array) else a, tree)

    def hook(state: dict, step: int) -> None:
        if step % every and step != config.total_steps:
            return
        from flax.metrics import tensorboard
        if 'images' not in cache:
            cache['images'], cache['mean'], cache['std'] = eval_images(config, TENSORBOARD_IMAGES)
            cache['writer'] = tensorboard.SummaryWriter(os.path.join(workdir, 'tensorboard'))
        model = nnx.merge(graphdef, host(state['params']), host(state['model_state']))
        p = _model_panels(model, config, cache['images'], cache['mean'], cache['std'],
                          jax.random.key(int(config.seed)))
        cache['writer'].image('reconstructions', grid_image(p), step, max_outputs=1)
        cache['writer'].flush()

    return hook


def main(argv: list[str] | None = None) -> str:
    """``python -m jaxmim.visualize --workdir=RUN [--num_images=8] [--step=N] [--output=PATH]
    [--seed=0]``; prints and returns the PNG path."""
    import argparse
    parser = argparse.ArgumentParser(prog='python -m jaxmim.visualize', description=__doc__.split('\n\n')[0])
    parser.add_argument('--workdir', required=True, help='a pre-training run directory')
    parser.add_argument('--num_images', type=int, default=8, help='rows of the grid (eval images)')
    parser.add_argument('--step', type=int, default=None, help='checkpoint step (default: latest)')
    parser.add_argument('--output', default=None, help='PNG path (default <workdir>/reconstructions_step<N>.png)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the masks')
    args = parser.parse_args(argv)
    path = visualize_run(args.workdir, args.num_images, args.step, args.output, args.seed)
    print(path)
    return path


if __name__ == '__main__':
    main()
