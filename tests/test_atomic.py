"""atomic_write: the new file whole, or the old one untouched and no temporary left."""

from __future__ import annotations

import pytest

from prep.atomic import atomic_write, temp_path


def test_replaces_the_file_whole(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    atomic_write(path, lambda f: f.write(b"new contents"))
    assert path.read_bytes() == b"new contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_a_failure_while_filling_keeps_the_old_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def half_then_fail(f):
        f.write(b"half")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == b"old"
    assert not temp_path(path).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_temp_path_is_hidden_beside_the_target(tmp_path):
    assert temp_path(tmp_path / "ckpt_000010.pt") == tmp_path / ".ckpt_000010.pt.tmp"
