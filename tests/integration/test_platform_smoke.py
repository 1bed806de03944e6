"""The platform is real: scheduling, kwok-run pods, garbage collection, RBAC, kubectl and Redis.

Everything later is proven on this control plane, so these tests pin down the behaviours the
operator relies on, not just that processes start.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import redis
from kubernetes import client as k8s_client

from harness import Cluster
from localcluster import wait_for
from localcluster.cluster import KWOK_NODE_ANNOTATION
from localcluster.nodeconfig import NODE_LABEL, NODE_LABEL_VALUE, TAINT_KEY

KUBECTL = Path(__file__).resolve().parents[2] / ".local" / "bin" / "kubectl"


def kubectl(cluster: Cluster, *args: str) -> str:
    binary = str(KUBECTL) if KUBECTL.exists() else "kubectl"
    return subprocess.run(
        [binary, "--kubeconfig", str(cluster.kubeconfig), *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout


def _ready(pod: k8s_client.V1Pod) -> bool:
    conditions = pod.status.conditions or []
    return pod.status.phase == "Running" and any(
        c.type == "Ready" and c.status == "True" for c in conditions
    )


def test_nodes_are_listed_ready(cluster: Cluster) -> None:
    nodes = json.loads(kubectl(cluster, "get", "nodes", "-o", "json"))["items"]
    ready = [
        n["metadata"]["name"]
        for n in nodes
        if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])
    ]
    assert len(ready) >= 2, nodes
    if cluster.is_local():
        # kwok's fake nodes, and at most one real node, tainted so only pods that ask land there.
        real = [n for n in nodes if n["metadata"]["labels"].get(NODE_LABEL) == NODE_LABEL_VALUE]
        fake = [n for n in nodes if n not in real]
        assert len(real) <= 1, real
        assert all(n["metadata"]["annotations"].get(KWOK_NODE_ANNOTATION) == "fake" for n in fake)
        for node in real:
            assert {t["key"] for t in node["spec"].get("taints", [])} >= {TAINT_KEY}


def test_deployment_pods_become_ready_on_nodes_then_are_garbage_collected(
    cluster: Cluster, k8s_api: k8s_client.ApiClient, namespace: str
) -> None:
    apps, core = k8s_client.AppsV1Api(k8s_api), k8s_client.CoreV1Api(k8s_api)
    labels = {"app": "smoke"}
    apps.create_namespaced_deployment(
        namespace,
        k8s_client.V1Deployment(
            metadata=k8s_client.V1ObjectMeta(name="smoke"),
            spec=k8s_client.V1DeploymentSpec(
                replicas=3,
                selector=k8s_client.V1LabelSelector(match_labels=labels),
                template=k8s_client.V1PodTemplateSpec(
                    metadata=k8s_client.V1ObjectMeta(labels=labels),
                    spec=k8s_client.V1PodSpec(
                        containers=[
                            k8s_client.V1Container(name="pause", image="registry.k8s.io/pause:3.10")
                        ]
                    ),
                ),
            ),
        ),
    )

    def ready_pods() -> list[k8s_client.V1Pod]:
        pods = core.list_namespaced_pod(namespace, label_selector="app=smoke").items
        return pods if len(pods) == 3 and all(_ready(p) for p in pods) else []

    pods = wait_for(ready_pods, 60, what="3 Ready pods of deployment smoke")
    nodes = {n.metadata.name: n for n in core.list_node().items}
    for pod in pods:
        assert pod.spec.node_name in nodes, "the scheduler bound the pod to a real Node object"
        if cluster.is_local():
            assert (
                nodes[pod.spec.node_name].metadata.annotations.get(KWOK_NODE_ANNOTATION) == "fake"
            )
    replica_sets = apps.list_namespaced_replica_set(namespace, label_selector="app=smoke").items
    assert len(replica_sets) == 1
    assert [o.kind for o in replica_sets[0].metadata.owner_references or []] == ["Deployment"]

    apps.delete_namespaced_deployment("smoke", namespace, propagation_policy="Background")

    def all_gone() -> bool:
        rs = apps.list_namespaced_replica_set(namespace, label_selector="app=smoke").items
        return not rs and not core.list_namespaced_pod(namespace, label_selector="app=smoke").items

    wait_for(all_gone, 60, what="garbage collection of the ReplicaSet and its pods")


def test_kubectl_run_starts_a_pod(cluster: Cluster, namespace: str) -> None:
    kubectl(
        cluster,
        "run",
        "hello",
        "-n",
        namespace,
        "--image=registry.k8s.io/pause:3.10",
        "--restart=Never",
    )
    out = kubectl(
        cluster, "wait", "-n", namespace, "--for=condition=Ready", "pod/hello", "--timeout=60s"
    )
    assert "condition met" in out
    kubectl(cluster, "delete", "-n", namespace, "pod/hello", "--wait=true", "--timeout=60s")


@pytest.mark.parametrize(
    ("user", "verb", "resource", "allowed"),
    [
        ("system:serviceaccount:default:default", "list", "pods", "no"),
        ("system:serviceaccount:default:default", "create", "deployments", "no"),
        ("system:kube-scheduler", "list", "nodes", "yes"),
        ("system:kube-scheduler", "delete", "nodes", "no"),
    ],
)
def test_rbac_is_enforced(
    cluster: Cluster, user: str, verb: str, resource: str, allowed: str
) -> None:
    result = subprocess.run(
        [str(KUBECTL) if KUBECTL.exists() else "kubectl", "--kubeconfig", str(cluster.kubeconfig),
         "auth", "can-i", verb, resource, f"--as={user}", "-A"],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    assert result.stdout.strip() == allowed, result.stderr


def test_redis_stream_with_consumer_group_round_trip(redis_client: redis.Redis) -> None:
    stream = "smoke:tasks"
    redis_client.delete(stream)
    redis_client.xgroup_create(stream, "workers", id="0", mkstream=True)
    ids = [redis_client.xadd(stream, {"n": str(i)}) for i in range(3)]
    batch: list[tuple[str, list[tuple[str, dict[str, str]]]]] = redis_client.xreadgroup(  # type: ignore[assignment]
        "workers", "w1", {stream: ">"}, count=10
    )
    [(_, entries)] = batch
    assert [e[0] for e in entries] == ids
    assert [e[1]["n"] for e in entries] == ["0", "1", "2"]
    assert redis_client.xpending(stream, "workers")["pending"] == 3
    assert redis_client.xack(stream, "workers", *ids) == 3
    assert redis_client.xpending(stream, "workers")["pending"] == 0
    redis_client.delete(stream)
