"""The gateway's front: nginx before `apron serve`, shedding calls over a limit before any queue.

Why a front: grpc.aio takes a call up only after grpc core has queued it, so under a burst the calls
wait in core, out of the gateway's sight, and every refusal the gateway makes still costs grpc's own
work per call (a bare grpc.aio server refusing every call of a 2,000-call burst: client p50
0.77-2.5 s on the 2-core machine, RELIABILITY.md). nginx counts the calls it has passed on and
refuses the rest at once, in C, with a gRPC status of its own: RESOURCE_EXHAUSTED and a
`retry-after-ms` trailer (a Trailers-Only response), naming the setting — what the gateway's own
admission answers, so clients (`ApronClient`, Locust) treat both alike. What reaches the gateway
is at most `max_calls` calls at once: its queue stays short and a caller's latency stays its own.

- `limit_conn` counts each HTTP/2 stream (call) as a connection, so one zone keyed by the server
  name is a limit on calls in flight for the whole front;
- the retry-after is drawn per call from a few values (`split_clients` on the request id), so shed
  callers do not come back in one wave;
- nginx passes every other status, header and trailer through: auth, validation and the gateway's
  own shedding are unchanged behind it.

`render_nginx_conf` is pure (the deploy's nginx.conf is its output: `python -m serving.front
--print-config`); `NginxFront` runs it in a private directory for the tests and the load tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common.net import free_port
from serving import auth
from serving.config import ServingConfig
from serving.errors import RETRY_AFTER_KEY
from serving.front_refusals import REPORT_MESSAGE, SYSLOG_TAG
from serving.limits import max_request_bytes

DEFAULT_MAX_CALLS = 64  # Locust's throughput on the 2-core gateway peaks near 64 users (RELIABILITY.md, loadtests.shedding)
RETRY_AFTER_MS = (50, 100, 150, 200)  # one drawn per shed call
MAX_CALLS_FLAG = "--max-calls"  # named in the shed message, as the gateway names its own settings
MAX_BODY_FLAG = "--max-body-bytes"  # named in the answer to a request over it
START_TIMEOUT_S = 20.0
START_ATTEMPTS = 5  # a free port picked for the front may be taken before nginx binds it: pick another


class PortTaken(OSError):
    """nginx could not bind its port: another process holds it."""


@dataclass(frozen=True)
class FrontConfig:
    listen: str  # host:port the front serves (NginxFront: port 0 picks a free one)
    upstream: str  # host:port of `apron serve` (plaintext, loopback or the pod's own network)
    max_calls: int = DEFAULT_MAX_CALLS
    max_body_bytes: int = 0  # 0: the largest request the gateway's default limits accept
    read_timeout_s: float = 120.0
    max_connection_age_s: float = 1800.0  # the gateway's --max-connection-age-s default
    tls_cert: str = ""  # PEM chain and key: the front serves TLS (the deploy: the gateway's Secret)
    tls_key: str = ""
    # the gateway behind serves TLS too (the deploy): the front connects with TLS, without verifying
    # its certificate, which names the Service, not the pod's loopback it is reached on
    upstream_tls: bool = False
    # host:port of the gateway's --front-refusals-port: one syslog datagram per refused call, counted
    # on its /metrics (serving/front_refusals.py); empty: refusals are not reported
    refusals_to: str = ""

    def __post_init__(self) -> None:
        if self.max_calls < 1:
            raise ValueError(f"max_calls must be at least 1, got {self.max_calls}")
        if self.max_body_bytes < 0:
            raise ValueError(f"max_body_bytes must be 0 (the gateway's default limits) or more, got {self.max_body_bytes}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together")
        host, _ = split_address(self.listen, "listen")  # a bad address: this error, not nginx's or a timeout
        split_address(self.upstream, "upstream")
        if self.refusals_to:
            split_address(self.refusals_to, "refusals_to")
        # the gateway behind may be a laptop's (a development secret, no auth): plaintext stays on this machine
        if not self.tls_cert and not auth.is_loopback(host):
            raise ValueError(
                f"listen {self.listen} is reachable from other machines: give --tls-cert and --tls-key (the front then "
                "serves TLS, as the deploy's does), or listen on a loopback address (127.0.0.1:8443)"
            )


def split_address(address: str, what: str = "address") -> tuple[str, int]:
    """"host:port" or "[ipv6]:port" -> (host without brackets, port); ValueError naming `what` otherwise."""
    host, sep, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{what} must be host:port (an IPv6 host in brackets), got {address!r}")
    return host, int(port)


def render_nginx_conf(config: FrontConfig, workdir: Path, error_log: str = "") -> str:
    """nginx.conf for `config`; `workdir` holds its pid file, temporary files and error log (unless
    `error_log` names another, e.g. stderr in a container)."""
    body = config.max_body_bytes or max_request_bytes(ServingConfig().security)
    split = " ".join(f"{100 / len(RETRY_AFTER_MS):.2f}% {ms};" for ms in RETRY_AFTER_MS[:-1]) + f" * {RETRY_AFTER_MS[-1]};"
    message = (
        f"overloaded: the gateway's front is at its limit of {config.max_calls} calls at once ({MAX_CALLS_FLAG}); "
        f"retry after {RETRY_AFTER_KEY}"
    )
    too_large = (
        f"the request is larger than the gateway's front accepts ({body} bytes, {MAX_BODY_FLAG}: render the front "
        "again with the gateway's own limits when --max-history, --max-edits or --max-message-bytes are raised)"
    )
    tls = f"""
    ssl_certificate {config.tls_cert};
    ssl_certificate_key {config.tls_key};
    ssl_protocols TLSv1.2 TLSv1.3;""" if config.tls_cert else ""
    scheme = "grpcs" if config.upstream_tls else "grpc"
    # a refused call's report: one datagram, sent without waiting, read by nobody until a scrape
    report_format = f"\n  log_format apron_refused '{REPORT_MESSAGE}';" if config.refusals_to else ""
    report = (
        f"\n      access_log syslog:server={config.refusals_to},tag={SYSLOG_TAG},nohostname apron_refused;"
        if config.refusals_to else ""
    )  # fmt: skip
    return f"""# rendered by serving/front.py: do not edit, render again
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {error_log or f'{workdir}/error.log'} warn;
events {{ worker_connections 16384; }}
http {{
  access_log off;{report_format}
  client_body_temp_path {workdir}/body;
  proxy_temp_path {workdir}/proxy;
  fastcgi_temp_path {workdir}/fastcgi;
  uwsgi_temp_path {workdir}/uwsgi;
  scgi_temp_path {workdir}/scgi;
  # one counter for every call in flight through this front (HTTP/2: each stream counts)
  limit_conn_zone $server_name zone=apron_calls:1m;
  limit_conn_log_level info;
  split_clients "$request_id" $apron_retry_after_ms {{ {split} }}
  upstream apron_gateway {{
    server {config.upstream};
    keepalive 32;
  }}
  server {{
    listen {config.listen}{' ssl' if config.tls_cert else ''} http2;
    server_name apron;{tls}
    http2_max_concurrent_streams 4096;
    # nginx ends a client connection with GOAWAY after 1,000 calls by default, and grpc clients
    # share one connection across channels: calls in flight then fail UNAVAILABLE ("Stream
    # removed"). The gateway's --max-connection-age-s bounds a connection's life instead.
    keepalive_requests 1000000;
    keepalive_time {config.max_connection_age_s:g}s;
    client_max_body_size {body};
    # bodies stay in memory (never a temporary file: workers of a root nginx run as another user)
    client_body_buffer_size {body};
    location / {{
      limit_conn apron_calls {config.max_calls};
      limit_conn_status 429;
      error_page 429 = @shed;
      # a gRPC status, not HTTP 413 (which clients see as UNKNOWN), naming the limit
      error_page 413 = @too_large;
      grpc_pass {scheme}://apron_gateway;
      grpc_read_timeout {config.read_timeout_s:g}s;
      grpc_send_timeout {config.read_timeout_s:g}s;
    }}
    # health watches and reflection: long-lived streams that need no token; not calls to count (a
    # client holding a watch per connection would use up the limit), bounded by the gateway's own
    # --max-open-streams, and idle for long (no read timeout to cut them)
    location ~ ^/grpc\\.(health|reflection)\\. {{
      grpc_pass {scheme}://apron_gateway;
      grpc_read_timeout 1d;
      grpc_send_timeout 1d;
    }}
    location @shed {{{report}
      default_type application/grpc;
      add_header grpc-status 8 always;
      add_header grpc-message "{message}" always;
      add_header {RETRY_AFTER_KEY} $apron_retry_after_ms always;
      return 204;
    }}
    location @too_large {{
      default_type application/grpc;
      add_header grpc-status 8 always;
      add_header grpc-message "{too_large}" always;
      return 204;
    }}
  }}
}}
"""


def nginx_binary() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)
    if found is None:
        raise FileNotFoundError("nginx is not installed (Debian: apt-get install nginx-light; scripts/install_system.sh)")
    return found


class NginxFront:
    """nginx running `config` in a private temporary directory (0700) until `stop()`."""

    def __init__(self, config: FrontConfig):
        self.config = config
        self.workdir = Path(tempfile.mkdtemp(prefix="apron-front-"))
        self.conf = self.workdir / "nginx.conf"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return self.config.listen

    def start(self) -> NginxFront:
        """Start nginx and wait until it listens. A `listen` port of 0 means a free port of this
        machine's: one is picked, and another if someone took it before nginx could bind it."""
        host, port = split_address(self.config.listen)
        pick = port == 0
        listen_host = self.config.listen.rpartition(":")[0]  # as given (IPv6 in brackets)
        for attempt in range(START_ATTEMPTS if pick else 1):
            if pick:
                self.config = dataclasses.replace(self.config, listen=f"{listen_host}:{free_port(host)}")
            try:
                return self._start_once()
            except PortTaken:
                if attempt == START_ATTEMPTS - 1 or not pick:
                    raise
        raise AssertionError("unreachable")

    def _start_once(self) -> NginxFront:
        self.conf.write_text(render_nginx_conf(self.config, self.workdir))
        self.process = subprocess.Popen([nginx_binary(), "-p", str(self.workdir), "-c", str(self.conf)], stderr=subprocess.PIPE)
        host, port = split_address(self.config.listen)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:  # until the front accepts connections, or nginx exited (its error is the reason)
            if self.process.poll() is not None:
                error = (self.process.stderr.read().decode(errors="replace") if self.process.stderr else "").strip()
                if "Address already in use" in error:
                    raise PortTaken(error)
                raise RuntimeError(f"nginx exited with {self.process.returncode}: {error}")
            try:
                # its own pid file first: nginx writes it once its sockets are bound (a connection
                # alone might reach whoever else holds the port while nginx retries its bind)
                if (self.workdir / "nginx.pid").read_text().strip() != str(self.process.pid):
                    raise OSError("not nginx's port yet")
                socket.create_connection((host, port), timeout=0.5).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"nginx did not listen on {self.config.listen} within {START_TIMEOUT_S:g} s") from None
                time.sleep(0.05)

    def error_log(self) -> str:
        path = self.workdir / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: nginx's fast shutdown
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> NginxFront:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.front", description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="host:port of apron serve")
    parser.add_argument("--listen", default="127.0.0.1:8443", help="host:port of the front (beyond loopback: with --tls-cert)")
    parser.add_argument(MAX_CALLS_FLAG, dest="max_calls", type=int, default=DEFAULT_MAX_CALLS, help="calls in flight through the front")
    parser.add_argument(
        MAX_BODY_FLAG, dest="max_body_bytes", type=int, default=0,
        help="largest request body passed on (0: the largest the gateway's default limits accept; the gateway's "
        "--max-history, --max-edits and --max-message-bytes set its own)",
    )  # fmt: skip
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/nginx"), help="--print-config: pid, log and temporary files")
    parser.add_argument("--tls-cert", default="", help="PEM certificate chain: the front serves TLS")
    parser.add_argument("--tls-key", default="", help="PEM private key of --tls-cert")
    parser.add_argument("--upstream-tls", action="store_true", help="the gateway behind serves TLS")
    parser.add_argument(
        "--refusals-to", default="", help="host:port of the gateway's --front-refusals-port: each refused call is counted there"
    )
    parser.add_argument("--error-log", default="", help="--print-config: where nginx logs errors (default: in --workdir)")
    parser.add_argument("--print-config", action="store_true", help="print nginx.conf (the deploy's) instead of running nginx")
    args = parser.parse_args(argv)
    try:
        config = FrontConfig(
            listen=args.listen, upstream=args.upstream, max_calls=args.max_calls, max_body_bytes=args.max_body_bytes,
            tls_cert=args.tls_cert, tls_key=args.tls_key,
            upstream_tls=args.upstream_tls, refusals_to=args.refusals_to,
        )  # fmt: skip
    except ValueError as error:
        parser.error(str(error))
    if args.print_config:
        sys.stdout.write(render_nginx_conf(config, args.workdir, args.error_log))
        return 0
    try:
        front = NginxFront(config).start()
    except (OSError, RuntimeError) as error:  # no nginx, a port in use, a config nginx refuses
        parser.exit(1, f"python -m serving.front: {error}\n")
    print(f"front on {config.listen} -> {config.upstream}, at most {config.max_calls} calls at once", flush=True)
    try:
        front.process.wait()  # type: ignore[union-attr]
    except KeyboardInterrupt:
        pass
    finally:
        front.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
