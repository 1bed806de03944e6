"""The model gateway's circuit breaker: consecutive failures open it, one trial half-opens it.

Hand-written rather than the `circuitbreaker` library's: that one lets every concurrent call
through when half-open instead of one trial, hard-wires `time.monotonic` (tests would sleep
through the recovery time), has no hook for state changes (our gauge), keeps a process-global
registry of breakers, reads a recovery time of 0 as "the default of 30 s", and ships no types.
This state machine is small, takes an injectable clock and is unit-tested directly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum


class CircuitState(StrEnum):
    """The circuit breaker's states."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Admission(StrEnum):
    """The circuit breaker's answer to a call that asks to go ahead."""

    REFUSED = "refused"
    ADMITTED = "admitted"
    TRIAL = "trial"


class CircuitBreaker:
    """Consecutive-failure circuit breaker with a single half-open trial.

    CLOSED counts consecutive failures and opens at ``failure_threshold``. OPEN refuses every call
    until ``recovery_seconds`` have passed on ``clock``, then reads as HALF_OPEN (the transition
    happens when the state is next looked at, that is on the next call). HALF_OPEN admits one
    trial call at a time: its success closes the circuit, its failure opens it again for another
    ``recovery_seconds``. Each admitted call reports back once, with the Admission it was given,
    so that only the trial itself can free the trial slot. Not thread-safe; one event loop uses it.
    """

    def __init__(
        self,
        failure_threshold: int,
        recovery_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[CircuitState], None] | None = None,
    ) -> None:
        """Open after ``failure_threshold`` failures in a row; try again after the recovery."""
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        self.failure_threshold = failure_threshold
        self.recovery_seconds = recovery_seconds
        self._clock = clock
        self._on_change = on_change
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False

    @property
    def state(self) -> CircuitState:
        """The current state (OPEN turns HALF_OPEN here once the recovery time has passed)."""
        if (
            self._state is CircuitState.OPEN
            and self._clock() - self._opened_at >= self.recovery_seconds
        ):
            self._set(CircuitState.HALF_OPEN)
        return self._state

    @property
    def consecutive_failures(self) -> int:
        """Failed calls since the last success."""
        return self._failures

    def retry_in(self) -> float:
        """Seconds until an open circuit lets a trial call through (0 when not open)."""
        if self.state is not CircuitState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.recovery_seconds - self._clock())

    def admit(self) -> Admission:
        """May a call go ahead now? In HALF_OPEN the one call let through is the TRIAL."""
        state = self.state
        if state is CircuitState.CLOSED:
            return Admission.ADMITTED
        if state is CircuitState.HALF_OPEN and not self._trial_in_flight:
            self._trial_in_flight = True
            return Admission.TRIAL
        return Admission.REFUSED

    def record_success(self, admission: Admission) -> None:
        """An admitted call succeeded: the gateway works, so close (whichever call it was)."""
        self._end(admission)
        self._failures = 0
        self._set(CircuitState.CLOSED)

    def record_failure(self, admission: Admission) -> None:
        """An admitted call failed."""
        self._end(admission)
        self._failures += 1
        state = self.state
        if state is CircuitState.HALF_OPEN or (
            state is CircuitState.CLOSED and self._failures >= self.failure_threshold
        ):
            # In HALF_OPEN this is the trial, or a call admitted while CLOSED that failed late:
            # either way the gateway still fails.
            self._open()
        # Already OPEN: a call admitted before it opened failed late; the recovery timer stays.

    def release(self, admission: Admission) -> None:
        """An admitted call ended without a verdict (cancelled, say): free its trial slot."""
        self._end(admission)

    def _end(self, admission: Admission) -> None:
        if admission is Admission.TRIAL:
            self._trial_in_flight = False

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._set(CircuitState.OPEN)

    def _set(self, state: CircuitState) -> None:
        if state is self._state:
            return
        self._state = state
        if self._on_change is not None:
            self._on_change(state)
