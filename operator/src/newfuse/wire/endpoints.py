"""Where the fleet API serves each fleet, in the one place that lays the URLs out.

The operator writes them into status (`status.endpoints.a2a`); the gateway routes them.
"""

from __future__ import annotations

from typing import Final

A2A_PREFIX: Final = "/a2a"


def a2a_path(namespace: str, fleet: str) -> str:
    """The path of a fleet's A2A endpoint; its Agent Card is under it."""
    return f"{A2A_PREFIX}/{namespace}/{fleet}/"


def a2a_url(gateway_url: str, namespace: str, fleet: str) -> str:
    """The fleet's A2A endpoint on the gateway at ``gateway_url``."""
    return gateway_url.rstrip("/") + a2a_path(namespace, fleet)
