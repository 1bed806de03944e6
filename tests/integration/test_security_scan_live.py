"""checkov on a live agent pod: what the API server holds, not only what the operator built.

tests/unit/test_security_scan.py scans the pod core.pods.build_pod makes; the API server adds
defaults (a ServiceAccount, tolerations, a DNS policy...) that a scanner may judge too. Here the
operator creates the sample fleet's pod on the local control plane, and checkov scans that pod as
read back: every failure must be one hack/checkov-accepted.yaml accepts for agent pods.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from harness import Fleets, Kubectl, OperatorProcess
from localcluster import wait_for
from scanner import ACCEPTED, scan

SAMPLE = Path(__file__).resolve().parents[2] / "crds" / "samples" / "summarizer.yaml"


def test_a_live_agent_pod_fails_only_accepted_checks(
    operator: OperatorProcess, fleets: Fleets, kubectl: Kubectl, tmp_path: Path
) -> None:
    spec: dict[str, Any] = yaml.safe_load(SAMPLE.read_text())["spec"]
    spec["replicas"] = 1
    fleets.create("summarizer", **spec)
    wait_for(lambda: bool(fleets.live_pod_names("summarizer")), 60, what="the sample's pod")
    [name] = fleets.live_pod_names("summarizer")
    pod = json.loads(kubectl("get", "pod", name, "-n", fleets.namespace, "-o", "json"))
    pod["metadata"].pop("managedFields", None)
    pod.pop("status", None)
    (tmp_path / "live-pod.yaml").write_text(yaml.safe_dump(pod))

    report = scan([tmp_path / "live-pod.yaml"])
    failed = sorted(f.check for f in report.failed)
    print(f"checkov live agent pod: {report.passed['live-pod.yaml']} passed, {failed} failed")

    allowed = {e["check"] for e in yaml.safe_load(ACCEPTED.read_text()) if "agent" in e["targets"]}
    unexplained = [f"{f.check} {f.name}" for f in report.failed if f.check not in allowed]
    assert not unexplained, f"fix, or accept in hack/checkov-accepted.yaml: {unexplained}"
    assert report.passed["live-pod.yaml"] >= 80
