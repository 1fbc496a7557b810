"""Mixup / CutMix with label smoothing into soft targets, and the soft-target cross entropy.

On-device (JAX) port of timm's ``Mixup`` in mode ``'batch'`` (``timm/data/mixup.py``:
``Mixup._params_per_batch``, ``_mix_batch``, ``rand_bbox``, ``cutmix_bbox_and_lam``,
``mixup_target``) and ``SoftTargetCrossEntropy`` (``timm/loss/cross_entropy.py``); the recipe
of DeiT, SimMIM, MAE, HiViT and GroupMixFormer fine-tuning (mixup 0.8, cutmix 1.0, switch
probability 0.5, label smoothing 0.1, as ``microsoft/SimMIM@d3e29bc data/data_finetune.py:51-57`` and
``AILab-CVC/GroupMixFormer@3d3f40977c6a data/build.py:56-62`` build it; timm 0.4.12 code).

It runs inside the jitted train step on the global batch sharded over the mesh's ``data``
axis, with a key derived from the step key. One draw per call (per batch):

* ``use_cutmix``: with both alphas > 0, ``U < switch_prob``; only cutmix on: always; only mixup
  on: never.
* ``lam ~ Beta(alpha, alpha)`` of the chosen op; with probability ``1 - prob`` no mixing
  (``lam = 1``).
* Mixup: ``x <- lam x + (1 - lam) x_partner``.
* CutMix: box of side ratio ``sqrt(1 - lam)`` (``cut_h = int(H sqrt(1 - lam))``), centre
  uniform in ``[0, H) x [0, W)``, edges ``centre -/+ cut // 2`` clipped to the image; the box
  takes the partner's pixels and, with ``correct_lam``, ``lam <- 1 - box area / (H W)``.
* Targets: ``lam smooth(y) + (1 - lam) smooth(y_partner)``, ``smooth(y) = one_hot(y) (1 - s) +
  s / K``.

The partner of sample ``i`` is the batch reversed, as timm's ``x.flip(0)``. timm mixes each
rank's batch separately; with ``groups = number of devices`` the reversal is within each
device's contiguous shard (``x.reshape(groups, B / groups, ...)[:, ::-1]``), which is timm's
per-rank pairing and needs no cross-device traffic. One ``lam`` (and box) is drawn per global
batch, where timm draws one per rank.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

MIXUP_MODES = ('batch',)
"""Accepted ``mixup.mode`` values (timm's 'pair' / 'elem' are not implemented)."""


@dataclasses.dataclass(frozen=True)
class MixupConfig:
    """Mixup / CutMix settings (timm ``Mixup`` arguments, config block ``mixup``).

    Attributes:
      mixup_alpha: Beta(alpha, alpha) of mixup; 0 disables mixup.
      cutmix_alpha: Beta(alpha, alpha) of cutmix; 0 disables cutmix.
      prob: probability that a batch is mixed at all (timm ``prob`` / ``mixup_prob``).
      switch_prob: probability of cutmix instead of mixup when both are on.
      mode: 'batch' only.
      correct_lam: recompute cutmix's lam from the clipped box area.
      label_smoothing: smoothing ``s`` of the targets.
      num_classes: K.
    """

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5
    mode: str = 'batch'
    correct_lam: bool = True
    label_smoothing: float = 0.1
    num_classes: int = 1000

    @property
    def enabled(self) -> bool:
        """Whether any mixing happens (either alpha > 0 and prob > 0)."""
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.prob > 0

    def check(self) -> 'MixupConfig':
        """Returns self.

        Raises:
          ValueError: a bad field, named (``config.mixup.<field>``) with what is accepted.
        """
        for name in ('mixup_alpha', 'cutmix_alpha'):
            if not float(getattr(self, name)) >= 0:
                raise ValueError(f'config.mixup.{name} must be >= 0 (0 disables), got {getattr(self, name)}')
        for name in ('prob', 'switch_prob'):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f'config.mixup.{name} must be a probability in [0, 1], got {getattr(self, name)}')
        if self.mode not in MIXUP_MODES:
            raise ValueError(f'config.mixup.mode must be one of {MIXUP_MODES}, got {self.mode!r}')
        if not 0.0 <= float(self.label_smoothing) < 1.0:
            raise ValueError(f'config.label_smoothing must be in [0, 1), got {self.label_smoothing}')
        if int(self.num_classes) < 1:
            raise ValueError(f'num_classes must be >= 1, got {self.num_classes}')
        return self


def smooth_one_hot(labels: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
    """``(B,)`` int labels -> ``(B, K)`` float32 targets ``one_hot (1 - s) + s / K`` (timm
    ``mixup_target``'s off value ``s / K``, on value ``1 - s + s / K``)."""
    off = smoothing / num_classes
    return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * (1.0 - smoothing) + off


def partner(x: jax.Array, groups: int = 1) -> jax.Array:
    """The batch reversed within each of ``groups`` equal contiguous groups (timm ``flip(0)`` per
    rank). ``x``: ``(B, ...)``.

    Raises:
      ValueError: ``B`` not a multiple of ``groups``.
    """
    b = x.shape[0]
    if groups < 1 or b % groups:
        raise ValueError(f'batch of {b} is not divisible into {groups} mixup groups (devices)')
    return x.reshape(groups, b // groups, *x.shape[1:])[:, ::-1].reshape(x.shape)


def sample_params(key: jax.Array, cfg: MixupConfig, height: int, width: int) -> dict[str, jax.Array]:
    """One batch's draw: ``{'lam' (corrected), 'use_cutmix' bool, 'box' int32 (4,) = (y_lo, y_hi,
    x_lo, x_hi)}`` (an empty box when not cutting). timm ``_params_per_batch`` + ``rand_bbox``."""
    k_switch, k_apply, k_mix, k_cut, k_cy, k_cx = jax.random.split(key, 6)
    mix_on, cut_on = cfg.mixup_alpha > 0, cfg.cutmix_alpha > 0
    if mix_on and cut_on:
        use_cutmix = jax.random.uniform(k_switch) < cfg.switch_prob
    else:
        use_cutmix = jnp.asarray(cut_on)
    lam_mix = jax.random.beta(k_mix, cfg.mixup_alpha, cfg.mixup_alpha) if mix_on else jnp.float32(1.0)
    lam_cut = jax.random.beta(k_cut, cfg.cutmix_alpha, cfg.cutmix_alpha) if cut_on else jnp.float32(1.0)
    lam = jnp.where(use_cutmix, lam_cut, lam_mix).astype(jnp.float32)
    lam = jnp.where(jax.random.uniform(k_apply) < cfg.prob, lam, 1.0)
    # rand_bbox: cut_rat = sqrt(1 - lam); cut_h = int(H * cut_rat); centre ~ randint(0, H).
    cut_rat = jnp.sqrt(jnp.maximum(1.0 - lam, 0.0))
    cut_h = jnp.floor(height * cut_rat).astype(jnp.int32)
    cut_w = jnp.floor(width * cut_rat).astype(jnp.int32)
    cy = jax.random.randint(k_cy, (), 0, height)
    cx = jax.random.randint(k_cx, (), 0, width)
    yl, yh = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
    xl, xh = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
    box = jnp.where(use_cutmix & (lam < 1.0), jnp.stack([yl, yh, xl, xh]), jnp.zeros(4, jnp.int32))
    if cfg.correct_lam:
        area = (box[1] - box[0]) * (box[3] - box[2])
        lam = jnp.where(use_cutmix, 1.0 - area.astype(jnp.float32) / float(height * width), lam)
    return {'lam': lam, 'use_cutmix': use_cutmix, 'box': box}


def mix_batch(key: jax.Array, images: jax.Array, labels: jax.Array, cfg: MixupConfig,
              groups: int = 1) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Mixes a batch (timm ``Mixup.__call__``, mode 'batch').

    Args:
      key: PRNG key (e.g. ``fold_in(step key, ...)``).
      images: float ``(B, H, W, C)`` NHWC (normalised).
      labels: int ``(B,)`` class ids.
      cfg: the settings (with ``cfg.enabled`` False only label smoothing is applied).
      groups: partner pairing groups (devices); see :func:`partner`.

    Returns:
      ``(images, targets, params)``: mixed images (same shape and dtype), float32 ``(B, K)``
      soft targets whose rows sum to 1, and the draw (:func:`sample_params`).

    Raises:
      ValueError: bad config field; batch not divisible by ``groups``.
    """
    cfg.check()
    targets = smooth_one_hot(labels, cfg.num_classes, cfg.label_smoothing)
    if not cfg.enabled:
        return images, targets, {'lam': jnp.float32(1.0), 'use_cutmix': jnp.asarray(False),
                                 'box': jnp.zeros(4, jnp.int32)}
    _, h, w, _ = images.shape
    p = sample_params(key, cfg, h, w)
    other = partner(images, groups)
    lam = p['lam']
    ys = jnp.arange(h)[:, None]
    xs = jnp.arange(w)[None, :]
    y0, y1, x0, x1 = p['box'][0], p['box'][1], p['box'][2], p['box'][3]
    inside = ((ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1))[None, :, :, None]
    cut = jnp.where(inside, other, images)
    mixed = (images * lam + other * (1.0 - lam)).astype(images.dtype)
    out = jnp.where(p['use_cutmix'], cut, mixed)
    targets = targets * lam + partner(targets, groups) * (1.0 - lam)
    return out, targets, p


def soft_target_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """timm ``SoftTargetCrossEntropy``: ``mean_b sum_k -t_bk log_softmax(z_b)_k``; logits and
    targets ``(B, K)``; returns a float32 scalar."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -(targets * logp).sum(-1).mean()
