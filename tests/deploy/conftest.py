"""Parsed deployment files, and the export fixtures (a tiny checkpoint, its repository, a real
tritonserver) reused from tests/export."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.export.fixtures import python_repository, tiny_checkpoint, triton_server  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def image_user() -> tuple[int, int]:
    """(uid, gid) of the gateway image's last USER instruction (deploy/Dockerfile)."""
    users = [arg for op, arg in dockerfile_instructions() if op == "USER"]
    uid, _, gid = users[-1].partition(":")
    return int(uid), int(gid or uid)


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


@pytest.fixture(scope="session")
def k8s() -> dict[tuple[str, str], dict[str, Any]]:
    """Every Kubernetes object under deploy/k8s by (kind, name)."""
    objects = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in load_yaml_documents(path):
            if doc.get("kind") == "Kustomization":
                continue
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in objects, f"{path}: {key} defined twice"
            objects[key] = doc
    return objects


@pytest.fixture(scope="session")
def alert_rules() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())


@pytest.fixture(scope="session")
def dashboard_expressions() -> list[str]:
    import json

    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "apron.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


METRIC_NAME = re.compile(r"\b((?:apron|nv)_[a-z0-9_]+)\b")
RECORDED_NAME = re.compile(r"\b([a-z]+:[a-z0-9_]+:[a-z0-9]+)\b")


def metric_names(expressions: list[str]) -> set[str]:
    return {name for expr in expressions for name in METRIC_NAME.findall(expr)}
