"""Session-wide fixtures: one real control plane and one real Redis, a namespace per test.

The control plane and Redis are reused when already running (`make cluster-up`), and stopped at
the end only if this session started them. NEWFUSE_KUBECONFIG / NEWFUSE_REDIS_URL point the suite
at an existing cluster or Redis instead (CLUSTER=kind does that).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import imageprefetch
from harness import (
    Cluster,
    Fleets,
    Kubectl,
    OperatorProcess,
    RedisClusterHandle,
    RedisHandle,
    sync_redis,
)
from localcluster import LocalCluster, RedisServer, wait_established
from localcluster.cluster import default_state_dir as cluster_state_dir
from localcluster.demo import OperatorRunner
from localcluster.netutil import free_port
from localcluster.podrunner import PodRunnerProcess
from localcluster.redis_cluster import LocalRedisCluster
from localcluster.redis_cluster import default_state_dir as redis_cluster_state_dir
from localcluster.redis_server import default_state_dir as redis_state_dir

TESTS_DIR = Path(__file__).parent
MARKER_BY_DIRECTORY = {"unit": "unit", "integration": "integration", "e2e": "e2e"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test by its directory, so `-m unit` can never pull in a cluster test."""
    for item in items:
        relative = Path(str(item.path)).relative_to(TESTS_DIR)
        marker = MARKER_BY_DIRECTORY.get(relative.parts[0])
        if marker is None:
            raise pytest.UsageError(
                f"{relative}: tests live under tests/unit, tests/integration or tests/e2e"
            )
        item.add_marker(marker)


def _keep() -> bool:
    return os.environ.get("NEWFUSE_KEEP_CLUSTER", "") not in ("", "0", "false")


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """One control plane for the whole session."""
    external = os.environ.get("NEWFUSE_KUBECONFIG")
    if external:
        yield Cluster(Path(external), None)
        return
    local = LocalCluster(cluster_state_dir())
    info = local.up(real_node=True)
    if (node := local.real_node().running()) is not None:
        imageprefetch.start(node.containerd_socket)
    yield Cluster(info.kubeconfig, local)
    if not info.reused and not _keep():
        local.down()


@pytest.fixture(scope="session")
def redis_server(cluster: Cluster) -> Iterator[RedisHandle]:
    """One Redis for the whole session, started after the cluster.

    The cluster comes first because of the real node: Redis binds the node's pod gateway only if
    the node's bridge exists when Redis starts, and agents in real containers reach it there.
    """
    external = os.environ.get("NEWFUSE_REDIS_URL")
    if external:
        yield RedisHandle(external, None)
        return
    server = RedisServer(redis_state_dir())
    info = server.up()
    yield RedisHandle(info.url, server)
    if not info.reused and not _keep():
        server.down()


@pytest.fixture
def redis_client(redis_server: RedisHandle) -> Iterator[redis.Redis]:
    """A client on the session Redis, with decoded strings (a cluster's, where a module says so)."""
    conn = sync_redis(redis_server.url)
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterHandle]:
    """One Redis Cluster (3 primaries, 3 replicas) for the session, made on first use.

    NEWFUSE_REDIS_CLUSTER_URL (a redis+cluster:// URL) points the tests at an existing one; the
    tests that kill a node skip then.
    """
    external = os.environ.get("NEWFUSE_REDIS_CLUSTER_URL")
    if external:
        yield RedisClusterHandle(external, None)
        return
    cluster = LocalRedisCluster(redis_cluster_state_dir())
    info = cluster.up()
    yield RedisClusterHandle(info.url, cluster)
    if not info.reused and not _keep():
        cluster.down()


@pytest.fixture(scope="session")
def k8s_api(cluster: Cluster) -> k8s_client.ApiClient:
    """An API client authenticated as the cluster admin."""
    api: k8s_client.ApiClient = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(cluster.kubeconfig)
    )
    return api


@pytest.fixture
def namespace(k8s_api: k8s_client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards (without waiting for it to go)."""
    core = k8s_client.CoreV1Api(k8s_api)
    name = f"t-{request.node.name[:40].lower().replace('_', '-').strip('-')}-{uuid.uuid4().hex[:6]}"
    name = "".join(ch for ch in name if ch.isalnum() or ch == "-")
    core.create_namespace(
        k8s_client.V1Namespace(
            metadata=k8s_client.V1ObjectMeta(name=name, labels={"newfuse.io/test": "true"})
        )
    )
    yield name
    core.delete_namespace(name)


REPO = TESTS_DIR.parent


def kubectl_binary() -> str:
    """Our pinned kubectl if built, else whatever is on PATH (e.g. CLUSTER=kind)."""
    local = REPO / ".local" / "bin" / "kubectl"
    return str(local) if local.exists() else "kubectl"


@pytest.fixture(scope="session")
def kubectl(cluster: Cluster) -> Kubectl:
    """Run kubectl against the cluster under test."""
    return Kubectl(kubectl_binary(), cluster.kubeconfig)


@pytest.fixture(scope="session")
def crd(kubectl: Kubectl) -> None:
    """The NewFuseAgent CRD, applied from the generated YAML and Established."""
    kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        str(REPO / "crds" / "newfuse.io_newfuseagents.yaml"),
    )
    wait_established(kubectl, "newfuseagents.newfuse.io")


@pytest.fixture(scope="session")
def gateway_port() -> int:
    """The port of the fleet API gateway that tests start (the operator names it in status)."""
    return free_port()


@pytest.fixture(scope="session")
def operator(
    cluster: Cluster, redis_server: RedisHandle, crd: None, gateway_port: int
) -> Iterator[OperatorProcess]:
    """One operator process for the session (tests that kill it start it again).

    A `make demo` operator on the same cluster would reconcile the tests' fleets too and hide what
    the operator under test does, so it is stopped first.
    """
    if cluster.is_local() and OperatorRunner(REPO / ".local" / "operator").down():
        print("stopped the `make demo` operator so that only the operator under test reconciles")
    env = {"NEWFUSE_GATEWAY_URL": f"http://127.0.0.1:{gateway_port}"}
    pod_url = redis_server.server.pod_url() if redis_server.server else None
    if cluster.local is not None and cluster.local.real_node().running() and pod_url:
        # Agents in real containers reach Redis through the pod gateway, not the loopback (the
        # pod runner gives its local agents the loopback URL whatever the pod says).
        env["NEWFUSE_AGENT_REDIS_URL"] = pod_url
    proc = OperatorProcess(
        cluster.kubeconfig, redis_server.url, REPO / ".local" / "logs" / "test-operator.log", **env
    )
    proc.start()
    yield proc
    proc.kill()


@pytest.fixture
def pod_runner(
    cluster: Cluster, redis_server: RedisHandle, operator: OperatorProcess, namespace: str
) -> Iterator[PodRunnerProcess]:
    """A pod runner for this test's namespace only: it starts an agent process per agent pod.

    Scoped to the namespace so it never runs agents for other tests' fleets, whose Redis state
    those tests write themselves.
    """
    if not cluster.is_local():
        pytest.skip("on a real cluster the kubelet runs the agent pods")
    PodRunnerProcess(
        REPO / ".local" / "podrunner"
    ).down()  # a `make demo` runner would double-start agents
    runner = PodRunnerProcess(REPO / ".local" / "test-podrunner" / namespace)
    runner.up(cluster.kubeconfig, redis_server.url, print, namespace=namespace)
    yield runner
    runner.down()


@pytest.fixture
def fleets(k8s_api: k8s_client.ApiClient, namespace: str) -> Fleets:
    """Read and write fleets in this test's namespace."""
    return Fleets(k8s_api, namespace)


@pytest.fixture(scope="session")
def _session_tracer_provider() -> InMemorySpanExporter:
    # OpenTelemetry lets a process set its global tracer provider once; every test that checks
    # spans shares this one and clears its exporter first.
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


@pytest.fixture
def span_exporter(_session_tracer_provider: InMemorySpanExporter) -> InMemorySpanExporter:
    """The in-memory exporter that receives every span this process finishes (cleared)."""
    _session_tracer_provider.clear()
    return _session_tracer_provider
