"""The `loadtests` commands run from an installed package, outside a checkout: the wheel that
pyproject.toml builds is installed into a folder of its own, and each command starts from another
directory with only that folder on the path (no `tests`, no checkout)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ("loadtests.faults", "loadtests.shedding", "loadtests.soak.soak")
COPY_IGNORED = (".git", ".venv", "third_party", "artifacts", "model_repository", "build", "*.egg-info", "__pycache__", "wheelhouse")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wheels, target = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("site")
    source = tmp_path_factory.mktemp("source") / "apron"  # a copy: building writes build/ and egg-info beside the sources
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*COPY_IGNORED))
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(source)]
    subprocess.run(build, check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("*.whl")
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=300)
    return target


@pytest.mark.parametrize("command", COMMANDS)
def test_loadtest_command_runs_from_the_installed_package(installed: Path, command: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(installed)}
    result = subprocess.run([sys.executable, "-m", command, "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    probe = f"import {command.rpartition('.')[0] or command} as m, loadtests; print(loadtests.__file__)"
    where = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert where.stdout.startswith(str(installed)), where.stdout + where.stderr  # the installed copy, not the checkout
    assert (installed / "loadtests" / "locust.conf").is_file()
    assert not (installed / "tests").exists()
