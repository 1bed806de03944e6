"""Loopback-only networking helpers: free ports and a tiny authenticated API client."""

from __future__ import annotations

import json
import random
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

# Servers the tests start take ports below the kernel's ephemeral range (and below the NodePort
# range, 30000-32767). A port from the ephemeral range can be taken, between the moment it is
# chosen and the moment a server (or a restarted one) binds it, by any outgoing connection's source
# port, or by a client's connect to it that the kernel turns into a connection to itself.
PORT_RANGE = range(20000, 30000)


# Ports this process handed out: nothing listens on them until their server starts, so a later
# call would otherwise find them free and hand them out twice.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, outside the ephemeral range."""
    for port in random.sample(PORT_RANGE, 200):
        if port < _ephemeral_low() and port not in _HANDED_OUT and _bindable(port):
            _HANDED_OUT.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("0.0.0.0", port))  # noqa: S104 - a wildcard bind also proves loopback free
        except OSError:
            return False
        return True


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


class ApiClient:
    """Just enough of the Kubernetes REST API to bootstrap a cluster, with no client library."""

    def __init__(self, server: str, token: str, ca_file: Path) -> None:
        """Talk to ``server`` with a bearer token, trusting only ``ca_file``."""
        self.server = server
        self._token = token
        self._context = ssl.create_default_context(cafile=str(ca_file))

    def request(self, method: str, path: str, body: Any = None, timeout: float = 5.0) -> Any:
        """Send one request and return the decoded JSON (or text) response."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(  # noqa: S310 - an https URL we built ourselves
            self.server + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout, context=self._context) as resp:  # noqa: S310
            text = resp.read().decode()
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text

    def ok(self, path: str) -> bool:
        """Whether GET ``path`` answers 2xx (False on any connection or HTTP error)."""
        try:
            self.request("GET", path, timeout=2.0)
        except (urllib.error.URLError, OSError, ValueError):
            return False
        return True
