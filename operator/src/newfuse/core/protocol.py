"""The protocol-version gate: stage 3 may not retire the last agents that speak a major in use.

A canary built on a new protocol major may drop an old one. Until stage 3 its agents pass tasks of
the old major on to the stable agents (newfuse.wire.protocol); stage 3 would retire those, leaving
such tasks nobody to run them. So before stage 3 the canary must speak every major that live
traffic still uses, or the rollout holds, with a condition naming the majors, and keeps enough
stable agents to serve them, at any stage.

"In use" is measured, not declared: a major is in use while a task of it was submitted or taken
within `quietSeconds`, or while the backlog's oldest waiting task is older than that sighting (it
may be one of them). Pure: the sightings' ages come from Redis' clock through the runtime.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from newfuse.api.analysis import ProtocolGateSpec
from newfuse.wire.protocol import LEGACY_SPEAKS, majors_text
from newfuse.wire.state import AgentStatus, StateUpdate


@dataclass(frozen=True)
class ProtocolObservation:
    """What the gate sees: when each major was last seen, and what each revision speaks."""

    # Major -> seconds since a task of it was last submitted or taken.
    seen: Mapping[int, float] = field(default_factory=dict)
    # Revision -> the majors every active agent of it speaks (absent: no agent reported).
    speaks: Mapping[str, frozenset[int]] = field(default_factory=dict)
    # How long the backlog's oldest waiting task has waited (None: nothing waits).
    oldest_waiting_seconds: float | None = None
    # Why the sightings could not be read (the gate then holds: it cannot tell).
    problem: str | None = None


def speaks_by_revision(updates: Iterable[StateUpdate]) -> dict[str, frozenset[int]]:
    """The majors every active agent of each revision speaks (an old agent's: 1.x)."""
    found: dict[str, frozenset[int]] = {}
    for update in updates:
        state = update.state
        if state.revision is None or state.status is not AgentStatus.ACTIVE:
            continue
        majors = frozenset(state.speaks) or LEGACY_SPEAKS
        found[state.revision] = found.get(state.revision, majors) & majors
    return found


def in_use(spec: ProtocolGateSpec, obs: ProtocolObservation) -> dict[int, float]:
    """Majors live traffic still uses, with the seconds since each was last seen."""
    waiting = obs.oldest_waiting_seconds
    return {
        major: age
        for major, age in obs.seen.items()
        if age < spec.quiet_seconds or (waiting is not None and waiting >= age)
    }


def hold(spec: ProtocolGateSpec, obs: ProtocolObservation | None, canary: str) -> str | None:
    """Why stage 3 must wait for the ``canary`` revision (None: it may go ahead)."""
    if obs is None:
        return None
    if obs.problem is not None:
        return f"protocol versions in use are unknown ({obs.problem}): stage 3 waits"
    used = in_use(spec, obs)
    spoken = obs.speaks.get(canary, frozenset())
    missing = sorted(set(used) - spoken)
    if not missing:
        return None
    # No ages in the message: it is the hold's identity, recorded once, not each round.
    return (
        f"live traffic still uses protocol {majors_text(missing)}, which canary revision "
        f"{canary} does not speak (it speaks {majors_text(spoken) or 'nothing reported'}); "
        f"stage 3 waits until no such task is seen for {spec.quiet_seconds}s"
    )
