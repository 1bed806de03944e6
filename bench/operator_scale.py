"""Benchmark: how fast N single-replica NewFuseAgents reach Available, against Deployments.

Baseline, measured in the same run on the same fresh local control plane: N single-replica
Deployments brought to Available by Kubernetes' own Go controllers (kube-controller-manager at its
default client QPS of 20 and burst of 30 per controller). Both sides are created the same way (16
client threads) and timed from the first create to the last Available. Also reports the operator's
peak RSS (VmHWM). Not a test: it prints figures; `make bench` runs it. In shared mode (see
environment.py) the RSS is the shared operator's and says nothing about this run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from kubernetes import client as k8s_client
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from environment import bench_environment, report_figures, size
from localcluster.waiting import wait_for

console = Console()
GROUP, VERSION, PLURAL = "newfuse.io", "v1alpha1", "newfuseagents"
CREATE_THREADS = 16


@dataclass(frozen=True)
class Result:
    """One side of the comparison."""

    name: str
    seconds: float
    peak_rss_mb: float | None = None


def _timed_rollout(
    label: str, count: int, create: Callable[[int], None], ready_count: Callable[[], int]
) -> float:
    """Create ``count`` objects from 16 threads; return seconds until all are ready."""
    started = time.monotonic()
    with Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        created_task = progress.add_task(f"{label} created", total=count)
        ready_task = progress.add_task(f"{label} ready", total=count)
        with ThreadPoolExecutor(CREATE_THREADS) as pool:
            for _ in pool.map(create, range(count)):
                progress.advance(created_task)

        def all_ready() -> bool:
            ready = ready_count()
            progress.update(ready_task, completed=ready)
            return ready >= count

        wait_for(all_ready, 3600, what=f"{count} {label} ready", interval=1.0, max_interval=1.0)
    return time.monotonic() - started


def deployments(api: k8s_client.ApiClient, namespace: str, count: int) -> Result:
    """The baseline: Kubernetes' Deployment and ReplicaSet controllers doing the same job."""
    apps = k8s_client.AppsV1Api(api)

    def create(i: int) -> None:
        labels = {"app": f"d{i}"}
        apps.create_namespaced_deployment(
            namespace,
            cast(
                Any,
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {"name": f"d{i}"},
                    "spec": {
                        "replicas": 1,
                        "selector": {"matchLabels": labels},
                        "template": {
                            "metadata": {"labels": labels},
                            "spec": {
                                "containers": [{"name": "agent", "image": "newfuse/agent:0.1.0"}]
                            },
                        },
                    },
                },
            ),
        )

    def ready() -> int:
        items = apps.list_namespaced_deployment(namespace).items
        return sum(
            1 for d in items if d.status is not None and (d.status.available_replicas or 0) >= 1
        )

    return Result(
        "Deployments (kube-controller-manager)", _timed_rollout("Deployments", count, create, ready)
    )


def fleets(api: k8s_client.ApiClient, namespace: str, count: int, operator_pid: int) -> Result:
    """NewFuse: the operator turning NewFuseAgents into pods and Available status."""
    custom = k8s_client.CustomObjectsApi(api)

    def create(i: int) -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "NewFuseAgent",
            "metadata": {"name": f"f{i}"},
            "spec": {"replicas": 1, "image": "newfuse/agent:0.1.0"},
        }
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

    def ready() -> int:
        listing = cast(
            dict[str, Any], custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        )
        items: Iterable[dict[str, Any]] = listing["items"]
        return sum(1 for f in items if (f.get("status") or {}).get("phase") == "Available")

    seconds = _timed_rollout("NewFuseAgents", count, create, ready)
    return Result("NewFuseAgents (newfuse operator)", seconds, peak_rss_mb(operator_pid))


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def main(argv: list[str] | None = None) -> int:
    """Run the comparison on a fresh, dedicated control plane and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--count", type=int, default=int(os.environ.get("NEWFUSE_BENCH_COUNT", size("1000", "5")))
    )
    parser.add_argument("--keep", action="store_true", help="leave the bench cluster running")
    args = parser.parse_args(argv)

    with bench_environment("scale", ("bench-deployments", "bench-fleets"), keep=args.keep) as env:
        baseline = deployments(env.api, env.namespace("bench-deployments"), args.count)
        ours = fleets(env.api, env.namespace("bench-fleets"), args.count, env.start_operator())

    table = Table(
        title=f"{args.count} single-replica resources to Available (same cluster, same run)"
    )
    table.add_column("what")
    table.add_column("seconds", justify="right")
    table.add_column("ratio to baseline", justify="right")
    table.add_column("peak RSS", justify="right")
    table.add_row(baseline.name, f"{baseline.seconds:.1f}", "1.00", "")
    table.add_row(
        ours.name,
        f"{ours.seconds:.1f}",
        f"{ours.seconds / baseline.seconds:.2f}",
        f"{ours.peak_rss_mb:.0f} MB" if ours.peak_rss_mb else "",
    )
    console.print(table)
    console.print("targets: time ratio ≤ 1.00; operator peak RSS ≤ 250 MB")
    report_figures(
        "operator_scale",
        {
            "count": args.count,
            "deployments_s": baseline.seconds,
            "newfuse_s": ours.seconds,
            "time_ratio": ours.seconds / baseline.seconds,
            "operator_peak_rss_mb": ours.peak_rss_mb or 0.0,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
