import os

import pytest

from vocos_distill.files import atomic_write, atomic_write_text


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = atomic_write_text(tmp_path / "sub" / "report.json", "old\n")
    assert path.read_text() == "old\n"

    def crash(f):
        f.write(b"half of the new")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(path, crash)
    assert path.read_text() == "old\n"
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]  # no temporary left
    atomic_write_text(path, "new\n")
    assert path.read_text() == "new\n"


def test_atomic_write_gives_the_permissions_open_would(tmp_path):
    previous = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "summary.md", "x")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o644
