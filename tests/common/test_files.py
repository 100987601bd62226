"""common/files.py: the one atomic write-then-rename helper."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from common.files import FILE_MODE, atomic_path, atomic_write_text


def test_atomic_write_replaces_the_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "report.md"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == FILE_MODE  # readable, not mkstemp's private 0600
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.md"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.pt"
    atomic_write_text(target, "complete")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_the_temp_file_sits_beside_the_target_with_the_asked_suffix(tmp_path: Path) -> None:
    target = tmp_path / "features.npy"
    with atomic_path(target, suffix=".npy") as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".npy") and tmp.name.startswith(".features.npy.")
        tmp.write_bytes(b"x")
    assert target.read_bytes() == b"x"


def test_replace_dir_replaces_only_what_it_wrote(tmp_path: Path) -> None:
    """Only a directory holding the writer's marker is replaced; anything else at the path is left
    as it is (`apron prepare --out` over the user's data: tests/training/data/test_prepare_cli.py)."""
    from common.files import NotOurs, replace_dir

    def staged(name: str) -> Path:
        staging = tmp_path / f".{name}.tmp"
        staging.mkdir()
        (staging / "dataset.json").write_text(name)
        return staging

    unmarked = tmp_path / "unmarked"
    unmarked.mkdir()
    staging = staged("refused")
    with pytest.raises(NotOurs, match="unmarked exists and is a directory this did not write \\(no dataset.json\\)"):
        replace_dir(staging, unmarked, "dataset.json")
    assert staging.is_dir() and list(unmarked.iterdir()) == []  # both as they were: the caller cleans up
    ours = tmp_path / "ours"
    replace_dir(staged("first"), ours, "dataset.json")  # free: taken
    replace_dir(staged("second"), ours, "dataset.json")  # its own: replaced
    assert (ours / "dataset.json").read_text() == "second"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ours")] == []
