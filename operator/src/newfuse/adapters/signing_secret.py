"""The operator's signing key, in a Secret the operator creates on its first start.

Why the operator and not the chart: a random key made by a Helm template changes on every
`helm template` (the way Argo CD renders, with no `lookup`), so a GitOps sync would rotate the key
on every sync and break every copy of it in fleet namespaces. Nothing in a chart can be random
and stable at once; a Secret created once in the cluster is. The chart points the operator at the
Secret's name (and mounts it as an optional env value, so a restart reads it from there too).

Two replicas starting at once both try to create it: one wins, the other gets 409 Conflict, and
both then read back the same stored key. A Secret that exists but lacks the key is an error, not
something to overwrite: fleets may hold copies of its other keys.
"""

from __future__ import annotations

import base64
import logging
import secrets
from typing import Any, Final, Protocol

from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

# 36 random bytes: 48 URL-safe characters, like the key the chart used to generate.
KEY_BYTES: Final = 36
MANAGED_BY: Final = {"app.kubernetes.io/managed-by": "newfuse-operator"}


class SecretsApi(Protocol):
    """The two calls of kubernetes.client.CoreV1Api used here (a stand-in in unit tests)."""

    def create_namespaced_secret(self, namespace: str, body: Any) -> Any: ...

    def read_namespaced_secret(self, name: str, namespace: str) -> Any: ...


def ensure_signing_key(core: SecretsApi, namespace: str, name: str, key: str) -> str:
    """The key stored in Secret ``namespace/name`` under ``key``; create it first if absent."""
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(MANAGED_BY)},
        "type": "Opaque",
        "stringData": {key: secrets.token_urlsafe(KEY_BYTES)},
    }
    try:
        core.create_namespaced_secret(namespace, body)
        log.info("created the signing key", extra={"secret": f"{namespace}/{name}"})
    except ApiException as exc:
        if exc.status != 409:  # 409: it exists (an earlier start, or the other replica)
            raise
    data = core.read_namespaced_secret(name, namespace).data or {}
    if key not in data:
        raise RuntimeError(
            f"Secret {namespace}/{name} exists but has no key {key!r}: add the key, or delete "
            "the Secret to have a new one generated (fleets' copies must then be replaced)"
        )
    value = base64.b64decode(data[key]).decode()
    if not value:
        raise RuntimeError(f"Secret {namespace}/{name} holds an empty {key!r}")
    return value
