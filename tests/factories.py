"""Builders for test objects: fleets, pod bodies and rollouts, with only what a test needs."""

from __future__ import annotations

import datetime as dt
from typing import Any

from newfuse.api.rollout import RolloutPhase, RolloutState
from newfuse.api.v1alpha1 import NewFuseAgent
from newfuse.core import naming
from newfuse.core.pods import ObservedPod, PodHealth

NOW = dt.datetime(2026, 11, 21, 12, 0, 0, tzinfo=dt.UTC)


def fleet(
    name: str = "demo", namespace: str = "ns", generation: int = 1, **spec: Any
) -> NewFuseAgent:
    """A parsed fleet with sensible defaults."""
    body: dict[str, Any] = {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": "uid-1",
            "generation": generation,
        },
        "spec": {"image": "agent:1", "replicas": 3, **spec},
    }
    return NewFuseAgent.model_validate(body)


def pod(
    ordinal: int,
    revision: str = "rev1",
    health: PodHealth = PodHealth.READY,
    terminating: bool = False,
    fleet_name: str = "demo",
    last_exit: str = "",
) -> ObservedPod:
    """An observed pod."""
    return ObservedPod(
        name=naming.pod_name(fleet_name, revision, ordinal),
        revision=revision,
        ordinal=ordinal,
        health=health,
        terminating=terminating,
        last_exit=last_exit,
    )


def pod_body(
    name: str = "demo-rev1-0",
    phase: str = "Running",
    ready: bool = True,
    waiting_reason: str | None = None,
    deleting: bool = False,
    last_terminated: dict[str, Any] | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A pod as the API server returns it."""
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    if waiting_reason:
        status["containerStatuses"] = [
            {"name": "agent", "state": {"waiting": {"reason": waiting_reason}}}
        ]
        if last_terminated:
            status["containerStatuses"][0]["lastState"] = {"terminated": last_terminated}
    meta: dict[str, Any] = {
        "name": name,
        "labels": labels
        if labels is not None
        else {naming.LABEL_REVISION: "rev1", naming.LABEL_ORDINAL: "0"},
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-11-21T12:00:00Z"
    return {"metadata": meta, "status": status}


def analyzing(at: dt.datetime | None = None, **fields: Any) -> RolloutState:
    """A rollout judging its canary: stable "old", one agent on canary "new", step begun ``at``."""
    values: dict[str, Any] = {"canary_agents": 1, **fields}
    return RolloutState(
        phase=RolloutPhase.ANALYZING,
        stable_revision="old",
        canary_revision="new",
        step_started_at=at or dt.datetime.now(dt.UTC),
        **values,
    )
