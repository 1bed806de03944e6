"""The protocol-version gate as tables: spoken majors, majors in use, the hold and its release."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from factories import analyzing, fleet, pod
from fakes import FakeKube, FakeRedis
from newfuse.api.analysis import ProtocolGateSpec
from newfuse.api.rollout import (
    GateSpec,
    GradualStage,
    InitialStage,
    PhasedPolicy,
    RolloutPhase,
    RolloutReason,
    RolloutState,
    Stage,
)
from newfuse.api.status import ConditionType, Reason
from newfuse.api.tasks import Backlog
from newfuse.api.v1alpha1 import NewFuseAgent
from newfuse.core.actions import Controls
from newfuse.core.gates import RevisionStats
from newfuse.core.planner import plan_revisions
from newfuse.core.protocol import ProtocolObservation, hold, in_use, speaks_by_revision
from newfuse.core.rollout import Observation, decide
from newfuse.core.status import StatusInputs, derive_status
from newfuse.observability import PROTOCOL_SEEN
from newfuse.runtime.rollouts import RolloutDriver
from newfuse.wire.keys import FleetKeys
from newfuse.wire.protocol import ages, major_of, majors_text, parse_speaks
from newfuse.wire.state import AgentState, AgentStatus, StateUpdate
from newfuse.wire.usage import A2A_SUBMIT_BUDGETED_LUA, SUBMIT_BUDGETED_LUA

pytestmark = pytest.mark.unit

T0 = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)
SPEC = ProtocolGateSpec()  # the defaults: 300 s of quiet


@pytest.mark.parametrize(
    ("text", "majors"),
    [("1,2", {1, 2}), ("2", {2}), (" 1.x , 2.x ", {1, 2}), ("1,1", {1})],
)
def test_spoken_majors_are_parsed(text: str, majors: set[int]) -> None:
    assert parse_speaks(text) == frozenset(majors)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("3", r"this image does not speak 3\.x \(it speaks 1\.x, 2\.x\)"),
        ("two", r"'two' is not a protocol major"),
        ("1,", r"'' is not a protocol major"),
    ],
)
def test_a_major_the_image_cannot_speak_is_refused_by_name(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_speaks(text)


def test_versions_and_sightings_read_back() -> None:
    assert (major_of("2.7"), major_of("10.0")) == (2, 10)
    assert majors_text({2, 1}) == "1.x, 2.x"
    reply = [10_000, [b"1", "4000", "2", "10500", "junk", "1"]]
    assert ages(reply) == {1: 6.0, 2: 0.0}, "a stamp ahead of the clock is 0 s old, never less"
    assert FleetKeys("ns", "f").protocol in FleetKeys("ns", "f").all_keys()


def test_every_submission_script_stamps_the_major_with_redis_time() -> None:
    assert "redis.call('ZADD', KEYS[5], 'GT'" in SUBMIT_BUDGETED_LUA
    assert "ARGV[3]" in SUBMIT_BUDGETED_LUA
    assert "redis.call('ZADD', KEYS[8], 'GT'" in A2A_SUBMIT_BUDGETED_LUA
    assert "ARGV[6]" in A2A_SUBMIT_BUDGETED_LUA


def _update(agent: str, revision: str, speaks: list[int], *, active: bool = True) -> StateUpdate:
    status = AgentStatus.ACTIVE if active else AgentStatus.INACTIVE
    state = AgentState(id=agent, status=status, revision=revision, speaks=speaks)
    return StateUpdate(agent_id=agent, state=state, version=1, timestamp=T0)


def test_a_revision_speaks_what_all_its_active_agents_speak() -> None:
    updates = [
        _update("a", "old", [1, 2]),
        _update("b", "old", []),  # an image from before `speaks`: 1.x only
        _update("c", "new", [2]),
        _update("d", "new", [1, 2], active=False),  # draining: takes nothing
        _update("e", "new", [2, 1]),
    ]
    assert speaks_by_revision(updates) == {"old": frozenset({1}), "new": frozenset({2})}


@pytest.mark.parametrize(
    ("seen", "waiting", "used"),
    [
        ({1: 10.0, 2: 1.0}, None, {1, 2}),
        ({1: 299.0}, None, {1}),
        ({1: 300.0}, None, set()),  # quiet for exactly quietSeconds: no longer in use
        ({1: 900.0}, 600.0, set()),  # every waiting task was submitted after the last 1.x
        ({1: 900.0}, 900.0, {1}),  # the oldest waiting task may be that 1.x task
        ({1: 3600.0}, 7200.0, {1}),  # a backlog of hours keeps an old sighting in use
        ({}, 7200.0, set()),
    ],
)
def test_a_major_is_in_use_while_recently_seen_or_possibly_still_waiting(
    seen: dict[int, float], waiting: float | None, used: set[int]
) -> None:
    obs = ProtocolObservation(seen=seen, oldest_waiting_seconds=waiting)
    assert set(in_use(SPEC, obs)) == used


@pytest.mark.parametrize(
    ("obs", "held"),
    [
        (None, None),
        (ProtocolObservation(seen={1: 5.0, 2: 5.0}, speaks={"new": frozenset({1, 2})}), None),
        (ProtocolObservation(seen={2: 5.0}, speaks={"new": frozenset({2})}), None),
        (ProtocolObservation(seen={1: 400.0}, speaks={"new": frozenset({2})}), None),
        (
            ProtocolObservation(seen={1: 5.0, 2: 5.0}, speaks={"new": frozenset({2})}),
            "live traffic still uses protocol 1.x, which canary revision new does not speak "
            "(it speaks 2.x); stage 3 waits until no such task is seen for 300s",
        ),
        (
            ProtocolObservation(seen={1: 5.0}),
            "live traffic still uses protocol 1.x, which canary revision new does not speak "
            "(it speaks nothing reported); stage 3 waits until no such task is seen for 300s",
        ),
        (
            ProtocolObservation(problem="Redis unreachable: timeout"),
            "protocol versions in use are unknown (Redis unreachable: timeout): stage 3 waits",
        ),
    ],
    ids=["not observed", "speaks all", "speaks the one used", "quiet", "1.x", "no report", "down"],
)
def test_the_hold_names_the_majors_the_canary_lacks(
    obs: ProtocolObservation | None, held: str | None
) -> None:
    assert hold(SPEC, obs, "new") == held


# -- the rollout it holds ------------------------------------------------------------------------

POLICY = PhasedPolicy(
    initial=InitialStage(soak_seconds=60, gate=GateSpec(min_tasks=10)),
    gradual=GradualStage(interval_seconds=60, gate=GateSpec(min_tasks=10)),
)
SPEAKS = {"old": frozenset({1, 2}), "new": frozenset({2})}
IN_USE = ProtocolObservation(seen={1: 3.0, 2: 1.0}, speaks=SPEAKS)
QUIET = ProtocolObservation(seen={1: 301.0, 2: 1.0}, speaks=SPEAKS)


def state(replicas_on_canary: int = 1) -> RolloutState:
    return analyzing(T0, canary_agents=replicas_on_canary)


def observe(
    protocol: ProtocolObservation, replicas: int = 2, controls: Controls | None = None
) -> Observation:
    return Observation(
        replicas=replicas,
        update_revision="new",
        current_revision="old",
        ready={"old": max(replicas - 1, 1), "new": 1},
        stats={"new": RevisionStats(completed=50), "old": RevisionStats(completed=500)},
        controls=controls or Controls(),
        protocol=protocol,
    )


def test_stage_3_holds_while_1x_traffic_is_live_and_proceeds_once_it_stops() -> None:
    now = T0 + dt.timedelta(seconds=61)
    held = decide(POLICY, observe(IN_USE), state(), now)
    assert held.state is not None
    assert held.state.phase is RolloutPhase.ANALYZING
    assert held.state.stage is Stage.INITIAL, "no step towards stage 3"
    assert held.state.held is not None
    assert "protocol 1.x" in held.state.held
    assert [h.reason for h in held.happened] == [RolloutReason.PROTOCOL_HELD]
    assert held.desired == {"old": 1, "new": 1}, "the 1.x speaker stays"
    again = decide(POLICY, observe(IN_USE), held.state, now + dt.timedelta(seconds=5))
    assert again.happened == (), "the hold is recorded once, not every round"
    released = decide(POLICY, observe(QUIET), again.state, now + dt.timedelta(seconds=300))
    assert released.state is not None
    assert released.state.stage is Stage.FULL
    assert released.state.held is None
    reasons = [h.reason for h in released.happened]
    assert reasons == [RolloutReason.GATE_PASSED, RolloutReason.STEP_STARTED]


def test_steps_short_of_stage_3_are_not_held() -> None:
    decision = decide(POLICY, observe(IN_USE, replicas=4), state(), T0 + dt.timedelta(seconds=61))
    assert decision.state is not None
    assert (decision.state.stage, decision.state.held) == (Stage.GRADUAL, None)


def test_a_single_agent_fleet_keeps_its_1x_speaker_through_stage_1() -> None:
    obs = observe(IN_USE, replicas=1)
    decision = decide(POLICY, obs, state(), T0 + dt.timedelta(seconds=10))
    assert decision.desired == {"old": 1, "new": 1}
    quiet = decide(POLICY, observe(QUIET, replicas=1), state(), T0 + dt.timedelta(seconds=10))
    assert quiet.desired == {"old": 0, "new": 1}


def test_promote_is_held_too_but_a_full_promote_overrides_the_gate() -> None:
    now = T0 + dt.timedelta(seconds=10)
    promoted = decide(POLICY, observe(IN_USE, controls=Controls(promote=True)), state(), now)
    assert promoted.state is not None
    assert promoted.state.held is not None
    full = decide(POLICY, observe(IN_USE, controls=Controls(promote_full=True)), state(), now)
    assert full.state is not None
    assert (full.state.stage, full.state.held) == (Stage.FULL, None)


def test_the_progressing_condition_names_the_held_majors() -> None:
    why = hold(SPEC, IN_USE, "new")
    assert why is not None
    rollout = state().model_copy(update={"held": why})
    pods = [pod(0, "old"), pod(0, "new")]
    status = derive_status(
        StatusInputs(
            fleet(replicas=2),
            "new",
            pods,
            plan_revisions({"new": 2}, pods),
            True,
            None,
            None,
            T0,
            rollout=rollout,
            target_revision="new",
        )
    )
    [progressing] = [c for c in status.conditions if c.type == ConditionType.PROGRESSING]
    assert progressing.reason == Reason.PROTOCOL_VERSIONS_IN_USE
    assert "protocol 1.x" in progressing.message


def test_a_released_hold_is_cleared_even_while_the_gate_has_no_verdict() -> None:
    held = analyzing(T0).model_copy(update={"held": "live traffic still uses protocol 1.x"})
    quiet = Observation(
        replicas=2,
        update_revision="new",
        current_revision="old",
        ready={"old": 1, "new": 1},
        stats={"new": RevisionStats(completed=1)},  # too few tasks: inconclusive
        protocol=QUIET,
    )
    decision = decide(POLICY, quiet, held, T0 + dt.timedelta(seconds=61))
    assert decision.state is not None
    assert decision.state.phase is RolloutPhase.ANALYZING
    assert decision.state.held is None


def _in_rollout(backlog: Backlog | None = None) -> NewFuseAgent:
    plain = fleet(rollout={"strategy": "Phased"})
    status = plain.status.model_copy(update={"rollout": analyzing(T0), "backlog": backlog})
    return plain.model_copy(update={"status": status})


def test_the_runtime_reads_the_sightings_only_while_a_rollout_is_in_flight() -> None:
    redis = FakeRedis()
    redis.protocol[FleetKeys("ns", "demo")] = {1: 12.0, 2: 0.5}
    driver = RolloutDriver(FakeKube(), redis)
    waiting = Backlog(oldest_waiting_seconds=40)
    seen = asyncio.run(driver.protocol_of(_in_rollout(waiting)))
    assert seen == ProtocolObservation(seen={1: 12.0, 2: 0.5}, oldest_waiting_seconds=40)
    gauge = PROTOCOL_SEEN.get("ns", "demo", "1")
    assert gauge == 12.0
    assert asyncio.run(driver.protocol_of(fleet())) is None, "no rollout: nothing to read"
    redis.down = True
    unknown = asyncio.run(driver.protocol_of(_in_rollout()))
    assert unknown is not None
    assert unknown.problem is not None
    assert hold(SPEC, unknown, "new") is not None, "a gate that cannot see holds"
