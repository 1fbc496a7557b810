"""jaxmim.metrics.WindowMean against means written out by hand."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxmim.metrics import WindowMean


def _step(loss, grad_norm, lr, nonfinite=0.0, top1=None):
    m = {'loss': jnp.float32(loss), 'grad_norm': jnp.float32(grad_norm), 'lr': jnp.float32(lr),
         'nonfinite_steps': jnp.float32(nonfinite)}
    if top1 is not None:
        m['train_top1'] = jnp.float32(top1)
    return m


def test_means_over_the_window_and_last_values():
    w = WindowMean()
    for loss, g, lr, acc in [(2.0, 1.0, 0.1, 0.25), (1.0, 3.0, 0.2, 0.5), (0.5, 2.0, 0.3, 1.0)]:
        w.update(_step(loss, g, lr, top1=acc))
    out = w.compute()
    assert out['loss'] == pytest.approx((2.0 + 1.0 + 0.5) / 3)
    assert out['grad_norm'] == pytest.approx(2.0)
    assert out['train_top1'] == pytest.approx((0.25 + 0.5 + 1.0) / 3)
    assert out['lr'] == pytest.approx(0.3) and out['nonfinite_steps'] == 0.0   # boundary values
    w.update(_step(4.0, 1.0, 0.4))                                              # a new window
    assert w.compute()['loss'] == pytest.approx(4.0)


def test_non_finite_steps_are_left_out_of_the_means():
    w = WindowMean()
    w.update(_step(1.0, 1.0, 0.1))
    w.update(_step(np.nan, 5.0, 0.2, nonfinite=1.0))
    w.update(_step(3.0, np.inf, 0.3, nonfinite=2.0))
    w.update(_step(2.0, 3.0, 0.4, nonfinite=2.0))
    out = w.compute()
    assert out['loss'] == pytest.approx(1.5) and out['grad_norm'] == pytest.approx(2.0)
    assert out['nonfinite_steps'] == 2.0 and out['lr'] == pytest.approx(0.4)


def test_a_window_of_only_non_finite_steps_reports_the_last_step():
    w = WindowMean()
    w.update(_step(np.nan, 1.0, 0.1, nonfinite=1.0))
    out = w.compute()
    assert np.isnan(out['loss']) and out['grad_norm'] == 1.0


def test_compute_before_update_names_the_problem():
    with pytest.raises(ValueError, match='before any update'):
        WindowMean().compute()
