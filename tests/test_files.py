"""jaxmim.files: small files are written whole or not at all."""

import json
import os
import stat

import pytest

from jaxmim import files


def test_write_json_round_trips_and_leaves_no_temporary(tmp_path):
    path = tmp_path / 'summary.json'
    obj = {'step': 3, 'history': [{'loss': 0.5}], 'name': 'ü'}
    files.write_json(path, obj)
    assert json.loads(path.read_text(encoding='utf-8')) == obj
    assert path.read_text(encoding='utf-8').endswith('\n')
    assert sorted(os.listdir(tmp_path)) == ['summary.json']


def test_failed_encoding_keeps_the_old_file(tmp_path):
    path = tmp_path / 'results.json'
    files.write_json(path, {'top1': 0.9})
    with pytest.raises(TypeError):
        files.write_json(path, {'top1': object()})
    assert json.loads(path.read_text()) == {'top1': 0.9}
    assert sorted(os.listdir(tmp_path)) == ['results.json']
    files.write_json(path, {'x': object()}, default=lambda o: 'obj')
    assert json.loads(path.read_text()) == {'x': 'obj'}


def test_failed_write_removes_the_temporary_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / 'config.json'
    files.write_text(path, 'old')

    def fail(src, dst):
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(os, 'replace', fail)
    with pytest.raises(OSError, match='No space'):
        files.write_text(path, 'new and longer')
    monkeypatch.undo()
    assert path.read_text() == 'old'
    assert sorted(os.listdir(tmp_path)) == ['config.json']


def test_mode_follows_the_umask_like_open(tmp_path):
    old = os.umask(0o022)
    try:
        files.write_text(tmp_path / 'a.txt', 'x')
        with open(tmp_path / 'b.txt', 'w') as f:
            f.write('x')
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / 'a.txt').st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / 'a.txt').st_mode) == stat.S_IMODE(os.stat(tmp_path / 'b.txt').st_mode)


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match='nowhere'):
        files.write_json(tmp_path / 'nowhere' / 'x.json', {})
