"""Atomic replacement: readers see the old file or the new one; a failed write leaves no trace."""

from __future__ import annotations

from pathlib import Path

import pytest

from hfdistill.core.atomic import atomic_path, atomic_write_text


def test_replaces_the_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    target.write_text("old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    target.write_text("old")

    def write_half() -> None:
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_half()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_two_writers_never_share_a_temp_name(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    with atomic_path(target) as a, atomic_path(target) as b:
        assert a != b
        a.write_text("a")
        b.write_text("b")
    assert target.read_text() == "a"  # the last one to finish wins, whole
