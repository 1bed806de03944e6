"""The chart's admission fence on the real API server: out-of-list references are refused.

Whoever may create a NewFuseAgent may create pods with the ServiceAccount, Secrets, tolerations
and node selectors it names. The chart's ValidatingAdmissionPolicy (admissionPolicy.enabled) is
rendered by helm exactly as an admin would install it, bound to this module's namespace only (so
the other tests on the shared cluster never meet it), and then:
- a NewFuseAgent that uses every reference field within the allow-list is created;
- one naming a Secret, ServiceAccount, toleration key or node selector outside it is refused at
  admission, with a message naming the field, and does not exist afterwards;
- a spec update is fenced too, while metadata-only updates (the operator's finalizer) pass even
  after the allow-list narrows, so such a fleet can still be deleted.

Each refusal case is a spec that the allowed one differs from in one field, and the very probe
used to wait for the policy is accepted before the policy is installed: a policy that admitted
everything would fail every refusal test.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s_client

from fence import ALLOWED, EVERY_REFERENCE, fence_docs, fence_values, nfa, one, render
from harness import Kubectl
from localcluster import wait_for

# A policy takes a moment to be effective (the API server's informers must see the policy and
# its binding): poll with a known-bad probe until it is refused.
EFFECTIVE_TIMEOUT = 60.0


def _create(
    kubectl: Kubectl, manifest: dict[str, Any], *, dry_run: bool = False
) -> subprocess.CompletedProcess[str]:
    args = ["create", "-f", "-", *(["--dry-run=server"] if dry_run else [])]
    return kubectl.run(*args, stdin=json.dumps(manifest))


def _refused(result: subprocess.CompletedProcess[str], expected: str) -> str | None:
    """The denial message, when the fence refused the request for the expected reason."""
    if result.returncode != 0 and "ValidatingAdmissionPolicy" in result.stderr:
        return result.stderr if expected in result.stderr else None
    return None


def _install(kubectl: Kubectl, namespace: str, **lists: list[str]) -> list[dict[str, Any]]:
    """The chart's fence for `namespace`, bound to it alone (`lists` replace ALLOWED's)."""
    values = fence_values(
        namespace,
        namespaceSelector={"matchLabels": {"kubernetes.io/metadata.name": namespace}},
        namespaces={namespace: {**ALLOWED, **lists}},
    )
    release = f"fence-{namespace[-6:]}"
    docs = fence_docs(render(release=release, namespace=namespace, values=values))
    # Policy first: a binding to a policy not yet there is ignored, never the other way round.
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
    return docs


def _uninstall(kubectl: Kubectl, docs: list[dict[str, Any]]) -> None:
    for kind in ("ValidatingAdmissionPolicyBinding", "ValidatingAdmissionPolicy"):
        name = one(docs, kind)["metadata"]["name"]
        kubectl("delete", kind.lower(), name, "--ignore-not-found", "--wait=false")


def _wait_until_refused(kubectl: Kubectl, manifest: dict[str, Any], expected: str) -> str:
    # The reason matters: a refusal for another field would not show the change under test.
    message: str = wait_for(
        lambda: _refused(_create(kubectl, manifest, dry_run=True), expected),
        EFFECTIVE_TIMEOUT,
        what=f"the fence to refuse {manifest['spec']} with {expected!r}",
    )
    return message


@contextlib.contextmanager
def _fenced(kubectl: Kubectl, namespace: str) -> Iterator[list[dict[str, Any]]]:
    """Install the fence, after showing that the probe passes without it; remove it after."""
    probe = nfa("probe", namespace, serviceAccountName="intruder")
    before = _create(kubectl, probe, dry_run=True)
    assert before.returncode == 0, f"the probe must pass without the fence: {before.stderr}"
    docs = fence_docs(render(release=f"fence-{namespace[-6:]}", namespace=namespace))
    try:
        docs = _install(kubectl, namespace)
        _wait_until_refused(kubectl, probe, 'spec.serviceAccountName "intruder" is not in')
        yield docs
    finally:
        _uninstall(kubectl, docs)


@pytest.fixture(scope="module")
def tenant(k8s_api: k8s_client.ApiClient, kubectl: Kubectl, crd: None) -> Iterator[str]:
    """A namespace of this module's own, fenced by the chart's policy for the whole module."""
    core = k8s_client.CoreV1Api(k8s_api)
    name = f"t-fence-{uuid.uuid4().hex[:6]}"
    core.create_namespace(
        k8s_client.V1Namespace(
            metadata=k8s_client.V1ObjectMeta(name=name, labels={"newfuse.io/test": "true"})
        )
    )
    try:
        with _fenced(kubectl, name):
            yield name
    finally:
        core.delete_namespace(name)


def test_an_nfa_within_the_allow_list_is_created(kubectl: Kubectl, tenant: str) -> None:
    assert _create(kubectl, nfa("allowed", tenant)).returncode == 0
    spec = json.loads(kubectl("get", "nfa", "allowed", "-n", tenant, "-o", "json"))["spec"]
    assert spec["serviceAccountName"] == EVERY_REFERENCE["serviceAccountName"]
    # The "default" ServiceAccount is what omitting the field gives: never refused.
    assert _create(kubectl, nfa("default-sa", tenant, serviceAccountName="default")).returncode == 0


SECRET = 'not in the allowed Secrets of namespace "{ns}"'


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"serviceAccountName": "intruder"},
            'spec.serviceAccountName "intruder" is not in the allowed ServiceAccounts of '
            'namespace "{ns}"',
        ),
        (
            {"signing": {"keySecretRef": {"name": "team-b-signing", "key": "key"}}},
            'spec.signing.keySecretRef.name "team-b-signing" is ' + SECRET,
        ),
        (
            {
                "signing": {
                    "keySecretRef": {"name": "fleet-signing", "key": "key"},
                    "acceptKeySecretRef": {"name": "team-b-signing", "key": "keys"},
                }
            },
            'spec.signing.acceptKeySecretRef.name "team-b-signing" is ' + SECRET,
        ),
        (
            {"encryption": {"keySecretRef": {"name": "team-b-data-key", "key": "key"}}},
            'spec.encryption.keySecretRef.name "team-b-data-key" is ' + SECRET,
        ),
        (
            {"redis": {"urlSecretRef": {"name": "operator-admin-redis", "key": "url"}}},
            'spec.redis.urlSecretRef.name "operator-admin-redis" is ' + SECRET,
        ),
        (
            {
                "redis": {
                    "urlSecretRef": {"name": "redis-url", "key": "url"},
                    "caSecretRef": {"name": "tls-private-key", "key": "tls.key"},
                }
            },
            'spec.redis.caSecretRef.name "tls-private-key" is ' + SECRET,
        ),
        (
            {
                "gateway": {
                    "endpoint": "http://gateway:8080/v1",
                    "credentialsSecretRef": {"name": "billing-api-key", "key": "k"},
                }
            },
            'spec.gateway.credentialsSecretRef.name "billing-api-key" is ' + SECRET,
        ),
        (
            {
                "env": [
                    {"name": "PLAIN", "value": "1"},
                    {"name": "DB", "valueFrom": {"secretKeyRef": {"name": "db-root", "key": "p"}}},
                ]
            },
            'spec.env[1].valueFrom.secretKeyRef.name "db-root" is ' + SECRET,
        ),
        (
            {
                "signing": {"keySecretRef": {"name": "a", "key": "key"}},
                "gateway": {
                    "endpoint": "http://gateway:8080/v1",
                    "credentialsSecretRef": {"name": "b", "key": "k"},
                },
            },
            'spec.signing.keySecretRef.name "a", spec.gateway.credentialsSecretRef.name "b" are '
            + SECRET,
        ),
        (
            {
                "tolerations": [
                    EVERY_REFERENCE["tolerations"][0],
                    {"key": "dedicated", "operator": "Equal", "value": "team-b"},
                ]
            },
            'spec.tolerations[1].key "dedicated" is not in the allowed toleration keys of '
            'namespace "{ns}"',
        ),
        (
            {"tolerations": [{"operator": "Exists"}]},
            "spec.tolerations[0].key (unset: tolerates every taint) is not in the allowed "
            'toleration keys of namespace "{ns}"',
        ),
        (
            {"nodeSelector": {"pool": "team-b", "zone": "any-zone"}},
            'spec.nodeSelector[pool] "team-b" is not in the allowed node selectors of '
            'namespace "{ns}"',
        ),
    ],
    ids=[
        "service account",
        "signing key",
        "signing accept-set",
        "encryption key",
        "redis url",
        "redis ca",
        "gateway credentials",
        "env secretKeyRef",
        "two secrets",
        "toleration key",
        "toleration of every taint",
        "node selector",
    ],
)
def test_a_reference_outside_the_allow_list_is_refused_naming_the_field(
    kubectl: Kubectl, tenant: str, spec: dict[str, Any], message: str
) -> None:
    name = f"bad-{uuid.uuid4().hex[:6]}"
    result = _create(kubectl, nfa(name, tenant, **spec))
    assert result.returncode != 0, f"admitted: {spec}"
    assert "(Forbidden)" in result.stderr, result.stderr
    assert message.format(ns=tenant) in result.stderr, result.stderr
    missing = kubectl.run("get", "nfa", name, "-n", tenant)
    assert missing.returncode != 0
    assert "NotFound" in missing.stderr


def _patch(
    kubectl: Kubectl, namespace: str, kind: str, name: str, patch: Any
) -> subprocess.CompletedProcess[str]:
    kind_patch = "json" if isinstance(patch, list) else "merge"
    return kubectl.run(
        "patch", kind, name, "-n", namespace, "--type", kind_patch, "-p", json.dumps(patch)
    )


def test_spec_updates_are_fenced_metadata_updates_are_not(
    kubectl: Kubectl, namespace: str, crd: None
) -> None:
    """Narrowing the allow-list blocks spec changes, never the finalizer or the deletion."""
    unhold = [{"op": "remove", "path": "/metadata/finalizers"}]
    with _fenced(kubectl, namespace):
        try:
            _spec_updates(kubectl, namespace)
        finally:
            # A failed run must not leave the namespace stuck behind the test's finalizer.
            _patch(kubectl, namespace, "nfa", "held", unhold)


def _spec_updates(kubectl: Kubectl, namespace: str) -> None:
    held = nfa("held", namespace)
    held["metadata"]["finalizers"] = ["newfuse.io/test-hold"]
    assert _create(kubectl, held).returncode == 0

    stolen = {"spec": {"signing": {"keySecretRef": {"name": "stolen", "key": "key"}}}}
    result = _patch(kubectl, namespace, "nfa", "held", stolen)
    assert result.returncode != 0
    assert 'spec.signing.keySecretRef.name "stolen" is not in' in result.stderr

    # The admin withdraws the ServiceAccount the fleet already uses (a helm upgrade).
    _install(kubectl, namespace, serviceAccounts=[])
    _wait_until_refused(
        kubectl, nfa("again", namespace), 'spec.serviceAccountName "agents" is not in'
    )

    labelled = _patch(kubectl, namespace, "nfa", "held", {"metadata": {"labels": {"a": "b"}}})
    assert labelled.returncode == 0, labelled.stderr
    scaled = _patch(kubectl, namespace, "nfa", "held", {"spec": {"replicas": 2}})
    assert scaled.returncode != 0
    assert 'spec.serviceAccountName "agents" is not in' in scaled.stderr

    # Deleting, then dropping the finalizer (what the operator does), both pass.
    kubectl("delete", "nfa", "held", "-n", namespace, "--wait=false")
    unhold = [{"op": "remove", "path": "/metadata/finalizers"}]
    release = _patch(kubectl, namespace, "nfa", "held", unhold)
    assert release.returncode == 0, release.stderr
    wait_for(
        lambda: kubectl.run("get", "nfa", "held", "-n", namespace).returncode != 0,
        EFFECTIVE_TIMEOUT,
        what="the fleet to be gone once its finalizer was removed",
    )
