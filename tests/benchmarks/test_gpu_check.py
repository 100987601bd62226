"""`make gpu-check`'s CPU path (`--device cpu --quick`): every stage runs in its own process and the
results file holds sane figures; landing a record rewrites only BENCHMARKS.md's GPU parts; the
installer keeps file modes; a stage past its limit is stopped with everything it started. Speed is
never asserted: the figures are checked for structure and sanity only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks import gpu_check
from benchmarks.gpu_stages import check_rollout, compare_top_k, merge_comparisons, rollout_status
from benchmarks.timing import target_row

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """`python -m benchmarks.gpu_check run --device cpu --quick`, once for the module: (record, out folder)."""
    base = tmp_path_factory.mktemp("gpu-check")
    out = base / "out"
    command = [sys.executable, "-m", "benchmarks.gpu_check", "run", "--device", "cpu", "--quick", "--out", str(out),
               "--workdir", str(base / "work")]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted((out / "logs").glob("*.log")))
    assert result.returncode == 0, result.stdout + result.stderr + logs
    return json.loads((out / "gpu_check.json").read_text()), out


def test_the_cpu_path_runs_every_stage_and_records_sane_figures(quick_run: tuple[dict[str, Any], Path]) -> None:
    record, out = quick_run
    assert record["format"] == gpu_check.FORMAT and record["mode"] == "cpu" and record["device"] == "cpu"
    statuses = {name: stage["status"] for name, stage in record["stages"].items()}
    assert statuses == {"install": "ok", "parity": "ok", "scorer": "ok", "ceiling": "skipped", "gateway": "ok"}
    assert 0 < record["wall_s"] <= record["budget_s"]
    plan = gpu_check.QUICK

    environment = record["stages"]["install"]["result"]
    assert environment["versions"]["torch"] and Path(environment["redis_server"]).is_file()

    parity = record["stages"]["parity"]["result"]
    assert parity["items"] == plan.parity_items and [d["dtype"] for d in parity["dtypes"]] == ["float32", "bfloat16"]
    for checked in parity["dtypes"]:
        assert checked["passed"] and checked["excluded_returned"] == 0 and 0 <= checked["max_slack"] <= checked["tolerance"]
    assert parity["dtypes"][0]["exact_ids"] == 1.0  # the same float32 math on the same device
    rollout = parity["rollout"]  # a capture while another thread serves: on the CPU an eager warm-up, which
    # may end before the serving thread's next batch ("not exercised"), but never "failed"
    assert rollout["status"] in ("passed", "not exercised") and not rollout["errors"] and rollout["differing"] == 0
    assert rollout["new_model_agrees"] and rollout["passed"] is (rollout["status"] == "passed")

    rows = record["stages"]["scorer"]["result"]["rows"]
    assert [(r["items"], r["batch"]) for r in rows] == [(n, b) for n in plan.catalogs for b in plan.scorer_batches]
    assert all(r["scorer_ms"] > 0 and r["ceiling_ms"] > 0 and r["ratio"] > 0 for r in rows)

    assert "skipped" in record["stages"]["ceiling"]["result"]

    runs = record["stages"]["gateway"]["result"]["runs"]
    assert [r["items"] for r in runs] == list(plan.gateway_catalogs)
    for run in runs:
        (saturation,) = run["saturation"]
        assert saturation["workers"] == saturation["cores"] == len(os.sched_getaffinity(0))
        assert saturation["clients"] == plan.clients[0] and saturation["calls"] > 0 and saturation["throughput"] > 0
        assert 0 < saturation["p50_ms"] <= saturation["p99_ms"]
        assert 0 <= saturation["idle"] <= 1 and saturation["gateway"] > 0 and saturation["load"] > 0
        assert saturation["idle"] + saturation["gateway"] + saturation["load"] <= 1.1  # sampling edges, not more
        assert 0 < run["one_client"]["p50_ms"] <= run["one_client"]["p99_ms"]

    markdown = (out / "gpu_check.md").read_text()
    assert markdown.startswith(gpu_check.SECTION) and "**cpu**" in markdown and "nan" not in markdown.lower()


def test_landing_rewrites_only_the_gpu_rows_and_section(quick_run: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    record, out = quick_run
    benchmarks = tmp_path / "BENCHMARKS.md"
    before = (ROOT / "BENCHMARKS.md").read_text()
    benchmarks.write_text(before)
    kept = tmp_path / "gpu_check.json"
    with pytest.raises(SystemExit, match="ran on cpu"):
        gpu_check.main(["land", str(out / "gpu_check.json"), "--to", str(kept), "--benchmarks", str(benchmarks)])
    assert not kept.exists() and benchmarks.read_text() == before

    arguments = ["land", str(out / "gpu_check.json"), "--to", str(kept), "--benchmarks", str(benchmarks), "--allow-cpu"]
    assert gpu_check.main(arguments) == 0
    assert json.loads(kept.read_text()) == record
    after = benchmarks.read_text()
    rows = [line for line in after.splitlines() if line.startswith("| GPU:")]
    assert rows == [target_row(*row) for row in gpu_check.targets(record)]
    assert sum("on cpu" in row for row in rows) == 4  # the quick run has no gateway run at the 1M role's size
    assert after.count(gpu_check.SECTION) == 1 and "### End to end through the gateway" in after

    def outside_gpu(text: str) -> list[str]:
        lines = text.splitlines()
        end = lines.index(gpu_check.SECTION) if gpu_check.SECTION in lines else len(lines)
        return [line for line in lines[:end] if not line.startswith("| GPU:")]

    assert outside_gpu(after) == outside_gpu(before)
    assert gpu_check.main(arguments) == 0 and benchmarks.read_text() == after  # landing twice changes nothing


def test_a_report_without_a_gpu_section_gets_one_at_its_end(quick_run: tuple[dict[str, Any], Path]) -> None:
    record, _ = quick_run
    text = "# Benchmarks\n\n| target | measured | status |\n| --- | --- | --- |\n| GPU: old | old | old |\n\n## Last\n\nend\n"
    spliced = gpu_check.splice(text, record)
    assert spliced.startswith("# Benchmarks\n") and "| GPU: old" not in spliced and "## Last\n\nend\n\n" + gpu_check.SECTION in spliced
    assert gpu_check.splice(spliced, record) == spliced
    with pytest.raises(SystemExit, match="GPU:"):
        gpu_check.splice("# Benchmarks\n", record)


def make_wheel(folder: Path) -> Path:
    wheel = folder / "tool-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, mode, text in (
            ("tool/__init__.py", 0o644, "VALUE = 1\n"),
            ("tool/bin/run", 0o755, "#!/bin/sh\necho ran\n"),
            ("tool-1.0.data/scripts/run", 0o755, "#!/bin/sh\n"),
            ("tool-1.0.dist-info/METADATA", 0o644, "Name: tool\nVersion: 1.0\nRequires-Dist: cffi; python_version < '3.0'\n"),
        ):
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            archive.writestr(info, text)
    return wheel


def test_install_unpacks_the_wheelhouse_with_file_modes(tmp_path: Path) -> None:
    wheelhouse, site = tmp_path / "wheelhouse", tmp_path / "site"
    wheelhouse.mkdir()
    wheel = make_wheel(wheelhouse)
    assert gpu_check.wheel_requirements(wheel, "3.12") == set()  # a marker that does not hold drops the requirement

    assert gpu_check.install(wheelhouse, site)["installed"] == []  # no manifest: nothing to install
    (wheelhouse / "manifest.json").write_text(json.dumps({"python": "2.7", "wheels": [wheel.name]}))
    assert "not installed" in gpu_check.install(wheelhouse, site)["note"]
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    (wheelhouse / "manifest.json").write_text(json.dumps({"python": here, "wheels": [wheel.name]}))
    assert gpu_check.install(wheelhouse, site)["installed"] == [wheel.name]
    assert (site / "tool" / "__init__.py").read_text() == "VALUE = 1\n"
    assert os.access(site / "tool" / "bin" / "run", os.X_OK) and not os.access(site / "tool" / "__init__.py", os.X_OK)
    assert not (site / "tool-1.0.data").exists()
    check = subprocess.run([sys.executable, "-c", "import tool; print(tool.VALUE)"], env={**os.environ, "PYTHONPATH": str(site)},
                           capture_output=True, text=True, check=True)  # fmt: skip
    assert check.stdout.strip() == "1"


def test_a_stage_past_its_limit_is_stopped_with_what_it_started(tmp_path: Path) -> None:
    """The stage writes its result (with a child's pid), then never ends: timeout, the result kept,
    the child stopped too. The limit only has to outlast bash's first two commands."""
    result = tmp_path / "result.json"
    script = f'sleep 600 & echo "{{\\"child\\": $!}}" > {result}; wait'
    outcome = gpu_check.run_stage(["bash", "-c", script], dict(os.environ), 5, tmp_path / "log", result)
    assert outcome["status"] == "timeout" and "error" in outcome
    stat = Path(f"/proc/{outcome['result']['child']}/stat")
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"  # gone, or a zombie for init


def test_a_failed_stage_keeps_its_partial_result_and_log(tmp_path: Path) -> None:
    result = tmp_path / "result.json"
    script = f"echo '{{\"rows\": [1]}}' > {result}; echo broken >&2; exit 3"
    outcome = gpu_check.run_stage(["bash", "-c", script], dict(os.environ), 60, tmp_path / "log", result)
    assert outcome["status"] == "failed" and outcome["result"] == {"rows": [1]} and "broken" in outcome["error"]


def test_top_k_comparison_flags_what_a_backend_gets_wrong() -> None:
    reference = np.array([[0.0, -1.0, -1.0004, -np.inf, -3.0, -4.0]])  # item 3 excluded
    ids = np.array([[0, 1, 2]])
    same = compare_top_k(ids, reference[:, :3], ids, reference)
    assert same["exact_ids"] == same["overlap"] == 1.0 and same["max_slack"] == same["max_score_error"] == 0.0
    # a near tie swapped by rounding: another order, the same items, within float32's tolerance
    swapped = compare_top_k(np.array([[0, 2, 1]]), np.array([[0.0, -1.0002, -1.0003]]), ids, reference)
    assert swapped["exact_ids"] == pytest.approx(1 / 3) and swapped["overlap"] == 1.0 and swapped["in_order"]
    assert merge_comparisons([same, swapped], "float32")["passed"]
    # a worse item instead of a better one; an excluded item; scores out of order
    worse = compare_top_k(np.array([[0, 1, 4]]), np.array([[0.0, -1.0, -3.0]]), ids, reference)
    assert worse["max_slack"] == pytest.approx(3.0 - 1.0004) and not merge_comparisons([worse], "float32")["passed"]
    excluded = compare_top_k(np.array([[0, 1, 3]]), np.array([[0.0, -1.0, -1.0]]), ids, reference)
    assert excluded["excluded_returned"] == 1 and not merge_comparisons([excluded], "float32")["passed"]
    unordered = compare_top_k(np.array([[1, 0, 2]]), np.array([[-1.0, 0.0, -1.0004]]), ids, reference)
    assert not unordered["in_order"] and not merge_comparisons([unordered], "float32")["passed"]


class _Capturing:
    """A stand-in for the torch backend's model. While a later one captures, the serving one (the
    first) sees it: with `fails`, its call fails as a CUDA capture in "global" mode fails other
    threads' unsafe calls. A capture lasts until the serving model has failed its first call inside
    it, or answered two (the second began after the first was counted: one whole batch served)."""

    first: _Capturing | None = None
    capturing = False

    def __init__(self, fails: bool) -> None:
        self.fails, self.seen = fails, 0

    def capture(self) -> None:
        serving = _Capturing.first
        if serving is None or serving is self:  # the serving model's own capture, before it serves
            return
        _Capturing.capturing = True
        backstop = time.monotonic() + 60  # only if check_rollout stopped serving: fail, never spin forever
        try:
            while serving.seen < (1 if serving.fails else 2):
                assert time.monotonic() < backstop, "the serving model stopped answering during the capture"
        finally:
            _Capturing.capturing = False

    def top_k(self, weights: np.ndarray, excludes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        if _Capturing.capturing and self is _Capturing.first:
            self.seen += 1
            if self.fails:
                raise RuntimeError("operation not permitted when stream is capturing")
        return np.arange(3)[None].repeat(len(weights), 0), np.zeros((len(weights), 3))


@pytest.mark.parametrize("fails", [False, True])
def test_the_rollout_check_fails_when_the_serving_model_fails_during_a_capture(fails: bool) -> None:
    _Capturing.first, _Capturing.capturing = None, False

    def load() -> _Capturing:
        model = _Capturing(fails)
        _Capturing.first = _Capturing.first or model
        return model

    result = check_rollout(load, [(np.zeros((2, 4, 5), np.float32), [np.zeros(1, np.int64)] * 2)])
    assert result["status"] == ("failed" if fails else "passed") and bool(result["errors"]) is fails
    if not fails:  # a whole batch was answered inside the capture
        assert result["batches_during_capture"] >= 1
    text = " ".join(gpu_check.rollout_lines(result))
    assert ("**failed**: RuntimeError: operation not permitted" in text) is fails and ("passed." in text) is not fails


def test_a_rollout_with_no_batch_during_the_capture_is_not_called_passed() -> None:
    assert rollout_status(False, 0, True, 0) == "not exercised" and rollout_status(False, 0, True, 3) == "passed"
    assert {rollout_status(*case) for case in [(True, 0, True, 3), (False, 1, True, 3), (False, 0, False, 3)]} == {"failed"}
    result = {"batches_during_capture": 0, "errors": [], "differing": 0, "new_model_agrees": True, "status": "not exercised"}
    assert "not exercised: no batch overlapped the capture" in " ".join(gpu_check.rollout_lines(result))


def test_a_rollout_check_without_cases_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        check_rollout(lambda: None, [])
