import os

import pytest

from edgeseg.runtime.fileio import atomic_write_bytes


def test_atomic_write_replaces_whole_and_follows_umask(tmp_path):
    p = atomic_write_bytes(tmp_path / "sub" / "a.bin", b"old")
    atomic_write_bytes(p, b"new")
    assert p.read_bytes() == b"new"
    umask = os.umask(0)
    os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    p = atomic_write_bytes(tmp_path / "a.bin", b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(p, "not bytes")
    assert p.read_bytes() == b"old"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.bin"]


def test_staged_dir_swaps_in_a_complete_folder_or_nothing(tmp_path):
    from edgeseg.runtime.fileio import staged_dir

    dest = tmp_path / "bundle"
    with staged_dir(dest) as d:
        (d / "a.txt").write_text("v1")
        assert not dest.exists(), "the folder appeared before it was complete"
    assert (dest / "a.txt").read_text() == "v1"
    with pytest.raises(RuntimeError, match="interrupted"):
        with staged_dir(dest) as d:
            (d / "a.txt").write_text("half")
            raise RuntimeError("interrupted")
    assert (dest / "a.txt").read_text() == "v1" and sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    with staged_dir(dest) as d:
        (d / "b.txt").write_text("v2")
    assert sorted(p.name for p in dest.iterdir()) == ["b.txt"]
