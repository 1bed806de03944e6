"""Benchmark: how fast N single-replica NewFuseAgents reach Available, against Deployments.

Baseline, measured in the same run on the same fresh local control plane: single-replica
Deployments brought to Available by Kubernetes' own Go controllers (kube-controller-manager at its
default client QPS of 20 and burst of 30 per controller). Both sides are created the same way (16
client threads) and timed from the first create to the last Available. Also reports the operator's
peak RSS (VmHWM). Not a test: it prints figures; `make bench` runs it. In shared mode (see
environment.py) the RSS is the shared operator's and says nothing about this run.

At 10,000 fleets the baseline stays at 1,000 Deployments (--baseline-count): the Deployment
controllers' time per object is what NewFuse's is compared with, and 10,000 more pods would only
slow the shared 2-core machine for the NewFuse run that follows. --also 1000 first runs NewFuse at
1,000 with an operator of its own (in a namespace of its own, so each size starts from nothing),
so the time per fleet at both sizes comes from one run: linear scaling means equal figures.
Readiness is polled as raw JSON, not client models: at 10,000 objects the bench's own parsing would
otherwise take the CPU the measured controllers need.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from kubernetes import client as k8s_client
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from environment import BenchEnvironment, bench_environment, report_figures, size
from localcluster.waiting import wait_for
from newfuse.adapters.kuberest import request

console = Console()
GROUP, VERSION, PLURAL = "newfuse.io", "v1alpha1", "newfuseagents"
CREATE_THREADS = 16
BASELINE_MAX = 1000  # Deployments at most, unless --baseline-count says otherwise
FLEETS_NS, DEPLOYMENTS_NS = "bench-fleets", "bench-deployments"


@dataclass(frozen=True)
class Result:
    """One side of the comparison, at one size."""

    name: str
    count: int
    seconds: float
    peak_rss_mb: float | None = None

    @property
    def per_object(self) -> float:
        """Seconds per object: what stays flat if the controller scales linearly."""
        return self.seconds / self.count


def _poll_interval(count: int) -> float:
    # One list of 10,000 objects is ~30 MB of JSON: listing that every second would load the
    # apiserver and this process more than the controllers measured. 1 s up to 1,000, 5 s at most.
    return min(5.0, max(1.0, count / 1000))


def _items(api: k8s_client.ApiClient, path: str) -> list[dict[str, Any]]:
    """A list call's items as plain JSON (client models would cost seconds per poll at 10k)."""
    items: list[dict[str, Any]] = request(api, "GET", path, {})["items"]
    return items


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

        interval = _poll_interval(count)
        wait_for(
            all_ready, 7200, what=f"{count} {label} ready", interval=interval, max_interval=interval
        )
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
            _preload_content=False,
        )

    def ready() -> int:
        items = _items(api, f"/apis/apps/v1/namespaces/{namespace}/deployments")
        return sum(1 for d in items if (d.get("status") or {}).get("availableReplicas", 0) >= 1)

    seconds = _timed_rollout("Deployments", count, create, ready)
    return Result("Deployments (kube-controller-manager)", count, seconds)


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
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, body, _preload_content=False
        )

    def ready() -> int:
        items = _items(api, f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}")
        return sum(1 for f in items if (f.get("status") or {}).get("phase") == "Available")

    seconds = _timed_rollout(f"NewFuseAgents ({count})", count, create, ready)
    return Result("NewFuseAgents (newfuse operator)", count, seconds, peak_rss_mb(operator_pid))


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def fleet_runs(env: BenchEnvironment, sizes: list[int]) -> list[Result]:
    """NewFuse at each size, smallest first; the last (largest) is in FLEETS_NS.

    With more than one size each gets a fresh operator watching only its own namespace, so its
    time and peak RSS are those of that many fleets, not of the runs before it.
    """
    if len(sizes) == 1:
        return [fleets(env.api, env.namespace(FLEETS_NS), sizes[0], env.start_operator())]
    if env.operator_pid is not None:
        raise SystemExit("--also needs an operator of the benchmark's own (not shared mode)")
    results = []
    for index, size_ in enumerate(sizes):
        last = index == len(sizes) - 1
        namespace = env.namespace(FLEETS_NS if last else _extra_namespace(size_))
        env.operator.down()
        os.environ["NEWFUSE_NAMESPACES"] = namespace
        results.append(fleets(env.api, namespace, size_, env.start_operator()))
    return results


def _extra_namespace(count: int) -> str:
    return f"{FLEETS_NS}-{count}"


def _sizes(args: argparse.Namespace) -> list[int]:
    extra = sorted({int(v) for v in args.also.split(",") if v.strip()} - {args.count})
    if any(v <= 0 or v > args.count for v in extra):
        raise SystemExit(f"--also sizes must be positive and below --count ({args.count})")
    return [*extra, args.count]


def print_table(baseline: Result, runs: list[Result]) -> None:
    """The comparison, with seconds per object so sizes that differ compare."""
    table = Table(title="single-replica resources to Available (same cluster, same run)")
    for column in ("what", "count", "seconds", "ms per object", "per-object ratio", "peak RSS"):
        table.add_column(column, justify="left" if column == "what" else "right")
    table.add_row(
        baseline.name, str(baseline.count), f"{baseline.seconds:.1f}",
        f"{baseline.per_object * 1000:.1f}", "1.00", "",
    )  # fmt: skip
    for run in runs:
        table.add_row(
            run.name, str(run.count), f"{run.seconds:.1f}", f"{run.per_object * 1000:.1f}",
            f"{run.per_object / baseline.per_object:.2f}",
            f"{run.peak_rss_mb:.0f} MB" if run.peak_rss_mb else "",
        )  # fmt: skip
    console.print(table)
    console.print(
        "targets: per-object ratio ≤ 1.00; operator peak RSS ≤ 150 MB at 1,000 fleets and "
        "≤ 250 MB at 10,000; ms per fleet no worse at 10,000 than at 1,000"
    )


def figures(baseline: Result, runs: list[Result]) -> dict[str, float | int]:
    """The BENCH-FIGURES names: the largest NewFuse run's under the historic names, plus per size.

    ``time_ratio`` compares seconds per object, which is the plain ratio when both counts match.
    """
    ours = runs[-1]
    found: dict[str, float | int] = {
        "count": ours.count,
        "deployments_count": baseline.count,
        "deployments_s": baseline.seconds,
        "deployments_s_per_object": baseline.per_object,
        "newfuse_s": ours.seconds,
        "newfuse_s_per_fleet": ours.per_object,
        "time_ratio": ours.per_object / baseline.per_object,
        "operator_peak_rss_mb": ours.peak_rss_mb or 0.0,
    }
    for run in runs[:-1]:
        found[f"newfuse_s_at_{run.count}"] = run.seconds
        found[f"newfuse_s_per_fleet_at_{run.count}"] = run.per_object
        found[f"operator_peak_rss_mb_at_{run.count}"] = run.peak_rss_mb or 0.0
    if len(runs) > 1:
        found["scaling_ratio"] = ours.per_object / runs[0].per_object
    return found


def main(argv: list[str] | None = None) -> int:
    """Run the comparison on a fresh, dedicated control plane and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--count",
        type=int,
        default=int(os.environ.get("NEWFUSE_BENCH_COUNT", size("1000", "5"))),
        help="NewFuseAgents to create (default 1000)",
    )
    parser.add_argument(
        "--baseline-count",
        type=int,
        default=None,
        help=f"Deployments to create (default: --count, at most {BASELINE_MAX})",
    )
    parser.add_argument(
        "--also",
        default="",
        help="smaller NewFuse sizes to run first, comma-separated (e.g. 1000), each with a "
        "fresh operator: shows whether the time per fleet stays flat",
    )
    parser.add_argument("--keep", action="store_true", help="leave the bench cluster running")
    args = parser.parse_args(argv)
    sizes = _sizes(args)
    baseline_count = args.baseline_count or min(args.count, BASELINE_MAX)
    namespaces = (DEPLOYMENTS_NS, *(_extra_namespace(s) for s in sizes[:-1]), FLEETS_NS)

    with bench_environment("scale", namespaces, keep=args.keep) as env:
        baseline = deployments(env.api, env.namespace(DEPLOYMENTS_NS), baseline_count)
        runs = fleet_runs(env, sizes)

    print_table(baseline, runs)
    report_figures("operator_scale", figures(baseline, runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
