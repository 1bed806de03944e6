"""What the Helm chart tests share: the pinned helm, and the chart rendered with given values.

EVERYTHING turns on every optional object of the chart at once, NAMESPACED the namespaced RBAC
mode; _env reads the operator container's env from rendered objects.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from gen_kustomize import helm_binary, kube_version
from localcluster.binaries import Binaries

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "newfuse-operator"
KUBE_VERSION = "1.35.4"
# Every optional object of the chart at once (signing is on by default).
EVERYTHING = [
    "--set",
    "redis.internal.enabled=true",
    "--set",
    "networkPolicy.enabled=true",
    "--set",
    "networkPolicy.agents.namespaces={team-a}",
    "--set",
    "networkPolicy.apiServer.cidrs={10.0.0.1/32}",
    "--set",
    "redis.agentSecret.name=redis-url",
    "--set",
    "redis.tls.caSecret.name=redis-ca",
    "--set",
    "metrics.serviceMonitor.enabled=true",
    "--set",
    "metrics.agentPodMonitor.enabled=true",
    "--set",
    "metrics.prometheusRule.enabled=true",
    "--set",
    "metrics.dashboard.enabled=true",
    "--set",
    "gateway.enabled=true",
]
# Prometheus Operator kinds: the session cluster has no CRDs for them, so its dry run leaves them
# out (tests/unit/test_chart_rules.py checks their content); the lifecycle test installs minimal
# CRDs for them on its throwaway cluster and applies them for real.
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


NAMESPACED = ["--set", "rbac.namespaced=true", "--set", "watchNamespaces={team-a,team-b}"]


def helm(
    binaries: Binaries, *args: str, kubeconfig: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    argv = [str(binaries.helm), *args]
    if kubeconfig is not None:
        argv += ["--kubeconfig", str(kubeconfig)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def template(*sets: str) -> str:
    """`helm template` of the chart with ``sets`` (`key=value`), no cluster needed."""
    argv = [str(helm_binary()), "template", "nf", str(CHART), "-n", "newfuse-system"]
    argv += ["--kube-version", kube_version(), *(a for s in sets for a in ("--set", s))]
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120).stdout


def docs(*sets: str) -> list[dict[str, Any]]:
    """The objects `template` renders."""
    return [d for d in yaml.safe_load_all(template(*sets)) if d]


def render(binaries: Binaries, *sets: str) -> list[dict[str, Any]]:
    out = helm(
        binaries,
        "template",
        "nf",
        str(CHART),
        "-n",
        "newfuse-system",
        "--kube-version",
        KUBE_VERSION,
        *sets,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


FLEET_API_ROLES = ("-task-submitter", "-viewer", "-reviewer", "-memory-editor")


def operator_cluster_roles(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ClusterRoles the operator itself is bound to (not the fleet API's roles for users)."""
    return [
        d
        for d in docs
        if d["kind"] == "ClusterRole" and not d["metadata"]["name"].endswith(FLEET_API_ROLES)
    ]


def _env(docs: list[dict[str, Any]], name: str = "nf-newfuse-operator") -> dict[str, Any]:
    [deployment] = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == name]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
