"""The deployment files against the code: every port, path, variable and metric name they use is the
one serving/config.py, serving/metrics.py, export/ and Triton actually use (no drift).

There is no Docker engine or Kubernetes cluster here: these tests parse the files; the
Prometheus and Triton tests next to them run the real servers."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from cli import build_parser
from deploy import make_secrets
from export import contract, triton_server
from export.triton_repository import parse_config
from serving import auth
from serving.config import ServingConfig, env_name
from serving.front_refusals import FrontRefusals
from serving.metrics import Metrics
from tests.deploy.conftest import (
    DEPLOY,
    RECORDED_NAME,
    ROOT,
    dockerfile_instructions,
    load_yaml_documents,
    metric_names,
)
from tests.deploy.prometheus_server import require_tool

HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def gateway_config(environment: dict[str, str]) -> ServingConfig:
    """The config the gateway builds from these variables; unknown APRON_* names are drift."""
    known = {env_name(name) for name in ServingConfig.__dataclass_fields__}
    unknown = sorted(key for key in environment if key.startswith("APRON_") and key not in known)
    assert not unknown, f"variables serving/config.py does not read: {unknown}"
    return ServingConfig.from_env({key: str(value) for key, value in environment.items()})


def flag_value(args: list[str], flag: str) -> str:
    values = [arg.split("=", 1)[1] for arg in args if arg.startswith(flag + "=")]
    assert len(values) == 1, f"{flag} must appear once in {args}"
    return values[0]


def export_default_repository() -> Path:
    """Where `apron export` writes by default (its --repository default), from the parser itself."""
    parser = build_parser()
    args = parser.parse_args(["export", "checkpoint.pt"])
    return (ROOT / args.repository).resolve()


# ----------------------------------------------------------------------------- docker compose


def test_compose_gateway_matches_serving_config(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"triton", "redis", "gateway", "front", "prometheus", "grafana"}
    gateway = services["gateway"]
    config = gateway_config(gateway["environment"])
    assert config.host == "0.0.0.0"  # reachable from the other containers
    assert config.backend == "triton" and not config.build_demo
    assert "ports" not in gateway  # its clients reach the front
    check_compose_front(services["front"], config, compose)

    triton_host, triton_port = config.triton_url.rsplit(":", 1)
    triton = services[triton_host]
    assert flag_value(triton["command"], "--grpc-port") == triton_port

    redis = urlparse(config.redis_url)
    assert redis.scheme == "redis" and redis.hostname in services and redis.port == 6379
    assert gateway["depends_on"] == {"triton": {"condition": "service_healthy"}, "redis": {"condition": "service_healthy"}}
    assert gateway["healthcheck"]["test"] == ["CMD", "python", "healthcheck.py", "--ready"]  # readiness, not Redis
    assert gateway["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}

    # Production keeps auth on, with a secret generated at deploy time: never the development one,
    # which anyone with a checkout can sign tokens with (and `apron serve` refuses beyond loopback).
    assert config.auth
    auth.check_exposure(config.security, config.host)
    sources = {name: (DEPLOY / compose["secrets"][name]["file"]).resolve() for name in gateway["secrets"]}
    assert set(sources) == {"apron_jwt_secret", "apron_tls_cert", "apron_tls_key"}
    assert config.jwt_secret_file == "/run/secrets/apron_jwt_secret"
    assert sources["apron_jwt_secret"] != (ROOT / auth.DEFAULT_DEV_SECRET).resolve()
    generated = {path.name for path in sources.values()}
    assert all(path.parent == DEPLOY / "secrets" for path in sources.values()) and generated <= set(make_secrets.FILES)
    assert "deploy/secrets/" in (ROOT / ".gitignore").read_text().split()  # generated, never committed
    # TLS on the published port
    assert (config.tls_cert, config.tls_key) == ("/run/secrets/apron_tls_cert", "/run/secrets/apron_tls_key")


def check_compose_front(front: dict[str, Any], config: ServingConfig, compose: dict[str, Any]) -> None:
    """The front publishes the gateway's port, runs the nginx.conf render_nginx_conf gives for the
    gateway's address and TLS files, and serves the gateway's certificate."""
    from serving.front import DEFAULT_MAX_CALLS, FrontConfig, render_nginx_conf

    (published,) = front["ports"]
    host_port, front_port = published.split(":")
    assert int(host_port) == config.port
    mounted = {target: DEPLOY / source for source, target, *_ in (v.split(":") for v in front["volumes"])}
    conf = mounted["/etc/apron-front/nginx.conf"]
    assert front["command"] == ["nginx", "-c", "/etc/apron-front/nginx.conf"]
    expected = render_nginx_conf(
        FrontConfig(listen=f"0.0.0.0:{front_port}", upstream=f"gateway:{config.port}", max_calls=DEFAULT_MAX_CALLS,
                    tls_cert=config.tls_cert, tls_key=config.tls_key, upstream_tls=bool(config.tls_cert),
                    refusals_to=f"gateway:{config.front_refusals_port}"),
        Path(front["tmpfs"][0]), "stderr",
    )  # fmt: skip
    assert config.front_refusals_port > 0  # the front's refusals are counted on the gateway's /metrics
    assert conf.read_text() == expected
    assert set(front["secrets"]) == {Path(config.tls_cert).name, Path(config.tls_key).name} <= set(compose["secrets"])
    assert front["depends_on"] == {"gateway": {"condition": "service_healthy"}}


def test_compose_publishes_only_the_front_and_grafana_needs_a_login(compose: dict[str, Any]) -> None:
    published = {name for name, service in compose["services"].items() if service.get("ports")}
    assert published == {"front"}  # the gateway behind it; Triton's unauthenticated 8001, Redis, Prometheus: network-internal
    grafana = compose["services"]["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false" and grafana["GF_USERS_ALLOW_SIGN_UP"] == "false"
    (password,) = compose["services"]["grafana"]["secrets"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD__FILE"] == f"/run/secrets/{password}"
    assert (DEPLOY / compose["secrets"][password]["file"]).resolve().parent == DEPLOY / "secrets"


def test_compose_model_repository_is_the_one_export_writes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    repository = flag_value(services["triton"]["command"], "--model-repository")
    for name in ("triton", "gateway"):
        mounts = {target.split(":")[0]: source for source, target in (v.split(":", 1) for v in services[name]["volumes"])}
        assert (DEPLOY / mounts[repository]).resolve() == export_default_repository(), name
    assert gateway_config(services["gateway"]["environment"]).repository == repository


def test_compose_triton_gpu_health_and_redis_aof(compose: dict[str, Any]) -> None:
    services = compose["services"]
    triton = services["triton"]
    assert triton["image"].startswith("nvcr.io/nvidia/tritonserver:") and triton["image"].endswith("-py3")
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    http_port = flag_value(triton["command"], "--http-port")
    assert f"localhost:{http_port}/v2/health/ready" in " ".join(triton["healthcheck"]["test"])
    assert flag_value(triton["command"], "--strict-readiness") == "true"

    command = services["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "always"  # everysec can lose acknowledged edits
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])
    for name in ("triton", "redis", "prometheus"):
        assert "healthcheck" in services[name], name


def test_compose_prometheus_and_grafana_mount_files_that_exist(compose: dict[str, Any]) -> None:
    for name in ("prometheus", "grafana"):
        for volume in compose["services"][name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, which does not exist"
    assert (DEPLOY / "prometheus" / "prometheus.yml").is_file()


def triton_commands(compose: dict[str, Any], k8s: dict) -> dict[str, list[str]]:
    (container,) = containers(k8s[("Deployment", "triton")])
    return {"compose": compose["services"]["triton"]["command"], "k8s": container["args"]}


def test_triton_polls_the_repository_like_the_tests_helper(compose: dict[str, Any], k8s: dict) -> None:
    """deploy/ runs Triton in the model-control mode export/triton_server.py runs in the tests, so
    a version `apron export` adds is loaded beside the old one without a restart; the repository
    is mounted read-only (nothing Triton runs writes into it, which a poll would take for a change)."""
    for where, command in triton_commands(compose, k8s).items():
        expected = triton_server.model_control_args(triton_server.DEPLOY_POLL_SECS)
        assert [arg for arg in command if arg.split("=")[0] in {a.split("=")[0] for a in expected}] == expected, where
    volumes = compose["services"]["triton"]["volumes"]
    repository = flag_value(compose["services"]["triton"]["command"], "--model-repository")
    assert [v for v in volumes if v.split(":")[1] == repository][0].endswith(":ro")
    (container,) = containers(k8s[("Deployment", "triton")])
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == flag_value(container["args"], "--model-repository"))
    assert mount["readOnly"] is True


# ----------------------------------------------------------------------------- Dockerfile


def test_dockerfile_is_slim_non_root_health_checked_and_matches_config() -> None:
    instructions = dockerfile_instructions()
    final_stage = instructions[max(i for i, (op, _) in enumerate(instructions) if op == "FROM") :]
    assert final_stage[0][1].startswith("python:3.11-slim")
    user = [arg for op, arg in final_stage if op == "USER"]
    assert user and not user[-1].startswith(("root", "0"))
    assert any(op == "HEALTHCHECK" and "healthcheck.py" in arg and "--ready" in arg for op, arg in final_stage)

    environment: dict[str, str] = {}
    for op, arg in final_stage:
        if op == "ENV":
            environment.update(item.split("=", 1) for item in shlex.split(arg))
    config = gateway_config(environment)
    exposed = {int(port) for op, arg in final_stage if op == "EXPOSE" for port in arg.split()}
    assert exposed == {config.port, config.metrics_port}
    assert config.host == "0.0.0.0" and not config.build_demo

    installs = [arg for op, arg in instructions if op == "RUN" and "pip install" in arg]
    assert installs == ['pip install ".[serve]"']  # the gateway extra only: no torch, no transformers (tests/test_layout.py)
    assert not any(word in arg for _, arg in instructions for word in ("torch", "transformers"))

    for op, arg in instructions:  # everything copied from the build context exists
        if op == "COPY" and "--from" not in arg:
            sources = [a for a in shlex.split(arg) if not a.startswith("--")][:-1]
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: no such path in the repository"


# ----------------------------------------------------------------------------- Kubernetes


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return obj["spec"]["template"]["spec"]["containers"]


def named(obj: dict[str, Any], name: str) -> dict[str, Any]:
    """The container called `name` (the gateway's pod also runs its front)."""
    (found,) = [c for c in containers(obj) if c["name"] == name]
    return found


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    files = {p.name for p in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def test_k8s_every_container_has_requests_and_probes(k8s: dict) -> None:
    workloads = [obj for (kind, _), obj in k8s.items() if kind in ("Deployment", "StatefulSet")]
    assert {obj["metadata"]["name"] for obj in workloads} == {"apron-gateway", "triton", "redis"}
    for obj in workloads:
        for container in containers(obj):
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), container["name"]
            assert "readinessProbe" in container and "livenessProbe" in container, container["name"]


def gateway_environment(k8s: dict) -> dict[str, str]:
    """The gateway container's APRON_* variables: its ConfigMap's, then its own `env` (Secrets as a placeholder)."""
    container = named(k8s[("Deployment", "apron-gateway")], "gateway")
    environment = dict(k8s[("ConfigMap", "apron-gateway")]["data"])
    for variable in container.get("env", []):
        environment[variable["name"]] = variable.get("value", "<from a Secret>")
    return {key: value.replace("$(REDIS_PASSWORD)", "SECRET") for key, value in environment.items() if key.startswith("APRON_")}


def test_k8s_gateway_matches_serving_config(k8s: dict, compose: dict[str, Any]) -> None:
    config = gateway_config(gateway_environment(k8s))
    deployment = k8s[("Deployment", "apron-gateway")]
    container = named(deployment, "gateway")
    assert container["envFrom"] == [{"configMapRef": {"name": "apron-gateway"}}]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"upstream": config.port, "metrics": config.metrics_port}  # its clients reach the front
    # TLS on the gRPC port from the Secret apron-tls
    assert config.tls_cert and config.tls_key
    tls_volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls")
    assert tls_volume["secret"]["secretName"] == "apron-tls"
    tls_mount = next(m for m in container["volumeMounts"] if m["name"] == "tls")["mountPath"]
    assert {str(Path(config.tls_cert).parent), str(Path(config.tls_key).parent)} == {tls_mount}
    # liveness apart from readiness, on the metrics port's plain HTTP (serving/health.py)
    probes = {probe: container[probe]["httpGet"] for probe in ("readinessProbe", "livenessProbe", "startupProbe")}
    assert probes == {
        "readinessProbe": {"path": "/healthz/ready", "port": "metrics"},
        "livenessProbe": {"path": "/healthz/live", "port": "metrics"},
        "startupProbe": {"path": "/healthz/live", "port": "metrics"},
    }
    assert container["livenessProbe"]["failureThreshold"] * container["livenessProbe"]["periodSeconds"] >= 60
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(config.metrics_port)
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True

    service = k8s[("Service", "apron-gateway")]
    assert {p["port"] for p in service["spec"]["ports"]} == {config.port, config.metrics_port}
    hpa = k8s[("HorizontalPodAutoscaler", "apron-gateway")]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "apron-gateway"}
    assert hpa["spec"]["minReplicas"] >= 2

    triton_host, triton_port = config.triton_url.rsplit(":", 1)
    triton_service = k8s[("Service", triton_host)]
    assert int(triton_port) in {p["port"] for p in triton_service["spec"]["ports"]}
    redis = urlparse(config.redis_url)
    assert redis.hostname.split(".")[-1] in {name for kind, name in k8s if kind == "Service"}
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert config.repository in mounts
    assert config.auth and str(Path(config.jwt_public_key).parent) in mounts
    # the same settings as compose, apart from where Redis lives
    compose_env = compose["services"]["gateway"]["environment"]
    own = {env_name(name) for name in ("redis_url", "jwt_secret_file", "tls_cert", "tls_key")}  # where things live
    differing = {k for k in compose_env if k not in own and str(compose_env[k]) != k8s[("ConfigMap", "apron-gateway")]["data"].get(k)}
    assert not differing, f"compose and Kubernetes disagree on {differing}"


def test_every_deployed_gateway_rolls_out_new_model_versions(k8s: dict, compose: dict[str, Any], compose_cpu: dict[str, Any]) -> None:
    """The model Job (and a new export under compose) adds versions while Triton keeps only the newest
    `keep_versions` loaded: a gateway that does not watch the repository stays on its first version
    until Triton unloads it, then turns unready. Every deployment watches, on the newest version."""
    environments = {
        "k8s": gateway_environment(k8s),
        "compose": compose["services"]["gateway"]["environment"],
        "compose.cpu": resolved_service(compose_cpu, "gateway")["environment"],
    }
    for where, environment in environments.items():
        config = gateway_config(environment)
        assert config.watch_repository, f"{where}: the gateway never rolls out a new version"
        assert config.model_version == 0, f"{where}: a pinned version is kept by the watch and unloaded by Triton"


def test_k8s_redis_requires_a_password_and_tls_and_the_gateway_uses_both(k8s: dict) -> None:
    redis_conf = k8s[("ConfigMap", "redis-config")]["data"]["redis.conf"]
    settings = dict(line.split("#")[0].split(None, 1) for line in redis_conf.splitlines() if line.strip())
    assert settings["port"].strip() == "0" and settings["tls-port"].strip() == "6379"  # no plaintext port
    statefulset = k8s[("StatefulSet", "redis")]
    (container,) = containers(statefulset)
    secret_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert secret_env["REDIS_PASSWORD"] == {"name": "apron-redis", "key": "password"}
    assert '--requirepass "$REDIS_PASSWORD"' in " ".join(container["args"])
    tls_mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "tls")
    for key in ("tls-cert-file", "tls-key-file", "tls-ca-cert-file"):
        assert settings[key].strip().startswith(tls_mount + "/"), key
    volumes = {v["name"]: v for v in statefulset["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "apron-redis-tls"
    assert "--tls" in container["readinessProbe"]["exec"]["command"]
    # the gateway: rediss:// with the same Secret's password, trusting the CA mounted from Redis's Secret
    url = urlparse(gateway_environment(k8s)["APRON_REDIS_URL"])
    assert url.scheme == "rediss" and url.password == "SECRET" and url.port == 6379
    gateway = named(k8s[("Deployment", "apron-gateway")], "gateway")
    gateway_secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in gateway["env"] if "valueFrom" in e}
    assert gateway_secrets["REDIS_PASSWORD"] == secret_env["REDIS_PASSWORD"]
    ca_file = dict(part.split("=") for part in url.query.split("&"))["ssl_ca_certs"]
    ca_mount = next(m["mountPath"] for m in gateway["volumeMounts"] if m["name"] == "redis-ca")
    assert ca_file == f"{ca_mount}/ca.crt"
    assert "SECRET" not in k8s[("ConfigMap", "apron-gateway")]["data"].get("APRON_REDIS_URL", "")


def test_k8s_network_policies_admit_only_what_the_service_needs(k8s: dict) -> None:
    policies = {name: obj["spec"] for (kind, name), obj in k8s.items() if kind == "NetworkPolicy"}
    assert policies["default-deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    prometheus = {"app.kubernetes.io/name": "prometheus"}
    gateway = {"app.kubernetes.io/name": "apron-gateway"}

    def rules(app: str) -> list[dict]:
        (spec,) = [s for s in policies.values() if s["podSelector"].get("matchLabels") == {"app.kubernetes.io/name": app}]
        return spec["ingress"]

    def admitted(app: str, port: str) -> list[dict | None]:
        """Who may reach `app`'s `port`: each rule's peer pod labels (None: anyone)."""
        found = []
        for rule in rules(app):
            if port in {p["port"] for p in rule.get("ports", [])}:
                found += [peer["podSelector"]["matchLabels"] for peer in rule["from"]] if "from" in rule else [None]
        return found

    assert admitted("redis", "redis") == [gateway]
    assert admitted("triton", "grpc") == [gateway] and admitted("triton", "http") == []
    assert admitted("triton", "metrics") == [prometheus] and admitted("apron-gateway", "metrics") == [prometheus]
    assert admitted("apron-gateway", "grpc") == [None]  # the service itself: its clients are anywhere
    # every port a policy names is a port the pods declare
    for app, workload in (("redis", ("StatefulSet", "redis")), ("triton", ("Deployment", "triton")), ("apron-gateway", ("Deployment", "apron-gateway"))):
        declared = {p["name"] for c in containers(k8s[workload]) for p in c["ports"]}
        assert {p["port"] for rule in rules(app) for p in rule["ports"]} <= declared, app


def test_k8s_disruption_budgets_and_jwt_audience(k8s: dict, compose: dict[str, Any]) -> None:
    budgets = {name: obj["spec"] for (kind, name), obj in k8s.items() if kind == "PodDisruptionBudget"}
    assert budgets["apron-gateway"]["minAvailable"] >= 1
    assert set(budgets) == {"apron-gateway", "triton", "redis"}
    for name, spec in budgets.items():
        workload = next(obj for (kind, n), obj in k8s.items() if kind in ("Deployment", "StatefulSet") and n == name)
        assert spec["selector"]["matchLabels"].items() <= workload["spec"]["template"]["metadata"]["labels"].items()
    # tokens must name the gateway in `aud`, in both deployments
    assert gateway_config(gateway_environment(k8s)).jwt_audience == "apron-gateway"
    assert compose["services"]["gateway"]["environment"]["APRON_JWT_AUDIENCE"] == "apron-gateway"


def test_a_redis_url_is_logged_without_its_password() -> None:
    from serving.server import redacted_url

    assert redacted_url("rediss://:s3cr3t@redis-0.redis:6379/0?ssl_ca_certs=/ca.crt") == "rediss://:***@redis-0.redis:6379/0?ssl_ca_certs=/ca.crt"
    assert redacted_url("redis://user:pw@host:6379/0") == "redis://user:***@host:6379/0"
    assert redacted_url("redis://redis:6379/0") == "redis://redis:6379/0"
    assert redacted_url("redis://h:6379/0?password=s3cret&ssl_ca_certs=/ca.crt") == "redis://h:6379/0?password=***&ssl_ca_certs=/ca.crt"
    assert "s3cret" not in redacted_url("redis://:a@h/0?Password=s3cret")


def test_k8s_triton_gpu_health_and_repository(k8s: dict, compose: dict[str, Any]) -> None:
    (container,) = containers(k8s[("Deployment", "triton")])
    assert container["image"] == compose["services"]["triton"]["image"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {name: int(flag_value(container["args"], f"--{name}-port")) for name in ("http", "grpc", "metrics")}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    repository = flag_value(container["args"], "--model-repository")
    assert repository in {m["mountPath"] for m in container["volumeMounts"]}


def test_k8s_redis_persists_with_aof(k8s: dict, compose: dict[str, Any]) -> None:
    redis_conf = k8s[("ConfigMap", "redis-config")]["data"]["redis.conf"]
    settings = dict(line.split("#")[0].split(None, 1) for line in redis_conf.splitlines() if line.strip())
    assert settings["appendonly"].strip() == "yes"
    assert settings["appendfsync"].strip() == "always"  # everysec can lose acknowledged edits
    statefulset = k8s[("StatefulSet", "redis")]
    (container,) = containers(statefulset)
    assert container["image"] == compose["services"]["redis"]["image"]
    assert settings["dir"].strip() in {m["mountPath"] for m in container["volumeMounts"]}
    assert statefulset["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


# ----------------------------------------------------------------------------- Prometheus, alerts, dashboard


def test_prometheus_scrapes_the_ports_compose_uses(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    gateway = gateway_config(compose["services"]["gateway"]["environment"])
    assert jobs["apron-gateway"] == [f"gateway:{gateway.metrics_port}"]
    triton_metrics = flag_value(compose["services"]["triton"]["command"], "--metrics-port")
    assert jobs["triton"] == [f"triton:{triton_metrics}"]
    for rule_file in config["rule_files"]:
        assert (DEPLOY / "prometheus" / rule_file).is_file()


def gateway_metric_families() -> set[str]:
    """Every sample name the gateway's registry can expose (histograms' and counters' suffixes)."""
    names = set()
    refusals = FrontRefusals("127.0.0.1", 0)  # on the registry with --front-refusals-port
    try:
        families = [*Metrics().registry.collect(), *refusals.collect()]
    finally:
        refusals.close()
    for family in families:
        if family.type == "histogram":
            names.update(family.name + suffix for suffix in HISTOGRAM_SUFFIXES)
        elif family.type == "counter":
            names.add(family.name + "_total")  # no _created: serving/metrics.py disables them
        else:
            names.add(family.name)
    return names


def test_alert_and_dashboard_metrics_exist_in_the_gateway(alert_rules: dict, dashboard_expressions: list[str]) -> None:
    rules = [rule for group in alert_rules["groups"] for rule in group["rules"]]
    expressions = [rule["expr"] for rule in rules] + dashboard_expressions
    used = {name for name in metric_names(expressions) if name.startswith("apron_")}
    missing = used - gateway_metric_families()
    assert not missing, f"not exported by serving/metrics.py or serving/front_refusals.py: {missing}"
    assert {"apron_rpc_duration_seconds_bucket", "apron_profile_cache_requests_total"} <= used

    recorded = {rule["record"] for rule in rules if "record" in rule}
    referenced = {name for expr in expressions for name in RECORDED_NAME.findall(expr)}
    assert referenced <= recorded, f"recording rules used but not defined: {referenced - recorded}"
    alerts = {rule["alert"] for rule in rules if "alert" in rule}
    assert {"ApronHighP99Latency", "ApronHighErrorRatio", "ApronLowCacheHitRatio", "TritonHighQueueTime", "ApronBackendDown"} <= alerts


def test_error_ratio_counts_only_real_grpc_status_codes(alert_rules: dict) -> None:
    import grpc

    rules = {rule.get("record"): rule["expr"] for group in alert_rules["groups"] for rule in group["rules"]}
    (codes,) = re.findall(r'code=~"([^"]+)"', rules["apron:rpc_server_error_ratio:rate5m"])
    assert set(codes.split("|")) <= {code.name for code in grpc.StatusCode}


def test_promtool_checks_config_and_rules() -> None:
    promtool = require_tool("promtool")
    for command in (["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"]):
        result = subprocess.run([promtool, *command], cwd=DEPLOY / "prometheus", capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_fronts_refusals_alone_raise_the_error_ratio(tmp_path: Path) -> None:
    """promtool's rule tests on the deploy's rules: a gateway that answered only OK (no error code's
    series exists yet) behind a front refusing 90% of the calls pages; with neither, no value."""
    promtool = require_tool("promtool")
    tests = {
        "rule_files": [str(DEPLOY / "prometheus" / "alerts.yml")],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": 'apron_rpc_duration_seconds_count{method="Recommend",code="OK",version="1"}', "values": "0+100x30"},
                {"series": "apron_front_refused_total", "values": "0+900x30"},
            ],
            "promql_expr_test": [{"expr": "apron:rpc_server_error_ratio:rate5m", "eval_time": "15m",
                                  "exp_samples": [{"labels": "apron:rpc_server_error_ratio:rate5m", "value": 0.9}]}],
            "alert_rule_test": [{"alertname": "ApronHighErrorRatio", "eval_time": "15m", "exp_alerts": [{
                "exp_labels": {"severity": "page"},
                "exp_annotations": {
                    "summary": "90% of gateway calls fail server-side",
                    "description": "Look at the gateway's logs by status code; UNAVAILABLE usually means Triton or Redis is down.",
                },
            }]}],
        }],
    }  # fmt: skip
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests))
    result = subprocess.run([promtool, "test", "rules", str(tmp_path / "tests.yml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# ----------------------------------------------------------------------------- the Triton repository


def test_exported_config_names_match_the_models(python_repository: Path) -> None:
    """What Triton loads from the repository compose/k8s mount: one folder per contract model, each
    config.pbtxt naming its own folder."""
    folders = {p.name for p in python_repository.iterdir() if p.is_dir()}
    assert folders == set(contract.MODELS)
    for name in folders:
        assert parse_config(python_repository / name / "config.pbtxt").name == name
    assert (python_repository / contract.METADATA_FILENAME).is_file()


@pytest.mark.parametrize("path", sorted(p.relative_to(DEPLOY).as_posix() for p in DEPLOY.rglob("*.y*ml")))
def test_every_yaml_file_parses(path: str) -> None:
    assert load_yaml_documents(DEPLOY / path)


def test_readme_names_only_real_metrics_and_variables() -> None:
    text = (DEPLOY / "README.md").read_text()
    not_metrics = set(contract.MODELS) | {Path(contract.METADATA_FILENAME).stem}  # model / file names
    metrics = {name for name in metric_names([text]) if name.startswith("apron_")} - not_metrics
    families = {family.name for family in Metrics().registry.collect()}
    assert metrics and metrics <= families | gateway_metric_families(), metrics - families - gateway_metric_families()
    variables = set(re.findall(r"\bAPRON_[A-Z_]+\b", text))
    known = {env_name(name) for name in ServingConfig.__dataclass_fields__}
    assert variables and variables <= known, f"not in serving/config.py: {variables - known}"
    # Redis Cluster is a setting (ServingConfig.redis_cluster), not a change to make: the README says which
    assert "APRON_REDIS_CLUSTER" in variables and "needs `redis.asyncio.RedisCluster`" not in text


# ----------------------------------------------------------------------------- the CPU compose, images, the model volume


def project_version() -> str:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


@pytest.fixture(scope="session")
def compose_cpu() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.cpu.yml").read_text())


def resolved_service(compose_file: dict[str, Any], name: str) -> dict[str, Any]:
    """A service with its `extends` applied (the base's keys, then its own)."""
    service = dict(compose_file["services"][name])
    base = service.pop("extends", None)
    if base is None:
        return service
    base_file = yaml.safe_load((DEPLOY / base["file"]).read_text())
    return {**resolved_service(base_file, base["service"]), **service}


def test_compose_cpu_runs_the_gateway_in_process_without_triton(compose_cpu: dict[str, Any], compose: dict[str, Any]) -> None:
    services = {name: resolved_service(compose_cpu, name) for name in compose_cpu["services"]}
    assert set(services) == {"models", "redis", "gateway", "front", "prometheus", "grafana"}
    assert not any("deploy" in service for service in services.values())  # no GPU reservation anywhere
    gateway = services["gateway"]
    config = gateway_config(gateway["environment"])
    assert config.backend == "onnxruntime" and config.host == "0.0.0.0" and not config.build_demo
    assert "ports" not in gateway
    check_compose_front(services["front"], config, compose_cpu)
    assert gateway["depends_on"] == {
        "models": {"condition": "service_completed_successfully"}, "redis": {"condition": "service_healthy"}
    }
    # the same settings as the GPU compose, apart from the backend and where Triton is
    gpu = compose["services"]["gateway"]["environment"]
    backend_keys = {env_name("backend"), env_name("triton_url")}
    assert {k: v for k, v in gpu.items() if k not in backend_keys} == {k: v for k, v in gateway["environment"].items() if k not in backend_keys}
    assert gateway["secrets"] == compose["services"]["gateway"]["secrets"] and compose_cpu["secrets"] == compose["secrets"]
    assert services["grafana"] == compose["services"]["grafana"]
    assert services["redis"] == compose["services"]["redis"] and services["prometheus"] == compose["services"]["prometheus"]
    for name, service in services.items():  # every build names a Dockerfile that exists
        if "build" in service:
            assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).is_file(), name
    named = set(compose_cpu["volumes"])
    for name, service in services.items():  # every named volume is declared; every bind mount exists
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source in named if not source.startswith(".") else (DEPLOY / source).exists(), (name, volume)


def test_compose_cpu_models_fill_the_volume_the_gateway_reads(compose_cpu: dict[str, Any]) -> None:
    models, gateway = compose_cpu["services"]["models"], compose_cpu["services"]["gateway"]
    repository = gateway_config(gateway["environment"]).repository
    assert f"model-repository:{repository}:ro" in gateway["volumes"] and f"model-repository:{repository}" in models["volumes"]
    dockerfile = (DEPLOY / models["build"]["context"] / models["build"]["dockerfile"]).read_text()
    assert 'ENTRYPOINT ["python", "/src/fill_models.py"]' in dockerfile and "COPY deploy/fill_models.py" in dockerfile
    command = models["command"]
    assert command[command.index("--into") + 1] == repository and command[command.index("--demo") + 1] in {"lastfm-2k", "synthetic"}


def test_images_carry_the_project_version(compose: dict[str, Any], compose_cpu: dict[str, Any], k8s: dict) -> None:
    version = project_version()
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    assert kustomization["images"] == [{"name": "apron-gateway", "newName": "apron-gateway", "newTag": version}]
    ours = [compose["services"]["gateway"]["image"], compose_cpu["services"]["gateway"]["image"]]
    ours += [c["image"] for (kind, _), obj in k8s.items() if kind in ("Deployment", "Job") for c in containers(obj) if "apron" in c["image"]]
    assert ours and set(ours) == {f"apron-gateway:{version}"}
    assert compose_cpu["services"]["models"]["image"] == f"apron-models:{version}"
    for (kind, name), obj in k8s.items():  # no image without a tag, nowhere `latest`
        if kind in ("Deployment", "StatefulSet", "Job"):
            for container in containers(obj):
                assert ":" in container["image"] and not container["image"].endswith(":latest"), (name, container["image"])


def test_kustomize_renders_the_versioned_image() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    rendered = subprocess.run([kubectl, "kustomize", str(DEPLOY / "k8s")], capture_output=True, text=True, check=True).stdout
    images = set(re.findall(r"image: (\S+)", rendered))
    assert f"apron-gateway:{project_version()}" in images and not any(i.endswith(":latest") for i in images)


def test_k8s_job_fills_the_volume_the_pods_mount_read_only(k8s: dict) -> None:
    from deploy import fill_models

    job = k8s[("Job", "apron-model-repository")]
    (container,) = containers(job)
    assert container["command"][:2] == ["python", "/app/fill_models.py"]
    assert "COPY --chown=apron:apron deploy/fill_models.py ./fill_models.py" in (DEPLOY / "Dockerfile").read_text()
    into = container["command"][container["command"].index("--into") + 1]
    (source,) = container["envFrom"]
    variables = k8s[("ConfigMap", source["configMapRef"]["name"])]["data"]
    assert set(variables) == {"MODEL_ARCHIVE_URL", "MODEL_ARCHIVE_SHA256"}  # what fill_models.main reads
    assert all(name in Path(fill_models.__file__).read_text() for name in variables)
    # shipped as is, the Job fails loudly instead of installing an archive nobody checked
    with pytest.raises(fill_models.FillError, match="sha256"):
        fill_models.check_sha256(variables["MODEL_ARCHIVE_URL"], variables["MODEL_ARCHIVE_SHA256"], insecure_no_checksum=False)
    assert "--insecure-no-checksum" not in container["command"]
    claim = "apron-model-repository"
    assert k8s[("PersistentVolumeClaim", claim)]["spec"]["accessModes"] == ["ReadWriteMany"]

    def claim_mount(obj: dict[str, Any]) -> dict[str, Any]:
        volume = next(v["name"] for v in obj["spec"]["template"]["spec"]["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == claim)
        (container,) = [c for c in containers(obj) if any(m["name"] == volume for m in c["volumeMounts"])]  # one container mounts it
        return next(m for m in container["volumeMounts"] if m["name"] == volume)

    assert claim_mount(job)["mountPath"] == into and not claim_mount(job).get("readOnly")
    for name in ("apron-gateway", "triton"):
        assert claim_mount(k8s[("Deployment", name)])["readOnly"] is True, name
    assert job["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_dashboard_variables_filter_only_labels_the_metrics_have() -> None:
    """`version=~"$version"` only on series that carry `version`; `instance` is Prometheus' own."""
    import json

    board = json.loads((DEPLOY / "grafana" / "dashboards" / "apron.json").read_text())
    labels = {m._name: set(m._labelnames) for m in vars(Metrics()).values() if hasattr(m, "_labelnames") and hasattr(m, "_name")}
    for panel in board["panels"]:
        for target in panel["targets"]:
            for metric, matchers in re.findall(r"\b(apron_[a-z_]+?)(?:_total|_bucket|_count|_sum)?\{([^}]*)\}", target["expr"]):
                for label in re.findall(r"(\w+)\s*=~?\s*\"", matchers):
                    assert label == "instance" or label in labels.get(metric, set()), f"{panel['title']}: {metric} has no {label}"


def test_k8s_front_sheds_before_the_gateway_with_the_rendered_config(k8s: dict) -> None:
    """The pod's front (serving/front.py) is what the Service and the NetworkPolicy expose; its
    nginx.conf is exactly what render_nginx_conf gives for the gateway's port and TLS files."""
    from serving.front import DEFAULT_MAX_CALLS, FrontConfig, render_nginx_conf

    config = gateway_config(gateway_environment(k8s))
    deployment = k8s[("Deployment", "apron-gateway")]
    front = named(deployment, "front")
    front_ports = {p["name"]: p["containerPort"] for p in front["ports"]}
    assert set(front_ports) == {"grpc"}
    service = k8s[("Service", "apron-gateway")]
    grpc_port = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert grpc_port["port"] == config.port and grpc_port["targetPort"] == "grpc"  # clients keep the port, reach the front
    mounts = {m["name"]: m["mountPath"] for m in front["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["front-config"]["configMap"]["name"] == "apron-front"
    assert mounts["tls"] == str(Path(config.tls_cert).parent)  # the gateway's certificate, served by the front
    expected = render_nginx_conf(
        FrontConfig(listen=f"0.0.0.0:{front_ports['grpc']}", upstream=f"127.0.0.1:{config.port}", max_calls=DEFAULT_MAX_CALLS,
                    tls_cert=config.tls_cert, tls_key=config.tls_key, upstream_tls=bool(config.tls_cert),
                    refusals_to=f"127.0.0.1:{config.front_refusals_port}"),
        Path(mounts["front-tmp"]), "stderr",
    )  # fmt: skip
    assert config.front_refusals_port > 0  # the front's refusals are counted on the gateway's /metrics
    assert config.front_refusals_host == "127.0.0.1"  # ... from the pod's front only
    assert k8s[("ConfigMap", "apron-front")]["data"]["nginx.conf"] == expected
    assert front["command"] == ["nginx", "-c", f"{mounts['front-config']}/nginx.conf"]
    assert front["securityContext"]["readOnlyRootFilesystem"] is True
