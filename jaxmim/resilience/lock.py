"""One run per workdir: an ``fcntl.flock`` on ``<workdir>/.lock`` naming its holder.

:class:`WorkdirLock` holds the lock (process 0 only) with the holder's host, pid and start time
as the file's content. The kernel drops the lock when the process dies, so a crash leaves no
stale lock; a second process stops at once with :class:`WorkdirLocked` naming the holder.
(``flock`` on NFS is only as reliable as the server's lock support.)
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time

__all__ = ['WorkdirLocked', 'WorkdirLock', 'release_workdir']


class WorkdirLocked(ValueError):
    """Another live process holds the workdir's lock (the message names it)."""


_HELD: dict[str, 'WorkdirLock'] = {}


class WorkdirLock:
    """An exclusive ``fcntl.flock`` on ``<workdir>/.lock`` naming its holder.

    Re-entrant within one process (a second ``acquire`` of a workdir this process already holds
    returns the same lock). Released by :meth:`release` or when the process exits, whatever the
    cause (the kernel drops ``flock`` locks with the file descriptor), so no lock is ever stale.

    Raises (``acquire``):
      WorkdirLocked: another process holds it; the message names host, pid and start time.
    """

    def __init__(self, workdir: str):
        self.path = os.path.join(os.path.abspath(workdir), '.lock')
        self._fd: int | None = None

    @classmethod
    def acquire(cls, workdir: str) -> 'WorkdirLock':
        """Takes the lock of ``workdir`` (created if missing) or raises :class:`WorkdirLocked`."""
        lock = cls(workdir)
        if lock.path in _HELD:
            return _HELD[lock.path]
        fd = os.open(lock.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(fd, 4096, 0).decode(errors='replace').strip() or 'unknown process'
            finally:
                os.close(fd)
            raise WorkdirLocked(
                f'workdir {os.path.dirname(lock.path)!r} is in use by another run ({holder}); '
                'wait for it to finish or stop it, or pass another --workdir') from None
        info = json.dumps({'host': socket.gethostname(), 'pid': os.getpid(),
                           'since': time.strftime('%Y-%m-%d %H:%M:%S %Z')})
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        lock._fd = fd
        _HELD[lock.path] = lock
        return lock

    def release(self) -> None:
        """Drops the lock (the file stays; its content is stale but harmless)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        _HELD.pop(self.path, None)


def release_workdir(workdir: str) -> None:
    """Releases this process's lock on ``workdir`` if it holds one."""
    lock = _HELD.get(os.path.join(os.path.abspath(workdir), '.lock'))
    if lock is not None:
        lock.release()


# ----------------------------------------------------------------------------------------
