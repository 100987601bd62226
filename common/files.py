"""Atomic file writes: write a temp file beside the target, then rename it over the target.

A crash or an exception mid-write never leaves a half-written file: readers see the old file or
the new one. The temp file sits in the target's directory because a rename is atomic only within
one filesystem.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

# mkstemp creates 0600 files; a written artifact (dataset, checkpoint, report) is meant to be read.
FILE_MODE = 0o644


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp", mode: int = FILE_MODE) -> Iterator[Path]:
    """Yield a temp path beside `path` to write to; on normal exit it replaces `path`, on an
    exception it is deleted and `path` is untouched. For writers that want a file name
    (`torch.save`, `fig.savefig`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes, mode: int = FILE_MODE) -> Path:
    with atomic_path(path, mode=mode) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, mode: int = FILE_MODE) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), mode)


class NotOurs(FileExistsError):
    """`replace_dir` was asked to replace something it did not write (user data): refused."""


def check_replaceable(path: Path, marker: str) -> None:
    """NotOurs unless `path` is free, or a directory holding `marker` (see `replace_dir`): for a
    command to refuse before its work, not after."""
    ours = path.is_dir() and not path.is_symlink() and (path / marker).is_file()
    if (path.exists() or path.is_symlink()) and not ours:
        kind = "a directory" if path.is_dir() and not path.is_symlink() else "a file"
        raise NotOurs(f"{path} exists and is {kind} this did not write (no {marker}): it is left as it is; "
                      "choose another path, or remove it first")  # fmt: skip


def replace_dir(staging: Path, path: Path, marker: str) -> None:
    """Rename `staging` to `path`; an existing `path` is moved aside first and deleted after, but
    only a directory that holds `marker` (the file that marks what this writer makes: a processed
    dataset's dataset.json, say). Anything else there is the user's: NotOurs, nothing touched."""
    check_replaceable(path, marker)
    old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
    if path.exists():
        path.rename(old)
    try:
        staging.rename(path)
    except BaseException:
        if old.exists():
            old.rename(path)
        raise
    if old.exists():
        shutil.rmtree(old)
