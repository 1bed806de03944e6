"""A real Kubernetes control plane and Redis on 127.0.0.1, for tests and the demo.

These machines have no Docker engine, so kind cannot run. This package starts etcd,
kube-apiserver, kube-controller-manager, kube-scheduler and kwok (fake nodes) as local processes
built from the Go module proxy (see build.sh), plus a Debian redis-server. It is dev and test
tooling only: the product never imports it (an import-linter contract says so).
"""

from localcluster.cluster import ClusterInfo, LocalCluster
from localcluster.redis_server import RedisInfo, RedisServer
from localcluster.waiting import WaitTimeoutError, wait_established, wait_for

__all__ = [
    "ClusterInfo",
    "LocalCluster",
    "RedisInfo",
    "RedisServer",
    "WaitTimeoutError",
    "wait_established",
    "wait_for",
]
