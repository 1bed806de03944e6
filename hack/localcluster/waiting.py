"""Deadline-based polling, so tests and tooling never guess a duration with a bare sleep."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeoutError(TimeoutError):
    """The condition did not hold before the deadline; says what was awaited and what was seen."""


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float,
    *,
    what: str = "",
    interval: float = 0.05,
    max_interval: float = 1.0,
    ignored: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``predicate`` until it returns a truthy value, and return that value.

    Polls with a growing interval (up to ``max_interval``) until ``timeout`` seconds have passed,
    then raises WaitTimeoutError naming ``what`` and the last falsy value or ignored exception,
    because "timed out" alone is useless when a test fails on a slow machine.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = predicate()
        except ignored as exc:
            last = exc
        else:
            if result:
                return result
            last = result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            name = what or getattr(predicate, "__name__", repr(predicate))
            raise WaitTimeoutError(
                f"timed out after {timeout:g}s waiting for {name}; last: {last!r}"
            )
        time.sleep(min(interval, remaining))
        interval = min(interval * 1.5, max_interval)


def wait_established(kubectl: Callable[..., str], crd: str, timeout: float = 60.0) -> None:
    """Poll until the CRD ``crd`` (a name like "newfuseagents.newfuse.io") is Established.

    Not `kubectl wait --for=condition=Established`: while a new CRD's status.conditions is still
    null, that fails at once with ".status.conditions accessor error: <nil> is of the type <nil>"
    instead of waiting (a cold CI run hit it; so did tidb-operator#1511). ``kubectl(*args)`` runs
    kubectl against the cluster and returns its stdout.
    """
    # Nor a jsonpath filter on the conditions: on null conditions kubectl fails ("<nil> is not
    # array or slice and cannot be filtered"). The JSON is read here, where null is just empty.

    def established() -> bool:
        status = json.loads(kubectl("get", f"crd/{crd}", "-o", "json")).get("status") or {}
        return any(
            c.get("type") == "Established" and c.get("status") == "True"
            for c in status.get("conditions") or []
        )

    wait_for(established, timeout, what=f"CRD {crd} Established", interval=0.2)
