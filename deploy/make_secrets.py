"""Secrets for a deployment, generated at deploy time and never committed (`make deploy-secrets`):

    deploy/secrets/jwt_secret               HS256 secret the gateway verifies tokens with (and `apron token
                                            --secret-file` signs with)
    deploy/secrets/ca.crt, ca.key           a private CA (keep ca.key off the servers)
    deploy/secrets/tls.crt, tls.key         the gateway's certificate (chain: leaf + CA) and key, for the
                                            names compose and Kubernetes reach it by
    deploy/secrets/grafana_admin_password   Grafana's admin login
    deploy/secrets/redis_password           Redis's AUTH password (Kubernetes: the Secret apron-redis)
    deploy/secrets/redis.crt, redis.key     Redis's TLS certificate (chain: leaf + CA) and key, for the names
                                            the StatefulSet's pod is reached by (Secret apron-redis-tls)

Existing files are kept (rerunning changes nothing) unless --force. Compose mounts them as secrets,
as they are on the host, into containers of several users (the gateway 10001, the nginx front 101,
Grafana 472): the files they read (SHARED) are 0640 in group SECRETS_GID, which each of those
services joins (`group_add` in the compose files); the rest stay 0600. Where the group cannot be
set (not root, not in it) they stay 0600 and the command to run is printed. For Kubernetes:
`make k8s-secrets` (kubectl create secret ... from these files).

    python deploy/make_secrets.py [--out deploy/secrets] [--name gateway.example.com] [--force]
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

from serving.pki import SERVER_NAMES, issue, load_ca, make_ca

DEPLOY = Path(__file__).resolve().parent
# how compose (service `gateway`) and Kubernetes (Service `apron-gateway`, namespace `apron`) reach it
GATEWAY_NAMES = (
    *SERVER_NAMES, "gateway", "apron-gateway", "apron-gateway.apron", "apron-gateway.apron.svc",
    "apron-gateway.apron.svc.cluster.local",
)  # fmt: skip
REDIS_NAMES = ("redis", "redis-0.redis", "redis-0.redis.apron", "redis-0.redis.apron.svc", "redis-0.redis.apron.svc.cluster.local")
FILES = ("jwt_secret", "ca.crt", "ca.key", "tls.crt", "tls.key", "grafana_admin_password")
REDIS_FILES = ("redis_password", "redis.crt", "redis.key")  # added later: written when missing, the others kept
# the gateway image's group (deploy/Dockerfile's USER 10001:10001); the front and Grafana join it in compose
SECRETS_GID = 10001
# private files a compose container reads: the gateway (jwt_secret, tls.key), the front (tls.key), Grafana
SHARED = ("jwt_secret", "tls.key", "grafana_admin_password")


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def make_secrets(out: Path, names: tuple[str, ...] = GATEWAY_NAMES, force: bool = False) -> list[Path]:
    """Write the files of a deployment into `out`; the ones written (none when all exist)."""
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    written = []
    if force or not all((out / name).is_file() for name in FILES):
        written += _make_base(out, names)
    if force or written or not all((out / name).is_file() for name in REDIS_FILES):
        written += _make_redis(out)
    share_with_services(out)
    return written


def share_with_services(out: Path, gid: int = SECRETS_GID) -> list[str]:
    """SHARED files 0640 in group `gid` (group first, then the mode: never readable by the caller's
    own group); the names it could not share (left 0600), after printing how to."""
    unshared = []
    for name in SHARED:
        path = out / name
        try:
            os.chown(path, -1, gid)
        except OSError:  # not permitted; or (EINVAL) a user namespace that maps no such group
            unshared.append(name)
            continue
        os.chmod(path, 0o640)
    if unshared:
        files = " ".join(str(out / name) for name in unshared)
        print(f"make_secrets: cannot give {', '.join(unshared)} to group {gid} (the compose services' shared group); "
              f"they stay 0600 and the containers cannot read them until you run:\n"
              f"  sudo chgrp {gid} {files} && sudo chmod 0640 {files}", file=sys.stderr)  # fmt: skip
    return unshared


def _make_redis(out: Path) -> list[Path]:
    """Redis's password and TLS certificate, signed by the deployment's CA (ca.key in `out`)."""
    _write_private(out / "redis_password", secrets.token_urlsafe(32))  # no newline: the Secret holds it verbatim
    server = issue(out, "redis", load_ca(out / "ca.crt", out / "ca.key"), server_names=REDIS_NAMES)
    server.cert.write_bytes(server.cert.read_bytes() + (out / "ca.crt").read_bytes())
    return [out / name for name in REDIS_FILES]


def _make_base(out: Path, names: tuple[str, ...]) -> list[Path]:
    _write_private(out / "jwt_secret", secrets.token_hex(32) + "\n")
    _write_private(out / "grafana_admin_password", secrets.token_urlsafe(24) + "\n")
    ca = make_ca(out, "apron CA")
    ca.pem.cert.rename(out / "ca.crt")
    ca.pem.key.rename(out / "ca.key")
    server = issue(out, "tls", ca, server_names=names)
    # the chain (leaf, then CA): clients that trust the CA verify it, and a client given only this
    # file (the health check) finds the CA in it
    server.cert.write_bytes(server.cert.read_bytes() + (out / "ca.crt").read_bytes())
    return [out / name for name in FILES]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEPLOY / "secrets", help="where to write (default deploy/secrets)")
    parser.add_argument("--name", action="append", default=[], help="another DNS name or IP of the gateway (repeatable)")
    parser.add_argument("--force", action="store_true", help="replace existing secrets (every token and client must change)")
    args = parser.parse_args(argv)
    written = make_secrets(args.out, (*GATEWAY_NAMES, *args.name), args.force)
    print(f"wrote {', '.join(p.name for p in written)} in {args.out}" if written else f"{args.out}: secrets exist (--force replaces them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
