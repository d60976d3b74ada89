"""Local TCP ports: which are free to listen on. Used by `luma-queue dev`, the tests and bench/."""

from __future__ import annotations

import socket


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports nobody listens on right now (the kernel's choice).

    All sockets are held open until every port is chosen, so the ports differ from each other;
    another process may still take one before the caller binds it (start-up retries cover that).
    """
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port(host: str = "127.0.0.1") -> int:
    """One port nobody listens on right now."""
    return free_ports(1, host)[0]


def port_taken(host: str, port: int) -> bool:
    """Whether a server could not bind `host:port` now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As servers do: a port left in TIME_WAIT by the previous run is free to use.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False
