"""The local pod runner really runs the agent container of a kwok pod, as the kubelet would.

Later tests and the demo rely on agents taking tasks in the local cluster; this pins down what the
runner promises: env resolved like the kubelet, host-local overrides, restart after a crash,
graceful stop on deletion, and no process left behind.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client as k8s_client

from harness import Cluster, RedisHandle
from localcluster import wait_for
from localcluster.podrunner import AgentEntry, PodRunnerProcess

# Records its environment, then idles until SIGTERM, which it answers by exiting 0 (or, given a
# second argument, ignores, so that only SIGKILL ends it).
AGENT_SCRIPT = """
import json, os, signal, sys
from pathlib import Path

out = Path(sys.argv[1])

def on_term(signum, frame):
    (out / f"term-{os.getpid()}").write_text("")
    sys.exit(0)

signal.signal(signal.SIGTERM, signal.SIG_IGN if len(sys.argv) > 2 else on_term)
tmp = out / f".env-{os.getpid()}.tmp"
tmp.write_text(json.dumps(dict(os.environ)))
tmp.replace(out / f"env-{os.getpid()}.json")
while True:
    signal.pause()
"""
IN_CLUSTER_REDIS = "redis://redis.newfuse-system.svc:6379/0"


def alive(pid: int) -> bool:
    """A live process (a zombie has exited; only its exit status is left)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def agent_pod(name: str, out: Path, grace: int = 5, stubborn: bool = False) -> k8s_client.V1Pod:
    # The client sends a plain dict as is, which reads closer to the manifest than models do.
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/managed-by": "newfuse-operator", "newfuse.io/fleet": "t"},
        },
        "spec": {
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": grace,
            "containers": [
                {
                    "name": "agent",
                    "image": "newfuse/agent:test",
                    "command": [sys.executable, "-c", AGENT_SCRIPT],
                    "args": [str(out), *(["ignore-sigterm"] if stubborn else [])],
                    "env": [
                        {"name": "NEWFUSE_FLEET", "value": "t"},
                        {
                            "name": "NEWFUSE_AGENT_ID",
                            "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                        },
                        {"name": "GREETING", "value": "hello $(NEWFUSE_AGENT_ID) $$(NOPE)"},
                        {
                            "name": "NEWFUSE_REDIS_URL",
                            "valueFrom": {"secretKeyRef": {"name": "agent-env", "key": "redis"}},
                        },
                        {
                            "name": "NEWFUSE_GATEWAY_API_KEY",
                            "valueFrom": {"secretKeyRef": {"name": "agent-env", "key": "api-key"}},
                        },
                        {
                            "name": "MAYBE",
                            "valueFrom": {
                                "secretKeyRef": {"name": "absent", "key": "x", "optional": True}
                            },
                        },
                        {"name": "NEWFUSE_HTTP_PORT", "value": "8080"},
                    ],
                }
            ],
        },
    }
    return cast(k8s_client.V1Pod, body)


def agent_of(runner: PodRunnerProcess, pod: str) -> AgentEntry | None:
    return next((a for a in runner.agents() if a.pod == pod), None)


@pytest.fixture
def runner(
    cluster: Cluster, redis_server: RedisHandle, namespace: str, tmp_path: Path
) -> Iterator[PodRunnerProcess]:
    if not cluster.is_local():
        pytest.skip("the pod runner stands in for kwok's missing kubelet; real nodes have one")
    proc = PodRunnerProcess(tmp_path / "runner")
    # Scoped to the test namespace so that pods of other tests are none of its business.
    proc.up(cluster.kubeconfig, redis_server.url, print, namespace=namespace)
    yield proc
    proc.down()


def test_runner_runs_restarts_and_stops_the_agent_container(
    runner: PodRunnerProcess,
    k8s_api: k8s_client.ApiClient,
    namespace: str,
    redis_server: RedisHandle,
    tmp_path: Path,
) -> None:
    core = k8s_client.CoreV1Api(k8s_api)
    out = tmp_path / "out"
    out.mkdir()
    core.create_namespaced_secret(
        namespace,
        k8s_client.V1Secret(
            metadata=k8s_client.V1ObjectMeta(name="agent-env"),
            string_data={"redis": IN_CLUSTER_REDIS, "api-key": "s3cret"},
        ),
    )
    core.create_namespaced_pod(namespace, agent_pod("agent-a", out))
    wait_for(
        lambda: core.read_namespaced_pod("agent-a", namespace).status.phase == "Running",
        30,
        what="pod agent-a Running",
    )

    first = wait_for(lambda: agent_of(runner, "agent-a"), 20, what="the agent process")
    assert first.namespace == namespace
    assert first.restarts == 0
    assert alive(first.pid)
    env_file = out / f"env-{first.pid}.json"
    wait_for(env_file.exists, 10, what="the agent to record its env")
    env = json.loads(env_file.read_text())
    assert env["NEWFUSE_AGENT_ID"] == "agent-a"  # fieldRef
    assert env["NEWFUSE_FLEET"] == "t"  # literal
    assert env["GREETING"] == "hello agent-a $(NOPE)"  # $(VAR) expansion and $$ escape
    assert env["NEWFUSE_GATEWAY_API_KEY"] == "s3cret"  # secretKeyRef
    assert "MAYBE" not in env  # optional and missing: skipped
    assert env["NEWFUSE_REDIS_URL"] == redis_server.url  # the in-cluster address is rewritten
    assert env["NEWFUSE_HTTP_PORT"] == str(first.http_port) != "8080"
    assert "PATH" in env
    log = Path(first.log)
    assert log.name == f"{namespace}_agent-a.log"
    assert log.exists()

    # A crash: restartPolicy Always brings a new process back after the back-off.
    os.kill(first.pid, signal.SIGKILL)

    def restarted() -> AgentEntry | None:
        agent = agent_of(runner, "agent-a")
        return agent if agent is not None and agent.pid != first.pid else None

    second = wait_for(restarted, 20, what="the agent to be restarted")
    assert second.restarts == 1
    assert not alive(first.pid)
    wait_for((out / f"env-{second.pid}.json").exists, 10, what="the restarted agent's env")

    # Deletion: SIGTERM (answered within the grace period), then gone from the state file.
    core.delete_namespaced_pod("agent-a", namespace)
    wait_for(lambda: not alive(second.pid), 15, what="the agent to stop")
    wait_for(lambda: agent_of(runner, "agent-a") is None, 10, what="the state file to drop it")
    assert (out / f"term-{second.pid}").exists(), "stopped without SIGTERM"

    # An agent that ignores SIGTERM is SIGKILLed once the pod's grace period is over.
    core.create_namespaced_pod(namespace, agent_pod("stubborn", out, grace=1, stubborn=True))
    stubborn = wait_for(lambda: agent_of(runner, "stubborn"), 30, what="the stubborn agent")
    wait_for((out / f"env-{stubborn.pid}.json").exists, 10, what="the stubborn agent's env")
    core.delete_namespaced_pod("stubborn", namespace)
    wait_for(lambda: not alive(stubborn.pid), 10, what="the stubborn agent to be killed")
    assert not (out / f"term-{stubborn.pid}").exists()

    # down() with an agent still running leaves neither the runner nor the agent behind.
    core.create_namespaced_pod(namespace, agent_pod("agent-b", out))
    third = wait_for(lambda: agent_of(runner, "agent-b"), 30, what="the second agent")
    pids = runner.pids()
    assert third.pid in pids
    assert len(pids) == 2
    runner.down()
    wait_for(lambda: not any(alive(pid) for pid in pids), 10, what="every process to be gone")
    assert runner.pids() == []
