"""The calls the nginx front refused (serving/front.py), counted on the gateway's /metrics.

nginx refuses the calls over its `--max-calls` itself, so they never reach the gateway's RPC
metrics: in an overload every refusal would happen there and none would show on the dashboard or in
`ApronHighErrorRatio`. The front sends one syslog datagram per refused call (`access_log syslog:` in
its shed location, `FrontConfig.refusals_to`) to the UDP port `--front-refusals-port` of the process
that serves /metrics (the gateway, or the parent of its `--workers`).

That process reads nothing when a call is refused, the moment it has least to spare: the datagrams
wait in the socket's receive buffer, and a scrape drains them and adds the ones the kernel dropped
once the buffer was full (this socket's `drops` in /proc/net/udp), so the count stays exact however
fast the front refuses. A datagram that is not the front's report (`REPORT_SUFFIX`) is not counted;
one the kernel dropped cannot be told apart and is.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily

SYSLOG_TAG = "apron_front"  # nginx's syslog tag for the reports
REPORT_MESSAGE = "refused"  # the log_format of a report: the whole message
REPORT_SUFFIX = f"{SYSLOG_TAG}: {REPORT_MESSAGE}".encode()  # "<190>Dec  5 11:00:00 apron_front: refused"
RECEIVE_BUFFER_BYTES = 1 << 20  # reports between two scrapes wait here; beyond it the kernel drops (and counts) them
DATAGRAM_BYTES = 2048  # nginx's syslog messages are short; a longer datagram is not a report
PROC_UDP = (Path("/proc/net/udp"), Path("/proc/net/udp6"))
METRIC = "apron_front_refused"  # exposed as apron_front_refused_total


def socket_drops(inode: int, tables: tuple[Path, ...] = PROC_UDP) -> int | None:
    """Datagrams the kernel dropped for the socket `inode` (its receive buffer was full), from
    /proc/net/udp[6]'s last column; None where the tables do not list it (not Linux)."""
    for table in tables:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) >= 13 and fields[9] == str(inode):
                return int(fields[12])
    return None


class FrontRefusals:
    """A UDP socket the front reports its refusals to, and the Prometheus collector that counts them."""

    def __init__(self, host: str, port: int, receive_buffer_bytes: int = RECEIVE_BUFFER_BYTES):
        family = socket.AF_INET6 if _is_ipv6(host) else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer_bytes)
            self._socket.bind((host.strip("[]"), port))
        except OSError as error:
            self._socket.close()
            raise OSError(f"--front-refusals-port {port} on {host!r} (--front-refusals-host, else --host): {error}") from error
        self._socket.setblocking(False)
        self._inode = os.fstat(self._socket.fileno()).st_ino
        self._reports = 0
        self._ignored = 0
        self._lock = threading.Lock()  # scrapes come from the metrics server's threads

    @property
    def port(self) -> int:
        return int(self._socket.getsockname()[1])

    def count(self) -> int:
        """Refused calls reported so far: the reports read, and those the kernel dropped."""
        with self._lock:
            if self._socket.fileno() < 0:
                return self._reports
            while True:
                try:
                    datagram = self._socket.recv(DATAGRAM_BYTES)
                except BlockingIOError:
                    break
                if datagram.rstrip(b"\n").endswith(REPORT_SUFFIX):
                    self._reports += 1
                else:
                    self._ignored += 1
            return self._reports + (self.dropped or 0)

    @property
    def dropped(self) -> int | None:
        """Reports the kernel dropped so far (the receive buffer was full); None: not known here."""
        return socket_drops(self._inode)

    @property
    def ignored(self) -> int:
        """Datagrams read that were not the front's reports (not counted)."""
        return self._ignored

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            METRIC,
            "calls the nginx front refused at its --max-calls limit (RESOURCE_EXHAUSTED) before the gateway saw them "
            "(serving/front_refusals.py)",
            value=self.count(),
        )

    def close(self) -> None:
        with self._lock:
            self._socket.close()


def open_front_refusals(host: str, port: int, registry: CollectorRegistry) -> FrontRefusals | None:
    """The counter on `registry` when `port` is set (-1: off; 0: a free port)."""
    if port < 0:
        return None
    refusals = FrontRefusals(host, port)
    registry.register(refusals)
    return refusals


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).version == 6
    except ValueError:  # a name: IPv4, as the gateway's other listeners resolve it
        return False
