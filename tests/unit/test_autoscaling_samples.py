"""The autoscaling samples name what the code names: the fleet's task streams, the agents'
consumer group, the backlog gauge and its labels, and a scale target that is a NewFuseAgent.

A renamed key, group or metric would leave KEDA or the HPA reading nothing, and the fleet never
scaling; this fails first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from newfuse import observability
from newfuse.api.v1alpha1 import API_VERSION, KIND
from newfuse.wire.keys import FleetKeys
from newfuse.wire.tasks import CONSUMER_GROUP, PRIORITY_ORDER

pytestmark = pytest.mark.unit

SAMPLES = Path(__file__).resolve().parents[2] / "crds" / "samples" / "autoscaling"


def _docs(name: str) -> list[dict[str, Any]]:
    return list(yaml.safe_load_all((SAMPLES / name).read_text()))


def _target(doc: dict[str, Any]) -> FleetKeys:
    ref = doc["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"]) == (API_VERSION, KIND)
    return FleetKeys(doc["metadata"]["namespace"], ref["name"])


def test_the_keda_sample_reads_every_priority_streams_lag_of_the_agents_group() -> None:
    [scaled] = [d for d in _docs("keda-scaledobject.yaml") if d["kind"] == "ScaledObject"]
    keys = _target(scaled)
    triggers = scaled["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"redis-streams"}
    assert [t["metadata"]["stream"] for t in triggers] == [keys.tasks(p) for p in PRIORITY_ORDER]
    assert {t["metadata"]["consumerGroup"] for t in triggers} == {CONSUMER_GROUP}
    assert all("lagCount" in t["metadata"] for t in triggers), "lag: what still waits"


def test_the_hpa_sample_reads_the_backlog_gauge_by_its_labels() -> None:
    [hpa] = _docs("hpa-backlog.yaml")
    keys = _target(hpa)
    [metric] = hpa["spec"]["metrics"]
    external = metric["external"]["metric"]
    assert external["name"] == observability.FLEET_BACKLOG.name
    assert external["selector"]["matchLabels"] == {"fleet": keys.fleet}
    assert {"namespace", "fleet"} <= set(observability.FLEET_BACKLOG.labelnames)
