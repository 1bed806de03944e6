"""An independent scanner agrees: checkov finds nothing unexplained in the chart or an agent pod.

Our own chart tests check what we thought of; checkov (PyPI, pinned in
hack/checkov-requirements.txt, in its own venv: hack/scanner.py) checks what a platform team's CI
or admission scan would flag. Three manifests are scanned, each alone: the chart with its
default values, the chart with every option on, and the agent pod the operator builds for
crds/samples/summarizer.yaml (core.pods.build_pod, with the chart's default agent settings).

Every failed check must be accepted, for that object, in hack/checkov-accepted.yaml, the one
list of accepted findings with the reason each does not apply; a check that starts failing
fails here. Every accepted entry must still fail somewhere, so a fix also removes its excuse,
and README.md's "Security scan" table must be that list, word for word (`python
tests/unit/test_security_scan.py` prints it).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gen_kustomize import helm_binary, kube_version
from newfuse.api.v1alpha1 import NewFuseAgent, SecretKeyRef
from newfuse.core.pods import AgentDefaults, build_pod
from scanner import ACCEPTED, Finding, Report, scan

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "newfuse-operator"
SAMPLE = ROOT / "crds" / "samples" / "summarizer.yaml"
DIGEST = "sha256:" + "0123456789abcdef" * 4
# Every option of the chart at once (signing is on by default), as in
# tests/helm_chart.py, plus the image digests and the admission policy.
EVERYTHING = [
    "redis.internal.enabled=true",
    "networkPolicy.enabled=true",
    "networkPolicy.agents.namespaces={team-a}",
    "networkPolicy.apiServer.cidrs={10.0.0.1/32}",
    "redis.agentSecret.name=redis-url",
    "redis.tls.caSecret.name=redis-ca",
    "metrics.serviceMonitor.enabled=true",
    "metrics.agentPodMonitor.enabled=true",
    "metrics.prometheusRule.enabled=true",
    "metrics.dashboard.enabled=true",
    "admissionPolicy.enabled=true",
    f"image.digest={DIGEST}",
    f"redis.internal.image.digest={DIGEST}",
]
DEFAULTS_FILE, EVERYTHING_FILE, AGENT_FILE = "defaults.yaml", "everything.yaml", "agent-pod.yaml"


def render_chart(*sets: str) -> str:
    argv = [str(helm_binary()), "template", "nf", str(CHART), "-n", "newfuse-system"]
    argv += ["--kube-version", kube_version(), *(a for s in sets for a in ("--set", s))]
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120).stdout


def agent_pod() -> dict[str, Any]:
    """The pod the operator creates for the sample fleet, with the chart's default settings."""
    body = yaml.safe_load(SAMPLE.read_text())
    body["metadata"].update(namespace="team-a", uid="6f1c0c5e-0000-4000-8000-000000000001")
    defaults = AgentDefaults(
        redis_url="redis://redis:6379/0",
        signing_secret=SecretKeyRef(name="nf-newfuse-operator-signing", key="key"),
    )
    return build_pod(NewFuseAgent.model_validate(body), "abcdefghij", 0, defaults)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Report:
    where = tmp_path_factory.mktemp("scan")
    (where / DEFAULTS_FILE).write_text(render_chart())
    (where / EVERYTHING_FILE).write_text(render_chart(*EVERYTHING))
    (where / AGENT_FILE).write_text(yaml.safe_dump(agent_pod()))
    found = scan([where / DEFAULTS_FILE, where / EVERYTHING_FILE, where / AGENT_FILE])
    for name in (DEFAULTS_FILE, EVERYTHING_FILE, AGENT_FILE):
        failed = sorted(f"{f.check} ({target(f)})" for f in found.failed_in(name))
        print(f"checkov {name}: {found.passed[name]} passed, {len(failed)} failed: {failed}")
    return found


def accepted() -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = yaml.safe_load(ACCEPTED.read_text())
    return entries


def target(finding: Finding) -> str:
    """Which of our objects a finding is about: the agent pod, the trial Redis or the operator."""
    if finding.file == AGENT_FILE:
        return "agent"
    return "redis" if "-redis" in finding.resource else "operator"


def test_every_failed_check_is_fixed_or_accepted_with_a_reason(report: Report) -> None:
    allowed = {(e["check"], t) for e in accepted() for t in e["targets"]}
    unexplained = [f for f in report.failed if (f.check, target(f)) not in allowed]
    assert not unexplained, (
        "fix these, or accept them in hack/checkov-accepted.yaml:\n"
        + "\n".join(f"{f.file}: {f.check} {f.name} on {f.resource}" for f in unexplained)
    )


def test_no_accepted_finding_is_stale(report: Report) -> None:
    seen = {(f.check, target(f)) for f in report.failed}
    stale = [
        (e["check"], t) for e in accepted() for t in e["targets"] if (e["check"], t) not in seen
    ]
    assert not stale, f"these pass now: remove them from hack/checkov-accepted.yaml: {stale}"


def test_the_scans_saw_every_object(report: Report) -> None:
    """A scan that parsed nothing would fail no check: make sure each file was really checked."""
    assert report.passed[DEFAULTS_FILE] >= 100
    assert report.passed[EVERYTHING_FILE] > report.passed[DEFAULTS_FILE]
    assert report.passed[AGENT_FILE] >= 80
    # What the fixes bought: the trial Redis fails nothing, nor does any CPU-limit check of ours.
    assert not [f for f in report.failed if target(f) == "redis"]
    assert not [f for f in report.failed if f.check == "CKV_K8S_11" and target(f) != "agent"]


def test_the_accepted_list_is_complete_and_explained() -> None:
    for entry in accepted():
        assert set(entry) == {"check", "name", "targets", "reason"}, entry
        assert set(entry["targets"]) <= {"operator", "redis", "agent"}, entry
        assert len(entry["reason"]) > 80, f"{entry['check']}: say why it does not apply"
    checks = [e["check"] for e in accepted()]
    assert len(checks) == len(set(checks)), "one entry per check"


def readme_table() -> str:
    """The README's table of accepted findings, generated from hack/checkov-accepted.yaml."""
    rows = ["| Check | On | Why it does not apply |", "|---|---|---|"]
    for e in accepted():
        rows.append(f"| `{e['check']}` {e['name']} | {', '.join(e['targets'])} | {e['reason']} |")
    return "\n".join(rows) + "\n"


def test_the_readme_lists_exactly_the_accepted_findings() -> None:
    readme = (ROOT / "README.md").read_text()
    assert readme_table() in readme, (
        "README.md's Security scan table is stale: paste `python tests/unit/test_security_scan.py`"
    )


if __name__ == "__main__":
    sys.stdout.write(readme_table())
