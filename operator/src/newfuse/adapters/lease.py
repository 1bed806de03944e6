"""Reading and writing the leader-election Lease (coordination.k8s.io/v1) with optimistic locking.

Every write carries the resourceVersion that was read, so two candidates racing for an expired
lease cannot both win: the API server refuses the second with 409 Conflict.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from newfuse.core.leader import LeaseRecord


class LeaseConflictError(Exception):
    """Someone else wrote the Lease (or created it) first."""


@dataclass(frozen=True)
class ObservedLease:
    """A Lease record and the resourceVersion it was read at."""

    record: LeaseRecord
    resource_version: str


def _micro_time(value: dt.datetime | None) -> str | None:
    # metav1.MicroTime: RFC 3339 with microseconds, in UTC.
    if value is None:
        return None
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseClient:
    """Get, create and replace one named Lease."""

    def __init__(
        self, api: k8s.ApiClient, namespace: str, name: str, request_timeout: float
    ) -> None:
        """Operate on Lease ``namespace``/``name``; each call gives up after ``request_timeout``.

        The timeout matters: a renew stuck on a dead connection must fail in time for the holder
        to notice it is past its renew deadline.
        """
        # Typed as Any: bodies go out as plain dicts (the client accepts them; its stubs say
        # V1Lease), and the API guarantees spec and metadata on every Lease it returns.
        self._api: Any = k8s.CoordinationV1Api(api)
        self.namespace, self.name = namespace, name
        self._timeout = request_timeout

    def describe(self) -> str:
        """The Lease's key, for log lines."""
        return f"{self.namespace}/{self.name}"

    async def get(self) -> ObservedLease | None:
        """The current record, or None if the Lease does not exist."""
        try:
            found = await asyncio.to_thread(
                self._api.read_namespaced_lease,
                self.name,
                self.namespace,
                _request_timeout=self._timeout,
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        spec = found.spec
        record = LeaseRecord(
            holder=spec.holder_identity or None,
            lease_duration_seconds=int(spec.lease_duration_seconds or 0),
            acquire_time=spec.acquire_time,
            renew_time=spec.renew_time,
            transitions=int(spec.lease_transitions or 0),
        )
        return ObservedLease(record, found.metadata.resource_version)

    def _body(self, record: LeaseRecord, resource_version: str | None) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if resource_version is not None:
            metadata["resourceVersion"] = resource_version
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": {
                "holderIdentity": record.holder,
                "leaseDurationSeconds": record.lease_duration_seconds,
                "acquireTime": _micro_time(record.acquire_time),
                "renewTime": _micro_time(record.renew_time),
                "leaseTransitions": record.transitions,
            },
        }

    async def create(self, record: LeaseRecord) -> None:
        """Create the Lease; LeaseConflictError if it exists already."""
        try:
            await asyncio.to_thread(
                self._api.create_namespaced_lease,
                self.namespace,
                self._body(record, None),
                _request_timeout=self._timeout,
            )
        except ApiException as exc:
            if exc.status == 409:
                raise LeaseConflictError(self.describe()) from exc
            raise

    async def replace(self, record: LeaseRecord, resource_version: str) -> None:
        """Write ``record`` if the Lease is still at ``resource_version`` (else a conflict)."""
        try:
            await asyncio.to_thread(
                self._api.replace_namespaced_lease,
                self.name,
                self.namespace,
                self._body(record, resource_version),
                _request_timeout=self._timeout,
            )
        except ApiException as exc:
            if exc.status == 409:
                raise LeaseConflictError(self.describe()) from exc
            raise
