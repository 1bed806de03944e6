"""The A2A request handler of every fleet: A2A methods onto the fleet's task streams.

The a2a-sdk's JSON-RPC dispatcher parses requests, checks `A2A-Version` and writes responses and
SSE; this handler does what the methods mean for a fleet. The fleet comes from the URL (the app's
context builder puts it in the call context), so one handler serves every fleet.

Choices the protocol leaves open:
- a task takes one message (our handlers are single-turn): a message naming a `taskId` is refused;
- SendMessage waits up to `send_wait` seconds for the result and then returns the task as it
  stands; LLM work takes minutes, so a client polls GetTask or subscribes after that;
- SendMessage and the streams wait on the fleet's event stream (`streams`), never by polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncGenerator, Callable

from a2a.server.context import ServerCallContext
from a2a.server.events.event_queue import Event
from a2a.server.request_handlers.request_handler import RequestHandler
from a2a.types.a2a_pb2 import (
    AgentCard,
    CancelTaskRequest,
    DeleteTaskPushNotificationConfigRequest,
    GetExtendedAgentCardRequest,
    GetTaskPushNotificationConfigRequest,
    GetTaskRequest,
    ListTaskPushNotificationConfigsRequest,
    ListTaskPushNotificationConfigsResponse,
    ListTasksRequest,
    ListTasksResponse,
    Message,
    SendMessageRequest,
    SubscribeToTaskRequest,
    Task,
    TaskPushNotificationConfig,
    TaskState,
)
from a2a.utils.constants import DEFAULT_LIST_TASKS_PAGE_SIZE, MAX_LIST_TASKS_PAGE_SIZE
from a2a.utils.errors import (
    ExtendedAgentCardNotConfiguredError,
    InvalidParamsError,
    InvalidRequestError,
    TaskNotCancelableError,
    TaskNotFoundError,
    UnsupportedOperationError,
)
from pydantic import ValidationError

from newfuse.adapters.taskclient import TaskSpec
from newfuse.adapters.taskerrors import BudgetExceededError, PayloadTooLargeError
from newfuse.fleetapi import pushconfig
from newfuse.fleetapi.a2amap import (
    TERMINAL,
    PushTarget,
    TaskRecord,
    push_target,
    skill_of,
    task_id_for,
    task_input,
    task_of,
)
from newfuse.fleetapi.fleets import Fleet
from newfuse.fleetapi.streams import Position, follow
from newfuse.wire.envelope import PROTOCOL_VERSION

# Keys of ServerCallContext.state the app's context builder fills.
FLEET: str = "newfuse.fleet"
CAPABILITIES: str = "newfuse.capabilities"
# The fleet's spec.protocolVersion, which a call's A2A-Version must name: its tasks carry it.
PROTOCOL: str = "newfuse.protocol"
USER: str = "newfuse.user"  # the verified caller (a ReviewedUser), None without auth
# The SSE resume header, as Starlette's (lower-cased) header map names it.
LAST_EVENT_ID: str = "last-event-id"


def _fleet(context: ServerCallContext) -> tuple[Fleet, list[str]]:
    return context.state[FLEET], context.state[CAPABILITIES]


class FleetTaskHandler(RequestHandler):
    """Serves A2A tasks of the fleet named in each call's context."""

    def __init__(
        self,
        *,
        send_wait: float = 30.0,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        push_screen: pushconfig.Screen | None = None,
    ) -> None:
        """Wait ``send_wait`` s in a blocking SendMessage; screen webhook URLs with ``push_screen``.

        The default screen is the a2a-sdk's SSRF check.
        """
        self.send_wait, self.clock = send_wait, clock
        self.push_screen = push_screen or pushconfig.screen_for(allow_private=False)

    async def _push(self, params: SendMessageRequest) -> list[PushTarget]:
        """The webhook a SendMessage sets for its task, checked before the task exists."""
        if not params.configuration.HasField("task_push_notification_config"):
            return []
        target = push_target(params.configuration.task_push_notification_config)
        if not await self.push_screen(target.url):
            raise InvalidParamsError(
                f"configuration.taskPushNotificationConfig.url: {target.url[:200]!r} is not a "
                "public http(s) address"
            )
        return [target]

    async def _start(
        self, message: Message, context: ServerCallContext, push: list[PushTarget] | None = None
    ) -> tuple[Task, TaskRecord]:
        """Submit the message's task unless its message id was sent before; the task as it is."""
        fleet, capabilities = _fleet(context)
        if not message.message_id:
            raise InvalidParamsError("message.messageId: required")
        if message.task_id:
            raise InvalidParamsError(
                "message.taskId: each task of this agent takes one message; "
                "send a new message without taskId (use contextId to group them)"
            )
        task_id = task_id_for(fleet.namespace, fleet.name, message.message_id)
        known = await fleet.store.record(task_id)
        if known is not None:
            record = TaskRecord.model_validate_json(known)
            return await self._task(fleet, task_id, record), record
        skill, now = skill_of(message, capabilities), self.clock()
        user = context.state.get(USER)
        record = TaskRecord(
            context_id=message.context_id or task_id,
            skill=skill,
            message_id=message.message_id,
            created_at=now,
            by=user.username if user is not None else None,
            push=push or [],
        )
        spec = TaskSpec(
            handler=skill,
            input=task_input(message),
            task_id=task_id,
            events=True,
            protocol_version=context.state.get(PROTOCOL, PROTOCOL_VERSION),
        )
        if push:  # the record carries them; delivery must be ready for the first event
            await fleet.store.prepare_push()
        try:
            kept = TaskRecord.model_validate_json(
                await fleet.store.submit(spec, record.model_dump_json(), now)
            )
        except PayloadTooLargeError as exc:
            raise InvalidParamsError(f"message.parts: {exc}") from None
        except BudgetExceededError as exc:
            raise InvalidRequestError(str(exc)) from None
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise InvalidParamsError(f"message: {where}: {first['msg']}") from None
        return task_of(task_id, kept, None), kept

    async def _task(self, fleet: Fleet, task_id: str, record: TaskRecord) -> Task:
        return task_of(task_id, record, await fleet.tasks.result(task_id))

    async def _known(self, task_id: str, context: ServerCallContext) -> tuple[Task, TaskRecord]:
        fleet, _ = _fleet(context)
        raw = await fleet.store.record(task_id)
        if raw is None:
            raise TaskNotFoundError(f"no task {task_id!r} in this agent")
        record = TaskRecord.model_validate_json(raw)
        return await self._task(fleet, task_id, record), record

    async def on_message_send(
        self, params: SendMessageRequest, context: ServerCallContext
    ) -> Task | Message:
        """SendMessage: submit, then wait up to `send_wait` unless the client asked not to."""
        fleet, _ = _fleet(context)
        before = await fleet.events.newest()
        task, record = await self._start(params.message, context, await self._push(params))
        if params.configuration.return_immediately or task.status.state in TERMINAL:
            return task
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.send_wait):
                async for _ in follow(fleet, task.id, record, None, fresh=(task, before)):
                    pass
        return await self._task(fleet, task.id, record)

    async def on_message_send_stream(
        self, params: SendMessageRequest, context: ServerCallContext
    ) -> AsyncGenerator[Event]:
        """SendStreamingMessage: the task, then each of its events until it ends."""
        fleet, _ = _fleet(context)
        before = await fleet.events.newest()
        task, record = await self._start(params.message, context, await self._push(params))
        async for event in follow(fleet, task.id, record, None, fresh=(task, before)):
            yield event

    async def on_subscribe_to_task(
        self, params: SubscribeToTaskRequest, context: ServerCallContext
    ) -> AsyncGenerator[Event]:
        """SubscribeToTask: a running task's events; with `Last-Event-ID`, those after it.

        The spec refuses a subscription to a task that has ended. A client resuming a stream
        (`Last-Event-ID`) still gets what it missed, the end included.
        """
        fleet, _ = _fleet(context)
        header = context.state.get("headers", {}).get(LAST_EVENT_ID)
        since = Position.parse(header) if header else None
        task, record = await self._known(params.id, context)
        if since is None and task.status.state in TERMINAL:
            raise UnsupportedOperationError(
                f"task {task.id} is in terminal state {TaskState.Name(task.status.state)}"
            )
        async for event in follow(fleet, task.id, record, since):
            yield event

    async def on_get_task(self, params: GetTaskRequest, context: ServerCallContext) -> Task:
        """GetTask: the task's state and, once it ended, its output."""
        task, _ = await self._known(params.id, context)
        return task

    async def on_cancel_task(self, params: CancelTaskRequest, context: ServerCallContext) -> Task:
        """CancelTask: an unfinished task ends CANCELED; a finished one cannot be."""
        fleet, _ = _fleet(context)
        task, record = await self._known(params.id, context)
        cancelled = task.status.state not in TERMINAL and await fleet.store.cancel(
            task.id, self.clock()
        )
        # Read again either way: the task may have ended between the first read and the cancel.
        task = await self._task(fleet, task.id, record)
        if not cancelled:
            raise TaskNotCancelableError(
                f"task {task.id} has ended: {TaskState.Name(task.status.state)}"
            )
        return task

    async def on_list_tasks(
        self, params: ListTasksRequest, context: ServerCallContext
    ) -> ListTasksResponse:
        """ListTasks: one page of the agent's tasks (the page token is a Redis HSCAN cursor)."""
        fleet, _ = _fleet(context)
        size = params.page_size or DEFAULT_LIST_TASKS_PAGE_SIZE
        if not 1 <= size <= MAX_LIST_TASKS_PAGE_SIZE:
            raise InvalidParamsError(f"pageSize: must be 1 to {MAX_LIST_TASKS_PAGE_SIZE}")
        try:
            cursor = int(params.page_token or "0")
        except ValueError:
            raise InvalidParamsError("pageToken: not a token this agent gave") from None
        cursor, records = await fleet.store.records(cursor, size)
        response = ListTasksResponse(next_page_token=str(cursor) if cursor else "", page_size=size)
        for task_id, raw in sorted(records.items()):
            record = TaskRecord.model_validate_json(raw)
            if params.context_id and record.context_id != params.context_id:
                continue
            task = await self._task(fleet, task_id, record)
            if params.status and task.status.state != params.status:
                continue
            if not params.include_artifacts:
                del task.artifacts[:]
            response.tasks.append(task)
        return response

    async def on_create_task_push_notification_config(
        self, params: TaskPushNotificationConfig, context: ServerCallContext
    ) -> TaskPushNotificationConfig:
        """Set a webhook of a task (one of the same id is replaced)."""
        fleet, _ = _fleet(context)
        return await pushconfig.add(fleet, params.task_id, params, self.push_screen)

    async def on_get_task_push_notification_config(
        self, params: GetTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> TaskPushNotificationConfig:
        """One webhook of a task (its credentials are never read back)."""
        fleet, _ = _fleet(context)
        return await pushconfig.one(fleet, params.task_id, params.id)

    async def on_list_task_push_notification_configs(
        self, params: ListTaskPushNotificationConfigsRequest, context: ServerCallContext
    ) -> ListTaskPushNotificationConfigsResponse:
        """A task's webhooks (at most 10: one page)."""
        fleet, _ = _fleet(context)
        configs = await pushconfig.listed(fleet, params.task_id)
        return ListTaskPushNotificationConfigsResponse(configs=configs)

    async def on_delete_task_push_notification_config(
        self, params: DeleteTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> None:
        """Forget a webhook of a task."""
        fleet, _ = _fleet(context)
        await pushconfig.delete(fleet, params.task_id, params.id)

    async def on_get_extended_agent_card(
        self, params: GetExtendedAgentCardRequest, context: ServerCallContext
    ) -> AgentCard:
        """There is no extended card: the public one says everything."""
        raise ExtendedAgentCardNotConfiguredError
