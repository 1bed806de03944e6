"""Benchmark: the operator's overhead per phased-rollout step, beside a Deployment rolling update.

Per step: from the moment the step's gate verdict is reachable (its newest canary pod is Ready;
zero soak, `minTasks: 0`) to the moment the next step's pod is created. A 21-replica fleet moving
one agent per step gives 20 steps. Baseline, same cluster, same run: a 21-replica Deployment
rolling update with maxSurge 1 and maxUnavailable 0 (the Deployment controller creating the next
pod once the previous new one is Ready), timed the same way. Times come from one pod watch stream,
read in this process, so both sides carry the same observation delay. Not a test: `make bench`.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from kubernetes import client as k8s_client
from kubernetes import watch as k8s_watch
from rich.console import Console
from rich.table import Table

from environment import bench_environment
from localcluster.waiting import wait_for

console = Console()
REPLICAS = 21
GROUP, VERSION, PLURAL = "newfuse.io", "v1alpha1", "newfuseagents"


@dataclass
class PodTimes:
    """When each pod was first seen, and first seen Ready (monotonic seconds)."""

    created: dict[str, float] = field(default_factory=dict)
    ready: dict[str, float] = field(default_factory=dict)
    labels: dict[str, dict[str, str]] = field(default_factory=dict)


def watch_pods(
    api: k8s_client.ApiClient, namespace: str, times: PodTimes, stop: threading.Event
) -> None:
    """Record pod creation and readiness as the watch stream reports them."""
    core = k8s_client.CoreV1Api(api)
    stream = k8s_watch.Watch()  # type: ignore[no-untyped-call]
    while not stop.is_set():
        for event in stream.stream(core.list_namespaced_pod, namespace, timeout_seconds=5):  # type: ignore[no-untyped-call]
            now = time.monotonic()
            pod = event["object"]
            name = pod.metadata.name
            times.created.setdefault(name, now)
            times.labels[name] = dict(pod.metadata.labels or {})
            conditions = (pod.status.conditions if pod.status else None) or []
            if any(c.type == "Ready" and c.status == "True" for c in conditions):
                times.ready.setdefault(name, now)
            if stop.is_set():
                stream.stop()  # type: ignore[no-untyped-call]
                return


def step_gaps(
    times: PodTimes, is_new: Callable[[dict[str, str]], bool], initial: set[str]
) -> list[float]:
    """Seconds from each new pod becoming Ready to the next new pod being created."""
    new = sorted(
        (p for p in times.created if p not in initial and is_new(times.labels[p])),
        key=lambda name: times.created[name],
    )
    gaps = []
    for current, following in itertools.pairwise(new):
        if current in times.ready:
            gaps.append(times.created[following] - times.ready[current])
    return gaps


def summary(gaps: list[float]) -> tuple[float, float]:
    """Median and p95 of ``gaps``."""
    ordered = sorted(gaps)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def measure(
    api: k8s_client.ApiClient,
    namespace: str,
    start: Callable[[], object],
    change: Callable[[], object],
    done: Callable[[], bool],
    is_new: Callable[[dict[str, str]], bool],
) -> list[float]:
    """Start a workload, let it settle, change it, and collect the per-step gaps of its rollout."""
    times, stop = PodTimes(), threading.Event()
    watcher = threading.Thread(target=watch_pods, args=(api, namespace, times, stop), daemon=True)
    watcher.start()
    start()
    wait_for(
        lambda: len(times.ready) >= REPLICAS, 300, what=f"{REPLICAS} Ready pods in {namespace}"
    )
    initial = set(times.created)
    change()
    wait_for(
        done, 600, what=f"the rollout in {namespace} to finish", interval=0.5, max_interval=1.0
    )
    stop.set()
    watcher.join(timeout=10)
    return step_gaps(times, is_new, initial)


def main(argv: list[str] | None = None) -> int:
    """Run both rollouts on a fresh control plane and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    with bench_environment("rollout", ("bench-deploy", "bench-phased")) as env:
        env.start_operator()
        api = env.api
        apps, custom = k8s_client.AppsV1Api(api), k8s_client.CustomObjectsApi(api)

        def deployment(image: str) -> dict[str, Any]:
            labels = {"app": "steps"}
            return {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "steps"},
                "spec": {
                    "replicas": REPLICAS,
                    "selector": {"matchLabels": labels},
                    "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {"containers": [{"name": "agent", "image": image}]},
                    },
                },
            }

        def deployment_done() -> bool:
            d = apps.read_namespaced_deployment("steps", "bench-deploy")
            s = d.status
            if s is None:
                return False
            return bool(
                s.updated_replicas == REPLICAS
                and s.ready_replicas == REPLICAS
                and s.replicas == REPLICAS
            )

        console.print("[dim]Deployment rolling update (maxSurge 1, maxUnavailable 0)")
        baseline = measure(
            api,
            "bench-deploy",
            lambda: apps.create_namespaced_deployment(
                "bench-deploy", cast(Any, deployment("agent:1"))
            ),
            lambda: apps.patch_namespaced_deployment(
                "steps", "bench-deploy", cast(Any, deployment("agent:2"))
            ),
            deployment_done,
            lambda _: True,
        )

        phased = {
            "strategy": "Phased",
            "initial": {"soakSeconds": 0, "gate": {"minTasks": 0}},
            "gradual": {"step": 1, "intervalSeconds": 0, "gate": {"minTasks": 0}},
            "maxSurge": 1,
            "maxUnavailable": 0,
        }
        fleet = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "NewFuseAgent",
            "metadata": {"name": "steps"},
            "spec": {"replicas": REPLICAS, "image": "newfuse/agent:1", "rollout": phased},
        }

        def fleet_done() -> bool:
            body = cast(
                dict[str, Any],
                custom.get_namespaced_custom_object(
                    GROUP, VERSION, "bench-phased", PLURAL, "steps"
                ),
            )
            rollout = (body.get("status") or {}).get("rollout") or {}
            return rollout.get("phase") == "Completed"

        def change_fleet() -> None:
            custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                "bench-phased",
                PLURAL,
                "steps",
                {"spec": {"image": "newfuse/agent:2"}},
            )

        console.print(
            f"[dim]NewFuseAgent phased rollout ({REPLICAS - 1} steps, zero soak, minTasks 0)"
        )
        ours = measure(
            api,
            "bench-phased",
            lambda: custom.create_namespaced_custom_object(
                GROUP, VERSION, "bench-phased", PLURAL, fleet
            ),
            change_fleet,
            fleet_done,
            lambda _: True,
        )

    table = Table(
        title=f"per-step overhead: new pod Ready -> next step's pod created ({REPLICAS} replicas)"
    )
    for column in ("rollout", "steps", "median s", "p95 s", "median ratio"):
        table.add_column(column, justify="left" if column == "rollout" else "right")
    base_median, base_p95 = summary(baseline)
    our_median, our_p95 = summary(ours)
    table.add_row(
        "Deployment rolling update (kube-controller-manager)",
        str(len(baseline)),
        f"{base_median:.3f}",
        f"{base_p95:.3f}",
        "1.00",
    )
    table.add_row(
        "NewFuse phased rollout (gates, zero soak)",
        str(len(ours)),
        f"{our_median:.3f}",
        f"{our_p95:.3f}",
        f"{our_median / base_median:.2f}",
    )
    console.print(table)
    console.print("target: NewFuse median <= 1 s per step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
