"""Fold what Redis shows about a fleet's task streams into `status.backlog`.

The adapter reads a few facts per priority stream (XLEN, the consumer group's XINFO GROUPS row, the
first entry after the group's last-delivered id) plus the retry set's size and Redis' clock; this
module decides what they mean, so the arithmetic is table-tested without Redis.

Waiting means "not yet delivered to any agent". The group's `lag` says that exactly, but Redis 7.0
reports it as null once an entry at or after the group's last-delivered id was deleted, and agents
delete every entry they acknowledge. In that case every entry left on the stream is either
pending or not yet delivered, so `length - pending` is the same number. A stream without the group
(no agent has started yet) will be delivered from its first entry: all of it waits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from newfuse.api.tasks import Backlog, PriorityBacklog


@dataclass(frozen=True)
class GroupInfo:
    """The consumer group's row of XINFO GROUPS."""

    pending: int
    lag: int | None
    last_delivered_id: str


@dataclass(frozen=True)
class StreamObservation:
    """One priority's task stream as Redis showed it (a missing stream has length 0)."""

    priority: str
    length: int
    group: GroupInfo | None
    # The id of the first entry the group has not delivered yet (None: there is none).
    first_waiting_id: str | None = None


@dataclass(frozen=True)
class TaskObservation:
    """Everything one cheap round of reads showed about a fleet's unfinished tasks."""

    streams: Sequence[StreamObservation]
    retrying: int
    redis_now_ms: int


def entry_ms(entry_id: str) -> int | None:
    """The millisecond part of a stream entry id ("1718000000000-3"); None if it is not one."""
    head = entry_id.partition("-")[0]
    return int(head) if head.isdigit() else None


def waiting_of(stream: StreamObservation) -> int:
    """Entries of the stream not yet delivered to any agent."""
    if stream.group is None:
        return stream.length
    if stream.group.lag is not None:
        return max(0, stream.group.lag)
    return max(0, stream.length - stream.group.pending)


def age_seconds(entry_id: str | None, now_ms: int) -> int | None:
    """Whole seconds since the entry was added (by Redis' clock); None without an entry."""
    if entry_id is None:
        return None
    added = entry_ms(entry_id)
    return None if added is None else max(0, now_ms - added) // 1000


def fold_backlog(observation: TaskObservation) -> Backlog:
    """The fleet's backlog, per priority (in the order observed) and in total."""
    rows = []
    for stream in observation.streams:
        waiting = waiting_of(stream)
        rows.append(
            PriorityBacklog(
                priority=stream.priority,
                waiting=waiting,
                inflight=stream.group.pending if stream.group is not None else 0,
                oldest_waiting_seconds=age_seconds(
                    stream.first_waiting_id, observation.redis_now_ms
                )
                if waiting
                else None,
            )
        )
    ages = [r.oldest_waiting_seconds for r in rows if r.oldest_waiting_seconds is not None]
    return Backlog(
        waiting=sum(r.waiting for r in rows),
        inflight=sum(r.inflight for r in rows),
        retrying=max(0, observation.retrying),
        oldest_waiting_seconds=max(ages) if ages else None,
        by_priority=rows,
    )
