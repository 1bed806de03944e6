"""Fixtures for the tests on the real node: real containers, from images built from our Dockerfile.

Where the machine cannot run the real node (no root, no containerd, ...), these tests skip with
the reason the cluster logged at start-up, and the rest of the suite runs on kwok. CI sets
NEWFUSE_REQUIRE_REAL_NODE=1, which turns that skip into a failure: on CI they must run.
"""

from __future__ import annotations

import os
import socket

import pytest
from kubernetes import client as k8s_client

import imageprefetch
from harness import Cluster, RedisHandle
from localcluster import images
from localcluster.nodeconfig import POD_GATEWAY
from localcluster.realnode import RealNodeInfo

REQUIRE_VAR = "NEWFUSE_REQUIRE_REAL_NODE"

# Seconds the tests in this directory took (setup, call and teardown): what the real node adds to
# a run, printed at the end so CI logs carry the figure the README quotes.
_spent: list[float] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Only this directory's reports reach a conftest's hook: sum their durations."""
    _spent.append(report.duration)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line with the real node's share of the run."""
    if _spent:
        terminalreporter.write_line(f"real-node tests took {sum(_spent):.1f}s in all")


def _no_real_node(reason: str) -> None:
    if os.environ.get(REQUIRE_VAR, "") in ("1", "true"):
        pytest.fail(f"{REQUIRE_VAR} is set but there is no real node: {reason}")
    pytest.skip(f"no real node on this machine: {reason}")


@pytest.fixture
def real_node(cluster: Cluster, redis_server: RedisHandle) -> RealNodeInfo:
    """The running real node (started again if a test stopped it)."""
    if cluster.local is None:
        _no_real_node("the real node belongs to the local cluster (NEWFUSE_KUBECONFIG is set)")
    assert cluster.local is not None
    info = cluster.local.real_node_up()
    if info is None:
        _no_real_node(cluster.local.real_node().unavailable_reason() or "unknown")
    assert info is not None
    if redis_server.server is None:
        _no_real_node("real containers need the Redis this suite runs (NEWFUSE_REDIS_URL is set)")
    assert redis_server.server is not None
    port = redis_server.server.running()
    assert port is not None
    try:
        socket.create_connection((POD_GATEWAY, port.port), timeout=2).close()
    except OSError as exc:
        pytest.fail(
            f"Redis does not listen on the pod gateway {POD_GATEWAY} ({exc}): it started before "
            "the real node's bridge existed; `make cluster-down` and start again"
        )
    return info


@pytest.fixture(scope="session")
def _built_images() -> images.ImageSet:
    return imageprefetch.wait()


@pytest.fixture
def real_images(real_node: RealNodeInfo, _built_images: images.ImageSet) -> images.ImageSet:
    """The project's images, built once a session and present in the node's containerd."""
    built = _built_images
    images.import_images(
        [built.operator, built.agent, built.pause], real_node.containerd_socket, print
    )
    return _built_images


@pytest.fixture
def real_namespace(k8s_api: k8s_client.ApiClient, namespace: str) -> str:
    """The test's namespace, enforcing the restricted Pod Security Standard (as users should)."""
    k8s_client.CoreV1Api(k8s_api).patch_namespace(
        namespace,
        {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}},
    )
    return namespace
