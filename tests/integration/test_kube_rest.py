"""The operator's plain-JSON Kubernetes calls against a real API server.

KubeClient and the signing key send raw JSON over the official client's transport instead of the
generated API classes (kuberest.py says why). What those classes gave for free is checked here:
paths, content types (a merge patch on the status subresource), and ApiException statuses that
let reconcile treat 409 on create and 404 on delete as "already done".
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

from newfuse.adapters.kube import KubeClient
from newfuse.adapters.kuberest import RawSecrets
from newfuse.adapters.signing_secret import ensure_signing_key
from newfuse.api.v1alpha1 import GROUP, PLURAL, VERSION, EventType

pytestmark = pytest.mark.integration


def _pod(namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"containers": [{"name": "agent", "image": "agent:1"}]},
    }


def test_pods_secrets_and_events_round_trip(k8s_api: k8s_client.ApiClient, namespace: str) -> None:
    kube = KubeClient(k8s_api, pool_size=2)
    core = k8s_client.CoreV1Api(k8s_api)

    async def go() -> None:
        assert await kube.create_pod(_pod(namespace, "p0")) is True
        assert await kube.create_pod(_pod(namespace, "p0")) is False  # 409: already there
        assert core.read_namespaced_pod("p0", namespace).spec.containers[0].image == "agent:1"
        assert await kube.delete_pod(namespace, "p0") is True
        assert await kube.delete_pod(namespace, "gone") is False  # 404: already gone
        assert await kube.read_secret_key(namespace, "missing", "k") is None
        assert await kube.read_config_map(namespace, "missing") is None
        config_map = k8s_client.V1ConfigMap(
            metadata=k8s_client.V1ObjectMeta(name="cm"), data={"a": "1"}
        )
        core.create_namespaced_config_map(namespace, config_map)
        assert await kube.read_config_map(namespace, "cm") == {"a": "1"}
        owner = SimpleNamespace(name="demo", namespace=namespace, uid="0000-uid")
        made = await kube.ensure_owned_secret(owner, "s", lambda: {"token": "t1"})
        again = await kube.ensure_owned_secret(owner, "s", lambda: {"token": "t2"})
        assert made == again == {"token": "t1"}
        assert await kube.read_secret_key(namespace, "s", "token") == "t1"
        now = dt.datetime(2026, 12, 3, tzinfo=dt.UTC)
        await kube.post_event(namespace, "demo", "0000-uid", EventType.NORMAL, "Tested", "hi", now)

    try:
        asyncio.run(go())
    finally:
        kube.close()
    ours = [e for e in core.list_namespaced_event(namespace).items if e.reason == "Tested"]
    assert [(e.message, e.involved_object.name, e.source.component) for e in ours] == [
        ("hi", "demo", "newfuse-operator")
    ]


@pytest.mark.usefixtures("crd")
def test_status_and_finalizers_patch_the_fleet(
    k8s_api: k8s_client.ApiClient, namespace: str
) -> None:
    custom = k8s_client.CustomObjectsApi(k8s_api)
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "NewFuseAgent",
        "metadata": {"name": "demo"},
        "spec": {"replicas": 1, "image": "agent:1"},
    }
    created = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    kube = KubeClient(k8s_api, pool_size=2)
    version = created["metadata"]["resourceVersion"]

    async def add_ours() -> None:
        # An operator may be running (CI's session operator) and add its own finalizer meanwhile:
        # keep whatever is there, and read again when our write lost the race (409).
        for _ in range(10):
            current = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "demo")
            meta = current["metadata"]
            finalizers = [*meta.get("finalizers", []), "newfuse.io/test"]
            try:
                written = await kube.set_finalizers(
                    namespace, "demo", finalizers, meta["resourceVersion"]
                )
            except ApiException as exc:
                if exc.status != 409:
                    raise
                continue
            # The fleet as written, for the operator's cache: our finalizer and a newer version.
            assert written["metadata"]["finalizers"] == finalizers
            assert int(written["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
            return
        raise AssertionError("the finalizer write lost ten races in a row")

    async def go() -> dict[str, Any]:
        updated = await kube.patch_fleet_status(namespace, "demo", {"phase": "Pending"})
        await add_ours()
        with pytest.raises(ApiException) as stale:  # optimistic lock: an old version is refused
            await kube.set_finalizers(namespace, "demo", [], version)
        assert stale.value.status == 409
        return updated

    try:
        updated = asyncio.run(go())
    finally:
        kube.close()
    assert updated["status"]["phase"] == "Pending"
    stored = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "demo")
    assert "newfuse.io/test" in stored["metadata"]["finalizers"]
    others = [f for f in stored["metadata"]["finalizers"] if f != "newfuse.io/test"]
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "demo", {"metadata": {"finalizers": others}}
    )


def test_the_signing_key_secret_is_created_once_and_read_back(
    k8s_api: k8s_client.ApiClient, namespace: str
) -> None:
    secrets = RawSecrets(k8s_api)
    first = ensure_signing_key(secrets, namespace, "nf-signing", "key")
    assert ensure_signing_key(secrets, namespace, "nf-signing", "key") == first
    stored = k8s_client.CoreV1Api(k8s_api).read_namespaced_secret("nf-signing", namespace)
    assert base64.b64decode(stored.data["key"]).decode() == first
    with pytest.raises(ApiException) as missing:
        secrets.read_namespaced_secret("absent", namespace)
    assert missing.value.status == 404
