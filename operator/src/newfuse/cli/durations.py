"""Reading a `--deadline` as a person types it: an absolute ISO time or a duration from now.

Pure, so every accepted and refused form is a table test. A time without a zone is taken in the
local zone, which is what someone typing `2030-01-01T09:00` means; the result is always in UTC,
because the agents compare it with their own UTC clock.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Final

UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# One or more <number><unit> parts: 90s, 10m, 1h30m, 1.5h, 2d.
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION = re.compile(rf"^(?:{_PART.pattern})+$")
FORMS: Final = "a duration like 90s, 10m, 1h30m or 2d, or an ISO time like 2030-01-01T09:00Z"


def parse_duration(text: str) -> dt.timedelta | None:
    """``text`` as a duration (``10m``, ``1h30m``), or None if it is not one."""
    cleaned = text.strip().lower()
    if not _DURATION.match(cleaned):
        return None
    seconds = sum(float(n) * UNIT_SECONDS[unit] for n, unit in _PART.findall(cleaned))
    try:
        return dt.timedelta(seconds=seconds)
    except OverflowError:
        return None


def parse_deadline(text: str, now: dt.datetime) -> dt.datetime:
    """The UTC instant ``text`` names; ValueError (naming the accepted forms) otherwise.

    A deadline must lie after ``now`` (timezone-aware): one already past could only fail.
    """
    duration = parse_duration(text)
    if duration is not None:
        if duration <= dt.timedelta(0):
            raise ValueError(f"{text!r} is not after now: use a positive duration")
        try:
            return (now + duration).astimezone(dt.UTC)
        except OverflowError:
            raise ValueError(f"{text!r} is too far in the future") from None
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is neither {FORMS}") from None
    if when.utcoffset() is None:
        when = when.astimezone()  # a naive time is the local zone's
    when = when.astimezone(dt.UTC)
    if when <= now:
        raise ValueError(f"{text!r} ({when.isoformat(timespec='seconds')}) is already past")
    return when
