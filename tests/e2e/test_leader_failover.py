"""Two operator replicas with leader election on the real control plane: one reconciles, the
standby takes over after a SIGKILL within the lease duration, and a graceful stop hands over at
once.

The operators here run with the chart's defaults (15 s lease, 10 s renew deadline, 2 s retry) so
the failover time measured is the one users get.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s_client

from harness import Cluster, Fleets, OperatorProcess, metric_value
from localcluster import wait_for

LEASE = "newfuse-operator-failover"
FAILOVER_BUDGET_SECONDS = 20.0


def _replica(
    cluster: Cluster, operator: OperatorProcess, namespace: str, tag: str
) -> OperatorProcess:
    return OperatorProcess(
        cluster.kubeconfig,
        operator.env["NEWFUSE_REDIS_URL"],
        Path(operator.log_path).with_name(f"test-operator-{tag}.log"),
        NEWFUSE_NAMESPACES=namespace,
        NEWFUSE_LEADER_ELECTION="true",
        NEWFUSE_LEADER_ELECTION_NAMESPACE=namespace,
        NEWFUSE_LEADER_ELECTION_NAME=LEASE,
        NEWFUSE_POD_NAME=f"replica-{tag}",
    )


def _leads(replica: OperatorProcess) -> bool:
    return metric_value(replica.metrics(), "newfuse_leader ") == 1.0


def _reconciles(replica: OperatorProcess) -> float:
    return metric_value(replica.metrics(), "newfuse_reconciles_total{")


def _holder(api: k8s_client.ApiClient, namespace: str) -> str | None:
    lease = k8s_client.CoordinationV1Api(api).read_namespaced_lease(LEASE, namespace)
    return lease.spec.holder_identity or None


@pytest.fixture
def replicas(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> Iterator[dict[str, OperatorProcess]]:
    """Replicas a and b (started in that order) in place of the session's operator."""
    operator.kill()
    started: dict[str, OperatorProcess] = {}
    try:
        for tag in ("a", "b"):
            started[tag] = _replica(cluster, operator, namespace, tag)
            started[tag].start()
        yield started
    finally:
        for replica in started.values():
            replica.kill(signal.SIGKILL)
        operator.start()


def test_sigkilled_leader_is_replaced_within_the_lease_and_standby_never_reconciles_before(
    replicas: dict[str, OperatorProcess],
    cluster: Cluster,
    operator: OperatorProcess,
    k8s_api: k8s_client.ApiClient,
    fleets: Fleets,
    namespace: str,
) -> None:
    leader = wait_for(
        lambda: next((t for t, r in replicas.items() if _leads(r)), None), 30, what="a leader"
    )
    standby = "b" if leader == "a" else "a"
    assert str(_holder(k8s_api, namespace)).startswith(f"replica-{leader}_")

    fleets.create("steady", replicas=2)
    fleets.wait_available("steady", 2)
    # The standby's caches are warm (kopf watches in every replica) but its controller never ran.
    assert not _leads(replicas[standby])
    assert _reconciles(replicas[standby]) == 0
    assert _reconciles(replicas[leader]) > 0

    killed_at = time.monotonic()
    replicas[leader].kill(signal.SIGKILL)
    fleets.patch_spec("steady", replicas=3)
    fleets.wait_available("steady", 3, timeout=FAILOVER_BUDGET_SECONDS + 10)
    took_over = time.monotonic() - killed_at
    print(f"\nleader SIGKILLed -> standby reconciled the change in {took_over:.1f} s")

    assert took_over <= FAILOVER_BUDGET_SECONDS
    assert _leads(replicas[standby])
    assert str(_holder(k8s_api, namespace)).startswith(f"replica-{standby}_")
    # No double reconcile: one pod per ordinal, none created twice.
    assert fleets.live_pod_names("steady") == sorted(
        {str(p.metadata.name) for p in fleets.pods("steady")}
    )
    assert len(fleets.pods("steady")) == 3

    # A graceful stop releases the lease: a fresh standby takes over in about one retry period,
    # far inside the 15 s it would otherwise wait.
    replacement = _replica(cluster, operator, namespace, "c")
    replicas["c"] = replacement
    replacement.start()
    assert not _leads(replacement)
    stopped_at = time.monotonic()
    replicas[standby].kill(signal.SIGTERM)
    wait_for(lambda: _leads(replacement), 15, what="the replacement to lead")
    handed_over = time.monotonic() - stopped_at
    print(f"leader stopped with SIGTERM -> replacement led after {handed_over:.1f} s")
    assert handed_over < 10
    fleets.patch_spec("steady", replicas=1)
    fleets.wait_available("steady", 1)
