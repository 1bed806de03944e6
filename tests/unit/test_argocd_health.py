"""The Argo CD health check for NewFuseAgent, run by a real Lua interpreter (Lua 5.1 and 5.4).

Against the sample fleets in argocd_samples/ (whose spec and status must validate against the
API models), and against statuses produced by the operator's own derive_status, so a renamed
status field or a changed enum breaks them.
"""

from __future__ import annotations

from typing import Any

import pytest

from argocd_lua import HEALTH, SAMPLES, load, run_lua
from factories import NOW, fleet, pod
from newfuse.api.rollout import RolloutPhase, RolloutState, Stage
from newfuse.api.v1alpha1 import NewFuseAgent
from newfuse.core.planner import plan
from newfuse.core.pods import ObservedPod, PodHealth
from newfuse.core.status import StatusInputs, derive_status

HEALTH_CASES = [
    ("healthy", "Healthy", "3/3 agents ready; revision 7c9f2d41b0"),
    ("healthy_spec_reverted", "Healthy", "2/2 agents ready"),
    ("progressing_no_status", "Progressing", "Waiting for the operator to observe the fleet"),
    (
        "progressing_new_generation",
        "Progressing",
        "generation 4 (status is of generation 3)",
    ),
    (
        "progressing_rollout",
        "Progressing",
        "Rollout Analyzing at Initial step 1: 1/3 agents",
    ),
    (
        "progressing_protocol_held",
        "Progressing",
        "1/2 agents on 5c9f7d2a1b (live traffic still uses protocol 1.x",
    ),
    ("progressing_scaling_up", "Progressing", "3/5 agents ready"),
    ("progressing_pending", "Progressing", "0/2 agents ready"),
    ("progressing_counts_behind", "Progressing", "Waiting for agents: 2/3 ready"),
    ("degraded_crash_looping", "Degraded", "PodsCrashLooping: failing pods: summarizers-7c9f"),
    ("degraded_rolled_back", "Degraded", "RolledBack: gate failed at Initial step 1"),
    ("degraded_golden_gate", "Degraded", "RolledBack: gate failed at Initial step 1: golden pass"),
    ("degraded_aborted", "Degraded", "Rollout Aborted: aborted: every agent back on stable"),
    ("degraded_rollout_stuck", "Degraded", "Rollout Degraded: only 0/1 canary agents Ready"),
    ("degraded_while_paused", "Degraded", "PodsFailed: failing pods"),
    ("suspended_rollout_paused", "Suspended", "Rollout paused at Initial step 1: 1/3 agents on"),
    ("suspended_fleet_paused", "Suspended", "spec.paused is true"),
]


def test_every_sample_has_a_health_case() -> None:
    assert sorted(p.stem for p in SAMPLES.glob("*.yaml")) == sorted(c[0] for c in HEALTH_CASES)


@pytest.mark.parametrize(
    ("sample", "status", "message"), HEALTH_CASES, ids=[c[0] for c in HEALTH_CASES]
)
def test_health(sample: str, status: str, message: str, lua_version: str) -> None:
    health = run_lua(HEALTH, load(sample), lua_version)
    assert health == {"status": status, "message": health["message"]}
    assert message in health["message"]


@pytest.mark.parametrize("sample", [c[0] for c in HEALTH_CASES])
def test_samples_are_valid_fleets_with_the_same_health_after_a_round_trip(sample: str) -> None:
    """Samples cannot drift from the API (unknown fields are refused), nor depend on omissions."""
    body = load(sample)
    parsed = NewFuseAgent.model_validate(body)
    dumped = parsed.model_dump(by_alias=True, mode="json")
    assert run_lua(HEALTH, dumped, "lua51") == run_lua(HEALTH, body, "lua51")


def test_health_reads_numbers_given_as_strings(lua_version: str) -> None:
    """Argo CD may pass numbers as json.Number strings: "3" < "10" must not decide anything."""
    body = load("progressing_new_generation")
    body["metadata"]["generation"] = "10"
    body["status"]["observedGeneration"] = "9"
    assert run_lua(HEALTH, body, lua_version)["status"] == "Progressing"
    body["status"]["observedGeneration"] = "10"
    body["status"]["readyReplicas"] = "3"
    assert run_lua(HEALTH, body, lua_version)["status"] == "Healthy"


@pytest.mark.parametrize(
    ("strategy", "expected"), [("Phased", "Suspended"), ("Replace", "Healthy")]
)
def test_a_paused_rollout_spec_suspends_only_phased_fleets(
    strategy: str, expected: str, lua_version: str
) -> None:
    """spec.rollout.paused holds the next phased rollout too; Replace ignores it."""
    body = load("healthy")
    body["spec"]["rollout"] = {"strategy": strategy, "paused": True}
    assert run_lua(HEALTH, body, lua_version)["status"] == expected


# -- health of statuses the operator derives -----------------------------------------------------


def _rollout(phase: RolloutPhase, canary_agents: int, message: str) -> RolloutState:
    return RolloutState(
        phase=phase,
        stage=Stage.INITIAL,
        step=1,
        stable_revision="rev1",
        canary_revision="rev2",
        canary_agents=canary_agents,
        step_started_at=NOW,
        message=message,
    )


def _operator_view(
    pods: list[ObservedPod],
    revision: str = "rev1",
    state: RolloutState | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A fleet with the status derive_status writes, dumped as the operator patches it."""
    base = fleet(generation=3, **spec)
    status = derive_status(
        StatusInputs(
            fleet=base,
            update_revision=revision,
            pods=pods,
            plan=plan(base.spec.replicas, revision, pods, paused=base.spec.paused),
            acted_on_generation=True,
            redis=None,
            metrics=None,
            now=NOW,
            rollout=state,
            target_revision="rev1" if state is not None else None,
        )
    )
    return base.model_copy(update={"status": status}).model_dump(by_alias=True, mode="json")


OPERATOR_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "converged": (_operator_view([pod(0), pod(1), pod(2)]), "Healthy"),
    "crash looping": (
        _operator_view([pod(0), pod(1), pod(2, health=PodHealth.CRASH_LOOPING)]),
        "Degraded",
    ),
    "rolled back by a failed gate": (
        _operator_view(
            [pod(0), pod(1), pod(2)],
            revision="rev2",
            state=_rollout(RolloutPhase.ROLLED_BACK, 0, "gate failed at Initial step 1"),
        ),
        "Degraded",
    ),
    "rollout stuck": (
        _operator_view(
            [pod(0), pod(1), pod(2), pod(3, revision="rev2", health=PodHealth.STARTING)],
            revision="rev2",
            state=_rollout(RolloutPhase.DEGRADED, 1, "only 0/1 canary agents Ready"),
        ),
        "Degraded",
    ),
    "rollout analyzing": (
        _operator_view(
            [pod(0), pod(1), pod(2), pod(3, revision="rev2")],
            revision="rev2",
            state=_rollout(RolloutPhase.ANALYZING, 1, "soaking"),
        ),
        "Progressing",
    ),
    "scaling up": (_operator_view([pod(0)]), "Progressing"),
    "rollout paused": (
        _operator_view(
            [pod(0), pod(1), pod(2), pod(3, revision="rev2")],
            revision="rev2",
            state=_rollout(RolloutPhase.PAUSED, 1, "soaking"),
            rollout={"paused": True},
        ),
        "Suspended",
    ),
}


@pytest.mark.parametrize(("case", "expected"), [(k, v[1]) for k, v in OPERATOR_CASES.items()])
def test_health_of_operator_statuses(case: str, expected: str, lua_version: str) -> None:
    """Statuses built by the real model and derive_status, not by hand."""
    assert run_lua(HEALTH, OPERATOR_CASES[case][0], lua_version)["status"] == expected
