"""loadtests/locust.conf against the options loadtests/locustfile.py defines: each default stated
once. In a subprocess: importing the locustfile patches the interpreter for gevent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# the defaults of the options the locustfile adds to Locust's own, from the parser Locust builds
OPTION_DEFAULTS = """
import json
import loadtests.locustfile  # registers add_options
from locust import argument_parser, events

def defaults(parser):
    return {a.option_strings[0].removeprefix("--"): a.default for a in parser._actions if a.option_strings}

locust_own = defaults(argument_parser.get_empty_argument_parser())
parser = argument_parser.get_empty_argument_parser()
events.init_command_line_parser.fire(parser=parser)
print(json.dumps({name: default for name, default in defaults(parser).items() if name not in locust_own}))
"""


def conf_settings(path: Path) -> dict[str, str]:
    """`key = value` lines of a Locust config file (comments and blank lines skipped)."""
    settings = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, value = (part.strip() for part in line.split("=", 1))
            settings[key] = value
    return settings


def test_the_conf_file_repeats_no_default_of_the_locustfiles_options() -> None:
    result = subprocess.run(
        [sys.executable, "-c", OPTION_DEFAULTS],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    defaults = json.loads(result.stdout.splitlines()[-1])
    assert {"k", "max-failure-ratio", "max-throttled-ratio"} <= defaults.keys()  # the options are there to compare with
    settings = conf_settings(ROOT / "loadtests" / "locust.conf")
    # a conf value equal to the option's default is a second copy of it (one may change, not the other)
    repeated = {
        key: value for key, value in settings.items()
        if key in defaults and defaults[key] is not None and type(defaults[key])(value) == defaults[key]
    }  # fmt: skip
    assert not repeated, f"locust.conf repeats the locustfile's defaults: {repeated}"
