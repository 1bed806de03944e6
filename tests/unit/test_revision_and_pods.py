"""Revision hashing, reading pod bodies, and the manifest of an agent pod."""

from __future__ import annotations

from typing import Any

import pytest

from factories import fleet, pod_body
from newfuse.api.v1alpha1 import SecretKeyRef
from newfuse.core import naming
from newfuse.core.pods import AgentDefaults, PodHealth, build_pod, observe_pod
from newfuse.core.revision import REVISION_LENGTH, template_hash


@pytest.mark.parametrize(
    ("change", "new_revision"),
    [
        ({"replicas": 9}, False),
        ({"paused": True}, False),
        ({"image": "agent:2"}, True),
        ({"capabilities": ["chat"]}, True),
        ({"env": [{"name": "A", "value": "1"}]}, True),
        ({"protocolVersion": "2.0"}, True),
        ({"concurrency": 8}, True),
    ],
)
def test_what_makes_a_new_revision(change: dict[str, Any], new_revision: bool) -> None:
    base = template_hash(fleet().spec)
    assert (template_hash(fleet(**change).spec) != base) is new_revision


def test_revision_is_short_dns_safe_and_stable() -> None:
    rev = template_hash(fleet().spec)
    assert len(rev) == REVISION_LENGTH
    assert rev.isalnum()
    assert rev.islower()
    assert rev == template_hash(fleet(name="other", namespace="elsewhere").spec)
    # Pinned: if this changes, upgrading the operator would replace every agent pod everywhere.
    assert rev == "7lr78l27r4"


def test_observe_pod_reads_the_last_exit() -> None:
    oom = {"reason": "OOMKilled", "exitCode": 137}
    crashed = {"reason": "Error", "exitCode": 3}
    observed = [
        observe_pod(pod_body(waiting_reason="CrashLoopBackOff", ready=False, last_terminated=t))
        for t in (oom, crashed, None)
    ]
    assert [(o.last_exit, o.detail, o.oom_killed) for o in observed if o] == [
        ("OOMKilled", "CrashLoopBackOff, last exit: OOMKilled", True),
        ("Error (exit code 3)", "CrashLoopBackOff, last exit: Error (exit code 3)", False),
        ("", "CrashLoopBackOff", False),
    ]


@pytest.mark.parametrize(
    ("body", "health", "terminating"),
    [
        (pod_body(), PodHealth.READY, False),
        (pod_body(ready=False), PodHealth.STARTING, False),
        (pod_body(phase="Pending", ready=False), PodHealth.STARTING, False),
        (pod_body(waiting_reason="CrashLoopBackOff", ready=False), PodHealth.CRASH_LOOPING, False),
        (pod_body(waiting_reason="ImagePullBackOff", ready=False), PodHealth.CRASH_LOOPING, False),
        (pod_body(phase="Failed", ready=False), PodHealth.FAILED, False),
        (pod_body(deleting=True), PodHealth.READY, True),
    ],
)
def test_observe_pod(body: dict[str, Any], health: PodHealth, terminating: bool) -> None:
    observed = observe_pod(body)
    assert observed is not None
    assert (observed.health, observed.terminating, observed.ordinal, observed.revision) == (
        health, terminating, 0, "rev1",
    )  # fmt: skip
    assert observed.ready is (health is PodHealth.READY and not terminating)


def test_pods_without_our_labels_are_ignored() -> None:
    assert observe_pod(pod_body(labels={})) is None
    assert (
        observe_pod(pod_body(labels={naming.LABEL_REVISION: "r", naming.LABEL_ORDINAL: "x"}))
        is None
    )


def _env(manifest: dict[str, Any]) -> dict[str, Any]:
    return {
        e["name"]: e.get("value", e.get("valueFrom"))
        for e in manifest["spec"]["containers"][0]["env"]
    }


def test_agent_pod_manifest() -> None:
    f = fleet(capabilities=["summarize"], env=[{"name": "NEWFUSE_FLEET", "value": "spoofed"}])
    manifest = build_pod(f, "rev1", 2, AgentDefaults(redis_url="redis://r:6379/0"))
    meta, spec = manifest["metadata"], manifest["spec"]
    assert meta["name"] == "demo-rev1-2"
    assert meta["labels"][naming.LABEL_REVISION] == "rev1"
    assert meta["labels"][naming.LABEL_ORDINAL] == "2"
    assert meta["labels"]["capability.newfuse.io/summarize"] == "true"
    assert meta["labels"][naming.LABEL_MANAGED_BY] == naming.MANAGED_BY
    [owner] = meta["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "NewFuseAgent",
        "demo",
        "uid-1",
        True,
    )
    env = _env(manifest)
    assert env["NEWFUSE_AGENT_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["NEWFUSE_REDIS_URL"] == "redis://r:6379/0"
    assert env["NEWFUSE_CAPABILITIES"] == "summarize"
    assert not [name for name in env if name.startswith("AI_")], "agents derive channel names"
    names = [e["name"] for e in spec["containers"][0]["env"]]
    assert names.index("NEWFUSE_FLEET", 1) > 0, "the operator's identity comes after the user's env"
    assert spec["automountServiceAccountToken"] is False


def test_agent_pod_meets_the_restricted_pod_security_standard() -> None:
    manifest = build_pod(fleet(), "rev1", 0, AgentDefaults(redis_url="redis://r"))
    pod_sc = manifest["spec"]["securityContext"]
    container_sc = manifest["spec"]["containers"][0]["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert (pod_sc["runAsUser"], pod_sc["runAsGroup"]) == (65532, 65532), "not group 0"
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container_sc == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def test_secret_backed_redis_and_gateway() -> None:
    f = fleet(
        redis={"urlSecretRef": {"name": "redis", "key": "url"}},
        gateway={
            "endpoint": "http://gw:8080/v1",
            "model": "m",
            "credentialsSecretRef": {"name": "gw", "key": "k"},
        },
    )
    env = _env(build_pod(f, "rev1", 0, AgentDefaults(redis_url="redis://default")))
    assert env["NEWFUSE_REDIS_URL"] == {"secretKeyRef": {"name": "redis", "key": "url"}}
    assert env["NEWFUSE_GATEWAY_API_KEY"] == {"secretKeyRef": {"name": "gw", "key": "k"}}
    assert env["NEWFUSE_GATEWAY_ENDPOINT"] == "http://gw:8080/v1"


OPERATOR_REDIS = SecretKeyRef(name="newfuse-redis", key="url")
OPERATOR_SIGNING = SecretKeyRef(name="newfuse-signing", key="key")


def _ref(name: str, key: str) -> dict[str, Any]:
    return {"secretKeyRef": {"name": name, "key": key}}


@pytest.mark.parametrize(
    ("spec", "defaults", "expected"),
    [
        # Nothing configured: the plain (credential-free) URL, no signing.
        ({}, {}, {"NEWFUSE_REDIS_URL": "redis://default", "NEWFUSE_SIGNING_KEY": None,
                  "NEWFUSE_REQUIRE_SIGNATURES": None}),
        # The operator's default Secrets apply to fleets that say nothing.
        ({}, {"redis_secret": OPERATOR_REDIS, "signing_secret": OPERATOR_SIGNING},
         {"NEWFUSE_REDIS_URL": _ref("newfuse-redis", "url"),
          "NEWFUSE_SIGNING_KEY": _ref("newfuse-signing", "key"),
          "NEWFUSE_REQUIRE_SIGNATURES": "true"}),
        # A fleet's own Secrets win over the operator's.
        ({"redis": {"urlSecretRef": {"name": "mine", "key": "u"}},
          "signing": {"keySecretRef": {"name": "my-key", "key": "k"}, "required": False}},
         {"redis_secret": OPERATOR_REDIS, "signing_secret": OPERATOR_SIGNING},
         {"NEWFUSE_REDIS_URL": _ref("mine", "u"), "NEWFUSE_SIGNING_KEY": _ref("my-key", "k"),
          "NEWFUSE_REQUIRE_SIGNATURES": "false"}),
        # spec.signing without a key uses the operator's key with the fleet's policy.
        ({"signing": {"required": False}}, {"signing_secret": OPERATOR_SIGNING},
         {"NEWFUSE_SIGNING_KEY": _ref("newfuse-signing", "key"),
          "NEWFUSE_REQUIRE_SIGNATURES": "false", "NEWFUSE_SIGNING_ACCEPT": None}),
        # A rotation's accept-set comes from its own Secret key.
        ({"signing": {"acceptKeySecretRef": {"name": "old-keys", "key": "keys"}}},
         {"signing_secret": OPERATOR_SIGNING},
         {"NEWFUSE_SIGNING_KEY": _ref("newfuse-signing", "key"),
          "NEWFUSE_SIGNING_ACCEPT": _ref("old-keys", "keys"), "NEWFUSE_ENCRYPTION_KEY": None}),
        # A data key (and its predecessors) only through Secrets too.
        ({"encryption": {"keySecretRef": {"name": "dk", "key": "now"},
                         "acceptKeySecretRef": {"name": "dk", "key": "before"}}}, {},
         {"NEWFUSE_ENCRYPTION_KEY": _ref("dk", "now"),
          "NEWFUSE_ENCRYPTION_ACCEPT": _ref("dk", "before")}),
        # The memory's PostgreSQL DSN (spec.memory.postgres) too; without it, memory is in Redis.
        ({"memory": {"postgres": {"urlSecretRef": {"name": "demo-memory-pg", "key": "url"}}}},
         {}, {"NEWFUSE_MEMORY_POSTGRES_URL": _ref("demo-memory-pg", "url")}),
        ({"memory": {"maxItems": 10}}, {}, {"NEWFUSE_MEMORY_POSTGRES_URL": None}),
    ],
)  # fmt: skip
def test_credentials_reach_agents_only_through_secrets(
    spec: dict[str, Any], defaults: dict[str, Any], expected: dict[str, Any]
) -> None:
    env = _env(build_pod(fleet(**spec), "rev1", 0, AgentDefaults("redis://default", **defaults)))
    for name, value in expected.items():
        assert env.get(name) == value, name


def test_a_redis_ca_bundle_is_mounted_read_only_and_named_to_the_agent() -> None:
    f = fleet(redis={"urlSecretRef": {"name": "r", "key": "url"},
                     "caSecretRef": {"name": "redis-tls", "key": "ca.pem"}})  # fmt: skip
    manifest = build_pod(f, "rev1", 0, AgentDefaults(redis_url="redis://default"))
    spec = manifest["spec"]
    container = spec["containers"][0]
    assert _env(manifest)["NEWFUSE_REDIS_CA_FILE"] == "/etc/newfuse/redis-ca/ca.crt"
    assert {"name": "redis-ca", "mountPath": "/etc/newfuse/redis-ca", "readOnly": True} in (
        container["volumeMounts"]
    )
    assert {
        "name": "redis-ca",
        "secret": {"secretName": "redis-tls", "items": [{"key": "ca.pem", "path": "ca.crt"}]},
    } in spec["volumes"]


def test_new_optional_fields_leave_existing_revisions_alone() -> None:
    # Upgrading the operator must not roll every fleet: unset new fields do not enter the hash.
    assert template_hash(fleet().spec) == "7lr78l27r4"
    assert template_hash(fleet(signing={"required": True}).spec) != "7lr78l27r4"
