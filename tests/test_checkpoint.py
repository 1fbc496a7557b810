"""Tests for jaxmim.checkpoint (orbax v0 CheckpointManager wrapper).

The 8 fake CPU devices come from tests/conftest.py (XLA_FLAGS set before JAX starts); the
sharding tests use the CPU devices explicitly so they also run where the default backend is a
single GPU.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxmim import checkpoint as ck
from jaxmim import optim


def _cpu_devices(n):
    devs = jax.devices('cpu')
    assert len(devs) >= n, f'needs {n} CPU devices (XLA_FLAGS from tests/conftest.py), have {len(devs)}'
    return devs[:n]


def _single(device=None):
    return jax.sharding.SingleDeviceSharding(device or jax.devices('cpu')[0])


def _state(seed=0, sharding=None):
    rng = np.random.default_rng(seed)
    params = {
        'encoder': {
            'patch_embed': {'proj': {'kernel': rng.normal(size=(2, 2, 3, 8)).astype(np.float32),
                                     'bias': rng.normal(size=(8,)).astype(np.float32)}},
            'layers': {0: {'blocks': {0: {'attn': {'qkv': {
                'kernel': rng.normal(size=(8, 24)).astype(np.float32)}}}}},
                1: {'blocks': {0: {'mlp': {'fc1': {
                    'kernel': rng.normal(size=(16, 8)).astype(jnp.bfloat16)}}}}}},
            'mask_token': rng.normal(size=(1, 1, 8)).astype(np.float32),
        },
        'decoder': {'kernel': rng.normal(size=(1, 1, 8, 16)).astype(np.float32),
                    'bias': rng.normal(size=(16,)).astype(np.float32)},
    }
    params = jax.device_put(params, sharding or _single())
    tx, _ = optim.build_optimizer(
        dict(base_lr=1e-3, warmup_lr=1e-6, min_lr=1e-5, weight_decay=0.05, warmup_steps=1),
        params, 10)
    opt_state = tx.init(params)
    grads = jax.tree.map(lambda x: jnp.ones_like(x), params)
    _, opt_state = tx.update(grads, opt_state, params)   # non-trivial moments and counts
    return {'params': params, 'opt_state': opt_state,
            'step': jax.device_put(jnp.asarray(seed, jnp.int32), _single())}


def _assert_tree_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_save_interval_and_keep_n(tmp_path):
    state = _state()
    with ck.Checkpointer(tmp_path, save_interval_steps=3, max_to_keep=2) as ckpt:
        saved = [s for s in range(11) if ckpt.save(s, state)]
        assert saved == [0, 3, 6, 9]
        assert ckpt.save(10, state, force=True)
        ckpt.wait_until_finished()
        assert ckpt.all_steps() == [9, 10]
        assert ckpt.latest_step() == 10
    step_dirs = sorted(int(p) for p in os.listdir(tmp_path) if p.isdigit())
    assert step_dirs == [9, 10]
    assert not [p for p in os.listdir(tmp_path) if 'tmp' in p]


def test_restore_equals_saved_bitwise(tmp_path):
    state = _state(seed=3)
    with ck.Checkpointer(tmp_path, save_interval_steps=1, max_to_keep=None) as ckpt:
        ckpt.save(5, state)
        ckpt.save(7, _state(seed=7))
    # a fresh Checkpointer sees both steps; default restores the latest
    with ck.Checkpointer(tmp_path, save_interval_steps=1) as ckpt:
        assert ckpt.all_steps() == [5, 7]
        out = ckpt.restore(5, target=ck.abstract_like(state))
        latest = ckpt.restore(target=ck.abstract_like(state))
    _assert_tree_equal(out, state)
    assert isinstance(out['opt_state'][1], optax.ScaleByAdamState)
    assert int(latest['step']) == 7


def test_sharded_save_restores_on_other_meshes(tmp_path):
    devs = _cpu_devices(8)
    mesh8 = Mesh(np.asarray(devs), ('data',))
    x = jnp.arange(8 * 6, dtype=jnp.float32).reshape(8, 6)
    y = jnp.arange(16 * 4, dtype=jnp.float32).reshape(16, 4) * 0.5
    state = {'params': {'x': jax.device_put(x, NamedSharding(mesh8, P('data', None))),
                        'y': jax.device_put(y, NamedSharding(mesh8, P(None, None)))},
             'step': jnp.asarray(11, jnp.int32)}
    assert len(state['params']['x'].sharding.device_set) == 8
    with ck.Checkpointer(tmp_path, save_interval_steps=1) as ckpt:
        ckpt.save(11, state)

        # onto one device
        one = _single(devs[3])
        out1 = ckpt.restore(11, target=ck.abstract_like(state, one))
        assert out1['params']['x'].sharding == one
        _assert_tree_equal(out1, state)

        # onto a 2x4 mesh, sharded differently
        mesh24 = Mesh(np.asarray(devs).reshape(2, 4), ('a', 'b'))
        shard = {'params': {'x': NamedSharding(mesh24, P('a', None)),
                            'y': NamedSharding(mesh24, P('a', 'b'))},
                 'step': NamedSharding(mesh24, P())}
        out24 = ckpt.restore(target=ck.abstract_like(state, shard))
        assert out24['params']['y'].sharding == shard['params']['y']
        assert out24['params']['y'].addressable_shards[0].data.shape == (8, 1)
        _assert_tree_equal(out24, state)


def test_restore_params_only(tmp_path):
    state = _state(seed=1)
    with ck.Checkpointer(tmp_path, save_interval_steps=1) as ckpt:
        ckpt.save(2, state)
        # only the 'params' item, no optimizer target needed
        out = ckpt.restore(target={'params': ck.abstract_like(state['params'])})
        assert list(out) == ['params']
        _assert_tree_equal(out['params'], state['params'])
    # only params['encoder'] (fine-tuning from a SimMIM pre-training checkpoint)
    enc = state['params']['encoder']
    got = ck.restore_subtree(tmp_path, None, ('params', 'encoder'), ck.abstract_like(enc))
    _assert_tree_equal(got, enc)
    # a nested sub-tree with an integer key
    blk = enc['layers'][1]
    got = ck.restore_subtree(tmp_path, 2, ('params', 'encoder', 'layers', 1), ck.abstract_like(blk))
    _assert_tree_equal(got, blk)


def test_errors_on_missing_checkpoints(tmp_path):
    empty = tmp_path / 'empty'
    target = {'params': ck.abstract_like({'w': np.zeros(2, np.float32)})}
    with ck.Checkpointer(empty, save_interval_steps=1) as ckpt:
        assert ckpt.latest_step() is None
        assert ckpt.all_steps() == []
        with pytest.raises(FileNotFoundError, match='no complete checkpoint'):
            ckpt.restore(target=target)
    with pytest.raises(FileNotFoundError, match='no complete checkpoint'):
        ck.restore_subtree(empty, None, ('params',), target['params'])
    with pytest.raises(FileNotFoundError, match='does not exist'):
        ck.restore_subtree(tmp_path / 'nope', None, ('params',), target['params'])

    full = tmp_path / 'full'
    with ck.Checkpointer(full, save_interval_steps=1) as ckpt:
        ckpt.save(4, {'params': {'w': jnp.ones(2)}})
        with pytest.raises(FileNotFoundError, match='available steps: \\[4\\]'):
            ckpt.restore(3, target=target)
        with pytest.raises(FileNotFoundError, match='opt_state'):
            ckpt.restore(4, target={'opt_state': target['params']})


def test_incomplete_checkpoint_is_ignored(tmp_path):
    with ck.Checkpointer(tmp_path, save_interval_steps=1) as ckpt:
        ckpt.save(1, {'params': {'w': jnp.ones(2)}})
    # a save that crashed mid-way leaves only orbax's temporary directory
    (tmp_path / '2.orbax-checkpoint-tmp-1234567').mkdir()
    (tmp_path / '2.orbax-checkpoint-tmp-1234567' / 'params').mkdir()
    ro = ck.Checkpointer(tmp_path, read_only=True)
    assert ro.latest_step() == 1
    with pytest.raises(ValueError, match='read-only'):
        ro.save(3, {'params': {'w': jnp.ones(2)}})
    ro.close()
    assert (tmp_path / '2.orbax-checkpoint-tmp-1234567').exists()   # read-only leaves it
    with ck.Checkpointer(tmp_path, save_interval_steps=1) as ckpt:
        assert ckpt.all_steps() == [1]
        assert ckpt.latest_step() == 1
        ckpt.save(3, {'params': {'w': jnp.ones(2)}})   # orbax awaits its cleanup before saving
        ckpt.wait_until_finished()
        assert ckpt.all_steps() == [1, 3]
    assert not (tmp_path / '2.orbax-checkpoint-tmp-1234567').exists()   # removed by the writer


def test_abstract_like_and_validation(tmp_path):
    tree = {'a': jnp.zeros((2, 3), jnp.bfloat16), 'b': np.zeros((4,), np.int32), 'c': 3}
    abs_tree = ck.abstract_like(tree)
    assert abs_tree['a'].shape == (2, 3) and abs_tree['a'].dtype == jnp.bfloat16
    assert abs_tree['a'].sharding == tree['a'].sharding
    # A leaf without a sharding (NumPy array, Python scalar): replicated over every device,
    # each device holding the whole array.
    for key, shape in (('b', (4,)), ('c', ())):
        sh = abs_tree[key].sharding
        assert abs_tree[key].shape == shape
        assert isinstance(sh, NamedSharding) and sh.spec == P(), (key, sh)
        assert sh.device_set == set(jax.devices()) and len(sh.device_set) == jax.device_count()
        assert sh.is_fully_replicated and sh.shard_shape(shape) == shape
    assert abs_tree['b'].dtype == np.int32
    with pytest.raises(ValueError):
        ck.Checkpointer(tmp_path, save_interval_steps=0)
    with pytest.raises(ValueError):
        ck.Checkpointer(tmp_path, save_interval_steps=1, max_to_keep=0)
    with ck.Checkpointer(tmp_path, save_interval_steps=1) as ckpt:
        with pytest.raises(ValueError, match='mapping'):
            ckpt.save(0, [jnp.ones(2)])
        with pytest.raises(ValueError, match='non-negative'):
            ckpt.save(-1, {'params': {'w': jnp.ones(2)}})


def test_restore_params_without_target(tmp_path):
    state = _state(seed=2)
    with ck.Checkpointer(tmp_path, save_interval_steps=1) as ckpt:
        ckpt.save(3, state)
        ckpt.save(4, _state(seed=4))
    params = ck.restore_params(tmp_path, 3)
    _assert_tree_equal(params, state['params'])   # int keys restored, bf16 kept
    enc = ck.restore_params(tmp_path, key_path=('params', 'encoder'),
                            sharding=_single(jax.devices('cpu')[1]))
    _assert_tree_equal(enc, _state(seed=4)['params']['encoder'])
    assert enc['mask_token'].sharding == _single(jax.devices('cpu')[1])
    with pytest.raises(KeyError, match='params.head'):
        ck.restore_params(tmp_path, key_path=('params', 'head'))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='no complete checkpoint'):
        ck.restore_params(tmp_path / 'empty')
    with pytest.raises(FileNotFoundError, match='does not exist'):
        ck.restore_params(tmp_path / 'missing')


def test_replicated_arrays_are_written_whole_in_one_process(tmp_path, monkeypatch):
    """In one process an array replicated over 8 devices is written whole by one replica: orbax's
    replica-parallel split (each replica a slice, cut by an eager lax.slice per replica) would only
    cost time when every replica lives in this process. Sharded arrays keep one write per shard.
    The checkpoint reads back bit-equal on another layout."""
    from orbax.checkpoint._src.serialization import replica_slices

    seen = []
    real = replica_slices.get_replica_slices

    def record(arr, *args, **kwargs):
        out = real(arr, *args, **kwargs)
        seen.append((arr.shape, arr.sharding.is_fully_replicated, [s.slice_args for s in out.replica_slices]))
        return out

    monkeypatch.setattr(replica_slices, 'get_replica_slices', record)
    mesh = Mesh(np.asarray(_cpu_devices(8)), ('d',))
    state = _state(seed=2, sharding=NamedSharding(mesh, P()))
    sharded = jax.device_put(np.arange(64, dtype=np.float32).reshape(16, 4), NamedSharding(mesh, P('d')))
    state['params']['decoder']['sharded'] = sharded
    with ck.Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state)
    replicated = [s for s in seen if s[1] and s[0] and max(s[0]) >= 8]
    assert replicated and all(args == [None] for _, _, args in replicated), replicated
    (row,) = [s for s in seen if s[0] == (16, 4)]
    assert row[2] == [None] * 8          # 8 shards, each written whole by its device
    with ck.Checkpointer(tmp_path, read_only=True) as ckpt:
        back = ckpt.restore(1, target=ck.abstract_like(state, _single()))
    _assert_tree_equal(back, state)
