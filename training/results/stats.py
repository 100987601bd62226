"""Statistics over run records: a metric over seeds (`aggregate`) and the paired per-user
comparison of two rows scored on the same users (`paired_records`, `paired_difference`).

Both models of a comparison are evaluated on the same test users, so the question "is APRON's
NDCG@100 below the baseline's?" is answered by the per-user differences: their mean over users
(each user's value first averaged over the row's seeds), its standard error over users and a
95 % t interval. The per-user s.e. of each model alone mostly measures how users differ from
one another, which both models share; it is not the uncertainty of their difference.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from training.metrics import mean_stderr

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Cell:
    """One metric of one row over seeds: mean and s.e. over seeds, and the mean per-user s.e."""

    mean: float
    seed_stderr: float
    user_stderr: float
    n_seeds: int


def metric_value(record: dict[str, Any], metric: str) -> Any:
    """A record's metric. `*_intrinsic*` (γ = 0) figures (`pct_delta@20_intrinsic`,
    `delta@20_intrinsic_stderr`, ...) of records made before they were measured are the served ones
    when the record's run had no edit penalty: the two are equal by definition."""
    metrics = record["metrics"]
    if metric in metrics or "_intrinsic" not in metric:
        return metrics.get(metric)
    gamma = record.get("settings", {}).get("hyperparameters", {}).get("edit_penalty", 0.0)
    return metrics.get(metric.replace("_intrinsic", "", 1)) if not gamma else None


def scaled(value: Cell | None, factor: float) -> Cell | None:
    """A cell of `factor` × the metric (mean and both standard errors scale with it)."""
    if value is None:
        return None
    return Cell(value.mean * factor, value.seed_stderr * factor, value.user_stderr * factor, value.n_seeds)


def aggregate(records: list[dict[str, Any]], metric: str) -> Cell | None:
    values = [metric_value(r, metric) for r in records]
    values = [v for v in values if isinstance(v, int | float) and not math.isnan(v)]
    if not values:
        return None
    mean, seed_stderr = mean_stderr(np.array(values))
    users = [metric_value(r, f"{metric}_stderr") for r in records]
    users = [u for u in users if isinstance(u, int | float) and not math.isnan(u)]
    user_stderr = float(np.mean(users)) if users else float("nan")
    return Cell(mean, seed_stderr if len(values) > 1 else float("nan"), user_stderr, len(values))


@dataclass(frozen=True)
class Paired:
    """mean_u (a_u − b_u) over the users both rows scored, its s.e. and 95 % t interval."""

    mean: float
    stderr: float
    low: float
    high: float
    n_users: int


# Accuracy is "kept" only when it is shown not worse by more than a stated margin (non-inferiority),
# not when a difference merely fails to be significant: that reading passes more easily the fewer
# the users (a 4.8 % deficit passed on 54 % of 30-user subsets). The margin is relative to the
# reference row's mean NDCG@100 (the baseline, or the tuned row a sweep option is compared with).
NONINFERIORITY_MARGIN = 0.02
KEPT, LOST, NOT_SHOWN = "kept", "lost", "not shown"


@dataclass(frozen=True)
class Accuracy:
    """The non-inferiority reading of a paired interval of (row − reference) NDCG@100 against
    −margin (margin = NONINFERIORITY_MARGIN × the reference's mean): `KEPT` when the interval's
    lower end is ≥ −margin (a deficit larger than the margin is ruled out), `LOST` when its upper
    end is < −margin (a deficit larger than the margin is shown), else `NOT_SHOWN` (the interval
    reaches across −margin: it is too wide for either, more users are needed)."""

    outcome: str
    margin: float  # absolute, in NDCG@100
    paired: Paired

    @property
    def text(self) -> str:
        """'kept', 'lost' or 'not shown', with the bound it was read from against −margin."""
        p, m = self.paired, self.margin
        if self.outcome == KEPT:
            return f"accuracy kept: lower end {p.low:+.4f} ≥ −margin {-m:+.4f}"
        if self.outcome == LOST:
            return f"accuracy lost: upper end {p.high:+.4f} < −margin {-m:+.4f}"
        return f"accuracy not shown: lower end {p.low:+.4f} < −margin {-m:+.4f} ≤ upper end {p.high:+.4f}, more users needed"


def accuracy(paired: Paired, reference_mean: float) -> Accuracy:
    """`Accuracy` of a paired interval (row − reference) against the reference's mean NDCG@100."""
    margin = NONINFERIORITY_MARGIN * reference_mean
    outcome = KEPT if paired.low >= -margin else LOST if paired.high < -margin else NOT_SHOWN
    return Accuracy(outcome, margin, paired)


class Unpaired(ValueError):
    """Two rows that cannot be compared user by user: the message says why (the report prints it
    in place of their paired comparison, naming the rows)."""


def paired_difference(a: np.ndarray, b: np.ndarray) -> Paired:
    """Paired statistic of two (U,) arrays of the same users' values (NaN users dropped)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise Unpaired(f"paired values need the same users: shapes {a.shape} and {b.shape}")
    diff = a - b
    diff = diff[~np.isnan(diff)]
    if diff.size < 2:
        raise Unpaired(f"a paired interval needs at least 2 users with values in both rows, not {diff.size}")
    mean, stderr = mean_stderr(diff)
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, diff.size - 1)) * stderr
    return Paired(mean, stderr, mean - half, mean + half, int(diff.size))


def per_user_mean(records: list[dict[str, Any]], metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(users, each user's value averaged over the records' seeds); None when a record keeps no
    per-user values. Every record must have scored the same users."""
    if not records or any("per_user" not in r for r in records):
        return None
    users = np.asarray(records[0]["per_user"]["users"])
    values = []
    for r in records:
        if not np.array_equal(np.asarray(r["per_user"]["users"]), users):
            raise Unpaired(f"{r['part']}/{r['dataset']}/{r['row']} seed {r['seed']} scored other users than its row's other seeds")
        values.append(np.asarray(r["per_user"][metric], dtype=np.float64))
    return users, np.mean(values, axis=0)


def paired_records(a: list[dict[str, Any]], b: list[dict[str, Any]], metric: str = "ndcg@100") -> Paired | None:
    """The paired statistic of rows a and b (each a list of seed records) on `metric`; None when
    either keeps no per-user values; Unpaired when the two scored different people."""
    ma, mb = per_user_mean(a, metric), per_user_mean(b, metric)
    if ma is None or mb is None:
        return None
    # users are the rows of one prepared split: rows of two preparations (other filters, another
    # split) are other people under the same numbers
    fingerprints = [sorted({r.get("dataset_info", {}).get("fingerprint") for r in rows} - {None}) for rows in (a, b)]
    if len(set(fingerprints[0]) | set(fingerprints[1])) > 1:
        first, second = (", ".join(f[:12] for f in prints) or "none recorded" for prints in fingerprints)
        raise Unpaired(f"the two rows were scored on different preparations of the data (dataset fingerprint {first} against {second})")
    if not np.array_equal(ma[0], mb[0]):
        raise Unpaired("the two rows were scored on different users")
    return paired_difference(ma[1], mb[1])


def shown_time(record: dict[str, Any]) -> float:
    """When a record's numbers were first in view: `first_created_at` (kept across reruns), else
    when it was written."""
    first = record.get("first_created_at")
    return float(first) if isinstance(first, int | float) else record_time(record)


def record_time(record: dict[str, Any]) -> float:
    """When a record was written (seconds since the epoch): `created_at`, else its minute `date`."""
    if isinstance(record.get("created_at"), int | float):
        return float(record["created_at"])
    when = dt.datetime.strptime(record["date"], "%Y-%m-%d %H:%M UTC").replace(tzinfo=dt.UTC)
    return when.timestamp()
