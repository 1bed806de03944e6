"""Benchmark: the operator's overhead per phased-rollout step, beside a Deployment rolling update.

Per step: from the moment the step's gate verdict is reachable (its newest canary pod is Ready;
zero soak, `minTasks: 0`) to the moment the next step's pod is created. A 21-replica fleet moving
one agent per step gives 20 steps. Baseline, same cluster, same run: a 21-replica Deployment
rolling update with maxSurge 1 and maxUnavailable 0 (the Deployment controller creating the next
pod once the previous new one is Ready), timed the same way. Times come from one pod watch stream,
read in this process, so both sides carry the same observation delay. Not a test: `make bench`.

Two things made the baseline record no step at all, so they are guarded here:
- a rollout is finished only once its controller has observed the change (observedGeneration);
  before that its status still describes the previous, finished rollout, so "done" was true the
  moment after the patch and the watch was stopped before the first new pod existed;
- the watch resumes from the last resourceVersion it saw instead of starting afresh every few
  seconds (a fresh watch only replays the current pods: one created and replaced in between is
  never seen), and the step count is checked, so a missed event fails the run instead of skewing it.
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
from kubernetes.client.exceptions import ApiException
from rich.console import Console
from rich.table import Table

from environment import bench_environment, report_figures, size
from localcluster.waiting import wait_for

console = Console()
GROUP, VERSION, PLURAL = "newfuse.io", "v1alpha1", "newfuseagents"
HTTP_GONE = 410


@dataclass
class PodTimes:
    """When each pod (by UID) was first seen, and first seen Ready (monotonic seconds)."""

    created: dict[str, float] = field(default_factory=dict)
    ready: dict[str, float] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    relists: int = 0

    def record(self, pod: k8s_client.V1Pod, now: float) -> None:
        """Fold one observation of ``pod`` in."""
        meta = pod.metadata or k8s_client.V1ObjectMeta()
        uid = str(meta.uid)
        self.created.setdefault(uid, now)
        labels = meta.labels or {}
        revision = labels.get("newfuse.io/revision") or labels.get("pod-template-hash")
        self.names.setdefault(uid, f"{meta.name} ({revision})")
        conditions = (pod.status.conditions if pod.status else None) or []
        if any(c.type == "Ready" and c.status == "True" for c in conditions):
            self.ready.setdefault(uid, now)


class PodWatcher(threading.Thread):
    """Lists the namespace's pods once, then follows one resumed watch until stopped."""

    def __init__(self, api: k8s_client.ApiClient, namespace: str) -> None:
        """Watch ``namespace``; call start(), then wait for ``listed``."""
        super().__init__(daemon=True, name=f"watch-{namespace}")
        self.core, self.namespace = k8s_client.CoreV1Api(api), namespace
        self.times, self.stop_event, self.listed = PodTimes(), threading.Event(), threading.Event()
        self.error: BaseException | None = None

    def _list(self) -> str:
        listing = self.core.list_namespaced_pod(self.namespace)
        now = time.monotonic()
        for pod in listing.items:
            self.times.record(pod, now)
        return str(listing.metadata.resource_version if listing.metadata else "")

    def run(self) -> None:
        """Record events until stopped; a watch too old to resume (410) re-lists and is counted."""
        try:
            version = self._list()
            self.listed.set()
            while not self.stop_event.is_set():
                stream = k8s_watch.Watch()  # type: ignore[no-untyped-call]
                try:
                    for event in stream.stream(  # type: ignore[no-untyped-call]
                        self.core.list_namespaced_pod,
                        self.namespace,
                        resource_version=version,
                        allow_watch_bookmarks=True,
                        timeout_seconds=2,  # only so that a stop is noticed while nothing happens
                    ):
                        if event["type"] != "BOOKMARK":
                            self.times.record(event["object"], time.monotonic())
                        if self.stop_event.is_set():
                            stream.stop()  # type: ignore[no-untyped-call]
                except ApiException as exc:
                    if exc.status != HTTP_GONE:
                        raise
                    self.times.relists += 1
                    version = self._list()
                    continue
                version = stream.resource_version or version
        except BaseException as exc:
            self.error = exc
            self.listed.set()

    def check(self) -> PodTimes:
        """The times so far; re-raise in the caller what ended the watch."""
        if self.error is not None:
            raise RuntimeError(f"the pod watch of {self.namespace} failed") from self.error
        return self.times


def step_gaps(times: PodTimes, initial: set[str]) -> list[float]:
    """Seconds from each new pod becoming Ready to the next new pod being created."""
    new = sorted((p for p in times.created if p not in initial), key=times.created.__getitem__)
    return [
        times.created[following] - times.ready[current]
        for current, following in itertools.pairwise(new)
        if current in times.ready
    ]


def summary(gaps: list[float]) -> tuple[float, float]:
    """Median and p95 of ``gaps``."""
    ordered = sorted(gaps)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


@dataclass
class Rollout:
    """What one rollout's watch saw."""

    gaps: list[float]
    relists: int
    timeline: list[str]


def measure(
    api: k8s_client.ApiClient,
    namespace: str,
    replicas: int,
    start: Callable[[], object],
    change: Callable[[], object],
    done: Callable[[], bool],
) -> Rollout:
    """Start a workload, let it settle, change it, and return what the watch saw of its rollout."""
    watcher = PodWatcher(api, namespace)
    watcher.start()
    watcher.listed.wait(60)
    start()
    wait_for(
        lambda: len(watcher.check().ready) >= replicas,
        300,
        what=f"{replicas} Ready pods in {namespace}",
    )
    initial = set(watcher.check().created)
    changed = time.monotonic()
    change()
    wait_for(
        done, 600, what=f"the rollout in {namespace} to finish", interval=0.5, max_interval=1.0
    )

    def all_new_ready_seen() -> bool:
        # The controller's status can run ahead of this process's watch stream.
        times = watcher.check()
        return len([uid for uid in times.ready if uid not in initial]) >= replicas

    wait_for(all_new_ready_seen, 60, what=f"the watch to see {replicas} new Ready pods")
    watcher.stop_event.set()
    watcher.join(timeout=10)
    times = watcher.check()
    timeline = [
        f"{'old' if uid in initial else 'new'} {times.names[uid]}: created "
        f"{at - changed:+.3f}s, Ready {times.ready.get(uid, float('nan')) - changed:+.3f}s"
        for uid, at in sorted(times.created.items(), key=lambda item: item[1])
    ]
    return Rollout(step_gaps(times, initial), times.relists, timeline)


def deployment_body(replicas: int, image: str) -> dict[str, Any]:
    """The baseline Deployment: maxSurge 1, maxUnavailable 0."""
    labels = {"app": "steps"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "steps"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "agent", "image": image}]},
            },
        },
    }


def deployment_finished(d: k8s_client.V1Deployment, replicas: int) -> bool:
    """The rolling update of the current spec is over (not a stale status of the previous one)."""
    s = d.status
    return bool(
        s is not None
        and d.metadata is not None
        and (s.observed_generation or 0) >= (d.metadata.generation or 0)
        and s.updated_replicas == replicas
        and s.ready_replicas == replicas
        and s.replicas == replicas
    )


def fleet_finished(body: dict[str, Any], replicas: int) -> bool:
    """The phased rollout of the current spec completed (not a stale status of an earlier one)."""
    status = body.get("status") or {}
    rollout = status.get("rollout") or {}
    return bool(
        status.get("observedGeneration", 0) >= body["metadata"].get("generation", 0)
        and rollout.get("phase") == "Completed"
        and rollout.get("canaryRevision") == status.get("updateRevision")
        and status.get("updatedReplicas") == replicas
    )


def run(replicas: int) -> tuple[Rollout, Rollout]:
    """Both rollouts on one control plane: the baseline's, then NewFuse's."""
    with bench_environment("rollout", ("bench-deploy", "bench-phased")) as env:
        env.start_operator()
        api = env.api
        apps, custom = k8s_client.AppsV1Api(api), k8s_client.CustomObjectsApi(api)
        deploy_ns, fleet_ns = env.namespace("bench-deploy"), env.namespace("bench-phased")

        console.print("[dim]Deployment rolling update (maxSurge 1, maxUnavailable 0)")
        baseline = measure(
            api,
            deploy_ns,
            replicas,
            lambda: apps.create_namespaced_deployment(
                deploy_ns, cast(Any, deployment_body(replicas, "agent:1"))
            ),
            lambda: apps.patch_namespaced_deployment(
                "steps", deploy_ns, cast(Any, deployment_body(replicas, "agent:2"))
            ),
            lambda: deployment_finished(
                apps.read_namespaced_deployment("steps", deploy_ns), replicas
            ),
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
            "spec": {"replicas": replicas, "image": "newfuse/agent:1", "rollout": phased},
        }

        def read_fleet() -> dict[str, Any]:
            return cast(
                dict[str, Any],
                custom.get_namespaced_custom_object(GROUP, VERSION, fleet_ns, PLURAL, "steps"),
            )

        console.print(
            f"[dim]NewFuseAgent phased rollout ({replicas - 1} steps, zero soak, minTasks 0)"
        )
        ours = measure(
            api,
            fleet_ns,
            replicas,
            lambda: custom.create_namespaced_custom_object(GROUP, VERSION, fleet_ns, PLURAL, fleet),
            lambda: custom.patch_namespaced_custom_object(
                GROUP, VERSION, fleet_ns, PLURAL, "steps", {"spec": {"image": "newfuse/agent:2"}}
            ),
            lambda: fleet_finished(read_fleet(), replicas),
        )
    return baseline, ours


def main(argv: list[str] | None = None) -> int:
    """Run both rollouts and print the comparison; non-zero if a step went unobserved."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=size(21, 4))
    args = parser.parse_args(argv)
    replicas: int = args.replicas
    base_run, our_run = run(replicas)
    baseline, ours = base_run.gaps, our_run.gaps

    expected = replicas - 1
    table = Table(
        title=f"per-step overhead: new pod Ready -> next step's pod created ({replicas} replicas)"
    )
    for column in ("rollout", "steps", "median s", "p95 s", "median ratio"):
        table.add_column(column, justify="left" if column == "rollout" else "right")
    if len(baseline) != expected or len(ours) != expected:
        console.print(
            f"[red]expected {expected} steps on each side, observed {len(baseline)} (Deployment) "
            f"and {len(ours)} (NewFuse); watch re-lists: {base_run.relists + our_run.relists}"
        )
        for name, seen in (("Deployment", base_run), ("NewFuse", our_run)):
            console.print(f"{name} pods, times from the change:", *seen.timeline, sep="\n  ")
        return 1
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
    report_figures(
        "rollout_steps",
        {
            "replicas": replicas,
            "deployment_median_s": base_median,
            "deployment_p95_s": base_p95,
            "newfuse_median_s": our_median,
            "newfuse_p95_s": our_p95,
            "median_ratio": our_median / base_median,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
