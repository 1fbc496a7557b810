"""Mixed precision of GroupMixFormer (``config.compute_dtype='bfloat16'``), split from
``tests/test_bf16.py`` because its steps compile slowest (the two test workers share the load).

Its BatchNorms keep their input's dtype (``jaxmim.models.groupmixformer.BatchNorm``): without the
cast, the float32 running statistics promoted every activation after the first BatchNorm to
float32, and about 1 % of the step's matrix-product FLOPs ran in bf16.
"""

import jax
import jax.numpy as jnp
import pytest

from jaxmim import rundir, steps
from jaxmim.registry import create_model
from test_bf16 import GROUPMIXFORMER_FAMILIES, _matmul_flops_by_dtype, check_family_tracks_float32


@pytest.mark.parametrize('family', GROUPMIXFORMER_FAMILIES)
def test_bf16_groupmixformer_tracks_float32(family):
    """Supervised and SimMIM GroupMixFormer demos: 50 steps within 0.5 % of float32, >= 90 % of
    the matrix-product FLOPs in bf16 (see ``test_bf16.check_family_tracks_float32``)."""
    check_family_tracks_float32(family)


def test_groupmixformer_computes_in_bf16():
    """The GroupMixFormer demo's training forward pass on bf16 weights and images: every matrix
    product and convolution has bf16 operands (as every other family's has)."""
    model = create_model('groupmixformer_demo_32', seed=0)
    graphdef, params, model_state = rundir.split_variables(model)

    def forward(p, x):
        return rundir.merge_variables(graphdef, p, model_state)(x, train=True, rng=jax.random.key(0))

    jaxpr = jax.make_jaxpr(forward)(steps.cast_floating(params, jnp.bfloat16), jnp.zeros((2, 32, 32, 3), jnp.bfloat16))
    flops = _matmul_flops_by_dtype(jaxpr.jaxpr)
    assert set(flops) == {'bfloat16'}, flops
