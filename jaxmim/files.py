"""Small files written whole or not at all: run configs, summaries, results and benchmark records.

A reader (a resumed run, ``launch/compare.py``, a user's script) must never find half a JSON file
after a crash, a preemption or a full disk. Each writer here writes a temporary file in the same
directory (opened with ``O_EXCL``, so two writers never share it, and mode ``0o666`` less the
umask, as ``open(path, 'w')`` would give), flushes and ``fsync``\\ s it, renames it over ``path``
with ``os.replace`` (atomic on POSIX when both are on one file system) and ``fsync``\\ s the
directory so the rename survives a power loss. On any error the temporary file is removed and an
existing ``path`` keeps its old content.

Why not a library: the standard library has no atomic write; orbax's atomic commit is for
checkpoint directories, and ``etils.epath.Path.write_text`` writes in place. Checkpoints go through
orbax (:mod:`jaxmim.checkpoint`), not through this module. Local paths only (``gs://`` is not
supported by the run directories either).
"""

from __future__ import annotations

import json
import os
import secrets
from typing import Any

__all__ = ['write_text', 'write_json']


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:          # a platform without directory handles: the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:          # a file system that cannot sync a directory: the rename is done
        pass
    finally:
        os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically: afterwards ``path`` holds either its old
    content or all of ``text``, never a part.

    Args:
      path: a local file path; its directory must exist.
      text: the whole content.

    Raises:
      FileNotFoundError: the directory of ``path`` does not exist.
      OSError: the file system refused the write or the rename (``path`` is left as it was).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = f'{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp'
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, 'w', encoding='utf-8') as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 1, sort_keys: bool = False,
               default=None) -> None:
    """Writes ``obj`` as JSON to ``path`` atomically (:func:`write_text`); the text is made in
    full before anything is written, so an object JSON cannot encode leaves ``path`` untouched.

    Args:
      path: a local file path; its directory must exist.
      obj: what ``json.dumps`` accepts (with ``default`` for other leaves, e.g. ``str``).
      indent, sort_keys, default: as ``json.dumps``. A newline ends the file.

    Raises:
      TypeError: ``obj`` holds a value JSON cannot encode and no ``default`` handles it.
      ValueError: ``obj`` is circular.
      FileNotFoundError, OSError: see :func:`write_text`.
    """
    write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, default=default) + '\n')
