"""`apron` / `apron --help`: the overview lists every command with its help and imports no stage
library (numpy alone took most of a second; torch several: the overview must stay instant)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cli

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("numpy", "torch", "scipy", "grpc", "onnxruntime", "redis")


def test_the_overview_imports_no_stage_library() -> None:
    code = "import sys, cli; cli.build_parser(overview=True).format_help(); print(' '.join(m for m in sys.argv[1:] if m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code, *HEAVY], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_overview_lists_every_command_with_its_help() -> None:
    text = cli.build_parser(overview=True).format_help()
    for name, (_add, _extra, help_text) in cli.stage_commands().items():
        assert name in text
        assert help_text.replace("%%", "%").split()[0] in text


def test_a_command_still_gets_its_full_parser() -> None:
    args = cli.build_parser("token").parse_args(["token", "--sub", "someone"])
    assert args.command == "token" and args.sub == "someone"
