"""Kubernetes I/O for the operator: pods, the fleet's metadata and status, and Events.

The official client is synchronous, so calls run in a dedicated thread pool sized for the
reconcile concurrency (asyncio's default pool is only cpu+4 threads). Conflicts that mean "already
done" (409 on create, 404 on delete) are success: reconcile is idempotent.

Requests are plain JSON over the ApiClient's transport (kuberest.py says why: ~92 MB of RSS).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import functools
import logging
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from newfuse.adapters.kuberest import (
    CONFIG_MAPS,
    EVENTS,
    FLEETS,
    MERGE_PATCH,
    PODS,
    REVISIONS,
    SECRETS,
    at,
    request,
)
from newfuse.api.v1alpha1 import API_VERSION, KIND, EventType
from newfuse.core.naming import LABEL_FLEET, LABEL_REVISION

log = logging.getLogger(__name__)
T = TypeVar("T")
EVENT_SOURCE = "newfuse-operator"


def load_config(kubeconfig: str | None, pool_size: int) -> k8s.ApiClient:
    """An API client from a kubeconfig file, or the in-cluster service account."""
    configuration = k8s.Configuration()
    if kubeconfig:
        k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=configuration
        )
    else:
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except k8s_config.ConfigException:
            k8s_config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    configuration.connection_pool_maxsize = pool_size
    return k8s.ApiClient(configuration)


@dataclass(frozen=True)
class Credentials:
    """What kopf's own watch client needs, taken from the same configuration as ours."""

    server: str
    ca_path: str | None
    insecure: bool
    scheme: str | None
    token: str | None
    certificate_path: str | None
    private_key_path: str | None


def credentials_of(api: k8s.ApiClient) -> Credentials:
    """Extract server, TLS material and bearer token from a loaded client configuration."""
    config = api.configuration
    header = config.get_api_key_with_prefix("BearerToken") or config.get_api_key_with_prefix(
        "authorization"
    )
    parts = header.split(" ", 1) if header else []
    scheme, token = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0] if parts else None)
    return Credentials(
        server=config.host,
        ca_path=config.ssl_ca_cert,
        insecure=not config.verify_ssl,
        scheme=scheme,
        token=token,
        certificate_path=config.cert_file,
        private_key_path=config.key_file,
    )


class KubeClient:
    """The handful of API calls reconcile makes."""

    def __init__(self, api: k8s.ApiClient, pool_size: int) -> None:
        """Use ``api`` from ``pool_size`` threads."""
        self._api = api
        self._pool = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="kube")

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    async def _request(
        self, method: str, path: str, params: dict[str, str], body: Any = None, **options: Any
    ) -> Any:
        return await self._run(request, self._api, method, path, params, body, **options)

    def close(self) -> None:
        """Stop the thread pool."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def create_pod(self, manifest: dict[str, Any]) -> bool:
        """Create a pod; False if one with that name exists already."""
        namespace = {"namespace": manifest["metadata"]["namespace"]}
        try:
            await self._request("POST", PODS, namespace, manifest, decode=False)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    async def delete_pod(self, namespace: str, name: str) -> bool:
        """Delete a pod; False if it was gone already."""
        params = at(namespace, name)
        try:
            await self._request("DELETE", f"{PODS}/{{name}}", params, decode=False)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def patch_fleet_status(
        self, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        """Replace the fleet's status (merge patch on the status subresource); the new object."""
        params = at(namespace, name)
        updated = await self._request(
            "PATCH", f"{FLEETS}/{{name}}/status", params, {"status": status},
            content_type=MERGE_PATCH,
        )  # fmt: skip
        return dict(updated)

    async def set_finalizers(
        self, namespace: str, name: str, finalizers: list[str], resource_version: str
    ) -> dict[str, Any]:
        """Set metadata.finalizers, failing with 409 if the object changed since it was read."""
        patch = {"metadata": {"finalizers": finalizers, "resourceVersion": resource_version}}
        params = at(namespace, name)
        updated = await self._request(
            "PATCH", f"{FLEETS}/{{name}}", params, patch, content_type=MERGE_PATCH
        )
        return dict(updated)

    async def ensure_revision(
        self, fleet_meta: Any, revision: str, template: dict[str, Any]
    ) -> None:
        """Store a revision's template as a ControllerRevision owned by the fleet (idempotent)."""
        body = {
            "apiVersion": "apps/v1",
            "kind": "ControllerRevision",
            "metadata": {
                "name": f"{fleet_meta.name}-{revision}",
                "namespace": fleet_meta.namespace,
                "labels": {LABEL_FLEET: fleet_meta.name, LABEL_REVISION: revision},
                "ownerReferences": [
                    {"apiVersion": API_VERSION, "kind": KIND, "name": fleet_meta.name,
                     "uid": fleet_meta.uid, "controller": True, "blockOwnerDeletion": True}
                ],
            },
            "data": template,
            "revision": 1,
        }  # fmt: skip
        try:
            await self._request(
                "POST", REVISIONS, {"namespace": fleet_meta.namespace}, body, decode=False
            )
        except ApiException as exc:
            if exc.status != 409:
                raise

    async def ensure_owned_secret(
        self, fleet_meta: Any, name: str, make: Callable[[], dict[str, str]]
    ) -> dict[str, str]:
        """Secret ``name``'s data in the fleet's namespace, created from ``make()`` if missing.

        The fleet owns it, so the garbage collector deletes it with the fleet.
        """
        namespace = fleet_meta.namespace
        try:
            found = await self._request("GET", f"{SECRETS}/{{name}}", at(namespace, name))
            return {k: base64.b64decode(v).decode() for k, v in (found.get("data") or {}).items()}
        except ApiException as exc:
            if exc.status != 404:
                raise
        data = make()
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {LABEL_FLEET: fleet_meta.name},
                "ownerReferences": [
                    {"apiVersion": API_VERSION, "kind": KIND, "name": fleet_meta.name,
                     "uid": fleet_meta.uid, "controller": True, "blockOwnerDeletion": True}
                ],
            },
            "stringData": data,
        }  # fmt: skip
        try:
            await self._request("POST", SECRETS, {"namespace": namespace}, body, decode=False)
        except ApiException as exc:
            if exc.status != 409:
                raise
            return await self.ensure_owned_secret(fleet_meta, name, make)  # lost a race: read
        return data

    async def read_secret_key(self, namespace: str, name: str, key: str) -> str | None:
        """One key of a Secret, as text; None if the Secret or the key is missing."""
        try:
            found = await self._request("GET", f"{SECRETS}/{{name}}", at(namespace, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        value = (found.get("data") or {}).get(key)
        return base64.b64decode(value).decode() if value is not None else None

    async def read_config_map(self, namespace: str, name: str) -> dict[str, str] | None:
        """A ConfigMap's data, or None if there is no such ConfigMap."""
        try:
            found = await self._request("GET", f"{CONFIG_MAPS}/{{name}}", at(namespace, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(found.get("data") or {})

    async def read_revision(
        self, namespace: str, fleet: str, revision: str
    ) -> dict[str, Any] | None:
        """A stored revision's template, or None if there is none."""
        try:
            found = await self._request(
                "GET", f"{REVISIONS}/{{name}}", at(namespace, f"{fleet}-{revision}")
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        data = found.get("data")
        return dict(data) if isinstance(data, dict) else None

    async def post_event(
        self,
        namespace: str,
        name: str,
        uid: str,
        event_type: EventType,
        reason: str,
        message: str,
        now: dt.datetime,
    ) -> None:
        """Record a core/v1 Event on the fleet (what `kubectl describe nfa` shows). Never raises."""
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{name}.{uuid.uuid4().hex[:12]}", "namespace": namespace},
            "involvedObject": {
                "apiVersion": API_VERSION, "kind": KIND, "name": name, "namespace": namespace,
                "uid": uid,
            },
            "type": str(event_type),
            "reason": reason,
            "message": message[:1024],
            "firstTimestamp": now.isoformat(),
            "lastTimestamp": now.isoformat(),
            "count": 1,
            "source": {"component": EVENT_SOURCE},
            "reportingComponent": EVENT_SOURCE,
        }  # fmt: skip
        try:
            await self._request("POST", EVENTS, {"namespace": namespace}, event, decode=False)
        except ApiException as exc:
            log.warning("could not post event %s on %s/%s: %s", reason, namespace, name, exc.reason)
