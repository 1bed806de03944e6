"""Which protocol majors a fleet's traffic still uses, and which majors an agent takes.

A rollout may not decommission the last agents that speak a major its traffic still uses (the
protocol gate, newfuse.core.protocol). So the fleet keeps one sorted set, `FleetKeys.protocol`:
major -> when a task of that major was last seen, in Redis ms. Submissions stamp it in the same
Lua step that enqueues the task (CLI, TaskClient, the fleet API, whose A2A-Version is the fleet's
protocol version), and agents stamp the majors of the tasks they take (foreign producers that
XADD by hand are still seen), flushed with their heartbeat. `ZADD GT` keeps the latest stamp
whatever order the writers arrive in.

An agent that takes a task of a major it does not speak passes it on: back through the retry set
after PASS_ON_DELAY_SECONDS (a short pause, so an agent that is the only free reader does not spin
on it), unchanged, signature and all. When no live agent of the fleet speaks the major, the task
fails with `unsupported_version` naming it instead of circling for ever.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from newfuse.wire.envelope import SUPPORTED_MAJOR_VERSIONS
from newfuse.wire.scripts import _NOW_MS

PASS_ON_DELAY_SECONDS: Final = 1.0
# Agents that reported no `speaks` (images before it existed) spoke 1.x only.
LEGACY_SPEAKS: Final = frozenset({1})
# How long an agent trusts its view of which majors the fleet's live agents speak.
SPEAKERS_CACHE_SECONDS: Final = 5.0


def major_of(version: str) -> int:
    """The major of a "major.minor" protocol version (envelopes are validated to that form)."""
    return int(version.split(".", 1)[0])


def parse_speaks(text: str) -> frozenset[int]:
    """Majors from "1,2" (spaces and an "x" suffix allowed: "1.x, 2.x"); ValueError if invalid."""
    majors: set[int] = set()
    for part in text.split(","):
        item = part.strip().removesuffix(".x")
        if not item.isdigit():
            raise ValueError(f"{part.strip()!r} is not a protocol major (expected e.g. '1,2')")
        majors.add(int(item))
    unknown = majors - SUPPORTED_MAJOR_VERSIONS
    if unknown:
        raise ValueError(
            f"this image does not speak {majors_text(unknown)} (it speaks "
            f"{majors_text(SUPPORTED_MAJOR_VERSIONS)})"
        )
    return frozenset(majors)


def majors_text(majors: Iterable[int]) -> str:
    """Majors as "1.x, 2.x": how conditions, errors and logs name them."""
    return ", ".join(f"{m}.x" for m in sorted(set(majors)))


def stamp_lua(key: int, arg: int) -> str:
    """Lua stamping ARGV[arg] (a major; empty: none) into KEYS[key] with Redis' clock."""
    return f"""
if ARGV[{arg}] and ARGV[{arg}] ~= '' then
  local stamp = redis.call('TIME')
  redis.call('ZADD', KEYS[{key}], 'GT',
    tonumber(stamp[1]) * 1000 + math.floor(tonumber(stamp[2]) / 1000), ARGV[{arg}])
end
"""


# KEYS: the protocol set. ARGV: majors seen. Returns Redis' now in ms.
NOTE_LUA: Final = (
    _NOW_MS
    + """
for i = 1, #ARGV do redis.call('ZADD', KEYS[1], 'GT', now, ARGV[i]) end
return now
"""
)

# KEYS: the protocol set. Returns {Redis now ms, {major, last seen ms, ...}}.
SEEN_LUA: Final = (
    _NOW_MS
    + """
return {now, redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')}
"""
)


def ages(reply: list[object]) -> dict[int, float]:
    """SEEN_LUA's reply as major -> seconds since it was last seen (never negative)."""
    now = float(str(reply[0]))
    flat = reply[1]
    assert isinstance(flat, list)
    found: dict[int, float] = {}
    for member, score in zip(flat[::2], flat[1::2], strict=True):
        text = member.decode() if isinstance(member, bytes) else str(member)
        if text.isdigit():
            found[int(text)] = max(0.0, (now - float(score)) / 1000)
    return found
