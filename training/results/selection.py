"""Choosing on validation users, and the protocol that keeps the choice blind to test users.

- `goal_choice`: issue 10's rule on the old APRON sweep (kept to describe that sweep).
- `tune_choice`: issue 21's rule on the `tune` part: a baseline's configuration is the one with the
  highest val NDCG@100; APRON's is, of the options whose val %Δ@20 intrinsic (γ = 0) is >= 40, the
  one with the highest val NDCG@100 (none: the goal is missed on validation already).
- `final_jobs`: the `final` part, one job per model with its chosen configuration. A model's
  final job exists only once every tuning configuration of that model has a current record.
- `protocol`: whether a dataset's verdict may be printed: the tuning is complete, the final
  records have the chosen settings, and every validation record considered was written before
  the test records it must not see (`first_test`: a model's before every test-split record of
  the same model on the dataset, whatever its part (main, ablations, final), and APRON's also
  before any final record), so a candidate set defined, or a sweep round added, with test
  numbers in view is refused, naming the test record and its date.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from training.evaluate import CONTROL_K
from training.results.catalogue import (
    CAP_FREE_MODELS,
    GOAL_METRIC,
    GOAL_PCT_DELTA,
    LABELS,
    TUNED_MODELS,
    Job,
    jobs,
    recorded_settings,
)
from training.results.stats import aggregate, record_time, shown_time


def is_current(job: Job, record: dict[str, Any]) -> bool:
    """Whether a record is the run `job` would make now (`carries_over`: a raised cap)."""
    return recorded_settings(record) == job.settings() or carries_over(job, record)


def carries_over(job: Job, record: dict[str, Any]) -> bool:
    """A record made under a lower epoch cap is the job's run when only the cap changed, the model's
    training ignores the cap (CAP_FREE_MODELS) and early stopping ended the run before that cap:
    the epochs it ran are the ones a higher cap runs, and the higher cap stops where it stopped."""
    recorded, now = recorded_settings(record), job.settings()
    if not isinstance(recorded, dict) or job.model not in CAP_FREE_MODELS:
        return False
    old_cap = recorded.get("epochs")
    return (
        {**recorded, "epochs": now["epochs"]} == now
        and isinstance(old_cap, int)
        and old_cap < now["epochs"]
        and record.get("epochs_run", old_cap) < old_cap
    )


def current_records(job: Job, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of `job`'s row whose settings are the job's."""
    return [r for r in records if (r["part"], r["dataset"], r["row"]) == (job.part, job.dataset, job.row)
            and is_current(job, r)]  # fmt: skip


def goal_choice(sweep: dict[str, list[dict[str, Any]]]) -> str | None:
    """Issue 10's rule on the old sweep, on validation users: of the options with val %Δ@20 >= 40
    (served), the one with the highest val NDCG@100, ties (options that differ only in the edit
    penalty γ, a scoring-time term: their records tie where γ did not move training, which records
    made before it was kept out of the loss do not promise) to the higher val %Δ@20. None: none
    reaches it."""
    pct = {key: aggregate(rows, f"pct_delta@{CONTROL_K}") for key, rows in sweep.items()}
    eligible = [key for key, cell in pct.items() if cell and cell.mean >= GOAL_PCT_DELTA]
    ranked = sorted(eligible, key=lambda k: (aggregate(sweep[k], "ndcg@100").mean, pct[k].mean, k))
    return ranked[-1] if ranked else None


@dataclass(frozen=True)
class Tuning:
    """A model's tuning sweep on one dataset: its jobs, the current records of each, the choice."""

    dataset: str
    model: str
    jobs: list[Job]
    records: dict[str, list[dict[str, Any]]]  # row -> current records
    choice: Job | None

    @property
    def complete(self) -> bool:
        return all(self.records[j.row] for j in self.jobs)


def tune_choice(model: str, rows: dict[str, list[dict[str, Any]]]) -> str | None:
    """The row chosen on validation among `rows` (row -> records; see the module's rules)."""
    ndcg = {row: aggregate(records, "ndcg@100") for row, records in rows.items() if records}
    eligible = [row for row, cell in ndcg.items() if cell is not None]
    if model == "apron":
        pct = {row: aggregate(rows[row], GOAL_METRIC) for row in eligible}
        eligible = [row for row in eligible if pct[row] is not None and pct[row].mean >= GOAL_PCT_DELTA]
    ranked = sorted(eligible, key=lambda row: (ndcg[row].mean, row))
    return ranked[-1] if ranked else None


def tunings(dataset: str, records: list[dict[str, Any]]) -> list[Tuning]:
    """Every tuned model's sweep on `dataset`, with its choice when the sweep is complete."""
    out = []
    for model in TUNED_MODELS:
        model_jobs = jobs("tune", [dataset], [model])
        current = {j.row: current_records(j, records) for j in model_jobs}
        complete = all(current.values())
        row = tune_choice(model, current) if complete else None
        choice = next((j for j in model_jobs if j.row == row), None)
        out.append(Tuning(dataset, model, model_jobs, current, choice))
    return out


def final_jobs(datasets: list[str], records: list[dict[str, Any]]) -> tuple[list[Job], list[str]]:
    """The final part's jobs (the chosen configurations, test users) and why any are missing. A
    model's job exists once its own tuning sweep is complete: its choice reads its validation
    records only, so a model whose sweep is done need not wait for the others'."""
    out, notes = [], []
    for name in datasets:
        for t in tunings(name, records):
            if not t.complete:
                missing = sum(1 for j in t.jobs if not t.records[j.row])
                notes.append(f"final/{name}/{t.model}: waits for its tune part ({missing} of {len(t.jobs)} "
                             "validation runs missing); no configuration is chosen before all are recorded")  # fmt: skip
                continue
            if t.choice is None:
                notes.append(f"final/{name}/{t.model}: no option reached val %Δ@20 intrinsic ≥ {GOAL_PCT_DELTA:.0f}")
                continue
            option = t.choice.row.split(":", 1)[1]
            out.append(Job("final", name, t.model, f"{LABELS[t.model]} ({option})", t.model, t.choice.run, "test",
                           tuned_row=t.choice.row))  # fmt: skip
    return out, notes


@dataclass(frozen=True)
class Protocol:
    """Whether a dataset's verdict may be printed, and if not, why."""

    allowed: bool
    reason: str
    final: dict[str, list[dict[str, Any]]]  # model -> current final records (the chosen settings)
    # `blindness_breaches`: the choice saw test numbers; the figures can still be shown, as measured
    breaches: tuple[str, ...] = ()


def first_test(model: str, dataset: str, records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first test-split record that `model`'s validation records on `dataset` must precede:
    any test record of the same model, whatever its part (a main or ablation row scored on test
    users shows test numbers as much as a final one does), and for APRON (the goal row) also any
    final record, so no test number of any tuned model was in view when its configuration was
    chosen. None: there is none."""
    seen = [r for r in records if r["dataset"] == dataset and _is_test(r)
            and (r["model"] == model or (model == "apron" and r["part"] == "final"))]  # fmt: skip
    return min(seen, key=shown_time, default=None)


def _is_test(record: dict[str, Any]) -> bool:
    """A test-split record (`split`; records without one: every part but the validation ones)."""
    return record.get("split", "val" if record["part"] in ("tune", "sweep") else "test") == "test"


def blindness_breaches(dataset: str, sweeps: list[Tuning], records: list[dict[str, Any]]) -> list[str]:
    """One sentence per model whose validation records do not all precede `first_test`: the
    validation rows written later, the test record and its date, said plainly."""
    out = []
    for t in sweeps:
        first = first_test(t.model, dataset, records)
        if first is None:
            continue
        late = sorted({r["row"] for rows in t.records.values() for r in rows if record_time(r) >= shown_time(first)})
        if late:
            whose = "the same model" if first["model"] == t.model else f"{LABELS[first['model']]}, in the final part"
            when = dt.datetime.fromtimestamp(shown_time(first), dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
            runs = sum(1 for rows in t.records.values() for _ in rows)
            out.append(
                f"{LABELS[t.model]}: test record `{first['part']}/{dataset}/{first['row']}` seed {first['seed']} "
                f"({when}, {whose}) precedes {len(late)} of its {runs} validation records (e.g. `{late[0]}`), so its "
                "candidate set was defined with that test number in view"
            )
    return out


def protocol(dataset: str, records: list[dict[str, Any]]) -> Protocol:
    sweeps = tunings(dataset, records)
    if not all(t.complete for t in sweeps):
        missing = [j.row for t in sweeps for j in t.jobs if not t.records[j.row]]
        return Protocol(False, f"the tuning sweep is incomplete ({len(missing)} validation runs missing, e.g. "
                        f"`{missing[0]}`), so nothing is chosen yet", {})  # fmt: skip
    chosen, _ = final_jobs([dataset], records)
    final = {job.model: current_records(job, records) for job in chosen}
    stale = sorted({r["row"] for r in records if (r["part"], r["dataset"]) == ("final", dataset)}
                   - {m for m, rows in final.items() if rows})  # fmt: skip
    breaches = blindness_breaches(dataset, sweeps, records)
    if breaches:
        return Protocol(False, "refused, the choice is not blind to test: " + "; ".join(breaches) + " (the rule: a "
                        "model's validation records precede every test record of that model on the dataset, whatever "
                        "its part, and APRON's every final record; rerun the tuning with no such record in view, then "
                        "the final part)", final, tuple(breaches))  # fmt: skip
    if stale:
        return Protocol(False, f"final records of {', '.join(stale)} were made with other settings than the "
                        "configuration chosen on validation now; rerun them", final)  # fmt: skip
    if "apron" not in final:
        return Protocol(True, "no APRON option reached the %Δ@20 bar on validation", final)
    return Protocol(True, "", final)
