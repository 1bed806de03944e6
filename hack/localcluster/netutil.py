"""Loopback-only networking helpers: free ports and a tiny authenticated API client."""

from __future__ import annotations

import json
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
