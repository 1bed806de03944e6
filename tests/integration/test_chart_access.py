"""What the Helm chart lets the operator do: least-privilege RBAC, and only the traffic it needs.

The ClusterRole has no wildcards and no escalation; leader election gets a Lease-only Role; the
signing key is a Secret the operator creates itself (the chart renders no key) and may read only
that one; NetworkPolicies open only the operator's, the trial Redis' and the agents' ports.
"""

from __future__ import annotations

import pytest

from helm_chart import EVERYTHING, NAMESPACED, _env, operator_cluster_roles, render
from localcluster.binaries import Binaries


def test_rbac_is_least_privilege_without_wildcards(binaries: Binaries) -> None:
    docs = render(binaries)
    [role] = operator_cluster_roles(docs)
    for rule in (r for d in docs if d["kind"] == "ClusterRole" for r in d["rules"]):
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"wildcard in {field}: {rule}"
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert resources == {
        "newfuseagents",
        "newfuseagents/status",
        "pods",
        "events",
        "controllerrevisions",
        "configmaps",
        "customresourcedefinitions",
    }


@pytest.mark.parametrize("mode", [[], NAMESPACED], ids=["cluster-wide", "namespaced"])
def test_leader_election_is_wired_with_a_lease_only_role(
    binaries: Binaries, mode: list[str]
) -> None:
    docs = render(binaries, *mode)
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] == 2
    env = _env(docs)
    assert env["NEWFUSE_LEADER_ELECTION"] == "true"
    assert env["NEWFUSE_LEADER_ELECTION_NAMESPACE"] == {
        "fieldRef": {"fieldPath": "metadata.namespace"}
    }
    assert env["NEWFUSE_LEADER_ELECTION_NAME"] == "nf-newfuse-operator"
    assert env["NEWFUSE_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["NEWFUSE_LEASE_DURATION_SECONDS"] == "15"
    assert env["NEWFUSE_RENEW_DEADLINE_SECONDS"] == "10"
    assert env["NEWFUSE_RETRY_PERIOD_SECONDS"] == "2"
    [role] = [d for d in docs if d["kind"] == "Role" and "leader" in d["metadata"]["name"]]
    assert role["metadata"]["namespace"] == "newfuse-system"
    assert role["rules"] == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["get", "create", "update"],
        }
    ]
    [binding] = [
        d for d in docs if d["kind"] == "RoleBinding" and "leader" in d["metadata"]["name"]
    ]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "nf-newfuse-operator", "namespace": "newfuse-system"}
    ]
    # No other object grants anything on leases.
    for doc in docs:
        if doc["kind"] in ("Role", "ClusterRole") and doc is not role:
            assert all("leases" not in r["resources"] for r in doc["rules"])

    off = render(binaries, "--set", "leaderElection.enabled=false", "--set", "replicaCount=1")
    assert _env(off)["NEWFUSE_LEADER_ELECTION"] == "false"
    assert not [d for d in off if d["kind"] == "Role" and "leader" in d["metadata"]["name"]]


def test_signing_is_on_by_default_with_a_key_the_operator_creates(binaries: Binaries) -> None:
    docs = render(binaries)
    # No key in the chart: a random one would change on every `helm template` (Argo CD).
    assert not [d for d in docs if d["kind"] == "Secret"]
    assert _env(docs)["NEWFUSE_SIGNING_KEY"] == {
        "secretKeyRef": {"name": "nf-newfuse-operator-signing", "key": "key", "optional": True}
    }
    assert _env(docs)["NEWFUSE_SIGNING_SECRET"] == "nf-newfuse-operator-signing/key"
    assert _env(docs)["NEWFUSE_SIGNING_SECRET_NAMESPACE"] == {
        "fieldRef": {"fieldPath": "metadata.namespace"}
    }
    # The operator may create Secrets in its namespace and read that one, nothing more.
    [role] = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"].endswith("-signing")]
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["nf-newfuse-operator-signing"],
            "verbs": ["get"],
        },
    ]
    # Agents sign by default too, from a copy of that Secret in their own namespace.
    assert _env(docs)["NEWFUSE_AGENT_SIGNING_SECRET"] == "nf-newfuse-operator-signing/key"
    fleet_opt_in = render(binaries, "--set", "signing.agentsByDefault=false")
    assert "NEWFUSE_AGENT_SIGNING_SECRET" not in _env(fleet_opt_in)

    own = render(
        binaries, "--set", "signing.existingSecret=mine", "--set", "signing.existingSecretKey=k"
    )
    assert not [d for d in own if d["kind"] == "Secret"]
    assert not [d for d in own if d["metadata"]["name"].endswith("-signing")]
    assert "NEWFUSE_SIGNING_SECRET" not in _env(own), "the operator never creates the user's"
    assert _env(own)["NEWFUSE_SIGNING_KEY"] == {"secretKeyRef": {"name": "mine", "key": "k"}}
    assert _env(own)["NEWFUSE_AGENT_SIGNING_SECRET"] == "mine/k"
    off = render(binaries, "--set", "signing.enabled=false")
    assert "NEWFUSE_SIGNING_KEY" not in _env(off)
    assert "NEWFUSE_AGENT_SIGNING_SECRET" not in _env(off)
    assert not [d for d in off if d["kind"] == "Secret"]


def test_network_policies_open_only_what_the_operator_needs(binaries: Binaries) -> None:
    assert not [d for d in render(binaries) if d["kind"] == "NetworkPolicy"]
    docs = render(binaries, *EVERYTHING)
    policies = {
        (d["metadata"]["namespace"], d["metadata"]["name"]): d["spec"]
        for d in docs
        if d["kind"] == "NetworkPolicy"
    }
    assert set(policies) == {
        ("newfuse-system", "nf-newfuse-operator"),
        ("newfuse-system", "nf-newfuse-operator-redis"),
        ("newfuse-system", "nf-newfuse-operator-gateway"),
        ("team-a", "nf-newfuse-operator-agents"),
    }
    gateway = policies[("newfuse-system", "nf-newfuse-operator-gateway")]
    assert gateway["ingress"] == [{"ports": [{"protocol": "TCP", "port": 8080}]}]
    gateway_ports = [sorted(p["port"] for p in rule["ports"]) for rule in gateway["egress"]]
    assert gateway_ports == [[53, 53], [443, 6443], [6379, 6380]], "DNS, API server, Redis only"
    operator = policies[("newfuse-system", "nf-newfuse-operator")]
    assert operator["policyTypes"] == ["Ingress", "Egress"]
    assert operator["ingress"] == [{"ports": [{"protocol": "TCP", "port": 8080}]}]
    egress_ports = [
        sorted((p["protocol"], p["port"]) for p in rule["ports"]) for rule in operator["egress"]
    ]
    assert egress_ports == [
        [("TCP", 53), ("UDP", 53)],
        [("TCP", 443), ("TCP", 6443)],
        [("TCP", 6379), ("TCP", 6380)],
    ]
    assert operator["egress"][1]["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]
    redis = policies[("newfuse-system", "nf-newfuse-operator-redis")]
    assert redis["egress"] == []
    assert redis["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 6379}]
