"""`python -m benchmarks.inline_batch`: the smallest batch the micro-batcher runs on the event loop
under load (`--inline-min-batch`), the default (1: every short run) against `--compare` values,
through whole gateways; where DEFAULT_INLINE_MIN_BATCH comes from.

Why it may matter: every call needs the event loop, and a scorer run on the loop pays the run's
fixed cost there (at 1,000 items most of a batch-1 run: its weights streamed again) for as many
calls as its batch holds. At 70% of the maximum throughput the batches are small, so inline runs
made the loop the bottleneck; the table's last column is that share of the loop, over the open loop
at `--load-fraction` of each gateway's own closed-loop rate, the load BENCHMARKS.md's p99 target is
stated at.

A synthetic 1,000-item model is exported as `apron serve` loads it; gateways with each setting take
turns, `--rounds` times, the order swapped each round, each measured as in
`benchmarks/switch_interval.py` (`settings_ab.measure`).
"""

from __future__ import annotations

from benchmarks.settings_ab import IntSetting, compare_main
from serving.config import DEFAULT_INLINE_MIN_BATCH

COMPARED = 4
SETTING = IntSetting("inline_min_batch", "`--inline-min-batch`", "batch size", DEFAULT_INLINE_MIN_BATCH, (COMPARED,))


def main(argv: list[str] | None = None) -> None:
    compare_main(SETTING, __doc__.split("\n\n")[0], "inline_batch", argv)


if __name__ == "__main__":
    main()
