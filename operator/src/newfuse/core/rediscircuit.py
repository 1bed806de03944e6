"""A circuit breaker for the operator's Redis calls: one outage costs one timeout, not one per call.

Every Redis command has a timeout (2 s by default). During an outage, every reconcile of every
fleet would wait that long for each command, and the phased rollout reads Redis before it creates
pods, so pod work would crawl exactly when the operator is needed. Instead, the first failed call
opens the circuit: calls are refused at once (the caller reports Redis as unreachable) for
``hold`` seconds, after which one probe is let through. The probe closes the circuit if Redis
answers and holds it open again if not. Only one probe is in flight at a time, and where a
background prober runs (the controller has one) only it probes, so no reconcile ever waits on a
probe's timeout.

Only failures to reach Redis count (connection refused, timeouts). A command Redis answered with an
error (bad data, a wrong key type) shows that Redis is up.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum


class Admission(StrEnum):
    """What a caller may do now."""

    CALL = "call"  # closed: go ahead
    PROBE = "probe"  # the hold is over: this call is the probe (report how it went)
    REFUSE = "refuse"  # open: do not call Redis


@dataclass(frozen=True)
class Circuit:
    """The breaker's state. Times are monotonic seconds."""

    open_until: float | None = None  # None: closed
    probing: bool = False
    failures: int = 0  # consecutive failed calls and probes
    last_error: str = ""

    @property
    def closed(self) -> bool:
        """True while calls go through."""
        return self.open_until is None


CLOSED = Circuit()


def admit(circuit: Circuit, now: float, *, may_probe: bool = True) -> Admission:
    """Whether a call may go to Redis at ``now``; ``may_probe``: whether it may be the probe."""
    if circuit.open_until is None:
        return Admission.CALL
    if circuit.probing or now < circuit.open_until or not may_probe:
        return Admission.REFUSE
    return Admission.PROBE


def probe_started(circuit: Circuit) -> Circuit:
    """The state once a probe is on its way (further callers are refused until it ends)."""
    return replace(circuit, probing=True)


def failed(circuit: Circuit, now: float, error: str, hold: float) -> Circuit:
    """The state after a call or probe could not reach Redis: open for ``hold`` seconds."""
    return Circuit(
        open_until=now + hold, probing=False, failures=circuit.failures + 1, last_error=error
    )


def succeeded(circuit: Circuit) -> Circuit:
    """The state after Redis answered: closed."""
    return CLOSED


def seconds_to_probe(circuit: Circuit, now: float) -> float | None:
    """How long until a probe is due (0: due now); None while closed or a probe is in flight."""
    if circuit.open_until is None or circuit.probing:
        return None
    return max(0.0, circuit.open_until - now)
