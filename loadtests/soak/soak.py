"""Soak test of the gateway (minutes; not in the default test run): measure capacity, then hold
70 % of it and check that no request fails and the gateway's memory stays flat.

    python -m loadtests.soak.soak --dataset artifacts/data/lastfm --repository model_repository \\
        --minutes 10 [--fraction 0.7] [--serve-arg=--backend --serve-arg=triton ...]

1. starts `apron serve` (its own process, so its memory can be read; a private Redis; a secret of
   its own) unless `--target HOST:PORT --gateway-pid PID --token T` name a running one;
2. capacity: the Locust mix flat out (`--capacity-users` users, no wait) for `--capacity-seconds`;
   capacity = Locust's aggregated requests per second;
3. soak: the same mix paced to `fraction x capacity` for `--minutes`, with `--max-failure-ratio 0`;
   the gateway's RSS is sampled every `--sample-seconds`;
4. verdict (also written to OUT/soak.json): zero failures, and memory flat: after the first 20 % of
   the samples (warm-up), the median of the last quarter is within `--max-memory-growth` of the
   median of the first quarter, and a straight-line fit does not rise by more than that over the run.

Exit 0 when all holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def locust(args: list[str], csv_prefix: Path, run_seconds: float) -> dict[str, float]:
    """Run Locust headless; the aggregated row of its stats CSV (requests, failures, rps, p99)."""
    command = [
        sys.executable, "-m", "locust", "--config", str(ROOT / "loadtests" / "locust.conf"),
        "--run-time", f"{int(run_seconds)}s", "--csv", str(csv_prefix), "--html", str(csv_prefix) + ".html", *args,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=run_seconds + 120)
    stats = Path(f"{csv_prefix}_stats.csv")
    if not stats.is_file():
        raise RuntimeError(f"locust wrote no stats (exit {result.returncode}):\n{result.stderr[-3000:]}")
    with stats.open() as file:
        rows = list(csv.DictReader(file))
    total = next(row for row in rows if row["Name"] == "Aggregated")
    return {
        "requests": float(total["Request Count"]),
        "failures": float(total["Failure Count"]),
        "rps": float(total["Requests/s"]),
        "p99_ms": float(total["99%"]) if total["99%"] not in ("", "N/A") else float("nan"),
        "exit_code": float(result.returncode),
    }


class MemorySampler(threading.Thread):
    """The gateway's resident memory (bytes) every `interval` seconds, in a daemon thread."""

    def __init__(self, pid: int, interval: float):
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self.stopped.wait(self.interval):
            with contextlib.suppress(psutil.Error):
                rss = self.process.memory_info().rss
                for child in self.process.children(recursive=True):  # not the private redis-server
                    if "redis" in child.name():
                        continue
                    rss += child.memory_info().rss
                self.samples.append((time.monotonic() - start, rss))


def memory_verdict(samples: list[tuple[float, int]], max_growth: float) -> dict[str, float | bool]:
    """Flat when neither the quarter medians nor a least-squares line grow by more than `max_growth`."""
    steady = samples[len(samples) // 5 :]  # the first 20 %: warm-up (caches, allocator pools)
    if len(steady) < 8:
        return {"flat": False, "reason_too_few_samples": float(len(steady))}
    quarter = len(steady) // 4
    first = statistics.median(rss for _, rss in steady[:quarter])
    last = statistics.median(rss for _, rss in steady[-quarter:])
    times, values = [t for t, _ in steady], [rss for _, rss in steady]
    slope = statistics.linear_regression(times, values).slope  # bytes per second
    fitted_growth = slope * (times[-1] - times[0]) / first
    growth = (last - first) / first
    return {
        "flat": growth <= max_growth and fitted_growth <= max_growth,
        "first_quarter_mib": first / 2**20,
        "last_quarter_mib": last / 2**20,
        "growth": growth,
        "fitted_growth": fitted_growth,
    }


@contextlib.contextmanager
def own_gateway(repository: str, serve_args: list[str], log_path: Path) -> Iterator[tuple[str, int, str]]:
    """`apron serve` on a free port with a fresh secret: (target, pid, service token)."""
    from loadtests.gateway_process import start_gateway
    from serving import auth

    workdir = Path(tempfile.mkdtemp(prefix="apron-soak-"))
    secret = workdir / "jwt_secret"
    secret.write_text(secrets.token_hex(32))
    args = [
        "--repository", str(Path(repository).absolute()), "--metrics-port", "-1", "--jwt-secret-file", str(secret),
        "--edit-rate", "0", "--redis-dir", str(workdir / "redis"), *serve_args,
    ]  # fmt: skip
    gateway = start_gateway(args, log_path.parent, startup_timeout=300)
    try:
        token = auth.mint_token(auth.read_secret_file(secret).key, "soak", auth.Role.SERVICE, ttl_s=24 * 3600)
        yield gateway.target, gateway.process.pid, token
    finally:
        gateway.terminate()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="processed dataset whose test users are the simulated users")
    parser.add_argument("--repository", default="model_repository", help="served model (when this starts the gateway)")
    parser.add_argument("--serve-arg", action="append", default=[], help="extra `apron serve` argument (repeatable)")
    parser.add_argument("--target", default="", help="a running gateway instead (with --gateway-pid and --token)")
    parser.add_argument("--gateway-pid", type=int, default=0)
    parser.add_argument("--token", default="")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--fraction", type=float, default=0.7, help="share of the measured capacity to hold")
    parser.add_argument("--capacity-users", type=int, default=32)
    parser.add_argument("--capacity-seconds", type=float, default=30.0)
    parser.add_argument("--sample-seconds", type=float, default=5.0)
    parser.add_argument("--max-memory-growth", type=float, default=0.05)
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests" / "out" / "soak")
    args = parser.parse_args(argv)
    if args.target and not (args.gateway_pid and args.token):
        parser.error("--target needs --gateway-pid (to read its memory) and --token")
    args.out.mkdir(parents=True, exist_ok=True)

    with contextlib.ExitStack() as stack:
        if args.target:
            target, pid, token = args.target, args.gateway_pid, args.token
        else:
            target, pid, token = stack.enter_context(own_gateway(args.repository, args.serve_arg, args.out / "gateway.log"))
        common = ["--host", target, "--dataset", args.dataset, "--token", token]
        users = ["--users", str(args.capacity_users), "--spawn-rate", str(args.capacity_users)]
        capacity = locust([*common, *users, "--max-failure-ratio", "1", "--max-throttled-ratio", "1"], args.out / "capacity", args.capacity_seconds)
        rate_per_user = args.fraction * capacity["rps"] / args.capacity_users
        print(f"capacity {capacity['rps']:.0f} req/s; soaking at {args.fraction:.0%}: {rate_per_user:.2f} req/s x {args.capacity_users} users", flush=True)

        sampler = MemorySampler(pid, args.sample_seconds)
        sampler.start()
        soak = locust(
            [*common, *users, "-f", str(LOCUSTFILE), "--rate-per-user", f"{rate_per_user:.4f}", "--max-failure-ratio", "0"],
            args.out / "soak",
            args.minutes * 60,
        )
        sampler.stopped.set()
        sampler.join()

    memory = memory_verdict(sampler.samples, args.max_memory_growth)
    passed = soak["failures"] == 0 and soak["requests"] > 0 and bool(memory["flat"])
    report = {
        "passed": passed,
        "capacity": capacity,
        "soak": {**soak, "target_rps": args.fraction * capacity["rps"], "minutes": args.minutes},
        "memory": memory,
        "rss_samples": sampler.samples,
    }
    (args.out / "soak.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "rss_samples"}, indent=2))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
