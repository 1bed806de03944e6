"""Types the fixtures hand to tests (kept out of conftest.py, which tests must not import)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import redis
from kubernetes import client as k8s_client

from localcluster import LocalCluster, RedisServer, wait_for
from localcluster.nodeconfig import NODE_LABEL, NODE_LABEL_VALUE, TAINT_KEY
from localcluster.podrunner import AgentEntry, PodRunnerProcess
from localcluster.redis_cluster import LocalRedisCluster
from newfuse.adapters.redis_connect import is_cluster
from newfuse.adapters.taskclient import TaskClient
from newfuse.api.v1alpha1 import GROUP, PLURAL, VERSION
from newfuse.core import naming
from newfuse.wire.keys import FleetKeys
from newfuse.wire.state import AgentStatus, StateUpdate
from newfuse.wire.tasks import ResultPayload


@dataclass(frozen=True)
class Cluster:
    """The cluster under test: its kubeconfig and, for the local one, its manager."""

    kubeconfig: Path
    local: LocalCluster | None

    def is_local(self) -> bool:
        """True for the local control plane with kwok nodes (not kind or an external cluster)."""
        return self.local is not None


@dataclass
class RedisHandle:
    """The Redis under test; ``server`` is set when this tooling runs it (so tests may stop it)."""

    url: str
    server: RedisServer | None


@dataclass
class RedisClusterHandle:
    """The Redis Cluster under test; ``cluster`` is set when this tooling runs it."""

    url: str
    cluster: LocalRedisCluster | None


def sync_redis(url: str) -> redis.Redis:
    """A synchronous client (decoded strings) for ``url``, one server or a redis+cluster:// one.

    Typed as Redis, as newfuse.adapters.redis_connect.connect types its cluster client: the tests
    use commands both kinds have.
    """
    if not is_cluster(url):
        return redis.Redis.from_url(url, decode_responses=True)
    plain = url.replace("+cluster://", "://", 1)
    return cast(redis.Redis, redis.RedisCluster.from_url(plain, decode_responses=True))


class OperatorProcess:
    """`python -m newfuse` as a child process, the way a pod would run it, with its log kept."""

    def __init__(self, kubeconfig: Path, redis_url: str, log_path: Path, **env: str) -> None:
        """Configure (but do not start) an operator for this cluster and Redis."""
        import os

        from localcluster.netutil import free_port

        self.metrics_port, self.health_port = free_port(), free_port()
        self.log_path = log_path
        self.env = {
            **os.environ,
            "NEWFUSE_KUBECONFIG": str(kubeconfig),
            "NEWFUSE_REDIS_URL": redis_url,
            "NEWFUSE_METRICS_PORT": str(self.metrics_port),
            "NEWFUSE_HEALTH_ENDPOINT": f"http://127.0.0.1:{self.health_port}/healthz",
            "NEWFUSE_RESYNC_SECONDS": "2",
            "NEWFUSE_HEARTBEAT_TIMEOUT_SECONDS": "6",
            "NEWFUSE_LOG_FORMAT": "json",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the operator and wait until its liveness endpoint answers."""
        import sys
        import urllib.request

        from localcluster import wait_for

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "newfuse"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"operator exited with {self.proc.returncode}; see {self.log_path}"
                )
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.health_port}/healthz", timeout=1
                ):
                    return True
            except OSError:
                return False

        wait_for(healthy, 60, what="operator liveness endpoint")

    def kill(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` and wait for the process to end."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def metrics(self) -> str:
        """The text of /metrics."""
        import urllib.request

        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as resp:
            return str(resp.read().decode())


@dataclass(frozen=True)
class Kubectl:
    """kubectl bound to one kubeconfig; raises with stderr on failure unless check=False."""

    binary: str
    kubeconfig: Path

    def __call__(self, *args: str, check: bool = True, stdin: str | None = None) -> str:
        """Run one kubectl command and return its stdout."""
        result = self.run(*args, stdin=stdin)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
        return result.stdout

    def run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run one kubectl command and return the completed process."""
        return subprocess.run(
            [self.binary, "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


def metric_value(text: str, prefix: str) -> float:
    """The sum of every sample in Prometheus text ``text`` whose line starts with ``prefix``."""
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


class Fleets:
    """Read fleets and their pods in one namespace."""

    def __init__(self, api: k8s_client.ApiClient, namespace: str) -> None:
        self.custom = k8s_client.CustomObjectsApi(api)
        self.core = k8s_client.CoreV1Api(api)
        self.namespace = namespace

    def get(self, name: str) -> dict[str, Any]:
        body = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name
        )
        return cast(dict[str, Any], body)

    def create(self, name: str, **spec: Any) -> dict[str, Any]:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "NewFuseAgent",
            "metadata": {"name": name},
            "spec": {"image": "newfuse/agent:0.1.0", **spec},
        }
        return cast(
            dict[str, Any],
            self.custom.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, body
            ),
        )

    def patch_spec(self, name: str, **spec: Any) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, {"spec": spec}
        )

    def pods(self, name: str) -> list[k8s_client.V1Pod]:
        selector = f"{naming.LABEL_FLEET}={name}"
        return list(self.core.list_namespaced_pod(self.namespace, label_selector=selector).items)

    def live_pod_names(self, name: str) -> list[str]:
        return sorted(
            str(p.metadata.name) for p in self.pods(name) if p.metadata.deletion_timestamp is None
        )

    def available(self, name: str, replicas: int) -> dict[str, Any] | None:
        """The fleet once Available with exactly ``replicas`` pods at the spec's generation."""
        body = self.get(name)
        status = body.get("status") or {}
        conditions = {c["type"]: c for c in status.get("conditions", [])}
        ok = (
            status.get("phase") == "Available"
            and status.get("readyReplicas") == replicas
            and status.get("replicas") == replicas
            and status.get("observedGeneration") == body["metadata"]["generation"]
            and conditions.get("Available", {}).get("status") == "True"
            and len(self.live_pod_names(name)) == replicas
        )
        return body if ok else None

    def wait_available(self, name: str, replicas: int, timeout: float = 60) -> dict[str, Any]:
        return wait_for(
            lambda: self.available(name, replicas),
            timeout,
            what=f"{name} Available with {replicas}",
        )


FAST_AGENT_ENV = [{"name": "NEWFUSE_HEARTBEAT_SECONDS", "value": "1"}]
# Short liveness and retry bounds for tests about something else (scaling, rollouts); the tests
# of the task promises run the defaults (start_fleet(..., fast=False)).
FAST_TASKS = {"claimIdleSeconds": 2, "leaseRenewSeconds": 0.5, "retryBaseSeconds": 0.1}


def agents_of(runner: PodRunnerProcess, namespace: str) -> list[AgentEntry]:
    return [a for a in runner.agents() if a.namespace == namespace]


def agent_state(client: redis.Redis, keys: FleetKeys, agent_id: str) -> StateUpdate | None:
    raw = client.hget(keys.agents, agent_id)
    return StateUpdate.model_validate_json(str(raw)) if raw else None


def start_fleet(
    fleets: Fleets,
    runner: PodRunnerProcess,
    client: redis.Redis,
    name: str,
    replicas: int,
    fast: bool = True,
    **spec: Any,
) -> dict[str, Any]:
    """A fleet whose agents are running as processes and have registered in Redis.

    ``fast`` shortens the claim and retry bounds (spec.tasks) unless the spec sets its own.
    """
    if fast:
        spec.setdefault("tasks", FAST_TASKS)
    spec.setdefault("env", FAST_AGENT_ENV)
    fleets.create(name, replicas=replicas, **spec)
    body = fleets.wait_available(name, replicas)
    keys = FleetKeys(fleets.namespace, name)

    def registered() -> bool:
        entries = agents_of(runner, fleets.namespace)
        states = [agent_state(client, keys, e.pod) for e in entries]
        active = [s for s in states if s is not None and s.state.status is AgentStatus.ACTIVE]
        return len(entries) >= replicas and len(active) >= replicas

    wait_for(registered, 60, what=f"{replicas} agent processes running and registered")
    return body


NEWFUSE_CLI = str(Path(sys.executable).with_name("newfuse"))


def submit(fleet: str, namespace: str, redis_url: str, *args: str, key: str | None = None) -> str:
    """`newfuse task submit` as a user runs it (signed with ``key`` if given); its stdout."""
    env = {**os.environ, "NEWFUSE_REDIS_URL": redis_url, "NO_COLOR": "1"}
    if key:
        env["NEWFUSE_SIGNING_KEY"] = key
    result = subprocess.run(
        [NEWFUSE_CLI, "task", "submit", fleet, "-n", namespace, *args],
        capture_output=True, text=True, timeout=120, check=False, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def signing_secret(api: k8s_client.ApiClient, namespace: str, key: str) -> dict[str, Any]:
    """A Secret `signing` holding ``key``; returns the fleet's `spec.signing` that names it."""
    k8s_client.CoreV1Api(api).create_namespaced_secret(
        namespace,
        k8s_client.V1Secret(
            metadata=k8s_client.V1ObjectMeta(name="signing"), string_data={"key": key}
        ),
    )
    return {"keySecretRef": {"name": "signing", "key": "key"}}


def on_real_node(image: str, **spec: Any) -> dict[str, Any]:
    """A fleet spec whose pods land on the real node and run ``image`` as it was imported."""
    return {
        "image": image,
        # Never pull: the image is in the node's containerd, and there is no registry.
        "imagePullPolicy": "Never",
        "nodeSelector": {NODE_LABEL: NODE_LABEL_VALUE},
        "tolerations": [{"key": TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
        **spec,
    }


def wait_results(
    url: str, namespace: str, fleet: str, ids: list[str], timeout: float
) -> list[ResultPayload]:
    """The tasks' results, each waited for up to ``timeout`` seconds (read as the CLI does)."""

    async def wait_all() -> list[ResultPayload]:
        client = TaskClient.from_url(url, namespace, fleet, signing_key=None)
        try:
            return [await client.wait(task_id, timeout) for task_id in ids]
        finally:
            await client.aclose()

    return asyncio.run(wait_all())
