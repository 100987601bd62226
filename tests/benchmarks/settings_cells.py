"""What every gateway A/B's row holds (`benchmarks.settings_ab.median_cells`), checked once for the
tests of the commands that render it: measured figures, each in its column's range."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from benchmarks.settings_ab import FIELDS


def check_sample_cells(cells: Sequence[str], load_fraction: float = 0.7) -> None:
    """`cells`: a row's cells from its first median on (the columns of FIELDS; trailing cells after
    them are the caller's to check)."""
    assert len(cells) >= len(FIELDS), cells
    rate, p50, p99, cpu, open_rate, open_p99, one, gc_us = (float(cell) for cell in cells[:8])
    assert rate > 0 and 0 < p50 <= p99 and cpu > 0 and one > 0 and gc_us >= 0
    assert open_rate == pytest.approx(load_fraction * rate, abs=1) and open_p99 > 0  # of its own closed loop
    busy = cells[8].strip()
    assert busy.endswith("%") and 0 < int(busy[:-1]) <= 200, busy  # a share of the loop: the open loop did work on it
