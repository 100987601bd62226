"""`python -m benchmarks.gc_threshold`: the gateway's youngest-generation garbage-collection threshold
(`--gc-gen0-threshold`), the default against Python's own 700 (and any `--compare` value), through
whole gateways; where the default GC_GEN0_THRESHOLD comes from.

Why it may matter: every call's objects (its task, its futures, its messages) are young while the
call is in flight; at Python's 700 allocations the collector runs every few calls, finds the objects
of every call in flight alive and moves them into the older generations, whose collections scan
them again (BENCHMARKS.md's tail evidence counts the gateway's pauses). The table's last column is
what that costs: the gateway's collections per call, from its own `apron_gc_pause_seconds`.

A synthetic 1,000-item model is exported as `apron serve` loads it; gateways with each threshold
take turns, `--rounds` times, the order swapped each round, each measured as in
`benchmarks/switch_interval.py` (`settings_ab.measure`).
"""

from __future__ import annotations

from benchmarks.settings_ab import IntSetting, compare_main
from serving.config import GC_GEN0_THRESHOLD

PYTHONS_OWN = 700
SETTING = IntSetting(
    "gc_gen0_threshold", "gen0 threshold", "threshold", GC_GEN0_THRESHOLD, (PYTHONS_OWN,), {PYTHONS_OWN: "Python's own"}
)


def main(argv: list[str] | None = None) -> None:
    compare_main(SETTING, __doc__.split("\n\n")[0], "gc_threshold", argv)


if __name__ == "__main__":
    main()
