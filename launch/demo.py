r"""The main job end to end on real images: masked pre-training, fine-tuning, and training from
scratch for the same wall-clock time.

    python -m launch.demo --workdir=work/demo          # what `make demo` runs

1. prepares Fashion-MNIST (Debian's idx files) into ``<workdir>/tensorflow_datasets``;
2. pre-trains a small PVT with UM-MAE on the 60k training images (labels unused): Uniform
   Sampling keeps one 8-px unit per 2x2 block and the encoder runs on the compacted
   half-resolution image, a quarter of the tokens (``--pretrain_config``, default
   ``configs/demo/ummae_pvt_fmnist.py``; the earlier GreenMIM demo is
   ``configs/demo/greenmim_swin_fmnist.py`` with ``configs/demo/finetune_greenmim_fmnist.py``,
   the SimMIM one ``configs/demo/simmim_swin_fmnist.py`` with ``configs/demo/finetune_swin_fmnist.py``);
3. fine-tunes it on the labelled training split and evaluates top-1/top-5 on the test split;
4. trains the same classifier from random initialisation for the same wall-clock time as
   steps 2 + 3: the fine-tuning steps plus as many more as the pre-training time buys at the
   measured fine-tuning step time (:func:`launch.budget.equal_time_steps`; ``--scratch_steps`` fixes it);
5. writes ``results.json`` and prints ``method | backbone | pre-train steps | fine-tune steps |
   top-1 | wall time``; saves ``reconstructions.png`` (masked inputs and reconstructions);
6. with ``--evaluate_encoders`` (``make demo DEMO_FLAGS=--evaluate_encoders``; off by default: it
   does not fit the 30-minute budget), after step 2 the k-NN and linear-probe top-1 of the
   pre-trained encoder against the same classifier at random initialisation
   (:func:`evaluate_encoders`).

Every stage checkpoints into its own sub-directory, so an interrupted demo resumes where it
stopped when run again. Step budgets are flags (defaults fit 30 minutes on 2 CPU cores).
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags, logging

from launch.budget import equal_time_steps, step_seconds

_WORKDIR = flags.DEFINE_string('workdir', 'work/demo', 'Output directory of the demo.')
_PRETRAIN_STEPS = flags.DEFINE_integer('pretrain_steps', None, 'Override the pre-training steps.')
_FINETUNE_STEPS = flags.DEFINE_integer('finetune_steps', None, 'Override the fine-tuning steps.')
_BATCH = flags.DEFINE_integer('batch_size', None, 'Override the global batch size of every stage.')
_EVAL_EXAMPLES = flags.DEFINE_integer('eval_examples', 0, 'Evaluate on the first N test images only (0: all 10,000).')
_SHUFFLE = flags.DEFINE_integer('shuffle_buffer', 0, 'Override the shuffle buffer (and do not cache) (0: config).')
_PRE_CONFIG = flags.DEFINE_string('pretrain_config', 'configs/demo/ummae_pvt_fmnist.py',
                                  'Pre-training config, relative to the repository root.')
_FT_CONFIG = flags.DEFINE_string('finetune_config', 'configs/demo/finetune_pvt_fmnist.py',
                                 'Fine-tuning config (variants :pretrained and :scratch), relative to the repository root.')
_SCRATCH_STEPS = flags.DEFINE_integer('scratch_steps', None, 'Steps of the from-scratch run (default: the same '
                                      'wall-clock time as pre-training + fine-tuning, see equal_time_steps).')
_EVAL_ENCODERS = flags.DEFINE_bool('evaluate_encoders', False, 'Also k-NN and linear-probe the pre-trained encoder '
                                   'against a randomly initialised one (off: it does not fit the 30-minute make demo).')
_PROBE_STEPS = flags.DEFINE_integer('probe_steps', 300, 'Linear-probe steps of --evaluate_encoders (batch 256).')
_KNN_TRAIN = flags.DEFINE_integer('knn_train_examples', 0, 'Train images --evaluate_encoders indexes for k-NN (0: all).')
PROBE_CONFIG = 'configs/demo/linprobe_fmnist.py'
PROBE_VARIANTS = ('vit', 'swin', 'pvt', 'hivit', 'greenmim_swin', 'groupmixformer')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(rel_path: str, arg: str | None = None):
    from jaxmim.config import load_config_file
    return load_config_file(os.path.join(ROOT, rel_path) + (f':{arg}' if arg else ''))


def _common(cfg, data_dir: str, steps: int | None):
    cfg.data.data_dir = data_dir
    if steps:
        cfg.total_steps = steps
        cfg.checkpoint_every = max(1, min(cfg.checkpoint_every, steps))
        if cfg.optim.warmup_steps > steps:      # a short smoke run: warm up over its first tenth
            cfg.optim.warmup_steps = max(1, steps // 10)
    if _BATCH.value:
        cfg.batch_size = _BATCH.value
    if _EVAL_EXAMPLES.value:
        cfg.data.eval_split = f'{cfg.data.eval_split}[:{_EVAL_EXAMPLES.value}]'
        if 'eval_batch_size' in cfg:
            cfg.eval_batch_size = min(cfg.eval_batch_size, _EVAL_EXAMPLES.value)
    if _SHUFFLE.value:
        cfg.data.shuffle_buffer, cfg.data.cache = _SHUFFLE.value, False
    return cfg


def save_reconstructions(pretrain_dir: str, cfg, path: str, n: int = 8) -> None:
    """Plots n test images: original, masked input, reconstruction (masked units pasted in), for
    any method of the protocol (``pred`` ``(B, L, p*p*C)``, ``mask`` ``(B, L)``)."""
    import jax
    import jax.numpy as jnp
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np

    from jaxmim import rundir
    from jaxmim.config import resolve_data_config
    from jaxmim.data import pipeline
    from jaxmim.layers import patchify, unpatchify

    model = rundir.build_model(cfg)
    rundir.restore_model(model, pretrain_dir)
    data_cfg = resolve_data_config(cfg)
    batch = next(pipeline.create_split(data_cfg, train=False, batch_size=n, seed=0,
                                       process_index=0, process_count=1))
    x = jnp.asarray(batch['image'])
    inputs = model.sample_inputs(jax.random.key(0), n)
    out = model(x, train=False, **inputs)
    # The method protocol's outputs: pred (B, L, p*p*C) units in raster order, mask (B, L).
    pred, unit_mask = np.asarray(out['pred']), np.asarray(out['mask'])
    c = x.shape[-1]
    p = int(round((pred.shape[-1] // c) ** 0.5))
    g = x.shape[1] // p
    if getattr(model, 'norm_pix_loss', False):   # predictions are per-patch normalised pixels
        t = np.asarray(patchify(x, p))
        pred = pred * np.sqrt(t.var(-1, ddof=1, keepdims=True) + 1e-6) + t.mean(-1, keepdims=True)
    rec = np.asarray(unpatchify(jnp.asarray(pred), p, g, g))
    grid_mask = np.asarray(inputs.get('mask', np.zeros(0)))
    if grid_mask.ndim == 3:   # a patch-grid mask (SimMIM): exact pixel mask, finer than pred's units
        r = x.shape[1] // grid_mask.shape[1]
        m = np.repeat(np.repeat(grid_mask, r, 1), r, 2)[..., None].astype(bool)
    else:
        m = np.repeat(np.repeat(unit_mask.reshape(n, g, g), p, 1), p, 2)[..., None].astype(bool)
    std, mean = np.asarray(data_cfg.std), np.asarray(data_cfg.mean)
    show = lambda a: np.clip(np.asarray(a) * std + mean, 0, 1)[..., 0]
    img = np.asarray(x)
    grey = (0.5 - mean) / std                               # masked units drawn mid-grey
    rows = [('original', show(img)), ('masked input (grey = masked)', show(np.where(m, grey, img))),
            ('reconstruction', show(np.where(m, rec, img)))]
    fig, axes = plt.subplots(3, n, figsize=(1.4 * n, 4.6))
    for r, (title, ims) in enumerate(rows):
        for c in range(n):
            axes[r, c].imshow(ims[c], cmap='gray', vmin=0, vmax=1)
            axes[r, c].axis('off')
        axes[r, 0].set_title(title, fontsize=8, loc='left')
    fig.suptitle(f'{cfg.method.name} on Fashion-MNIST test images (mask ratio {cfg.method.mask_ratio})', fontsize=9)
    fig.savefig(path, dpi=120, bbox_inches='tight')
    plt.close(fig)


def evaluate_encoders(pre_dir: str, workdir: str, data_dir: str, classifier: str) -> list[dict]:
    """k-NN (:func:`jaxmim.knn.run_knn`, k=20, T=0.07) and a linear probe (``--probe_steps`` of
    ``configs/demo/linprobe_fmnist.py``, frozen encoder) of the pre-trained encoder and of the same
    classifier at random initialisation; returns one row per encoder and prints them.

    Raises:
      ValueError: no variant of the probe config builds ``classifier``.
    """
    from jaxmim import knn, train

    variant = next((v for v in PROBE_VARIANTS if _config(PROBE_CONFIG, v).model.name == classifier), None)
    if variant is None:
        raise ValueError(f'{PROBE_CONFIG} has no variant for classifier {classifier!r}')
    rows = []
    for name, random_init in (('pre-trained', False), ('random init', True)):
        res = knn.run_knn(pre_dir, train_examples=_KNN_TRAIN.value or None, random_init=random_init)
        cfg = _common(_config(PROBE_CONFIG, variant), data_dir, _PROBE_STEPS.value)
        if random_init:
            cfg.pretrained.required = False
        else:
            cfg.pretrained.workdir = pre_dir
        _, probe = train.finetune(cfg, os.path.join(workdir, f"linprobe_{name.replace(' ', '_').replace('-', '_')}"))
        rows.append({'encoder': name, 'knn_top1': res['top1'], 'knn_train_images': res['train_count'],
                     'linprobe_top1': probe['final_eval']['top1'], 'linprobe_steps': cfg.total_steps})
    print(f"\n{'encoder':<12}| k-NN top-1 (k=20) | linear probe top-1 ({rows[0]['linprobe_steps']} steps)")
    for r in rows:
        print(f"{r['encoder']:<12}| {r['knn_top1']:16.2f}% | {r['linprobe_top1']:6.2f}%")
    return rows


def main(argv) -> None:
    """Runs the demo stages in order and writes ``results.json`` and ``reconstructions.png``."""
    del argv
    from jaxmim import host
    host.tune_malloc()   # JAXMIM_MALLOC=tuned, before JAX's first computation (jaxmim.host)
    from jaxmim import files, train
    from jaxmim.data import prepare_fashion_mnist

    logging.set_verbosity(logging.WARNING)
    workdir = os.path.abspath(_WORKDIR.value)
    data_dir = os.path.join(workdir, 'tensorflow_datasets')
    os.makedirs(workdir, exist_ok=True)
    t = time.perf_counter()
    prepare_fashion_mnist(data_dir=data_dir)
    print(f'Fashion-MNIST ready in {data_dir} ({time.perf_counter() - t:.0f} s)', flush=True)

    # Wall-clock seconds per stage, kept across interrupted runs: a resumed stage adds its time to
    # what was spent before, and the scratch budget, once fixed, stays fixed.
    times_path = os.path.join(workdir, 'stage_seconds.json')
    times = json.load(open(times_path)) if os.path.exists(times_path) else {}

    def timed(stage: str, fn):
        t0 = time.perf_counter()
        out = fn()
        times[stage] = times.get(stage, 0.0) + time.perf_counter() - t0
        files.write_json(times_path, times)
        return out

    rows = []
    pre_cfg = _common(_config(_PRE_CONFIG.value), data_dir, _PRETRAIN_STEPS.value)
    method = pre_cfg.method.name
    pre_dir = os.path.join(workdir, 'pretrain')
    _, pre = timed('pretrain', lambda: train.pretrain(pre_cfg, pre_dir))
    pre_wall = times['pretrain']
    last = pre['history'][-1] if pre['history'] else {}
    print(f'pre-training ({method}): {pre_cfg.total_steps} steps, final loss {last.get("loss", float("nan")):.4f}, '
          f'{pre_wall:.0f} s', flush=True)
    try:
        save_reconstructions(pre_dir, pre_cfg, os.path.join(workdir, 'reconstructions.png'))
    except Exception as e:  # a picture must never sink the run; say why it is missing
        print(f'warning: could not draw reconstructions: {e}')

    encoders = None
    if _EVAL_ENCODERS.value:
        classifier = _config(_FT_CONFIG.value, 'scratch').model.name
        encoders = timed('encoders', lambda: evaluate_encoders(pre_dir, workdir, data_dir, classifier))

    pretrained_wall = None
    for variant in ('pretrained', 'scratch'):
        steps = _FINETUNE_STEPS.value
        if variant == 'scratch':
            steps = _SCRATCH_STEPS.value or times.get('scratch_steps') or equal_time_steps(
                rows[0]['finetune_steps'], pre_wall, rows[0]['step_seconds'])
            times['scratch_steps'] = steps
        cfg = _common(_config(_FT_CONFIG.value, variant), data_dir, steps)
        if variant == 'pretrained':
            cfg.pretrained.workdir = pre_dir
        _, ft = timed(variant, lambda: train.finetune(cfg, os.path.join(workdir, f'finetune_{variant}')))
        wall = times[variant] + (pre_wall if variant == 'pretrained' else 0.0)
        final = ft['final_eval']
        name = f'{method} pre-trained + fine-tuned' if variant == 'pretrained' else 'from scratch'
        rows.append({'method': name, 'backbone': cfg.model.name,
                     'pretrain_steps': pre_cfg.total_steps if variant == 'pretrained' else 0,
                     'finetune_steps': cfg.total_steps, 'top1': final['top1'], 'top5': final['top5'],
                     'wall_time_s': round(wall, 1), 'batch_size': cfg.batch_size,
                     'step_seconds': step_seconds(ft['history'], cfg.batch_size), 'evals': ft['evals']})
        if variant == 'pretrained':
            pretrained_wall = wall
            print(f'{name}: top-1 {final["top1"]:.2f}%  ({wall:.0f} s incl. pre-training)', flush=True)
        else:
            print(f'{name}: top-1 {final["top1"]:.2f}%  ({wall:.0f} s for {cfg.total_steps} steps; the pre-trained '
                  f'model took {pretrained_wall:.0f} s in all)', flush=True)

    import jax
    results = {'dataset': 'fashion_mnist (Debian dataset-fashion-mnist), test split 10,000 images',
               'method': method, 'model': rows[0]['backbone'], 'devices': str(jax.devices()),
               'rows': rows, 'pretrain_final_loss': last.get('loss'), 'encoders': encoders}
    files.write_json(os.path.join(workdir, 'results.json'), results)
    width = max(len(r['backbone']) for r in rows)
    header = f"{'method':<34}| {'backbone':<{width}} | pre-train steps | fine-tune steps | top-1  | wall time"
    print('\n' + header + '\n' + '-' * len(header))
    for r in rows:
        print(f"{r['method']:<34}| {r['backbone']:<{width}} | {r['pretrain_steps']:>15} | {r['finetune_steps']:>15} | "
              f"{r['top1']:5.2f}% | {r['wall_time_s'] / 60:6.1f} min")
    print(f'\nresults: {os.path.join(workdir, "results.json")}; TensorBoard: tensorboard --logdir {workdir}')


if __name__ == '__main__':
    app.run(main)
