"""Free TCP ports, for the child processes (redis-server, tritonserver, prometheus, a gateway)
that must be told a port rather than binding port 0 and reporting it back."""

from __future__ import annotations

import contextlib
import socket


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports the OS hands out as free now (bound together so they differ, then
    released: the caller's process binds them next)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]
