"""The README's metrics tables and the metrics the code registers cannot drift apart.

Every module of `newfuse` and `newfuse_agent` is imported, so a metric added anywhere (not only in
newfuse.observability and newfuse_agent.metrics) is seen. Each `newfuse_*` metric family in the
default Prometheus registry must then have exactly one row in the right table of README.md's
"Metrics" section (operator metrics for `newfuse`, agent metrics for `newfuse_agent`), with its
type and labels; and every row must name a registered metric.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

import newfuse
import newfuse_agent
from newfuse.fleetgauges import FleetGauge

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PACKAGES = {"operator": newfuse, "agent": newfuse_agent}
TABLE_HEADINGS = {"operator": "### Operator metrics", "agent": "### Agent metrics"}
# Documented metrics whose code is not merged yet: listed in the README ahead of the code. Empty
# now: `newfuse_leader` and `newfuse_dead_letters` are registered in newfuse.observability.
# Remove a name from here as soon as its metric is registered; the test fails if one lingers.
PENDING: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Row:
    """One metric as the README documents it, or as the code registers it."""

    table: str  # "operator" or "agent"
    name: str  # the family name: a counter's without `_total`
    type: str
    labels: tuple[str, ...]


def _import_all(package: ModuleType) -> list[ModuleType]:
    modules = [package]
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        modules.append(importlib.import_module(info.name))
    return modules


def registered() -> dict[str, Row]:
    """Every `newfuse_*` metric family in the default registry, with the package defining it."""
    found: dict[str, Row] = {}
    for table, package in PACKAGES.items():
        for module in _import_all(package):
            for value in vars(module).values():
                if isinstance(value, MetricWrapperBase) and value._name.startswith("newfuse_"):
                    # prometheus_client keeps the label names only on the wrapper (a family with
                    # no child yet has no samples to read them from), hence the private fields.
                    found[value._name] = Row(
                        table, value._name, str(value._type), tuple(value._labelnames)
                    )
                elif isinstance(value, FleetGauge):  # per-fleet gauges (newfuse.fleetgauges)
                    found[value.name] = Row(table, value.name, "gauge", value.labelnames)
    in_registry = {m.name: m.type for m in REGISTRY.collect() if m.name.startswith("newfuse_")}
    stray = sorted(set(in_registry) - set(found))
    assert not stray, (
        f"registered but not a module-level metric of newfuse or newfuse_agent: {stray} "
        "(the docs test cannot tell which table they belong to)"
    )
    for name, row in found.items():
        assert in_registry.get(name) == row.type, f"{name}: default registry has {in_registry}"
    return found


def _cell_names(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def documented(readme: str) -> tuple[dict[str, Row], list[str]]:
    """The rows of the two tables of the "Metrics" section, and what is wrong with their form."""
    section = re.search(r"^## Metrics\n(.*?)(?=^## |\Z)", readme, re.MULTILINE | re.DOTALL)
    assert section, 'README.md has no "## Metrics" section'
    rows: dict[str, Row] = {}
    problems: list[str] = []
    for table, heading in TABLE_HEADINGS.items():
        part = re.search(
            rf"^{re.escape(heading)}\n(.*?)(?=^#|\Z)", section.group(1), re.MULTILINE | re.DOTALL
        )
        if part is None:
            problems.append(f'the Metrics section has no "{heading}" table')
            continue
        lines = [ln for ln in part.group(1).splitlines() if ln.startswith("|")]
        header = [c.strip() for c in lines[0].strip("|").split("|")] if lines else []
        if header != ["name", "type", "labels", "meaning"]:
            problems.append(f"{heading}: the columns must be name | type | labels | meaning")
            continue
        for line in lines[2:]:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            names = _cell_names(cells[0])
            if len(cells) != 4 or len(names) != 1 or not cells[3]:
                problems.append(f"{heading}: one metric per row, with a meaning: {line}")
                continue
            name, kind = names[0], cells[1]
            family = name
            if kind == "counter":
                if not name.endswith("_total"):
                    problems.append(f"{name}: a counter is exposed (and listed) with `_total`")
                family = name.removesuffix("_total")
            if family in rows:
                problems.append(f"{name}: listed twice")
            rows[family] = Row(table, family, kind, tuple(_cell_names(cells[2])))
    return rows, problems


def compare(docs: dict[str, Row], code: dict[str, Row], pending: frozenset[str]) -> list[str]:
    """Every difference between the documented and the registered metrics, as readable lines."""
    problems = []
    for name in sorted(set(code) - set(docs)):
        problems.append(f"{name} ({code[name].table}) is registered but not in README's tables")
    for name in sorted(set(docs) - set(code) - pending):
        problems.append(f"{name} is in README's tables but no code registers it")
    for name in sorted(pending & set(code)):
        problems.append(f"{name} is registered now: remove it from PENDING")
    for name in sorted(set(docs) & set(code)):
        doc, reg = docs[name], code[name]
        if doc.table != reg.table:
            problems.append(f"{name}: listed under {doc.table} metrics, defined by the {reg.table}")
        if doc.type != reg.type:
            problems.append(f"{name}: documented as a {doc.type}, registered as a {reg.type}")
        if doc.labels != reg.labels:
            problems.append(f"{name}: documented labels {doc.labels}, registered {reg.labels}")
    return problems


def test_the_readme_documents_exactly_the_registered_metrics() -> None:
    docs, form = documented(README.read_text())
    code = registered()
    assert {r.table for r in code.values()} == {"operator", "agent"}, "found no metrics"
    assert not form + compare(docs, code, PENDING), "\n".join(form + compare(docs, code, PENDING))


def test_pending_metrics_are_documented() -> None:
    docs, _ = documented(README.read_text())
    assert set(docs) >= PENDING, f"PENDING but not in the README: {sorted(PENDING - set(docs))}"


# The checker itself: each kind of drift is reported (so a green run above means something).

TABLES = """## Metrics

### Operator metrics

| name | type | labels | meaning |
| --- | --- | --- | --- |
| `newfuse_things_total` | counter | `kind`, `reason` | things |
| `newfuse_up` | gauge | | up |

### Agent metrics

| name | type | labels | meaning |
| --- | --- | --- | --- |
| `newfuse_agent_seconds` | histogram | | time |

## Next section
| `newfuse_not_a_metric_row` | gauge | | outside the section |
"""
CODE = {
    "newfuse_things": Row("operator", "newfuse_things", "counter", ("kind", "reason")),
    "newfuse_up": Row("operator", "newfuse_up", "gauge", ()),
    "newfuse_agent_seconds": Row("agent", "newfuse_agent_seconds", "histogram", ()),
}


def test_the_parser_reads_both_tables_and_stops_at_the_next_section() -> None:
    docs, form = documented(TABLES)
    assert form == []
    assert docs == CODE


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("| `newfuse_up` | gauge | | up |\n", ""), "newfuse_up (operator) is registered but not"),
        (("`newfuse_up` | gauge", "`newfuse_up` | counter"), "a counter is exposed"),
        (("`newfuse_up` | gauge", "`newfuse_up` | histogram"), "documented as a histogram"),
        (("`kind`, `reason`", "`reason`, `kind`"), "documented labels ('reason', 'kind')"),
        (("`kind`, `reason`", "`kind`"), "documented labels ('kind',)"),
        (("newfuse_agent_seconds", "newfuse_agent_gone"), "newfuse_agent_gone is in README's"),
        (("### Agent metrics", "### Agents"), 'no "### Agent metrics" table'),
        (("| things |", "| |"), "one metric per row, with a meaning"),
    ],
)
def test_each_kind_of_drift_is_reported(edit: tuple[str, str], expected: str) -> None:
    old, new = edit
    assert old in TABLES
    docs, form = documented(TABLES.replace(old, new, 1))
    problems = form + compare(docs, CODE, frozenset())
    assert any(expected in p for p in problems), problems


def test_a_metric_in_the_wrong_table_and_stale_pending_entries_are_reported() -> None:
    moved = TABLES.replace("| `newfuse_up` | gauge | | up |\n", "").replace(
        "| `newfuse_agent_seconds` |",
        "| `newfuse_up` | gauge | | up |\n| `newfuse_agent_seconds` |",
    )
    docs, _ = documented(moved)
    problems = compare(docs, CODE, frozenset({"newfuse_up"}))
    assert "newfuse_up: listed under agent metrics, defined by the operator" in problems
    assert "newfuse_up is registered now: remove it from PENDING" in problems
