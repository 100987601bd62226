"""common/net.py: free ports for child processes that must be told a port."""

from __future__ import annotations

import socket

from common.net import free_port, free_ports


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(3)
    assert len(set(ports)) == 3
    for port in [*ports, free_port()]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
