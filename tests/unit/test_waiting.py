"""wait_for: returns the first truthy value, times out with a useful message, honours ignored."""

from __future__ import annotations

import itertools
import time

import pytest

from localcluster import WaitTimeoutError, wait_for


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([True], True),
        ([None, 0, "", "done"], "done"),
        ([False, [], {"k": 1}], {"k": 1}),
    ],
)
def test_returns_first_truthy_value(values: list[object], expected: object) -> None:
    it = iter(values)
    assert wait_for(lambda: next(it), timeout=5) == expected


def test_times_out_naming_what_and_the_last_value() -> None:
    started = time.monotonic()
    with pytest.raises(WaitTimeoutError, match=r"waiting for the thing; last: 0"):
        wait_for(lambda: 0, timeout=0.3, what="the thing")
    assert time.monotonic() - started < 2


def test_ignored_exceptions_are_retried_and_reported() -> None:
    calls = itertools.count()

    def flaky() -> int:
        if next(calls) < 2:
            raise ConnectionError("not yet")
        return 7

    assert wait_for(flaky, timeout=5, ignored=(ConnectionError,)) == 7
    with pytest.raises(WaitTimeoutError, match="not yet"):
        wait_for(
            lambda: (_ for _ in ()).throw(ConnectionError("not yet")),
            timeout=0.2,
            ignored=(ConnectionError,),
        )


def test_unexpected_exceptions_propagate() -> None:
    with pytest.raises(ZeroDivisionError):
        wait_for(lambda: 1 / 0, timeout=5, ignored=(ConnectionError,))
