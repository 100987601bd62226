"""The README's make targets on a machine where the venv's python is what `python -m venv` makes:
a symlink to the system interpreter, which make must never touch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_install_marks_its_own_file_and_never_the_interpreter_the_venv_links_to(tmp_path: Path) -> None:
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "install.sh", tmp_path / "scripts" / "install.sh")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").symlink_to(os.path.realpath(sys.executable))

    def dry_run() -> list[str]:
        # -n: print what would run; the recipes read nothing but the files above. Under `make test`
        # the outer make's variables would make this one a sub-make that prints its directory.
        environ = {key: value for key, value in os.environ.items() if key not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
        result = subprocess.run(
            ["make", "--no-print-directory", "-n", "install"], cwd=tmp_path, env=environ, capture_output=True, text=True, check=True
        )
        return result.stdout.splitlines()

    steps = dry_run()
    assert steps == ["bash scripts/install.sh", "touch .venv/.installed"], steps
    (tmp_path / ".venv" / ".installed").touch()
    os.utime(tmp_path / ".venv" / ".installed", (1e10, 1e10))  # newer than its prerequisites
    assert not any(step.startswith(("bash", "touch")) for step in dry_run())
