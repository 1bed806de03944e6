"""Ports for test servers: never from the kernel's ephemeral range, where a client can take them."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from localcluster import netutil
from localcluster.cluster import LocalCluster


def test_free_ports_are_below_the_ephemeral_range_and_bindable() -> None:
    low = netutil._ephemeral_low()
    ports = {netutil.free_port() for _ in range(50)}
    assert all(port in netutil.PORT_RANGE and port < low for port in ports), ports
    assert len(ports) == 50, "a port handed out is never handed out again by this process"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports.pop()))


def test_a_port_in_use_is_not_offered() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        assert not netutil._bindable(held.getsockname()[1])


def test_a_cluster_start_that_lost_a_port_is_retried_on_fresh_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = LocalCluster(tmp_path / "cluster")
    failures = [RuntimeError("kube-controller-manager exited: bind: address already in use")]
    downs: list[bool] = []

    started = object()

    def start(binaries: object, timeout: float) -> object:
        if failures:
            raise failures.pop()
        return started

    def down(quiet: bool = False) -> list[str]:
        downs.append(quiet)
        return []

    monkeypatch.setattr(cluster, "_start", start)
    monkeypatch.setattr(cluster, "down", down)
    assert cluster._start_retrying(object(), 1.0) is started  # type: ignore[arg-type]
    assert downs == [True], "the half-started attempt is stopped before the retry"


def test_a_cluster_start_that_failed_otherwise_is_not_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = LocalCluster(tmp_path / "cluster")
    calls: list[int] = []

    def start(binaries: object, timeout: float) -> str:
        calls.append(1)
        raise RuntimeError("etcd exited during start-up; log tail: disk full")

    monkeypatch.setattr(cluster, "_start", start)
    monkeypatch.setattr(cluster, "down", lambda quiet=False: [])
    with pytest.raises(RuntimeError, match="disk full"):
        cluster._start_retrying(object(), 1.0)  # type: ignore[arg-type]
    assert calls == [1]
