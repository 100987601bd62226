"""The ops stage's Locust mix (`loadtests/locustfile.py`), paced: each simulated user makes at most
`--rate-per-user` calls a second (Locust's `constant_throughput`), so the soak runs at a chosen
fraction of capacity instead of flat out. Everything else (tasks, token, thresholds) is theirs."""

from __future__ import annotations

from typing import Any

from locust import constant_throughput, events

import loadtests.locustfile as mix  # a module import: its ApronUser must not run beside PacedUser

_rate_per_user = 1.0


@events.init_command_line_parser.add_listener
def add_options(parser: Any) -> None:
    parser.add_argument("--rate-per-user", type=float, default=1.0, help="soak: calls per second per simulated user")


@events.init.add_listener
def read_rate(environment: Any, **_kwargs: Any) -> None:
    global _rate_per_user
    if environment.parsed_options is not None:
        _rate_per_user = environment.parsed_options.rate_per_user


class PacedUser(mix.ApronUser):
    def wait_time(self) -> float:
        return constant_throughput(_rate_per_user)(self)
