"""The Helm chart: lint, render, validate, refuse bad values, least privilege, and a full lifecycle.

Rendering tests check the wiring (leader election, signing, Redis Secrets, the trial Redis,
NetworkPolicies); the API server validates every object by server-side dry run, except the
Prometheus Operator kinds, which the session cluster has no CRDs for (tests/unit/test_chart_rules.py
checks their content, and the lifecycle applies them on stand-in CRDs). The kustomize base in
config/ must be what hack/gen_kustomize.py generates, and must pass a server-side dry run too.

The lifecycle runs on a throwaway control plane, so that Helm can own the CRD there without
touching the session cluster's.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import gen_kustomize
from harness import Cluster, Kubectl, OperatorProcess, RedisHandle
from localcluster import LocalCluster, wait_established, wait_for
from localcluster.binaries import Binaries

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "newfuse-operator"
SAMPLE = ROOT / "crds" / "samples" / "summarizer.yaml"
KUBE_VERSION = "1.35.4"
# Every optional object of the chart at once (signing is on by default).
EVERYTHING = [
    "--set",
    "redis.internal.enabled=true",
    "--set",
    "networkPolicy.enabled=true",
    "--set",
    "networkPolicy.agents.namespaces={team-a}",
    "--set",
    "networkPolicy.apiServer.cidrs={10.0.0.1/32}",
    "--set",
    "redis.agentSecret.name=redis-url",
    "--set",
    "redis.tls.caSecret.name=redis-ca",
    "--set",
    "metrics.serviceMonitor.enabled=true",
    "--set",
    "metrics.agentPodMonitor.enabled=true",
    "--set",
    "metrics.prometheusRule.enabled=true",
    "--set",
    "metrics.dashboard.enabled=true",
]
# Prometheus Operator kinds: the session cluster has no CRDs for them, so its dry run leaves them
# out (tests/unit/test_chart_rules.py checks their content); the lifecycle test installs minimal
# CRDs for them on its throwaway cluster and applies them for real.
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


@pytest.fixture(scope="module")
def binaries() -> Binaries:
    return Binaries.ensure()


def helm(
    binaries: Binaries, *args: str, kubeconfig: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    argv = [str(binaries.helm), *args]
    if kubeconfig is not None:
        argv += ["--kubeconfig", str(kubeconfig)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def render(binaries: Binaries, *sets: str) -> list[dict[str, Any]]:
    out = helm(
        binaries,
        "template",
        "nf",
        str(CHART),
        "-n",
        "newfuse-system",
        "--kube-version",
        KUBE_VERSION,
        *sets,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def test_lint_passes(binaries: Binaries) -> None:
    result = helm(binaries, "lint", str(CHART))
    assert "0 chart(s) failed" in result.stdout


NAMESPACED = ["--set", "rbac.namespaced=true", "--set", "watchNamespaces={team-a,team-b}"]


@pytest.mark.parametrize(
    "mode",
    [[], NAMESPACED, EVERYTHING],
    ids=["cluster-wide", "namespaced", "everything"],
)
def test_rendered_chart_is_accepted_by_the_api_server(
    binaries: Binaries, kubectl: Kubectl, cluster: Cluster, mode: list[str]
) -> None:
    docs = render(binaries, *mode)
    kinds = sorted({d["kind"] for d in docs})
    expected = {
        "ServiceAccount",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "CustomResourceDefinition",
        "Role",
        "RoleBinding",
    }
    if mode is EVERYTHING:
        expected |= {"NetworkPolicy", "ConfigMap", "Secret"} | MONITORING_KINDS
    assert expected <= set(kinds)
    docs = [d for d in docs if d["kind"] not in MONITORING_KINDS]
    for namespace in ("newfuse-system", "team-a", "team-b"):
        kubectl(
            "apply",
            "-f",
            "-",
            stdin=kubectl("create", "namespace", namespace, "--dry-run=client", "-o", "yaml"),
        )
    out = kubectl(
        "apply",
        "--dry-run=server",
        "-f",
        "-",
        stdin=yaml.safe_dump_all(docs),
    )
    assert out.count("(server dry run)") == len(docs)
    roles = [d for d in docs if d["kind"] == "Role"]
    [lease_role] = [r for r in roles if r["metadata"]["name"].endswith("-leader-election")]
    assert lease_role["metadata"]["namespace"] == "newfuse-system"
    [signing_role] = [r for r in roles if r["metadata"]["name"].endswith("-signing")]
    assert signing_role["metadata"]["namespace"] == "newfuse-system"
    if mode is NAMESPACED:
        own = (lease_role, signing_role)
        assert [r["metadata"]["namespace"] for r in roles if r not in own] == [
            "team-a",
            "team-b",
        ]
        [crds_only] = [d for d in docs if d["kind"] == "ClusterRole"]
        assert [r["resources"] for r in crds_only["rules"]] == [["customresourcedefinitions"]]
        assert crds_only["rules"][0]["verbs"] == ["get", "list", "watch"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ("replicaCount: two\n", "replicaCount"),
        ("surprise: 1\n", "surprise"),
        ("redis:\n  url: http://not-redis\n", "redis/url"),
        ("operator:\n  logFormat: xml\n", "logFormat"),
        ("leaderElection:\n  enabled: 'yes'\n", "leaderElection/enabled"),
        ("redis:\n  internal:\n    replicas: 3\n", "replicas"),
        ("redis:\n  internal:\n    persistence:\n      appendfsync: sometimes\n", "appendfsync"),
        ("signing:\n  existingSecretKey: ''\n", "signing/existingSecretKey"),
        ("networkPolicy:\n  apiServer:\n    ports: [0]\n", "networkPolicy/apiServer/ports"),
        ("metrics:\n  prometheusRule:\n    selector: '{job=\"x\"}'\n", "selector"),
    ],
    ids=[
        "wrong type",
        "unknown key",
        "bad redis url",
        "bad enum",
        "election flag not a boolean",
        "unknown internal redis key",
        "bad appendfsync",
        "empty signing key name",
        "port out of range",
        "selector with braces",
    ],
)
def test_bad_values_are_refused_by_the_schema(
    binaries: Binaries, tmp_path: Path, values: str, message: str
) -> None:
    bad = tmp_path / "values.yaml"
    bad.write_text(values)
    result = helm(
        binaries,
        "template",
        "nf",
        str(CHART),
        "--kube-version",
        KUBE_VERSION,
        "-f",
        str(bad),
        check=False,
    )
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr


def test_rbac_is_least_privilege_without_wildcards(binaries: Binaries) -> None:
    [role] = [d for d in render(binaries) if d["kind"] == "ClusterRole"]
    for rule in role["rules"]:
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
        "customresourcedefinitions",
    }


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["redis.url=redis://:secret@redis:6379/0"], "set redis.existingSecret"),
        (["redis.url=rediss://user:secret@redis:6380/0"], "must not contain credentials"),
        (["redis.internal.enabled=true", "redis.existingSecret=mine"], "mutually exclusive"),
        (["leaderElection.renewDeadlineSeconds=20"], "retryPeriodSeconds < renewDeadlineSeconds"),
        (["leaderElection.enabled=false"], "replicaCount > 1 needs leaderElection.enabled"),
        (
            ["metrics.service.enabled=false", "metrics.serviceMonitor.enabled=true"],
            "needs metrics.service.enabled",
        ),
    ],
    ids=[
        "password in url",
        "acl user in url",
        "two redis",
        "unsafe election timings",
        "replicas without election",
        "monitor without service",
    ],
)
def test_unsafe_values_fail_with_a_clear_message(
    binaries: Binaries, sets: list[str], message: str
) -> None:
    argv = ["template", "nf", str(CHART), "--kube-version", KUBE_VERSION]
    for value in sets:
        argv += ["--set", value]
    result = helm(binaries, *argv, check=False)
    assert result.returncode != 0
    assert message in result.stderr


def _env(docs: list[dict[str, Any]], name: str = "nf-newfuse-operator") -> dict[str, Any]:
    [deployment] = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == name]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


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


def test_redis_credentials_only_come_from_secrets(binaries: Binaries) -> None:
    env = _env(render(binaries))
    assert env["NEWFUSE_REDIS_URL"] == "redis://redis:6379/0"
    assert "NEWFUSE_AGENT_REDIS_SECRET" not in env
    assert "NEWFUSE_REDIS_CA_FILE" not in env

    docs = render(
        binaries,
        "--set",
        "redis.existingSecret=redis-creds",
        "--set",
        "redis.agentSecret.name=agent-redis",
        "--set",
        "redis.agentSecret.key=the-url",
        "--set",
        "redis.tls.caSecret.name=redis-ca",
    )
    env = _env(docs)
    assert env["NEWFUSE_REDIS_URL"] == {"secretKeyRef": {"name": "redis-creds", "key": "url"}}
    assert env["NEWFUSE_AGENT_REDIS_SECRET"] == "agent-redis/the-url"
    assert env["NEWFUSE_REDIS_CA_FILE"] == "/etc/newfuse/redis-ca/ca.crt"
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "redis-ca"]
    assert volume["secret"]["secretName"] == "redis-ca"
    assert volume["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "redis-ca"]
    assert mount == {"name": "redis-ca", "mountPath": "/etc/newfuse/redis-ca", "readOnly": True}


def test_internal_redis_is_restricted_and_uses_one_generated_password(
    binaries: Binaries,
) -> None:
    docs = render(binaries, "--set", "redis.internal.enabled=true")
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    password = base64.b64decode(secrets["nf-newfuse-operator-redis"]["data"]["password"]).decode()
    url = base64.b64decode(secrets["nf-newfuse-operator-redis-url"]["data"]["url"]).decode()
    assert len(password) == 32
    assert url == (f"redis://:{password}@nf-newfuse-operator-redis.newfuse-system.svc:6379/0")
    assert _env(docs)["NEWFUSE_REDIS_URL"] == {
        "secretKeyRef": {"name": "nf-newfuse-operator-redis-url", "key": "url"}
    }
    [redis] = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-redis")
    ]
    pod = redis["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == "redis:7.4-alpine"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10999
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    assert {"name": "data", "emptyDir": {}} in pod["volumes"]
    # The password reaches redis-server as a config file mounted from the Secret, and the
    # probe's redis-cli through REDISCLI_AUTH: never in any process's arguments (`ps` shows those).
    assert container["args"][0] == "/etc/redis/auth/auth.conf"
    assert password not in json.dumps(redis)
    assert "requirepass" not in json.dumps(container["args"])
    assert "env" not in container, "no secret as an environment variable either"
    auth_conf = base64.b64decode(secrets["nf-newfuse-operator-redis"]["data"]["auth.conf"])
    assert auth_conf.decode() == f'requirepass "{password}"\n'
    [auth] = [v for v in pod["volumes"] if v["name"] == "auth"]
    assert auth["secret"] == {"secretName": "nf-newfuse-operator-redis", "defaultMode": 0o440}
    assert {"name": "auth", "mountPath": "/etc/redis/auth", "readOnly": True} in container[
        "volumeMounts"
    ]
    probe = container["readinessProbe"]["exec"]["command"]
    assert probe[-1].startswith('REDISCLI_AUTH="$(cat /etc/redis/auth/password)" redis-cli ping')


def _redis_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [redis] = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-redis")
    ]
    pod: dict[str, Any] = redis["spec"]["template"]["spec"]
    return pod


def _redis_flags(pod: dict[str, Any]) -> dict[str, str]:
    args = pod["containers"][0]["args"][1:]  # after the config file
    return {args[i]: args[i + 1] for i in range(0, len(args) - 1, 2) if args[i].startswith("--")}


@pytest.mark.parametrize(
    ("sets", "appendonly", "appendfsync", "volume"),
    [
        ([], "yes", "everysec", {"emptyDir": {}}),
        (["redis.internal.persistence.appendfsync=always"], "yes", "always", {"emptyDir": {}}),
        (["redis.internal.persistence.appendfsync=no"], "yes", "no", {"emptyDir": {}}),
        (["redis.internal.persistence.appendonly=false"], "no", "everysec", {"emptyDir": {}}),
        (
            ["redis.internal.persistence.existingClaim=redis-data"],
            "yes",
            "everysec",
            {"persistentVolumeClaim": {"claimName": "redis-data"}},
        ),
    ],
    ids=["default", "always", "no", "off", "claim"],
)
def test_trial_redis_keeps_an_append_only_file_by_default(
    binaries: Binaries, sets: list[str], appendonly: str, appendfsync: str, volume: dict[str, Any]
) -> None:
    """So a restart of the trial Redis keeps the queue; appendfsync and the volume are values."""
    flags = [f for s in sets for f in ("--set", s)]
    docs = render(binaries, "--set", "redis.internal.enabled=true", *flags)
    pod = _redis_pod(docs)
    args = _redis_flags(pod)
    assert args["--appendonly"] == appendonly
    assert args["--appendfsync"] == appendfsync
    assert args["--dir"] == "/data"
    assert args["--save"] == "", "the AOF is the persistence; no RDB snapshots besides it"
    [data] = [v for v in pod["volumes"] if v["name"] == "data"]
    assert data == {"name": "data", **volume}


@pytest.mark.parametrize(("replicas", "pdb"), [(1, False), (2, True), (3, True)])
def test_the_pdb_exists_only_with_more_than_one_replica(
    binaries: Binaries, replicas: int, pdb: bool
) -> None:
    """At one replica, minAvailable 1 would forbid every eviction: no node drain could finish."""
    docs = render(binaries, "--set", f"replicaCount={replicas}")
    assert bool([d for d in docs if d["kind"] == "PodDisruptionBudget"]) is pdb


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
        ("team-a", "nf-newfuse-operator-agents"),
    }
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


def test_kustomize_base_is_up_to_date(binaries: Binaries) -> None:
    for relative, text in gen_kustomize.render(binaries.helm).items():
        committed = ROOT / relative
        assert committed.exists(), f"{relative} is missing: run `make manifests`"
        assert committed.read_text() == text, f"{relative} is stale: run `make manifests`"


def test_kustomize_base_builds_and_is_accepted_by_the_api_server(
    kubectl: Kubectl, cluster: Cluster
) -> None:
    built = kubectl("kustomize", str(ROOT / "config" / "default"))
    docs = [doc for doc in yaml.safe_load_all(built) if doc]
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "CustomResourceDefinition", "Deployment", "Role", "ClusterRole"} <= kinds
    assert "Secret" not in kinds, "the base carries no key material"
    for doc in docs:
        cluster_scoped = (
            "Namespace",
            "CustomResourceDefinition",
            "ClusterRole",
            "ClusterRoleBinding",
        )
        if doc["kind"] not in cluster_scoped:
            assert doc["metadata"]["namespace"] == "newfuse-system", doc["metadata"]
        assert doc["metadata"].get("labels", {}).get("app.kubernetes.io/managed-by") != "Helm"
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["NEWFUSE_SIGNING_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "newfuse-operator-signing",
        "key": "key",
        "optional": True,  # the operator creates it on its first start
    }
    assert env["NEWFUSE_LEADER_ELECTION_NAME"]["value"] == "newfuse-operator"
    kubectl(
        "apply",
        "-f",
        "-",
        stdin=kubectl("create", "namespace", "newfuse-system", "--dry-run=client", "-o", "yaml"),
    )
    out = kubectl("apply", "--dry-run=server", "-f", "-", stdin=built)
    assert out.count("(server dry run)") == len(docs)


@pytest.fixture(scope="module")
def helm_cluster(
    tmp_path_factory: pytest.TempPathFactory, binaries: Binaries
) -> Iterator[LocalCluster]:
    """A throwaway control plane for the install/upgrade/uninstall lifecycle."""
    local = LocalCluster(
        tmp_path_factory.mktemp("helm") / "cluster", node_count=2, log=lambda _: None
    )
    local.up(binaries)
    yield local
    local.down()


def _token_kubeconfig(kubectl: Kubectl, namespace: str, account: str, target: Path) -> Path:
    """A kubeconfig that authenticates as the chart's ServiceAccount (like its pod would)."""
    token = kubectl("create", "token", account, "-n", namespace, "--duration=1h").strip()
    config = yaml.safe_load(kubectl.kubeconfig.read_text())
    config["users"] = [{"name": "operator", "user": {"token": token}}]
    config["contexts"][0]["context"]["user"] = "operator"
    target.write_text(yaml.safe_dump(config))
    return target


def _secret_value(k: Kubectl, namespace: str, name: str, key: str) -> str:
    secret = json.loads(k("get", "secret", name, "-n", namespace, "-o", "json"))
    return base64.b64decode(secret["data"][key]).decode()


def _pod_env(k: Kubectl, namespace: str, pod: dict[str, Any]) -> dict[str, str]:
    """The env a container of ``pod`` gets, resolved like the kubelet does (fieldRef, Secrets)."""
    fields = {"metadata.namespace": namespace, "metadata.name": pod["metadata"]["name"]}
    env = {}
    for var in pod["spec"]["containers"][0]["env"]:
        source = var.get("valueFrom")
        if source is None:
            env[var["name"]] = var.get("value", "")  # the API server drops empty values
        elif "fieldRef" in source:
            env[var["name"]] = fields[source["fieldRef"]["fieldPath"]]
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            found = k(
                "get", "secret", ref["name"], "-n", namespace, "--ignore-not-found", "-o", "name"
            )
            missing = not found.strip()
            if ref.get("optional") and missing:
                continue  # the kubelet leaves an optional variable out
            env[var["name"]] = _secret_value(k, namespace, ref["name"], ref["key"])
        else:
            raise AssertionError(f"unhandled env source: {var}")
    return env


def _monitoring_crd(kind: str, plural: str) -> dict[str, Any]:
    """A minimal stand-in for a Prometheus Operator CRD: the kind exists, any spec is accepted."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }


def test_install_run_as_configured_upgrade_and_uninstall(
    binaries: Binaries, helm_cluster: LocalCluster, redis_server: RedisHandle, tmp_path: Path
) -> None:
    kubeconfig = helm_cluster.kubeconfig
    k = Kubectl(str(binaries.kubectl), kubeconfig)
    restricted = "pod-security.kubernetes.io/enforce=restricted"
    for namespace in ("newfuse-system", "agents"):
        k("create", "namespace", namespace)
        k("label", "namespace", namespace, restricted)
    installed = helm(
        binaries,
        "install",
        "nf",
        str(CHART),
        "-n",
        "newfuse-system",
        "--set",
        f"redis.url={redis_server.url}",
        "--wait",
        "--timeout",
        "90s",
        kubeconfig=kubeconfig,
    )
    deployment = json.loads(
        k("get", "deployment", "nf-newfuse-operator", "-n", "newfuse-system", "-o", "json")
    )
    assert deployment["status"]["readyReplicas"] == 2, (
        "the operator pods pass the restricted policy"
    )
    # NOTES tell how fleets use the signing key.
    assert "keySecretRef: {name: nf-newfuse-operator-signing, key: key}" in installed.stdout
    # The chart rendered no key; the operator creates it on its first start (below).
    signing_secret = ("secret", "nf-newfuse-operator-signing", "-n", "newfuse-system")
    assert not k("get", *signing_secret, "--ignore-not-found", "-o", "name").strip()

    # The operator as the chart configures it: one pod's env as the kubelet resolves it (fieldRefs,
    # the signing Secret), and its ServiceAccount's credentials.
    pods = json.loads(
        k(
            "get",
            "pods",
            "-n",
            "newfuse-system",
            "-l",
            "app.kubernetes.io/instance=nf",
            "-o",
            "json",
        )
    )["items"]
    pod = next(p for p in pods if p["metadata"]["name"].startswith("nf-newfuse-operator-"))
    env = _pod_env(k, "newfuse-system", pod)
    assert "NEWFUSE_SIGNING_KEY" not in env, "optional, and not created yet"
    assert env["NEWFUSE_LEADER_ELECTION"] == "true"
    assert env["NEWFUSE_LEADER_ELECTION_NAMESPACE"] == "newfuse-system"
    for local_only in (
        "NEWFUSE_METRICS_ADDRESS",
        "NEWFUSE_METRICS_PORT",
        "NEWFUSE_HEALTH_ENDPOINT",
    ):
        env.pop(local_only)
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    as_operator = _token_kubeconfig(k, "newfuse-system", account, tmp_path / "operator.kubeconfig")
    operator = OperatorProcess(
        as_operator, env.pop("NEWFUSE_REDIS_URL"), tmp_path / "operator.log", **env
    )
    operator.start()
    try:
        # It created the key's Secret under the chart's RBAC (Forbidden would be in its log).
        wait_for(
            lambda: bool(k("get", *signing_secret, "--ignore-not-found", "-o", "name").strip()),
            30,
            what="the operator to create its signing key",
        )
        signing_key = _secret_value(k, "newfuse-system", "nf-newfuse-operator-signing", "key")
        assert len(signing_key) == 48
        k("apply", "-n", "agents", "-f", str(SAMPLE))

        def available() -> bool:
            status = (
                json.loads(k("get", "nfa", "summarizer", "-n", "agents", "-o", "json")).get(
                    "status"
                )
                or {}
            )
            return bool(status.get("phase") == "Available" and status.get("readyReplicas") == 3)

        wait_for(available, 90, what="the sample fleet Available under the chart's RBAC")
        # It leads through the Lease the chart names, which its Role lets it take.
        lease = json.loads(
            k("get", "lease", "nf-newfuse-operator", "-n", "newfuse-system", "-o", "json")
        )
        assert pod["metadata"]["name"] in lease["spec"]["holderIdentity"]
        k("delete", "nfa", "summarizer", "-n", "agents", "--wait=true", "--timeout=60s")
    finally:
        operator.kill()
    log = (tmp_path / "operator.log").read_text()
    assert "Forbidden" not in log, "the chart's RBAC covers everything the operator does"
    assert " 403" not in log

    # A chart whose CRD changed: `helm upgrade` must upgrade the CRD too. The upgrade also turns
    # on every optional object, for real on this cluster (minimal Prometheus Operator CRDs
    # stand in for the real ones), and the trial Redis must pass the restricted policy.
    changed = tmp_path / "chart"
    shutil.copytree(CHART, changed)
    crd_file = changed / "files" / "newfuse.io_newfuseagents.yaml"
    crd = yaml.safe_load(crd_file.read_text())
    crd["spec"]["versions"][0]["additionalPrinterColumns"].append(
        {"name": "Upgraded", "type": "string", "jsonPath": ".status.message"}
    )
    crd_file.write_text(yaml.safe_dump(crd))
    monitoring = [
        _monitoring_crd("ServiceMonitor", "servicemonitors"),
        _monitoring_crd("PodMonitor", "podmonitors"),
        _monitoring_crd("PrometheusRule", "prometheusrules"),
    ]
    k("apply", "-f", "-", stdin=yaml.safe_dump_all(monitoring))
    for item in monitoring:
        wait_established(k, item["metadata"]["name"])
    everything = [value.replace("{team-a}", "{agents}") for value in EVERYTHING]
    k("create", "secret", "generic", "redis-ca", "-n", "newfuse-system", "--from-literal=ca.crt=x")
    helm(
        binaries,
        "upgrade",
        "nf",
        str(changed),
        "-n",
        "newfuse-system",
        *everything,
        "--wait",
        "--timeout",
        "90s",
        kubeconfig=kubeconfig,
    )
    live = json.loads(k("get", "crd", "newfuseagents.newfuse.io", "-o", "json"))
    assert "Upgraded" in [
        c["name"] for c in live["spec"]["versions"][0]["additionalPrinterColumns"]
    ]
    redis = json.loads(
        k("get", "deployment", "nf-newfuse-operator-redis", "-n", "newfuse-system", "-o", "json")
    )
    assert redis["status"]["readyReplicas"] == 1, "the trial Redis passes the restricted policy"
    created = k(
        "get",
        "servicemonitor,podmonitor,prometheusrule,networkpolicy,configmap",
        "-A",
        "-l",
        "app.kubernetes.io/instance=nf",
        "-o",
        "name",
    ).split()
    assert len(created) == 7, created  # 3 monitoring objects, 3 policies, the dashboard
    redis_url = _secret_value(k, "newfuse-system", "nf-newfuse-operator-redis-url", "url")

    # Generated secrets survive upgrades: the same signing key and Redis password.
    helm(
        binaries,
        "upgrade",
        "nf",
        str(changed),
        "-n",
        "newfuse-system",
        "--reuse-values",
        "--set",
        "replicaCount=3",
        "--wait",
        "--timeout",
        "90s",
        kubeconfig=kubeconfig,
    )
    assert _secret_value(k, "newfuse-system", "nf-newfuse-operator-signing", "key") == signing_key
    assert _secret_value(k, "newfuse-system", "nf-newfuse-operator-redis-url", "url") == redis_url

    helm(binaries, "uninstall", "nf", "-n", "newfuse-system", "--wait", kubeconfig=kubeconfig)
    assert k("get", "crd", "newfuseagents.newfuse.io", "-o", "name").strip() == (
        "customresourcedefinition.apiextensions.k8s.io/newfuseagents.newfuse.io"
    ), "crds.keep leaves the CRD"
    leftovers = k(
        "get",
        "deployment,serviceaccount,service,pdb,role,rolebinding,networkpolicy,configmap,"
        "servicemonitor,podmonitor,prometheusrule",
        "-A",
        "-l",
        "app.kubernetes.io/instance=nf",
        "-o",
        "name",
    )
    assert leftovers.strip() == ""
    assert (
        k("get", "clusterrole", "-l", "app.kubernetes.io/instance=nf", "-o", "name").strip() == ""
    )
    helm_owned = k(
        "get", "secret", "-n", "newfuse-system", "-l", "app.kubernetes.io/instance=nf", "-o", "name"
    )
    assert helm_owned.split() == [], "the trial Redis' Secrets go"
    # The operator's signing key is not Helm's: it stays, so fleets' copies stay valid.
    assert _secret_value(k, "newfuse-system", "nf-newfuse-operator-signing", "key") == signing_key
