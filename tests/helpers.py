"""Helpers shared by the conversion tests (imported as ``helpers``: pytest puts ``tests/`` on
``sys.path``). Expectations live in the tests; these only compare, perturb and size models."""

import numpy as np
import torch
from flax import nnx

from convert import official


TINY_UM_SWIN = dict(img_size=64, patch_size=4, embed_dim=16, depths=(2, 1, 1), num_heads=(1, 2, 2), window_size=4,
                    posmlp_dim=8, mlp_ratio=2.0)
"""A UM-MAE Swin small enough for a CPU test: Swin-T's layout (window 8 -> 4) at 64 px, 16 channels."""


def assert_close(out, ref, rel=1e-5):
    """``out`` equals ``ref`` to ``rel`` relative to ``ref``'s largest magnitude (same shape)."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    assert out.shape == ref.shape
    scale = np.abs(ref).max()
    assert scale > 0
    np.testing.assert_allclose(out, ref, rtol=rel, atol=rel * scale)


def variables_of(model):
    """``{path: np.ndarray}`` of every variable of an NNX model (Param, BatchStat, Buffer)."""
    return {tuple(p): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model))}


def perturb(model, seed=0):
    """Adds N(0, 0.05^2) noise to every parameter of a torch model (so no norm or bias is
    trivially 1 or 0) and puts it in eval mode; returns it."""
    torch.manual_seed(seed)
    model = model.eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def check_round_trip(source, cfg, twin):
    """JAX -> PyTorch (``twin``, loaded strictly) -> a second JAX model of another init is bit-exact."""
    ja = official.build(source, rngs=nnx.Rngs(3), **cfg)
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in official.state_dict(ja, source).items()}, strict=True)
    jb = official.build(source, rngs=nnx.Rngs(4), **cfg)
    va, vb = variables_of(ja), variables_of(jb)
    assert any(not np.array_equal(va[k], vb[k]) for k in va)   # different init before loading
    official.load_state_dict(jb, source, twin.state_dict())
    vb = variables_of(jb)
    assert va.keys() == vb.keys()
    for k in va:
        assert vb[k].dtype == va[k].dtype and va[k].tobytes() == vb[k].tobytes(), k


def run_interrupted(monkeypatch, train_module, run, stop_at: int):
    """Runs ``run()`` with the loop's data stream cut after ``stop_at`` batches (the iterator
    raises KeyboardInterrupt, as a preemption would) and checks that it stops; the real stream is
    restored afterwards so the next run resumes normally."""
    import pytest

    real = train_module._data_fn

    def interrupted(config, mesh, model=None, *, train):
        make = real(config, mesh, model, train=train)

        def gen(start):
            it = make(start)
            for _ in range(stop_at - start):
                yield next(it)
            raise KeyboardInterrupt('simulated preemption')
        return gen

    monkeypatch.setattr(train_module, '_data_fn', interrupted)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(train_module, '_data_fn', real)
