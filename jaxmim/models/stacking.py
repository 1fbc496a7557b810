"""Running a stack of transformer blocks: unrolled, or as one ``jax.lax.scan`` over its blocks.

A deep uniform stack (ViT-B's 12 blocks, MAE's encoder and decoder, a Swin stage: Swin-B's third
stage has 18 blocks) is traced, and appears in the compiled program, once per block when unrolled;
under ``jax.lax.scan`` once, whatever the depth (the ``scan_blocks`` option of
:class:`jaxmim.models.vit.VisionTransformer`, :class:`jaxmim.methods.mae.vit.MaskedAutoencoderViT`,
:class:`jaxmim.models.swin.SwinTransformer`, :class:`jaxmim.models.hivit.HiViT` (its main stage:
HiViT-B has 20 blocks there), :class:`jaxmim.methods.mae.hivit.HiViTMaskedAutoencoder` and GreenMIM's
:class:`jaxmim.methods.greenmim.swin.GreenSwinTransformer`). Measured on XLA:CPU (README, "Rematerialisation
and scanned blocks"): the trace of a Swin-B / MAE ViT-B step is a third to a half shorter, XLA's own
compile is not, and with ``remat='block'`` the step needs about a fifth less memory.

The parameters keep their layout: the model still holds one module per block (``blocks.{i}``,
``layers.{s}.blocks.{j}``: the checkpoint keys the PyTorch / timm / Hugging Face converters read).
:func:`run_blocks` stacks the blocks' variables inside the traced function (``nnx.split`` of each
block, ``jnp.stack`` leaf by leaf) and scans over the stacked arrays, rebuilding a block from them
in the scan body (``nnx.merge``); the gradients flow back through the stacking to each block's own
parameters. The numbers equal the unrolled loop's (to float32 re-association; tested in
``tests/test_remat_scan.py``):

* block ``i`` gets the ``i``-th of ``jax.random.split(rng, len(blocks))``, as the unrolled loop
  (:func:`jaxmim.layers.split_key`);
* the per-block drop-path rates (``linspace(0, rate, depth)``: a static attribute ``drop_path``
  of each block, which would make every block's graph different) become a scanned float32 input
  set on the rebuilt block (:func:`jaxmim.layers.drop_path` takes an array rate) whenever they
  differ between the scanned blocks;
* blocks that alternate (Swin: shift 0, then window // 2) are scanned by ``period``: each scan
  step runs ``period`` consecutive blocks, so the step's graph is the same at every step; blocks
  left over (a depth not a multiple of ``period``) run unrolled after the scan;
* ``remat`` (:data:`jaxmim.layers.REMAT_POLICIES`) wraps each block inside the scan body in
  ``jax.checkpoint`` with its policy, as :func:`jaxmim.layers.call_block` does unrolled.

Blocks whose variables change in the forward pass (BatchNorm statistics) cannot be scanned this
way (their updates would be lost); the scanned families have none, and :func:`run_blocks` refuses
them. Source: JAX's ``jax.lax.scan`` and ``jax.checkpoint`` documentation (the "scan over layers"
pattern of ``flax.nnx.scan`` / MaxText, here with the per-block variables kept unstacked).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmim import layers as L

__all__ = ['run_blocks', 'check_scan']


def check_scan(scan_blocks: bool) -> bool:
    """``scan_blocks`` as a bool.

    Raises:
      ValueError: not a bool (the message names ``config.model.overrides.scan_blocks``).
    """
    if not isinstance(scan_blocks, bool):
        raise ValueError('scan_blocks (config.model.overrides.scan_blocks) must be True or False, '
                         f'got {scan_blocks!r}')
    return scan_blocks


def _rate(block: nnx.Module) -> float | None:
    rate = getattr(block, 'drop_path', None)
    return float(rate) if isinstance(rate, (int, float)) else None


def _graphdef(block: nnx.Module, rate: float | None, zero_rate: bool):
    """The block's graph definition, with its drop-path rate read as 0 when ``zero_rate`` (the rate
    then comes in as a scanned input); the block is left as it was."""
    if not zero_rate or rate is None:
        return nnx.graphdef(block)
    block.drop_path = 0.0
    try:
        return nnx.graphdef(block)
    finally:
        block.drop_path = rate


def _check_stateless(block: nnx.Module, index: int) -> None:
    for path, var in nnx.iter_graph(block):
        if isinstance(var, nnx.Variable) and not isinstance(var, (nnx.Param, L.Buffer)):
            raise ValueError(f'scan_blocks: block {index} holds a {type(var).__name__} at '
                             f'{".".join(map(str, path))}, which the forward pass updates; only blocks of '
                             'parameters and fixed buffers can be scanned (scan_blocks=False)')


def run_blocks(blocks: Sequence[nnx.Module], x: jax.Array, *args, train: bool, rng: jax.Array | None,
               remat: str = 'none', scan: bool = False, period: int = 1,
               keys: Sequence[jax.Array | None] | None = None, position_args: Sequence[tuple] | None = None,
               **kwargs) -> jax.Array:
    """Runs ``blocks`` in order on ``x``: ``x = block_i(x, *args, train=train, rng=key_i, **kwargs)``.

    Args:
      blocks: the blocks (an ``nnx.List``), each mapping ``x`` to an array of the same shape and
        dtype (tokens ``(B, N, D)`` or maps ``(B, H, W, C)``).
      x: the first block's input.
      args, kwargs: further inputs of every block (the same for all; static values or arrays).
      train, rng: dropout / drop-path switch and key; block i gets the i-th of
        ``jax.random.split(rng, len(blocks))`` (:func:`jaxmim.layers.split_key`).
      remat: a :data:`jaxmim.layers.REMAT_POLICIES` name, applied per block.
      scan: False runs the blocks unrolled (:func:`jaxmim.layers.call_block`); True runs
        ``len(blocks) // period`` groups of ``period`` blocks as one ``jax.lax.scan`` when there are
        at least two groups (otherwise unrolled), then any remaining blocks unrolled.
      period: blocks per scan step (2 for Swin's alternating shifts).
      keys: the blocks' keys, one per block (all None, or all keys), instead of splitting ``rng``
        (which must then be None): a family whose unrolled loop draws its blocks' keys from a
        longer split (HiViT: one key per block of every stage, plus one) keeps its numbers.
      position_args: ``period`` tuples; block ``i`` takes ``*position_args[i % period]`` before
        ``args`` (GreenMIM: the regular or the shifted partition and its index arrays).

    Returns:
      The last block's output, same shape and dtype as ``x``.

    Raises:
      ValueError: an unknown ``remat``; ``period < 1``; ``keys`` with ``rng``, or not one per block;
        ``position_args`` not ``period`` long;
        with ``scan``, groups whose blocks differ in
        more than their drop-path rate (other static attributes or variable shapes), or blocks with
        variables other than parameters and buffers (BatchNorm statistics).
    """
    n = len(blocks)
    if not isinstance(period, int) or period < 1:
        raise ValueError(f'run_blocks: period must be a positive int, got {period!r}')
    on, policy = L.remat_policy(remat)
    if keys is not None:
        keys = list(keys)
        if rng is not None or len(keys) != n or len({k is None for k in keys}) > 1:
            raise ValueError(f'run_blocks: keys must be {n} keys (or {n} Nones) given instead of rng, got '
                             f'{len(keys)} with rng {"set" if rng is not None else "None"}')
    if position_args is None:
        position_args = [()] * period
    if len(position_args) != period:
        raise ValueError(f'run_blocks: position_args must hold period={period} tuples, got {len(position_args)}')
    pargs = [tuple(a) + tuple(args) for a in position_args]
    groups = n // period if scan else 0
    if groups < 2:
        keys = L.split_key(rng, n) if keys is None else keys
        for i, (blk, key) in enumerate(zip(blocks, keys)):
            x = L.call_block(blk, x, *pargs[i % period], train=train, rng=key, remat=remat, **kwargs)
        return x

    blocks = list(blocks)
    done = groups * period
    rates = [_rate(b) for b in blocks[:done]]
    # per position in the period: scan the rates when they differ between groups
    scanned = [len({rates[g * period + p] for g in range(groups)}) > 1 for p in range(period)]
    graphdefs, states = [], []
    for i, blk in enumerate(blocks[:done]):
        _check_stateless(blk, i)
        p = i % period
        gd, state = _graphdef(blk, rates[i], scanned[p]), nnx.state(blk)
        if i < period:
            graphdefs.append(gd)
        elif gd != graphdefs[p] or jax.tree.structure(state) != jax.tree.structure(states[p]) or any(
                a.shape != b.shape or a.dtype != b.dtype
                for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(states[p]))):
            raise ValueError(f'scan_blocks: block {i} differs from block {p} in more than its drop-path '
                             f'rate (static attributes or variable shapes), so the {n} blocks cannot be '
                             f'scanned {period} at a time; run them with scan_blocks=False')
        states.append(state)
    # stacked[p]: the variables of the blocks at position p of every group, leaves (groups, ...)
    stacked = [jax.tree.map(lambda *leaves: jnp.stack(leaves), *states[p::period]) for p in range(period)]
    rate_arr = jnp.asarray([r or 0.0 for r in rates], jnp.float32).reshape(groups, period)
    if keys is not None:
        all_keys = None if keys[0] is None else jnp.stack(keys)
    else:
        all_keys = None if rng is None else jax.random.split(rng, n)
    keys = None if all_keys is None else all_keys[:done].reshape((groups, period) + all_keys.shape[1:])

    def one_block(p):
        def apply(state, y, key, rate):
            blk = nnx.merge(graphdefs[p], state)
            if scanned[p]:
                blk.drop_path = rate
            return blk(y, *pargs[p], train=train, rng=key, **kwargs)
        # prevent_cse=False: scan already keeps XLA from merging the recomputation with the forward
        return jax.checkpoint(apply, policy=policy, prevent_cse=False) if on else apply

    fns = [one_block(p) for p in range(period)]

    def body(y, xs):
        group_states, group_keys, group_rates = xs
        for p in range(period):
            key = None if group_keys is None else group_keys[p]
            y = fns[p](group_states[p], y, key, group_rates[p])
        return y, None

    x, _ = jax.lax.scan(body, x, (stacked, keys, rate_arr))
    tail_keys = L.split_key(None, n - done) if all_keys is None else list(all_keys[done:])
    for i, (blk, key) in enumerate(zip(blocks[done:], tail_keys), start=done):
        x = L.call_block(blk, x, *pargs[i % period], train=train, rng=key, remat=remat, **kwargs)
    return x
