"""loadtests/locust.conf against the options loadtests/locustfile.py defines: each default stated
once. In a subprocess: importing the locustfile patches the interpreter for gevent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The locustfile's options (those it adds to Locust's own) that a config file sets to their
# defaults, read the way Locust reads the file (its own config parser: `[section]` lines, `key: value`,
# booleans) and typed by the option's own parser
REPEATED_DEFAULTS = """
import json, sys
import loadtests.locustfile  # registers add_options
from locust import argument_parser, events
from locust.argument_parser import LocustConfigParser

conf = sys.argv[1]
own = {action.dest for action in argument_parser.get_empty_argument_parser()._actions}
parser = argument_parser.get_empty_argument_parser(default_config_files=[])
events.init_command_line_parser.fire(parser=parser)
added = {action.option_strings[0].removeprefix("--"): action for action in parser._actions
         if action.option_strings and action.dest not in own}
with open(conf) as stream:
    in_file = LocustConfigParser().parse(stream)
parsed, _ = parser.parse_known_args(["--config", conf])
repeated = {key: in_file[key] for key, action in added.items()
            if key in in_file and action.default is not None and getattr(parsed, action.dest) == action.default}
print(json.dumps({"options": sorted(added), "repeated": repeated}))
"""


def repeated_defaults(conf: Path) -> tuple[list[str], dict[str, str]]:
    """(the locustfile's options, those `conf` sets to their defaults)."""
    result = subprocess.run(
        [sys.executable, "-c", REPEATED_DEFAULTS, str(conf)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.splitlines()[-1])
    return found["options"], found["repeated"]


def test_the_conf_file_repeats_no_default_of_the_locustfiles_options() -> None:
    options, repeated = repeated_defaults(ROOT / "loadtests" / "locust.conf")
    assert {"k", "max-failure-ratio", "max-throttled-ratio"} <= set(options)  # the options are there to compare with
    # a conf value equal to the option's default is a second copy of it (one may change, not the other)
    assert not repeated, f"locust.conf repeats the locustfile's defaults: {repeated}"


def test_the_check_reads_the_file_as_locust_does(tmp_path: Path) -> None:
    """Sections, `key: value` and a value equal only once typed are repeats; other values are not."""
    conf = tmp_path / "locust.conf"
    conf.write_text("[locust]\nheadless = true\nk: 10\nmax-failure-ratio = 0.010\nweight-fresh = 40\n")
    assert repeated_defaults(conf)[1] == {"k": "10", "max-failure-ratio": "0.010"}
