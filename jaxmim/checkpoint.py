"""Checkpointing: a small wrapper over orbax's v0 ``CheckpointManager``.

A training state is a plain ``Mapping[str, pytree]``, e.g.
``{'params': params, 'opt_state': opt_state, 'step': jnp.int32 array}``. Each top-level entry
is saved as its own orbax item (a sub-directory of the step directory), so one entry, or a
sub-tree of one (``params['encoder']`` of a pre-training checkpoint), can be restored without
reading the others::

    <directory>/<step>/params/...   <directory>/<step>/opt_state/...   <directory>/<step>/step/...

Saving is asynchronous by default (orbax copies device arrays to host before ``save`` returns,
then writes in a background thread); orbax writes into ``<step>.orbax-checkpoint-tmp-*`` and
renames after every item is committed, so a crash never leaves a half-written ``<step>``
directory; unfinished temporaries are ignored by :meth:`Checkpointer.latest_step` and deleted
by a writing ``Checkpointer`` (in the background after it opens, at the latest before its first
save).

Restoring always takes an abstract target of ``jax.ShapeDtypeStruct`` with shardings
(:func:`abstract_like`), so a checkpoint saved on N devices restores onto any mesh (orbax
``CheckpointManager`` / ``StandardRestore`` documentation; google/orbax#648 is the failure mode of
restoring without one; design notes in ``docs/design.md``, "Checkpoints").

All processes of a multi-host job must call ``save`` / ``restore`` (orbax requirement).

A damaged step (a file deleted or truncated, a disk error) is not a dead end:
:meth:`Checkpointer.restore_newest_readable` tries the newest step, and when it cannot be read
(or fails the caller's check, e.g. non-finite values) says so, sets it aside as
``<step>.damaged`` (kept for inspection, never deleted; orbax ignores it) and falls back to the
next newest step that reads.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from orbax.checkpoint import checkpoint_managers as ocp_policies

PyTree = Any

__all__ = ['Checkpointer', 'abstract_like', 'restore_params', 'restore_subtree']


def _handler_registry() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
    """The item handlers of every :class:`Checkpointer`: orbax's PyTree handler with orbax's
    default type handlers, except that replica-parallel writing of ``jax.Array`` is on only in a
    multi-process job.

    Replica-parallel writing (orbax ``ArrayHandler(use_replica_parallel=...)``, on by default
    unless ``JAX_PLATFORMS`` names a GPU) splits an array replicated over R devices into R slices,
    cut on the device by eager ``lax.slice`` calls, one per replica, so that R hosts share the
    write. With every replica in one process the same process writes all R slices: nothing is
    shared, and the slicing costs a compilation per new shape and a dispatch per slice. Measured
    on the 2-core CPU, 8 devices, the tiny Swin of ``tests/test_train.py`` (data-parallel, every
    array replicated 8 times): the training window holding the first save took 13.8 s with it,
    0.45 s without (orbax 0.12.8, ``replica_slices.transfer_arrays_to_host``). Either way the
    checkpoint holds the same arrays and reads back the same.
    """
    from orbax.checkpoint._src.metadata import array_metadata_store  # the store orbax's default handler has

    array_handler = ocp.type_handlers.ArrayHandler(use_replica_parallel=jax.process_count() > 1,
                                                    array_metadata_store=array_metadata_store.Store())
    defaults = [(t, ocp.type_handlers.get_type_handler(t)) for t in (int, float, bytes, np.number, np.ndarray)]
    types = ocp.type_handlers.create_type_handler_registry(
        *defaults, (jax.Array, array_handler), (str, ocp.type_handlers.get_type_handler(str)))
    handler = ocp.PyTreeCheckpointHandler(type_handler_registry=types)
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    registry.add(None, ocp.args.PyTreeSave, handler)
    registry.add(None, ocp.args.PyTreeRestore, handler)
    return registry


def _replicated_sharding() -> jax.sharding.Sharding:
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ('_all',))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def abstract_like(tree: PyTree, shardings: PyTree | jax.sharding.Sharding | None = None) -> PyTree:
    """The restore target for ``tree``: a pytree of ``jax.ShapeDtypeStruct`` with shardings.

    Args:
        tree: pytree whose leaves have ``.shape`` and ``.dtype`` (``jax.Array``, ``np.ndarray``,
            ``jax.ShapeDtypeStruct``) or are Python / NumPy scalars.
        shardings: where the restored arrays should live:

            * ``None``: each leaf's own ``.sharding`` when it has one (``jax.Array``, or a
              ``ShapeDtypeStruct`` with a sharding), else replicated over all ``jax.devices()``;
            * a single ``jax.sharding.Sharding``: used for every leaf;
            * a pytree of shardings with the structure of ``tree``.

    Returns:
        Pytree with the structure of ``tree`` and ``jax.ShapeDtypeStruct(shape, dtype,
        sharding=...)`` leaves.

    Raises:
        ValueError: if a sharding tree does not match the structure of ``tree``.

    Source: jaxmim; orbax "restore with an abstract tree" (``ocp.args.StandardRestore`` docs).
    """
    default = None

    def leaf_abstract(x, sharding):
        nonlocal default
        if not hasattr(x, 'shape') or not hasattr(x, 'dtype'):
            x = np.asarray(x)
        if sharding is None:
            sharding = getattr(x, 'sharding', None)
        if sharding is None:
            if default is None:
                default = _replicated_sharding()
            sharding = default
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    if shardings is None or isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda x: leaf_abstract(x, shardings), tree)
    try:
        return jax.tree.map(leaf_abstract, tree, shardings)
    except ValueError as e:
        raise ValueError(f'shardings tree does not match the state tree: {e}') from e


def _restore_args(abstract: PyTree, partial: bool) -> ocp.args.PyTreeRestore:
    return ocp.args.PyTreeRestore(
        item=abstract,
        restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
        partial_restore=partial,
    )


class Checkpointer:
    """Periodic, asynchronous, keep-latest-N checkpointing of a training state.

    A step is saved when ``step % save_interval_steps == 0`` (or ``force=True``, or, in a
    multi-process job running JAX's preemption service, at the step all processes agreed on
    after a preemption notice); after each save only the ``max_to_keep`` most recent steps
    remain. Stopping cleanly on SIGTERM / SIGINT is the loop's job
    (:class:`jaxmim.resilience.StopSignals`: it saves with ``force=True`` and exits).

    Args:
        directory: checkpoint root (local path or any ``etils.epath`` URI such as ``gs://``);
            created if missing.
        save_interval_steps: save every this many steps (>= 1).
        max_to_keep: number of most recent checkpoints to keep (>= 1), or ``None`` for all.
        async_save: write in a background thread (``save`` returns once the arrays are copied to
            host memory); call :meth:`wait_until_finished` or :meth:`close` before exiting.
        read_only: only read: the directory must exist, nothing is created, deleted or cleaned
            up (safe on a directory another job is writing), and :meth:`save` raises.

    Raises:
        ValueError: for ``save_interval_steps < 1`` or ``max_to_keep < 1``.
        FileNotFoundError: with ``read_only`` when ``directory`` does not exist.

    Usage::

        with Checkpointer(workdir / 'ckpt', save_interval_steps=1000, max_to_keep=3) as ckpt:
            if ckpt.latest_step() is not None:
                state = ckpt.restore(target=abstract_like(state))
            for step in ...:
                ckpt.save(step, {'params': params, 'opt_state': opt_state, 'step': step_arr})

    Source: orbax v0 ``ocp.CheckpointManager`` with ``CheckpointManagerOptions(
    save_decision_policy=..., preservation_policy=..., enable_async_checkpointing=True)`` (orbax
    API reference); why orbax is wrapped: ``docs/design.md``, "Checkpoints".
    """

    def __init__(
        self,
        directory: str | epath.PathLike,
        *,
        save_interval_steps: int = 1,
        max_to_keep: int | None = None,
        async_save: bool = True,
        read_only: bool = False,
    ):
        if int(save_interval_steps) != save_interval_steps or save_interval_steps < 1:
            raise ValueError(
                f'save_interval_steps must be an integer >= 1, got {save_interval_steps!r}')
        if max_to_keep is not None and (int(max_to_keep) != max_to_keep or max_to_keep < 1):
            raise ValueError(f'max_to_keep must be None or an integer >= 1, got {max_to_keep!r}')
        path = epath.Path(directory)
        if '://' not in str(directory):
            path = path.absolute()
        self.directory = path
        self.read_only = bool(read_only)
        if self.read_only and not path.exists():
            raise FileNotFoundError(f'checkpoint directory {directory} does not exist')
        save_policy = ocp_policies.AnySavePolicy([
            ocp_policies.FixedIntervalPolicy(int(save_interval_steps)),
            ocp_policies.PreemptionCheckpointingPolicy(),
        ])
        keep_policy = ocp_policies.LatestN(n=None if max_to_keep is None else int(max_to_keep))
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=save_policy,
            preservation_policy=None if self.read_only else keep_policy,
            enable_async_checkpointing=bool(async_save),
            # Remove temporaries of saves that never finished (crash, preemption).
            cleanup_tmp_directories=not self.read_only,
            create=not self.read_only,
            read_only=self.read_only,
        )
        self._manager = ocp.CheckpointManager(path, options=options, handler_registry=_handler_registry())

    # -- queries ---------------------------------------------------------------------------

    def all_steps(self) -> list[int]:
        """Sorted list of the finalized (complete) checkpoint steps.

        Steps found on disk when the ``Checkpointer`` was opened plus those saved through it
        since, minus any whose asynchronous save has not been committed yet.
        """
        return sorted(int(s) for s in self._manager.all_steps()
                      if ocp.step.is_path_finalized(self.directory / str(int(s))))

    def latest_step(self) -> int | None:
        """The largest finalized step, or ``None`` when the directory holds no complete checkpoint.

        Temporaries of unfinished saves (``<step>.orbax-checkpoint-tmp-*``) are not steps.
        """
        steps = self.all_steps()
        return steps[-1] if steps else None

    def should_save(self, step: int) -> bool:
        """Whether :meth:`save` would write ``step`` without ``force`` (interval/preemption)."""
        return bool(self._manager.should_save(int(step)))

    # -- save / restore --------------------------------------------------------------------

    def save(self, step: int, state: Mapping[str, PyTree], *, force: bool = False) -> bool:
        """Save ``state`` as checkpoint ``step`` if the save policy says so (or ``force``).

        Args:
            step: non-negative training step (the directory name).
            state: mapping from item name (str, e.g. 'params', 'opt_state', 'step') to a pytree of
                ``jax.Array`` / ``np.ndarray`` / scalars; arrays may be sharded over any mesh.
                Do not delete (e.g. donate) the arrays before ``save`` returns.
            force: save regardless of the interval.

        Returns:
            True if a save was started (it completes asynchronously when ``async_save``).

        Raises:
            ValueError: for a negative step or a non-mapping / non-string-keyed state, or on a
                read-only ``Checkpointer``.
        """
        if self.read_only:
            raise ValueError(f'Checkpointer on {self.directory} is read-only')
        if int(step) != step or step < 0:
            raise ValueError(f'step must be a non-negative integer, got {step!r}')
        if not isinstance(state, Mapping) or not state:
            raise ValueError('state must be a non-empty mapping from item names to pytrees')
        for name in state:
            if not isinstance(name, str) or not name or '/' in name:
                raise ValueError(f'state keys must be non-empty strings without "/", got {name!r}')
        args = ocp.args.Composite(**{k: ocp.args.PyTreeSave(v) for k, v in state.items()})
        return bool(self._manager.save(int(step), args=args, force=force))

    def resolve_step(self, step: int | None) -> int:
        """The step ``step`` names: the latest finalized one for ``None``.

        Raises:
            FileNotFoundError: no complete checkpoint, or ``step`` is not one (available steps listed).
        """
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f'no complete checkpoint found in {self.directory}')
        if step is None:
            return steps[-1]
        if int(step) not in steps:
            raise FileNotFoundError(
                f'checkpoint step {step} not found in {self.directory}; available steps: {steps}')
        return int(step)

    def restore(
        self,
        step: int | None = None,
        *,
        target: Mapping[str, PyTree],
        partial: bool = False,
    ) -> dict[str, PyTree]:
        """Restore the items named in ``target`` from checkpoint ``step`` (default: latest).

        Args:
            step: checkpoint step; ``None`` for the latest complete one.
            target: mapping item name -> abstract pytree of ``jax.ShapeDtypeStruct`` with
                shardings (see :func:`abstract_like`); may name a subset of the saved items
                (e.g. only ``'params'``). The restored arrays get these shapes, dtypes and
                shardings, whatever mesh the checkpoint was saved from; container types
                (optax NamedTuples, int dict keys) come from the target.
            partial: allow each item's target to be a sub-tree of the saved item (orbax
                ``partial_restore``): only the leaves present in the target are read.

        Returns:
            ``dict`` item name -> restored pytree (``jax.Array`` leaves).

        Raises:
            FileNotFoundError: if the directory holds no complete checkpoint, ``step`` does not
                exist, or an item of ``target`` was not saved.
            ValueError: if ``target`` is not a non-empty mapping, or (from orbax) when the target
                does not match the saved tree.
        """
        if not isinstance(target, Mapping) or not target:
            raise ValueError(
                'target must be a non-empty mapping from item names to abstract pytrees')
        self._manager.wait_until_finished()   # a step saved just before is complete on disk
        step = self.resolve_step(step)
        step_dir = self.directory / str(step)
        missing = [k for k in target if not (step_dir / k).exists()]
        if missing:
            saved = sorted(p.name for p in step_dir.iterdir() if p.is_dir())
            raise FileNotFoundError(
                f'items {missing} not in checkpoint {step_dir}; saved items: {saved}')
        args = ocp.args.Composite(**{k: _restore_args(v, partial) for k, v in target.items()})
        restored = self._manager.restore(step, args=args)
        return {k: restored[k] for k in target}

    def restore_newest_readable(
        self,
        target: Mapping[str, PyTree],
        *,
        verify: Callable[[int, dict[str, PyTree]], None] | None = None,
        optional_items: Sequence[str] = (),
    ) -> tuple[int | None, dict[str, PyTree] | None, list[tuple[int, str, str]]]:
        """Restore the newest step that can be read, setting damaged newer ones aside.

        Steps are tried newest first. A step whose restore raises (truncated or missing file,
        corrupt metadata) or whose restored values ``verify`` rejects (by raising) is damaged;
        once an older step restores, every damaged newer step is renamed
        ``<step>.damaged[.N]`` (kept, never deleted; not a step for orbax) and reported. When
        no step restores, nothing is renamed and the newest step's error is raised (a target
        that matches no checkpoint is a caller error, not damage).

        Args:
            target: as :meth:`restore`.
            verify: ``(step, restored) -> None``, raising to reject a step.
            optional_items: items of ``target`` that a step may lack (they are then left out of
                the result; e.g. an item added by a newer version of the loop).

        Returns:
            ``(step, restored, damaged)``: ``(None, None, [])`` when the directory holds no
            complete checkpoint; ``damaged`` lists ``(step, error, set-aside path)``.

        Raises:
            Whatever restoring the newest step raised, when no step can be restored.
        """
        self._manager.wait_until_finished()
        failures: list[tuple[int, BaseException]] = []
        for step in reversed(self.all_steps()):
            step_dir = self.directory / str(step)
            tgt = {k: v for k, v in target.items()
                   if k not in optional_items or (step_dir / k).exists()}
            error = None
            try:
                restored = self.restore(step, target=tgt)
                if verify is not None:
                    verify(step, restored)
            except Exception as e:  # pylint: disable=broad-except  (any read error is damage)
                error = e
            if jax.process_count() > 1:   # every process takes the same decision
                from jax.experimental import multihost_utils
                bad = multihost_utils.process_allgather(np.int32(error is not None))
                if np.any(bad) and error is None:
                    error = RuntimeError('another process could not read it')
            if error is not None:
                logging.warning('checkpoint step %d in %s cannot be read: %s', step, self.directory, error)
                failures.append((step, error))
                continue
            damaged = [(s, _one_line(e), self._set_aside(s)) for s, e in failures]
            return step, restored, damaged
        if failures:
            raise failures[0][1]
        return None, None, []

    def _set_aside(self, step: int) -> str:
        """Renames step directory ``step`` to ``<step>.damaged[.N]`` (process 0) and reloads."""
        src = self.directory / str(step)
        dst = self.directory / f'{step}.damaged'
        n = 1
        while dst.exists():
            dst, n = self.directory / f'{step}.damaged.{n}', n + 1
        if jax.process_index() == 0 and not self.read_only:
            src.rename(dst)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f'jaxmim_set_aside_{step}')
        if not self.read_only:
            self._manager.reload()
            return os.fspath(dst)
        return os.fspath(src)

    # -- lifecycle -------------------------------------------------------------------------

    def wait_until_finished(self) -> None:
        """Block until every pending asynchronous save is committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Wait for pending saves and release orbax's resources (threads)."""
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _one_line(err: BaseException) -> str:
    text = ' '.join(str(err).split())
    return f'{type(err).__name__}: {text[:300]}'


def restore_subtree(
    directory: str | epath.PathLike,
    step: int | None,
    key_path: Sequence[Any],
    target: PyTree,
) -> PyTree:
    """Restore only ``state[key_path[0]][key_path[1]]...`` of a saved state.

    For fine-tuning from a SimMIM pre-training checkpoint::

        enc = restore_subtree(ckpt_dir, None, ('params', 'encoder'), abstract_like(encoder_params))

    reads the encoder weights only (no decoder, no optimizer state). Implemented with orbax's
    partial restore of one item.

    Args:
        directory: checkpoint root written by :class:`Checkpointer`.
        step: checkpoint step, or ``None`` for the latest complete one.
        key_path: item name followed by the keys (str or int) down to the wanted sub-tree;
            ``('params',)`` restores the whole params item.
        target: abstract pytree (``jax.ShapeDtypeStruct`` with shardings) of that sub-tree.

    Returns:
        The restored sub-tree (``jax.Array`` leaves with the target's shardings).

    Raises:
        FileNotFoundError: if ``directory`` does not exist or holds no complete checkpoint, or
            ``step`` / the item does not exist.
        ValueError: for an empty ``key_path``; from orbax if the sub-tree does not exist or does
            not match ``target``.

    Source: jaxmim; keeping only ``encoder.*`` of the pre-training model follows
    ``microsoft/SimMIM@d3e29bc utils.py:98-123`` (``load_pretrained``, prefix filter at
    ``:103-107``), and orbax ``PyTreeRestore(partial_restore=True)``.
    """
    if not key_path:
        raise ValueError('key_path must name at least the item (e.g. ("params",))')
    item, *keys = key_path
    nested = target
    for k in reversed(keys):
        nested = {k: nested}
    ckpt = Checkpointer(directory, async_save=False, read_only=True)
    try:
        restored = ckpt.restore(step, target={item: nested}, partial=bool(keys))[item]
    finally:
        ckpt.close()
    for k in keys:
        restored = restored[k]
    return restored


def _int_keys(tree: PyTree) -> PyTree:
    """Turn all-digit string dict keys back into ints (orbax stores ``{0: ...}`` as ``'0'``)."""
    if isinstance(tree, Mapping):
        return {(int(k) if isinstance(k, str) and k.isdigit() else k): _int_keys(v)
                for k, v in tree.items()}
    return tree


def restore_params(
    directory: str | epath.PathLike,
    step: int | None = None,
    *,
    key_path: Sequence[Any] = ('params',),
    sharding: jax.sharding.Sharding | None = None,
) -> PyTree:
    """Restore a sub-tree of a saved state with the shapes and dtypes *stored in the checkpoint*.

    Unlike :func:`restore_subtree` no target is needed, which is what loading a pre-trained
    encoder into a model of another shape requires (e.g. SimMIM window 6 -> fine-tuning window 7:
    the relative-position tables differ and are resized after loading, as in
    ``microsoft/SimMIM@d3e29bc utils.py:126-204``, ``remap_pretrained_keys_swin``). Only the
    leaves under ``key_path`` are read (orbax partial restore).

    Args:
        directory: checkpoint root written by :class:`Checkpointer`.
        step: checkpoint step, or ``None`` for the latest complete one.
        key_path: item name followed by keys down to the wanted sub-tree; default the whole
            ``'params'`` item; ``('params', 'encoder')`` reads only the encoder.
        sharding: sharding of every restored array; default replicated over all
            ``jax.devices()`` (valid on every process of a multi-host job).

    Returns:
        Nested dicts of ``jax.Array`` (stored shape and dtype). Orbax stores dict keys as
        strings; all-digit keys are turned back into ints, so the tree matches
        ``nnx.to_pure_dict`` trees (``layers.0.blocks.1`` -> ``['layers'][0]['blocks'][1]``).

    Raises:
        FileNotFoundError: if ``directory`` does not exist or holds no complete checkpoint, or
            ``step`` / the item does not exist.
        KeyError: if ``key_path`` does not exist in the saved item.
        ValueError: for an empty ``key_path``.

    Source: jaxmim; orbax ``PyTreeCheckpointHandler.metadata`` + ``PyTreeRestore``;
    microsoft/SimMIM@d3e29bc ``utils.py:98-123`` (load only ``encoder.*`` for fine-tuning).
    """
    if not key_path:
        raise ValueError('key_path must name at least the item (e.g. ("params",))')
    item, *keys = key_path
    ckpt = Checkpointer(directory, async_save=False, read_only=True)
    try:
        step = ckpt.resolve_step(step)
        item_dir = ckpt.directory / str(step) / str(item)
        if not item_dir.exists():
            raise FileNotFoundError(f'item {item!r} not in checkpoint {item_dir.parent}')
        handler = ocp.PyTreeCheckpointHandler()
        try:
            meta = handler.metadata(item_dir).tree
        finally:
            handler.close()
        sub = meta
        for k in keys:
            if not isinstance(sub, Mapping) or str(k) not in sub:
                raise KeyError(f'{".".join(map(str, key_path))!r} not found in checkpoint '
                               f'{item_dir}')
            sub = sub[str(k)]
        sharding = sharding or _replicated_sharding()
        abstract = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sharding), sub)
        nested = abstract
        for k in reversed(keys):
            nested = {str(k): nested}
        restored = ckpt.restore(step, target={item: nested}, partial=bool(keys))[item]
    finally:
        ckpt.close()
    for k in keys:
        restored = restored[str(k)]
    return _int_keys(restored)
