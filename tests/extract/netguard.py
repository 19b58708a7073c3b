"""Network guard for the extraction tests: any connection or name lookup that is not local fails.

Installed in-process by the tests' fixtures and, through ``python -c "import netguard;
netguard.install(); ..."``, in the subprocesses they start, so a hidden download (a hub
model, a checkpoint, panns' labels file) fails the test instead of passing on a networked
machine. Loopback and Unix sockets stay allowed: a local Ray talks to itself through them.
"""

from __future__ import annotations

import socket
from typing import Any

LOCAL = {"localhost", "127.0.0.1", "::1", "0.0.0.0", ""}


class NetworkBlocked(AssertionError):
    """A test tried to reach the network."""


def _local(host: object) -> bool:
    return isinstance(host, str) and (host in LOCAL or host.startswith("127.")) or host is None


def _check(address: Any) -> None:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return
    host = address[0] if isinstance(address, tuple) and address else address
    if not _local(host):
        raise NetworkBlocked(f"network access blocked in extraction tests: {address!r}")


_ORIG: dict[str, Any] = {}


def install() -> None:
    """Patch socket connect / connect_ex / getaddrinfo (idempotent)."""
    if _ORIG:
        return
    _ORIG.update(connect=socket.socket.connect, connect_ex=socket.socket.connect_ex,
                 getaddrinfo=socket.getaddrinfo)

    def connect(self: socket.socket, address: Any) -> Any:
        _check(address)
        return _ORIG["connect"](self, address)

    def connect_ex(self: socket.socket, address: Any) -> Any:
        _check(address)
        return _ORIG["connect_ex"](self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, bytes):
            host = host.decode()
        if not _local(host):
            raise NetworkBlocked(f"name lookup blocked in extraction tests: {host!r}")
        return _ORIG["getaddrinfo"](host, *args, **kwargs)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = getaddrinfo


def uninstall() -> None:
    if not _ORIG:
        return
    socket.socket.connect = _ORIG["connect"]  # type: ignore[method-assign]
    socket.socket.connect_ex = _ORIG["connect_ex"]  # type: ignore[method-assign]
    socket.getaddrinfo = _ORIG["getaddrinfo"]
    _ORIG.clear()
