"""A task's webhooks (A2A push notification configs): kept in the task's record in Redis.

A webhook belongs to one task, like the record the gateway keeps of it, so it lives there and
expires with it; every gateway replica reads it from there when the task moves (webhooks.py).
A URL is screened before it is kept: by default the a2a-sdk's SSRF check refuses loopback,
private, link-local and metadata addresses, so a caller cannot make the gateway call inside the
cluster.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from a2a.types.a2a_pb2 import TaskPushNotificationConfig
from a2a.utils.errors import InvalidParamsError, TaskNotFoundError
from a2a.utils.push_url_validator import validate_push_notification_url

from newfuse.fleetapi.a2amap import (
    MAX_PUSH_TARGETS,
    TaskRecord,
    push_config,
    push_target,
)
from newfuse.fleetapi.fleets import Fleet

Screen = Callable[[str], Awaitable[bool]]


async def _http_only(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def screen_for(*, allow_private: bool) -> Screen:
    """The URL check: the SDK's SSRF screen, or (``allow_private``) only the scheme."""
    return _http_only if allow_private else validate_push_notification_url


async def _record(fleet: Fleet, task_id: str) -> TaskRecord:
    raw = await fleet.store.record(task_id)
    if raw is None:
        raise TaskNotFoundError(f"no task {task_id!r} in this agent")
    return TaskRecord.model_validate_json(raw)


async def add(
    fleet: Fleet, task_id: str, config: TaskPushNotificationConfig, screen: Screen
) -> TaskPushNotificationConfig:
    """Keep ``config`` as a webhook of the task (one of the same id is replaced)."""
    target = push_target(config)
    if not await screen(target.url):
        raise InvalidParamsError(
            f"pushNotificationConfig.url: {target.url[:200]!r} is not a public http(s) address "
            "(loopback, private, link-local and metadata addresses are refused)"
        )
    record = await _record(fleet, task_id)
    kept = [t for t in record.push if t.id != target.id] + [target]
    if len(kept) > MAX_PUSH_TARGETS:
        raise InvalidParamsError(f"a task takes at most {MAX_PUSH_TARGETS} webhooks")
    updated = record.model_copy(update={"push": kept})
    await fleet.store.update_record(task_id, updated.model_dump_json())
    return push_config(task_id, target)


async def listed(fleet: Fleet, task_id: str) -> list[TaskPushNotificationConfig]:
    """The task's webhooks, without their credentials."""
    return [push_config(task_id, t) for t in (await _record(fleet, task_id)).push]


async def one(fleet: Fleet, task_id: str, config_id: str) -> TaskPushNotificationConfig:
    """One webhook of the task, by id."""
    for config in await listed(fleet, task_id):
        if config.id == config_id:
            return config
    raise InvalidParamsError(f"task {task_id!r} has no webhook {config_id[:128]!r}")


async def delete(fleet: Fleet, task_id: str, config_id: str) -> None:
    """Forget one webhook of the task (none of that id: nothing to do)."""
    record = await _record(fleet, task_id)
    kept = [t for t in record.push if t.id != config_id]
    if len(kept) != len(record.push):
        updated = record.model_copy(update={"push": kept})
        await fleet.store.update_record(task_id, updated.model_dump_json())
