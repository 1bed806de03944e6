"""Reading back what anybody may have written to a fleet's result and dead-letter streams.

Whoever can reach the fleet's Redis can XADD to its streams, so every entry is untrusted input. The
task client reads those replies as raw bytes (redis-py would otherwise fail the whole read on a
single value that is not UTF-8, losing the good entries with the bad) and decodes each entry on its
own here, where every failure becomes a MessageRejectedError with a reason, never a crash.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson
from pydantic import ValidationError
from redis.client import NEVER_DECODE

from newfuse.wire.envelope import MessageRejectedError, MessageType, RejectReason, decode, validate
from newfuse.wire.sealing import Sealer, SealError, is_sealed
from newfuse.wire.signing import Audience, Keyring
from newfuse.wire.tasks import DeadLetter, LetterReason, ResultPayload, ResultStatus, TaskPayload

# execute_command(..., **RAW): the reply's values stay bytes, whatever the client decodes.
RAW: Final = {NEVER_DECODE: True}
# One stream entry as read raw: its id and its field map.
RawEntry = tuple[bytes, Mapping[bytes, bytes]]


@dataclass(frozen=True)
class MalformedEntry:
    """An entry of the result stream that `TaskClient.follow()` skipped, and why."""

    entry_id: str
    reason: str
    detail: str


def text(value: Any) -> str:
    """A reply value as text; bytes that are not UTF-8 are shown as U+FFFD, never refused."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def decode_result(
    raw: bytes | str,
    keyring: Keyring | None = None,
    audience: Audience | None = None,
    sealer: Sealer | None = None,
) -> ResultPayload:
    """A result envelope's payload; MessageRejectedError (only) for anything else.

    With a ``keyring``, only a result signed with one of its keys (for ``audience``) is taken.
    A sealed result is opened with ``sealer``; without one, its sealed fields stay unset.
    """
    try:
        # A result is a record of what happened, not an order: one stamped by an agent whose clock
        # runs ahead is still shown (and waited for), and one read a day later is still valid.
        envelope = decode(
            raw,
            keyring=keyring,
            audience=audience,
            require_signature=keyring is not None,
            now=dt.datetime.now(dt.UTC),
            max_skew=dt.timedelta.max,
            max_age=None,
        )
        if envelope.type is not MessageType.RESULT:
            raise MessageRejectedError(
                RejectReason.INVALID_ENVELOPE, f"a {envelope.type} envelope, not a result"
            )
        payload = envelope.payload
        if sealer is not None and is_sealed(payload):
            try:
                payload = sealer.open_fields(payload, "result")
            except SealError as exc:
                raise MessageRejectedError(RejectReason.CANNOT_UNSEAL, str(exc)) from None
        return validate(ResultPayload, payload, RejectReason.INVALID_PAYLOAD, "payload.")
    except MessageRejectedError:
        raise
    except (ValueError, TypeError, RecursionError) as exc:
        # decode() is meant to be total; should hostile input still get past it (a protocol
        # version of 5,000 digits, say), it must end here rather than kill a watcher.
        raise MessageRejectedError(RejectReason.INVALID_ENVELOPE, repr(exc)[:200]) from None


def is_success(raw: bytes | str) -> bool:
    """True if ``raw`` is a SUCCEEDED result (whoever signed it: for keeping, not for trusting)."""
    try:
        return decode_result(raw).status is ResultStatus.SUCCEEDED
    except MessageRejectedError:
        return False


def verified_result(
    raw: bytes | str,
    task_id: str,
    keyring: Keyring | None,
    audience: Audience,
    sealer: Sealer | None = None,
) -> ResultPayload:
    """``task_id``'s result in ``raw``, signed by a key of ``keyring`` (if any) for ``audience``.

    MessageRejectedError if it is not: malformed, unsigned, forged, another fleet's or task's.
    """
    found = decode_result(raw, keyring, audience, sealer)
    if found.task_id != task_id:
        raise MessageRejectedError(
            RejectReason.WRONG_TASK, f"it is the result of task {found.task_id[:128]!r}"
        )
    return found


def result_of_entry(fields: Mapping[bytes, bytes], sealer: Sealer | None = None) -> ResultPayload:
    """The result a result-stream entry holds; MessageRejectedError if it holds none."""
    envelope = fields.get(b"envelope")
    if envelope is None:
        raise MessageRejectedError(
            RejectReason.INVALID_ENVELOPE, "the entry has no `envelope` field"
        )
    return decode_result(envelope, sealer=sealer)


def _stream_entries(entries: Any) -> list[RawEntry]:
    # RESP3 wraps a stream's entries in one more list; XDEL'd entries come back as (None, None).
    if entries and isinstance(entries[0], list):
        entries = entries[0]
    return [(e[0], e[1]) for e in entries or [] if e is not None and e[0] is not None]


def read_entries(reply: Any) -> list[RawEntry]:
    """The entries of a raw XREAD reply on one stream (RESP2 list or RESP3 map)."""
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, Mapping) else (s[1] for s in reply)
    return [e for entries in streams for e in _stream_entries(entries)]


def range_entries(reply: Any) -> list[RawEntry]:
    """The entries of a raw XRANGE / XREVRANGE reply."""
    return _stream_entries(reply)


def entry_time(entry_id: str) -> dt.datetime | None:
    """When Redis stored a stream entry (an id is `<milliseconds>-<sequence>`)."""
    try:
        return dt.datetime.fromtimestamp(int(entry_id.split("-", 1)[0]) / 1000, dt.UTC)
    except (ValueError, OverflowError, OSError):
        return None


def dead_letter_of_entry(entry_id: str, fields: Mapping[bytes, bytes]) -> DeadLetter:
    """The dead letter an entry holds; anything else is shown as reason `unreadable`.

    An unreadable entry gets the time of its id and no task, so it is listed but never requeued.
    """
    try:
        return DeadLetter.model_validate({text(k): text(v) for k, v in fields.items()})
    except ValidationError as exc:
        return DeadLetter(
            reason=LetterReason.UNREADABLE,
            detail=f"not a dead letter: {exc.errors()[0]['msg']}",
            raw="",
            agent_id="-",
            source_stream="-",
            at=entry_time(entry_id) or dt.datetime.now(dt.UTC),
        )


def letter_task(letter: DeadLetter, sealer: Sealer | None = None) -> TaskPayload | None:
    """The task a dead letter holds (with its attempt history), or None if it holds no task.

    A sealed task is opened with ``sealer``: without it, a sealed task reads as no task.
    """
    try:
        payload = orjson.loads(letter.raw)["payload"]
        if sealer is not None and is_sealed(payload):
            payload = sealer.open_fields(payload, "task")
        return TaskPayload.model_validate(payload)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValidationError, SealError):
        return None


def opened_letter(letter: DeadLetter, sealer: Sealer | None) -> DeadLetter:
    """``letter`` with its detail opened, if the agent sealed it and ``sealer`` can open it."""
    if sealer is None:
        return letter
    try:
        sealed = orjson.loads(letter.detail)
        detail = sealer.open(sealed, letter.task_id or "", "letter")
    except (orjson.JSONDecodeError, SealError):
        return letter
    return letter.model_copy(update={"detail": str(detail)})
