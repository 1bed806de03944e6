"""Watch-event helpers: the queue key of a fleet, its log fields, and stale-event detection."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from newfuse.api.v1alpha1 import NewFuseAgent


def utc_now() -> dt.datetime:
    """Wall-clock time, truncated to seconds like metav1.Time."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def fleet_key(namespace: str, name: str) -> str:
    """The work-queue key of a fleet."""
    return f"{namespace}/{name}"


def key_fields(key: str) -> dict[str, str]:
    """The log fields naming a fleet: its namespace and name, separately (as agents log them)."""
    namespace, _, name = key.partition("/")
    return {"namespace": namespace, "fleet": name}


def is_older(meta: Mapping[str, Any], cached: NewFuseAgent) -> bool:
    """True if an event's object is an older version of the same fleet than the cached one.

    resourceVersions are etcd revisions: integers that grow with every write. They are compared
    only for the same object (same uid) and only when both parse; otherwise the event wins.
    """
    return is_older_than(meta, cached.metadata.uid, cached.metadata.resource_version)


def is_older_than(meta: Mapping[str, Any], uid: str, resource_version: str) -> bool:
    """``is_older`` against a cached (uid, resourceVersion), for a cache that keeps no model."""
    if meta.get("uid") != uid:
        return False
    try:
        return int(meta.get("resourceVersion", "")) < int(resource_version)
    except ValueError:
        return False
