"""The front's refusal reports (serving/front_refusals.py) over a real UDP socket: each report counted
once, at a scrape; the ones the kernel dropped from a full receive buffer counted too; anything else
not counted."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from serving.config import ServingConfig
from serving.front_refusals import REPORT_SUFFIX, FrontRefusals, open_front_refusals, socket_drops

REPORT = b"<190>Dec  5 11:00:00 " + REPORT_SUFFIX  # what nginx sends (tests/reliability/test_front.py: the real one)


def send(port: int, datagrams: list[bytes]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for datagram in datagrams:
            sender.sendto(datagram, ("127.0.0.1", port))


def test_reports_are_counted_at_a_scrape_and_other_datagrams_are_not() -> None:
    registry = CollectorRegistry()
    refusals = open_front_refusals("127.0.0.1", 0, registry)
    assert refusals is not None
    try:
        send(refusals.port, [REPORT] * 5 + [b"<190>Dec  5 11:00:00 other: refused", b"refused?"])
        assert refusals.count() == 5  # loopback datagrams are queued by the time sendto returns
        assert refusals.ignored == 2
        send(refusals.port, [REPORT + b"\n"] * 3)
        assert b"apron_front_refused_total 8.0" in generate_latest(registry)
        assert refusals.count() == 8  # read once: a scrape drains what it counted
    finally:
        refusals.close()
    assert refusals.count() == 8  # closed: the last count, no error
    assert open_front_refusals("127.0.0.1", -1, CollectorRegistry()) is None


def test_reports_the_kernel_dropped_from_a_full_buffer_are_counted() -> None:
    refusals = FrontRefusals("127.0.0.1", 0, receive_buffer_bytes=1)  # the kernel's minimum: a few datagrams
    try:
        if refusals.dropped is None:
            pytest.skip("no /proc/net/udp here")
        send(refusals.port, [REPORT] * 300)
        assert refusals.dropped > 0  # most did not fit: the kernel counted them
        assert refusals.count() == 300
    finally:
        refusals.close()


def test_drops_are_read_from_the_sockets_own_row(tmp_path: Path) -> None:
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n"
    row = "  {n}: 0100007F:13A4 00000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 {inode} 2 0000000000000000 {drops}\n"
    v4, v6 = tmp_path / "udp", tmp_path / "udp6"
    v4.write_text(header + row.format(n=0, inode=111, drops=7))
    v6.write_text(header + row.format(n=0, inode=222, drops=9))
    assert socket_drops(111, (v4, v6)) == 7 and socket_drops(222, (v4, v6)) == 9
    assert socket_drops(333, (v4, v6)) is None and socket_drops(111, (tmp_path / "absent",)) is None


def test_the_port_counts_on_metrics_only() -> None:
    with pytest.raises(ValueError, match="front_refusals_port counts on /metrics: it needs metrics_port"):
        ServingConfig(front_refusals_port=5140, metrics_port=-1)
    with pytest.raises(ValueError, match="front_refusals_port must be -1 \\(off\\)"):
        ServingConfig(front_refusals_port=-2)
    assert ServingConfig(front_refusals_port=5140).server.front_refusals_port == 5140
    assert ServingConfig(front_refusals_host="127.0.0.1").server.front_refusals_host == "127.0.0.1"


def test_a_port_it_cannot_bind_is_named_by_its_flags() -> None:
    with pytest.raises(OSError, match="--front-refusals-port 0 on '192.0.2.1' \\(--front-refusals-host, else --host\\)"):
        FrontRefusals("192.0.2.1", 0)  # TEST-NET-1: no interface of this machine's
