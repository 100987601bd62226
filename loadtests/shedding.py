"""Where load shedding starts: the Locust mix at growing numbers of users against one `apron serve`
with its default limits, counting the calls shed (RESOURCE_EXHAUSTED + retry-after-ms, retried by
the users as a real client would) apart from failures.

    python -m loadtests.shedding --dataset DIR --repository REPO [--users 64 128 256 384] [--seconds 20]
                                 [--max-concurrent-rpcs 256] [--max-queue-delay-ms 100] [--front 64]

Each Locust user keeps at most one call in flight (it waits for each answer), so U users put at most
U calls in flight: shedding starts once U exceeds --max-concurrent-rpcs (256 by default). Prints a
Markdown table (users, requests/s, p50 and p99, shed attempts, failures) and writes OUT/shedding.json.
A call's time runs from its first attempt to its answer, its retry waits included (what the user
waited; the locustfile's `ApronUser.call`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from loadtests.faults import deployment, locust
from serving.config import ServingConfig
from serving.front import FrontConfig, NginxFront


def run(args: argparse.Namespace) -> list[dict]:
    from loadtests.gateway_process import start_gateway

    rows = []
    with deployment(args.repository) as deploy:
        gateway_args = deploy.gateway_args(
            "--redis-dir", str(deploy.workdir / "redis"), "--max-concurrent-rpcs", str(args.max_concurrent_rpcs),
            "--max-queue-delay-ms", str(args.max_queue_delay_ms), "--log-level", "INFO",
        )  # fmt: skip
        gateway = start_gateway(gateway_args, deploy.workdir)
        front = None
        try:
            if args.front:  # Locust calls the nginx front, which passes at most --front calls at once
                front = NginxFront(FrontConfig(listen="127.0.0.1:0", upstream=gateway.target, max_calls=args.front)).start()
            target = front.target if front is not None else gateway.target
            for users in args.users:
                out = args.out / f"users-{users}"
                out.mkdir(parents=True, exist_ok=True)
                started = time.monotonic()
                process = locust(target, args.dataset, deploy.token, users, args.seconds, out)
                process.communicate(timeout=args.seconds + 600)
                stats = json.loads((out / "locust.json").read_text())
                throttled = json.loads((out / "locust_throttled.json").read_text())
                requests = sum(e["num_requests"] for e in stats)
                times: dict[str, int] = {}
                for entry in stats:
                    for ms, count in entry["response_times"].items():
                        times[ms] = times.get(ms, 0) + count
                ordered = sorted((float(ms), count) for ms, count in times.items())

                def percentile(q: float, ordered: list[tuple[float, int]] = ordered, total: int = requests) -> float:
                    seen = 0
                    for ms, count in ordered:
                        seen += count
                        if seen >= q * total:
                            return ms
                    return float("nan")

                span = max(e["last_request_timestamp"] for e in stats) - min(e["start_time"] for e in stats)
                rows.append({
                    "users": users,
                    "rps": round(requests / span, 1) if span > 0 else 0.0,
                    "p50_ms": percentile(0.5),
                    "p99_ms": percentile(0.99),
                    "shed": sum(throttled.values()),
                    "failures": sum(e["num_failures"] for e in stats),
                    "wall_s": round(time.monotonic() - started, 1),
                })  # fmt: skip
                print(rows[-1], flush=True)
        finally:
            if front is not None:
                front.stop()
            gateway.terminate()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--users", type=int, nargs="+", default=[64, 128, 256, 384])
    parser.add_argument("--seconds", type=float, default=20.0, help="Locust run per step")
    parser.add_argument("--max-concurrent-rpcs", type=int, default=ServingConfig.max_concurrent_rpcs)
    parser.add_argument("--max-queue-delay-ms", type=float, default=ServingConfig.max_queue_delay_ms)
    parser.add_argument(
        "--front", type=int, default=0, metavar="MAX_CALLS",
        help="through an nginx front (serving/front.py) passing at most this many calls at once (0: none)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("loadtests/out/shedding"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = run(args)
    settings = {
        "max_concurrent_rpcs": args.max_concurrent_rpcs, "max_queue_delay_ms": args.max_queue_delay_ms, "front_max_calls": args.front,
    }  # fmt: skip
    (args.out / "shedding.json").write_text(json.dumps({**settings, "rows": rows}, indent=2))
    front = f" --front {args.front}" if args.front else ""
    print(f"\n--max-concurrent-rpcs {args.max_concurrent_rpcs} --max-queue-delay-ms {args.max_queue_delay_ms:g}{front}\n")
    print("| Locust users | requests/s | p50 ms | p99 ms | shed (retried) | failures |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['users']} | {row['rps']} | {row['p50_ms']:g} | {row['p99_ms']:g} | {row['shed']} | {row['failures']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
