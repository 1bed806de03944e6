"""Per-fleet gauges: what a scrape shows, what a deleted fleet leaves (nothing), what they cost.

The HPA sample and dashboards select these series by name and labels, so the exposition text is
what is checked, as Prometheus would read it.
"""

from __future__ import annotations

import threading
import tracemalloc
import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from newfuse import observability as obs
from newfuse.fleetgauges import FLEET_GAUGES, FleetGauges
from newfuse.metricsserver import start_metrics_server

pytestmark = pytest.mark.unit


def _scrape(store: FleetGauges) -> str:
    registry = CollectorRegistry()
    registry.register(store)
    return generate_latest(registry).decode()


def test_a_scrape_shows_each_fleets_series_with_its_labels() -> None:
    store = FleetGauges()
    backlog = store.gauge("t_backlog", "Waiting tasks.", "priority")
    dead = store.gauge("t_dead", "Dead letters.")
    backlog.set("team-a", "demo", 7, "high")
    backlog.set("team-a", "demo", 0, "low")
    dead.set("team-a", "demo", 2)
    dead.set("team-b", "other", 1)
    text = _scrape(store)
    assert 't_backlog{fleet="demo",namespace="team-a",priority="high"} 7.0' in text
    assert 't_backlog{fleet="demo",namespace="team-a",priority="low"} 0.0' in text
    assert 't_dead{fleet="demo",namespace="team-a"} 2.0' in text
    assert 't_dead{fleet="other",namespace="team-b"} 1.0' in text
    assert "# TYPE t_backlog gauge" in text
    assert backlog.labelnames == ("namespace", "fleet", "priority")
    assert backlog.get("team-a", "demo", "high") == 7
    backlog.set("team-a", "demo", 3, "high")  # set again: replaced, not added
    assert _scrape(store).count('priority="high"') == 1


def test_a_forgotten_fleet_leaves_no_series_behind() -> None:
    store = FleetGauges()
    spend, dead = store.gauge("t_spend", "Spend.", "unit"), store.gauge("t_dead2", "Dead.")
    spend.set("ns", "gone", 1.5, "cost")
    dead.set("ns", "gone", 4)
    dead.set("ns", "kept", 1)
    store.forget("ns", "gone")
    text = _scrape(store)
    assert 'fleet="gone"' not in text
    assert 't_dead2{fleet="kept",namespace="ns"} 1.0' in text
    assert spend.get("ns", "gone", "cost") is None
    assert "# TYPE t_spend gauge" in text, "an empty gauge is still declared"


def test_the_operators_gauges_are_in_the_default_registry() -> None:
    obs.FLEET_BACKLOG.set("ns-reg", "demo", 5, "normal")
    labels = {"namespace": "ns-reg", "fleet": "demo", "priority": "normal"}
    assert REGISTRY.get_sample_value("newfuse_fleet_backlog", labels) == 5
    FLEET_GAUGES.forget("ns-reg", "demo")
    assert REGISTRY.get_sample_value("newfuse_fleet_backlog", labels) is None


def test_a_scrape_while_fleets_change_never_fails() -> None:
    store = FleetGauges()
    gauge = store.gauge("t_busy", "Busy.", "priority")
    stop = threading.Event()

    def churn() -> None:
        index = 0
        while not stop.is_set():
            gauge.set("ns", f"f{index % 5000}", index, "high")
            store.forget("ns", f"f{(index + 2500) % 5000}")
            index += 1

    writer = threading.Thread(target=churn)
    writer.start()
    try:
        for _ in range(30):
            _scrape(store)  # "dictionary changed size during iteration" without the lock
    finally:
        stop.set()
        writer.join()


def test_ten_thousand_fleets_cost_a_fraction_of_labelled_gauges() -> None:
    store = FleetGauges()
    gauges = [store.gauge(f"t_cost{i}", "Cost.", "priority") for i in range(3)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for index in range(10_000):
            for gauge in gauges:
                for priority in ("high", "normal", "low"):
                    gauge.set("bench-fleets", f"f{index}", float(index), priority)
        per_series = (tracemalloc.get_traced_memory()[0] - before) / 90_000
    finally:
        tracemalloc.stop()
    # prometheus_client's labelled children measured 754 bytes a series.
    assert per_series < 150, f"{per_series:.0f} bytes a series"


def test_the_streamed_exposition_is_the_registrys_text() -> None:
    store = FleetGauges()
    backlog = store.gauge("t_stream", 'Waiting "tasks" \\ by priority.', "priority")
    dead = store.gauge("t_stream_dead", "Dead letters.")
    for index in range(1_234):  # more than one chunk
        backlog.set("team-a", f"f{index}", index, "high")
        backlog.set("team-a", f"f{index}", 0.5, "low")
        dead.set("team-b", f"f{index}", 1e21)
    assert b"".join(store.exposition()).decode() == _scrape(store)


def test_a_streamed_scrape_of_ten_thousand_fleets_holds_a_fraction_of_a_rendered_one() -> None:
    store = FleetGauges()
    gauges = [store.gauge(f"t_peak{i}", "Peak.", "priority") for i in range(3)]
    for index in range(10_000):
        for gauge in gauges:
            for priority in ("high", "normal", "low"):
                gauge.set("bench-fleets", f"fleet-{index}", float(index), priority)

    def peak(scrape: Callable[[], object]) -> int:
        tracemalloc.start()
        try:
            scrape()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    rendered = peak(lambda: _scrape(store))
    streamed = peak(lambda: sum(len(chunk) for chunk in store.exposition()))
    assert streamed * 10 < rendered, f"streamed {streamed:,} B, rendered {rendered:,} B"


def test_the_operators_metrics_endpoint_serves_each_series_once() -> None:
    obs.FLEET_BACKLOG.set("ns-http", "demo", 4, "normal")
    server = start_metrics_server(0, "127.0.0.1")
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
    finally:
        server.shutdown()
        FLEET_GAUGES.forget("ns-http", "demo")
    series = 'newfuse_fleet_backlog{fleet="demo",namespace="ns-http",priority="normal"} 4.0'
    assert text.count(series) == 1
    assert text.count("# TYPE newfuse_fleet_backlog gauge") == 1
    assert "# TYPE newfuse_leader gauge" in text, "the registry's other metrics are served too"
    families = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(families) == len(set(families)), "no family is declared twice"
