"""The chart's alerts and dashboard query only metrics, labels and label values the code exports.

The chart is rendered with `helm template` (no cluster) with its PrometheusRule and dashboard on.
Every series name in every PromQL expression must be one that the code registers in
prometheus_client's default registry (counters as `<name>_total`, histograms as `_bucket`,
`_count`, `_sum`); label matchers must name labels the metric has (or a label the scrape adds);
and matchers on enum-valued labels (fleet phase, rollout outcome...) must use values the code can
emit. A typo in any of them fails here instead of giving an alert that can never fire.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import newfuse
import newfuse_agent
from gen_kustomize import helm_binary, kube_version
from newfuse.api.rollout import GateResult, RolloutPhase
from newfuse.api.v1alpha1 import Phase
from newfuse.core import naming
from newfuse.core.rolloutstep import ENDING_ROLLOUT_REASONS
from newfuse_agent.metrics import TaskOutcome

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "newfuse-operator"
MONITORING = (
    "metrics.serviceMonitor.enabled=true",
    "metrics.agentPodMonitor.enabled=true",
    "metrics.prometheusRule.enabled=true",
    "metrics.dashboard.enabled=true",
)
ALERTS = {
    "NewFuseOperatorDown": "critical",
    "NewFuseFleetDegraded": "warning",
    "NewFuseRolloutAborted": "warning",
    "NewFuseDeadLettersGrowing": "warning",
}
# Labels Prometheus adds to every scraped series (ServiceMonitor / PodMonitor targets).
TARGET_LABELS = {"job", "instance", "namespace", "pod", "container", "service", "endpoint"}
# Labels whose values come from an enum in the code: a matcher must use values it can emit.
ENUM_LABELS: dict[tuple[str, str], set[str]] = {
    ("newfuse_fleets", "phase"): {p.value for p in Phase},
    ("newfuse_rollout_phase", "phase"): {p.value for p in RolloutPhase},
    ("newfuse_rollout_duration_seconds", "outcome"): {r.value for r in ENDING_ROLLOUT_REASONS},
    ("newfuse_rollout_gate_verdicts", "result"): {r.value for r in GateResult},
    ("newfuse_reconciles", "result"): {"success", "error"},
    ("newfuse_agent_tasks", "outcome"): {o.value for o in TaskOutcome},
}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}
PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
    "and", "or", "unless", "inf", "nan",
}  # fmt: skip


@dataclass(frozen=True)
class Series:
    """A series name the code can export, and the family (metric) it belongs to."""

    family: str
    labels: frozenset[str]


def _import_everything() -> None:
    """Import every module of both packages, so a metric registered anywhere is seen."""
    for package in (newfuse, newfuse_agent):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not info.name.endswith("__main__"):
                importlib.import_module(info.name)


def exported_series() -> dict[str, Series]:
    """Every `newfuse_*` series name the code registers, with its family and label names."""
    _import_everything()
    labels_by_family: dict[str, frozenset[str]] = {}
    for collector in set(REGISTRY._names_to_collectors.values()):
        name = getattr(collector, "_name", None)
        if isinstance(name, str):
            labels_by_family[name] = frozenset(getattr(collector, "_labelnames", ()))
    series: dict[str, Series] = {}
    for family in REGISTRY.collect():
        if not family.name.startswith("newfuse_"):
            continue
        labels = labels_by_family.get(family.name, frozenset())
        for suffix in SUFFIXES.get(family.type, ("",)):
            series[family.name + suffix] = Series(family.name, labels)
    return series


_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
# An identifier that is not part of a longer one or a number, and is not a function call.
_IDENT = re.compile(r"(?<![\w:.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()")
# Grafana's label_values(metric, label): only its first argument is a metric.
_LABEL_VALUES = re.compile(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)[^()]*\)")


def metric_names(expr: str) -> set[str]:
    """The series names an expression selects (functions, keywords and labels left out)."""
    names = {m.group(1) for m in _SELECTOR.finditer(expr) if m.group(1)}
    names |= set(_LABEL_VALUES.findall(expr))
    bare = _LABEL_VALUES.sub(" ", expr)
    for pattern in (_SELECTOR, _RANGE, _GROUPING, _STRING):
        bare = pattern.sub(" ", bare)
    names |= {n for n in _IDENT.findall(bare) if n not in PROMQL_KEYWORDS}
    return names


def problems(expressions: dict[str, str], series: dict[str, Series]) -> list[str]:
    """Everything in these expressions (by where they come from) that the code cannot export."""
    found = []
    for where, expr in expressions.items():
        names = metric_names(expr)
        if not names:
            found.append(f"{where}: no metric found in {expr!r}")
        for name in sorted(names - series.keys()):
            found.append(f"{where}: {name} is not a metric the code registers")
        for match in _SELECTOR.finditer(expr):
            name = match.group(1)
            if name not in series:
                continue
            family = series[name].family
            for label, op, value in _MATCHER.findall(match.group(2)):
                if label not in series[name].labels | TARGET_LABELS:
                    found.append(f"{where}: {name} has no label {label!r}")
                allowed = ENUM_LABELS.get((family, label))
                if allowed is None or "$" in value:
                    continue
                values = value.split("|") if op in ("=~", "!~") else [value]
                for one in values:
                    if one not in allowed:
                        found.append(
                            f"{where}: {name}{{{label}}} is never {one!r} "
                            f"(the code emits {sorted(allowed)})"
                        )
    return found


def render(*sets: str) -> list[dict[str, Any]]:
    argv = [str(helm_binary()), "template", "nf", str(CHART), "-n", "newfuse-system"]
    argv += ["--kube-version", kube_version()]
    for value in sets:
        argv += ["--set", value]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return render(*MONITORING)


@pytest.fixture(scope="module")
def series() -> dict[str, Series]:
    return exported_series()


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [doc] = [d for d in docs if d["kind"] == kind]
    return doc


def _rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rule = _one(docs, "PrometheusRule")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard(docs: list[dict[str, Any]]) -> dict[str, Any]:
    config_map = _one(docs, "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    parsed: dict[str, Any] = json.loads(config_map["data"]["newfuse.json"])
    return parsed


def expressions(docs: list[dict[str, Any]]) -> dict[str, str]:
    """Every PromQL expression of the rules and the dashboard, by where it comes from."""
    found = {f"alert {r['alert']}": r["expr"] for r in _rules(docs)}
    board = dashboard(docs)
    for panel in _panels(board["panels"]):
        for target in panel.get("targets", []):
            found[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            found[f"variable {variable['name']}"] = variable["definition"]
    return found


def test_every_metric_in_alerts_and_dashboard_is_exported(
    rendered: list[dict[str, Any]], series: dict[str, Series]
) -> None:
    exprs = expressions(rendered)
    assert len(exprs) >= 20, exprs
    assert problems(exprs, series) == []


@pytest.mark.parametrize(
    ("typo", "fixed"),
    [
        ("newfuse_leadr", "newfuse_leader"),
        ("newfuse_reconcile_total", "newfuse_reconciles_total"),
        ("newfuse_dead_letter", "newfuse_dead_letters"),
    ],
)
def test_a_typo_in_a_metric_name_is_caught(
    rendered: list[dict[str, Any]], series: dict[str, Series], typo: str, fixed: str
) -> None:
    exprs = expressions(rendered)
    assert any(fixed in e for e in exprs.values()), f"{fixed} is used somewhere"
    broken = {where: e.replace(fixed, typo) for where, e in exprs.items()}
    found = problems(broken, series)
    assert found
    assert all(typo in p for p in found), found


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('max(newfuse_fleets{phase="Degradd"}) > 0', ["is never 'Degradd'"]),
        (
            'increase(newfuse_rollout_duration_seconds_count{outcome=~"aborted|rolled_back"}[5m])',
            ["is never 'aborted'", "is never 'rolled_back'"],
        ),
        ('sum(newfuse_leader{fleet="x"})', ["has no label 'fleet'"]),
        (
            "rate(newfuse_reconcile_duration_seconds_buckets[5m])",
            ["newfuse_reconcile_duration_seconds_buckets is not a metric"],
        ),
    ],
    ids=["enum value", "outcome values", "unknown label", "wrong suffix"],
)
def test_wrong_labels_and_values_are_caught(
    series: dict[str, Series], expr: str, expected: list[str]
) -> None:
    found = problems({"expr": expr}, series)
    assert len(found) == len(expected), found
    for problem, fragment in zip(found, expected, strict=True):
        assert fragment in problem


def test_the_checker_reads_promql_as_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le) (rate(a_bucket{job=~"$job"}[$__rate_interval])))'
        " / on (job) group_left b offset 5m or absent(c) and 1e3 > bool d"
    )
    assert metric_names(expr) == {"a_bucket", "b", "c", "d"}
    assert metric_names("label_values(newfuse_pods_managed, job)") == {"newfuse_pods_managed"}


def test_the_alerts_are_complete(rendered: list[dict[str, Any]]) -> None:
    rules = {r["alert"]: r for r in _rules(rendered)}
    assert {name: r["labels"]["severity"] for name, r in rules.items()} == ALERTS
    for name, rule in rules.items():
        annotations = rule["annotations"]
        assert {"summary", "description", "runbook_url"} <= annotations.keys(), name
        assert annotations["runbook_url"].endswith(f"#{name.lower()}")
        assert "Runbook:" in annotations["description"], name
        assert 'job="nf-newfuse-operator-metrics"' in rule["expr"], name
    assert rules["NewFuseOperatorDown"]["for"] == "5m"
    assert "absent(newfuse_leader" in rules["NewFuseOperatorDown"]["expr"]
    assert rules["NewFuseFleetDegraded"]["for"] == "10m"


def test_the_dashboard_covers_the_operator(rendered: list[dict[str, Any]]) -> None:
    used = {n for e in expressions(rendered).values() for n in metric_names(e)}
    for needed in (
        "newfuse_reconciles_total",
        "newfuse_reconcile_duration_seconds_bucket",
        "newfuse_fleets",
        "newfuse_pods_managed",
        "newfuse_rollout_phase",
        "newfuse_rollout_gate_verdicts_total",
        "newfuse_redis_up",
        "newfuse_dead_letters",
        "newfuse_leader",
    ):
        assert needed in used, needed
    board = dashboard(rendered)
    ids = [p["id"] for p in _panels(board["panels"])]
    assert len(ids) == len(set(ids)), "panel ids are unique"


def test_monitors_select_what_the_chart_and_the_operator_label(
    rendered: list[dict[str, Any]],
) -> None:
    monitor = _one(rendered, "ServiceMonitor")
    [service] = [d for d in rendered if d["kind"] == "Service"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    agents = _one(rendered, "PodMonitor")["spec"]["selector"]["matchLabels"]
    assert agents.items() <= naming.fleet_labels("any").items()
