"""deploy/prometheus against real servers: a real tritonserver exports every nv_* metric the alerts and
the dashboard use, and a real Prometheus loads deploy/prometheus (its rules included), scrapes it
and answers queries through its HTTP API."""

from __future__ import annotations

import copy
import math
import shutil
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as triton_grpc
import yaml

from export import contract
from export.triton_server import TritonServer
from tests.deploy.conftest import DEPLOY, metric_names
from tests.deploy.gateway import Gateway, running_gateway
from tests.deploy.prometheus_server import Prometheus, run_prometheus


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def one_recommendation(server: TritonServer) -> None:
    """One call of the ensemble, so that the per-model inference counters have samples."""
    client = triton_grpc.InferenceServerClient(server.grpc_url)
    history = triton_grpc.InferInput(contract.HISTORY_IDS, [1, 3], "INT64")
    history.set_data_from_numpy(np.array([[0, 1, 2]], dtype=np.int64))
    result = client.infer(contract.ENSEMBLE_MODEL, [history])
    assert result.as_numpy(contract.TOP_IDS).shape[0] == 1


def deploy_config(targets: dict[str, str], workdir: Path) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with its static targets pointed at this test's servers, and a
    1 s scrape interval; everything else (jobs, rule files) as shipped."""
    config = copy.deepcopy(yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text()))
    config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = "1s"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(targets) <= set(jobs), f"jobs {set(targets) - set(jobs)} are not in prometheus.yml"
    for name, job in jobs.items():
        job["static_configs"] = [{"targets": [targets[name]]}] if name in targets else []
    for rule_file in config["rule_files"]:
        shutil.copy(DEPLOY / "prometheus" / rule_file, workdir / rule_file)
    return config


def wait_for(prometheus: Prometheus, expression: str, timeout_s: float = 120.0) -> list[dict[str, Any]]:
    """The query's result once it has a sample with a number (rates are NaN until two scrapes saw a change)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = prometheus.query(expression)
        if result and not math.isnan(float(result[0]["value"][1])):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"no samples for {expression!r} after {timeout_s}s:\n{prometheus.log.read_text()[-2000:]}")
        time.sleep(0.5)


def test_triton_exports_the_metrics_the_alerts_use(
    triton_server: TritonServer, alert_rules: dict, dashboard_expressions: list[str]
) -> None:
    one_recommendation(triton_server)
    exported = {line.split("{")[0].split()[0] for line in scrape(triton_server.metrics_url).splitlines() if line and line[0] != "#"}
    rules = [rule["expr"] for group in alert_rules["groups"] for rule in group["rules"]]
    used = {name for name in metric_names(rules + dashboard_expressions) if name.startswith("nv_")}
    assert used and used <= exported, f"not exported by tritonserver: {used - exported}"


def test_prometheus_scrapes_triton_with_the_deploy_config(triton_server: TritonServer, tmp_path: Path) -> None:
    one_recommendation(triton_server)
    target = triton_server.metrics_url.removeprefix("http://").removesuffix("/metrics")
    with run_prometheus(deploy_config({"triton": target}, tmp_path), tmp_path) as prometheus:
        samples = wait_for(prometheus, f'nv_inference_request_success{{model="{contract.ENSEMBLE_MODEL}"}}')
        assert float(samples[0]["value"][1]) >= 1
        groups = {group["name"] for group in prometheus.api("rules")["groups"]}
        assert groups == {"apron-recording", "apron-alerts"}  # alerts.yml loaded as shipped


def gateway_traffic(gateway: Gateway, calls: int = 5, pause_s: float = 0.0) -> None:
    """`calls` Recommend calls, `pause_s` apart (spread over scrapes, so that rates are not 0)."""
    import grpc

    from serving.proto_gen.apron.v1 import recommender_pb2 as pb
    from serving.proto_gen.apron.v1 import recommender_pb2_grpc as pb_grpc

    with grpc.insecure_channel(gateway.address) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        for _ in range(calls):  # the first call is a cache miss, the others (same history) hits
            request = pb.RecommendRequest(user_id="alice", history=["track-0001", "track-0002"], k=5)
            stub.Recommend(request, metadata=gateway.metadata)
            time.sleep(pause_s)


def test_prometheus_reads_a_gateway_histogram_back(python_repository: Path, tmp_path: Path) -> None:
    with running_gateway(python_repository) as gateway:
        target = f"127.0.0.1:{gateway.server.metrics_port}"
        with run_prometheus(deploy_config({"apron-gateway": target}, tmp_path), tmp_path) as prometheus:
            assert wait_for(prometheus, 'up{job="apron-gateway"} == 1')  # scraped before the traffic: rates see it
            gateway_traffic(gateway, calls=5, pause_s=0.6)
            # `== 5`: a scrape after the last call (an earlier one may have seen fewer)
            buckets = wait_for(prometheus, 'apron_rpc_duration_seconds_bucket{method="Recommend",code="OK",le="+Inf"} == 5')
            assert float(buckets[0]["value"][1]) == 5
            hits = wait_for(prometheus, 'apron_profile_cache_requests_total{result="hit"}')
            assert float(hits[0]["value"][1]) >= 1
            # the recording rule needs two scrapes that saw the count change: traffic until it has a value
            rule = 'apron:rpc_p99_seconds:rate5m{method="Recommend"}'
            deadline = time.monotonic() + 120
            while not (p99 := [r for r in prometheus.query(rule) if not math.isnan(float(r["value"][1]))]):
                assert time.monotonic() < deadline, f"no value for {rule}:\n{prometheus.log.read_text()[-2000:]}"
                gateway_traffic(gateway, calls=1, pause_s=0.5)
            assert 0 < float(p99[0]["value"][1]) < 10


def test_promtool_accepts_the_gateways_metrics(python_repository: Path) -> None:
    import subprocess

    from tests.deploy.prometheus_server import require_tool

    promtool = require_tool("promtool")
    with running_gateway(python_repository) as gateway:
        gateway_traffic(gateway, calls=2)
        exposition = scrape(f"http://127.0.0.1:{gateway.server.metrics_port}/metrics")
    assert "apron_rpc_duration_seconds_bucket" in exposition
    result = subprocess.run([promtool, "check", "metrics"], input=exposition, capture_output=True, text=True)
    # promtool reports lint problems (naming conventions) on stdout/stderr and exits 1 for them
    assert result.returncode == 0, result.stdout + result.stderr


def dashboard() -> dict[str, Any]:
    import json

    return json.loads((DEPLOY / "grafana" / "dashboards" / "apron.json").read_text())


def label_values_query(definition: str) -> tuple[str, str]:
    """Grafana's `label_values(metric, label)` -> (metric, label)."""
    import re

    match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", definition)
    assert match, definition
    return match[1], match[2]


def test_the_dashboards_variables_and_queries_work_on_a_real_gateway(python_repository: Path, tmp_path: Path) -> None:
    """Prometheus scraping a real gateway: each variable (pod, model version) gets values, and every
    panel query, with the variables as Grafana substitutes them, is valid PromQL; the panels for
    refusals, shedding and fallbacks are there."""
    board = dashboard()
    variables = {v["name"]: label_values_query(v["definition"]) for v in board["templating"]["list"]}
    assert set(variables) == {"pod", "version"}
    expressions = [t["expr"] for panel in board["panels"] for t in panel["targets"]]
    titles = " | ".join(panel["title"] for panel in board["panels"])
    assert "apron_rpc_rejections_total" in " ".join(expressions) and "apron_backend_fallbacks_total" in " ".join(expressions)
    assert 'code="RESOURCE_EXHAUSTED"' in " ".join(expressions) and "Shed" in titles and "fallback" in titles
    with running_gateway(python_repository) as gateway:
        target = f"127.0.0.1:{gateway.server.metrics_port}"
        with run_prometheus(deploy_config({"apron-gateway": target}, tmp_path), tmp_path) as prometheus:
            gateway_traffic(gateway, calls=2)
            values: dict[str, set[str]] = {}
            for name, (metric, label) in variables.items():
                found = wait_for(prometheus, f"group by ({label}) ({metric})")
                values[name] = {sample["metric"][label] for sample in found}
            assert values["pod"] == {target} and values["version"] == {"1"}
            for expression in expressions:  # as Grafana sends them with "All" selected
                prometheus.query(expression.replace("$pod", ".*").replace("$version", ".*"))  # raises on bad PromQL
            narrowed = 'sum(apron_rpc_duration_seconds_count{instance=~"$pod", version=~"$version"})'
            chosen = narrowed.replace("$pod", target).replace("$version", "1")
            assert float(wait_for(prometheus, chosen)[0]["value"][1]) >= 2  # a chosen pod and version select the calls
