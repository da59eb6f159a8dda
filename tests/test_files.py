"""marn.files: a write that fails leaves the old file (or folder) whole and no temporary behind."""

from __future__ import annotations

import hashlib

import pytest

from marn.files import atomic_path, atomic_write_text, file_sha256


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing_behind(tmp_path):
    path = tmp_path / "sub" / "record.json"
    atomic_write_text(path, "old\n")
    with pytest.raises(RuntimeError), atomic_path(path) as temporary:
        temporary.write_text("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old\n" and sorted(p.name for p in path.parent.iterdir()) == ["record.json"]
    atomic_write_text(path, "new\n")
    assert path.read_text() == "new\n" and file_sha256(path) == hashlib.sha256(b"new\n").hexdigest()


def test_a_folder_is_replaced_whole(tmp_path):
    folder = tmp_path / "prepared"
    for content in ("first", "second"):
        with atomic_path(folder) as temporary:
            temporary.mkdir()
            (temporary / "a.txt").write_text(content)
    assert (folder / "a.txt").read_text() == "second" and [p.name for p in tmp_path.iterdir()] == ["prepared"]
    with pytest.raises(RuntimeError), atomic_path(folder) as temporary:
        temporary.mkdir()
        raise RuntimeError("killed")
    assert (folder / "a.txt").read_text() == "second" and [p.name for p in tmp_path.iterdir()] == ["prepared"]
