"""dca.paths: atomic writes of files and directories, stale temporaries, and the one manifest reader."""

from __future__ import annotations

import os

import pytest

from dca.errors import ManifestError
from dca.paths import (
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    read_manifest,
    remove_stale_temporaries,
    temporary_sibling,
)


def test_a_file_is_replaced_whole_or_not_at_all(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("killed")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["f.txt"]
    with atomic_path(path) as tmp:
        assert tmp.name.startswith(".f.txt.tmp-") and not path.read_text() == "new"
        tmp.write_text("new")
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["f.txt"]


def test_a_directory_is_replaced_whole(tmp_path):
    final = tmp_path / "adapter"
    final.mkdir()
    (final / "old.bin").write_bytes(b"1")
    with atomic_path(final) as tmp:
        tmp.mkdir()
        (tmp / "new.bin").write_bytes(b"2")
    assert [p.name for p in final.iterdir()] == ["new.bin"] and os.listdir(tmp_path) == ["adapter"]


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    target = tmp_path / "model.gguf"
    dead = tmp_path / ".model.gguf.tmp-999999999.f16"
    dead.write_bytes(b"partial")
    live = temporary_sibling(target)  # this process's own
    live.write_bytes(b"in progress")
    assert remove_stale_temporaries(target) == [dead]
    assert not dead.exists() and live.exists()


def test_read_manifest_returns_none_for_no_file_and_names_what_is_wrong(tmp_path):
    path = tmp_path / "manifest.json"
    assert read_manifest(path) is None
    atomic_write_json(path, {"format": "dca-x", "version": 1, "path": tmp_path})
    assert read_manifest(path, "dca-x") == {"format": "dca-x", "version": 1, "path": str(tmp_path)}
    with pytest.raises(ManifestError, match=r"format is 'dca-x', expected 'dca-y'"):
        read_manifest(path, "dca-y")
    path.write_text("[1, 2]")
    with pytest.raises(ManifestError, match="expected a JSON object, got list"):
        read_manifest(path)
    path.write_text("{broken")
    with pytest.raises(ManifestError, match="manifest.json: not JSON"):
        read_manifest(path)
