"""The demo config of each family and a CPU mesh of given axis sizes, shared by the sharding tests
(imported as ``families``: pytest puts ``tests/`` on ``sys.path``)."""

import math

import jax

from jaxmim import sharding

FAMILY_DEMOS = {
    'swin_simmim': 'configs/demo/simmim_swin_fmnist.py',
    'vit_mae': 'configs/demo/mae_vit_fmnist.py',
    'hivit_mae': 'configs/demo/mae_hivit_fmnist.py',
    'ummae_pvt': 'configs/demo/ummae_pvt_fmnist.py',
    'greenmim_swin': 'configs/demo/greenmim_swin_fmnist.py',
    'groupmixformer': 'configs/demo/groupmixformer_fmnist.py',
}
"""One demo config (tiny model, 32 px images) per family, relative to the repository root."""


def cpu_mesh(dims: tuple[int, int, int]) -> jax.sharding.Mesh:
    """A ``('data', 'fsdp', 'model')`` mesh of sizes ``dims`` over the first CPU devices."""
    return jax.make_mesh(tuple(dims), sharding.MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3,
                         devices=jax.devices('cpu')[:math.prod(dims)])
