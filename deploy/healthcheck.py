"""Container health check: exit 0 when the gateway's gRPC health service answers SERVING for
readiness (`apron.ready`, the default) or, with `--live`, liveness (`apron.live`): serving/health.py.

Docker runs it inside the gateway container (`HEALTHCHECK` in deploy/Dockerfile, the compose
healthcheck: readiness, which `depends_on: service_healthy` waits for). Kubernetes probes the plain
HTTP `/healthz/live` and `/healthz/ready` on the metrics port instead (no process started per probe);
this script is the probe where that port is off. It reads the same APRON_PORT the gateway binds and,
when the gateway serves TLS (APRON_TLS_CERT), speaks TLS to it, trusting APRON_TLS_CA or else the CA
in the certificate chain (serving/config.py), so the two cannot disagree.

    python deploy/healthcheck.py [--live | --ready] [HOST:PORT]
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving import tls
from serving.config import ServingConfig, env_name
from serving.health import LIVE, READY


def channel(target: str) -> grpc.Channel:
    certificate = os.environ.get(env_name("tls_cert"), "")
    if not certificate:
        return grpc.insecure_channel(target)
    trusted = os.environ.get("APRON_TLS_CA") or certificate  # the chain's CA (deploy/make_secrets.py)
    return grpc.secure_channel(target, tls.channel_credentials(trusted))


def main(argv: list[str]) -> int:
    flags = [a for a in argv[1:] if a in ("--live", "--ready")]
    positional = [a for a in argv[1:] if a not in flags]
    service = LIVE if flags and flags[-1] == "--live" else READY
    target = positional[0] if positional else f"127.0.0.1:{os.environ.get(env_name('port'), ServingConfig.port)}"
    with channel(target) as open_channel:
        try:
            reply = health_pb2_grpc.HealthStub(open_channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=3)
        except grpc.RpcError as error:
            print(f"{target} {service}: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    print(f"{target} {service}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
