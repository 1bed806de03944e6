"""An invariant for the whole e2e suite: no task runs twice unless the test meant it to.

Agents count a duplicate execution (a handler run whose result was not stored because the task
already had one) in their fleet's counters hash, atomically with the result step. After every e2e
test, every fleet left in the test's namespace must show none; a test that causes duplicates on
purpose says so with `@pytest.mark.duplicates_expected`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from kubernetes import client as k8s_client

import agedbacklog
import soak
from fleetapi_auth import SUBMITTER, VIEWER, apply_chart_roles, service_account
from gatewayproc import GatewayProcess
from harness import Cluster, OperatorProcess, RedisHandle
from newfuse.wire.keys import KEY_ROOT
from newfuse.wire.scripts import COUNTER_DUPLICATES


@pytest.fixture(autouse=True)
def no_unplanned_duplicates(
    request: pytest.FixtureRequest, redis_server: RedisHandle, namespace: str
) -> Iterator[None]:
    yield
    if request.node.get_closest_marker("duplicates_expected"):
        return
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        pattern = f"{KEY_ROOT}:\\{{{namespace}/*\\}}:counters"
        found = {
            key: int(client.hget(key, COUNTER_DUPLICATES) or 0)
            for key in client.scan_iter(match=pattern, count=1000)
        }
    finally:
        client.close()
    duplicated = {key: n for key, n in found.items() if n}
    assert not duplicated, f"duplicate task executions: {duplicated}"


@pytest.fixture
def gateway(
    redis_server: RedisHandle, gateway_port: int, cluster: Cluster
) -> Iterator[GatewayProcess]:
    """A fleet API gateway with the default settings (auth on), at the URL the operator was told."""
    kubeconfig = str(cluster.kubeconfig)
    with GatewayProcess(redis_server.url, gateway_port, NEWFUSE_KUBECONFIG=kubeconfig) as running:
        yield running


@pytest.fixture
def viewer(k8s_api: k8s_client.ApiClient, namespace: str) -> str:
    """A token of a ServiceAccount bound to the chart's viewer role in the test's namespace."""
    apply_chart_roles(k8s_api)
    return service_account(k8s_api, namespace, "viewer", cluster_role=VIEWER)


@pytest.fixture
def submitter(k8s_api: k8s_client.ApiClient, namespace: str) -> str:
    """A token of a ServiceAccount bound to the chart's task-submitter role in the namespace."""
    apply_chart_roles(k8s_api)
    return service_account(k8s_api, namespace, "submitter", cluster_role=SUBMITTER)


@pytest.fixture(scope="session")
def aged_backlog(
    cluster: Cluster,
    operator: OperatorProcess,
    k8s_api: k8s_client.ApiClient,
    redis_server: RedisHandle,
) -> Iterator[agedbacklog.AgedBacklog]:
    """A backlog queued once a session and aged while the suite runs (see tests/agedbacklog.py)."""
    state_root = Path(__file__).resolve().parents[2] / ".local" / "test-podrunner"
    yield from agedbacklog.queue_backlog(cluster, k8s_api, redis_server, state_root)


@pytest.fixture(scope="session", autouse=True)
def _start_aging_the_backlog(request: pytest.FixtureRequest) -> None:
    """At the first e2e test, if the backlog test is in this session: its ten minutes start now."""
    if any(item.nodeid.endswith(agedbacklog.TEST_ID) for item in request.session.items):
        request.getfixturevalue("aged_backlog")


@pytest.fixture(scope="session")
def soaks(
    cluster: Cluster,
    operator: OperatorProcess,
    k8s_api: k8s_client.ApiClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[soak.Soaks]:
    """The session's soak scenarios (tests/soak.py), their resources freed at its end."""
    with soak.soaks(cluster, k8s_api, tmp_path_factory.mktemp("soaks")) as running:
        yield running


_soaks_started = False


@pytest.fixture(autouse=True)
def _start_the_soaks(request: pytest.FixtureRequest) -> None:
    """At the first e2e test after the real node's: start the selected tests' soaks.

    Not during the real node's tests: the README quotes what they add to a run, which load on
    the same two cores would inflate, and the chart's test replaces the session's operator.
    """
    global _soaks_started  # once a session, across every test of it
    if _soaks_started or "/realnode/" in request.node.nodeid:
        return
    selected = [item.name for item in request.session.items]
    if any(name in soak.registered() for name in selected):
        request.getfixturevalue("soaks").start(selected)
    _soaks_started = True
