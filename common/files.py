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


def replace_dir(staging: Path, path: Path) -> None:
    """Rename `staging` to `path`; an existing `path` is moved aside first and deleted after."""
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
