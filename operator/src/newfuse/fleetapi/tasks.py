"""The A2A request handler of every fleet: A2A methods onto the fleet's task streams.

The a2a-sdk's JSON-RPC dispatcher parses requests, checks `A2A-Version` and writes responses and
SSE; this handler does what the methods mean for a fleet. The fleet comes from the URL (the app's
context builder puts it in the call context), so one handler serves every fleet.

Choices the protocol leaves open:
- a task takes one message (our handlers are single-turn): a message naming a `taskId` is refused;
- SendMessage waits up to `send_wait` seconds for the result and then returns the task as it
  stands; LLM work takes minutes, so a client polls GetTask or subscribes after that;
- streams poll the fleet's result index with a backoff capped at `poll_max` seconds.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
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
    TaskArtifactUpdateEvent,
    TaskPushNotificationConfig,
    TaskState,
    TaskStatusUpdateEvent,
)
from a2a.utils.constants import DEFAULT_LIST_TASKS_PAGE_SIZE, MAX_LIST_TASKS_PAGE_SIZE
from a2a.utils.errors import (
    ExtendedAgentCardNotConfiguredError,
    InvalidParamsError,
    PushNotificationNotSupportedError,
    TaskNotCancelableError,
    TaskNotFoundError,
    UnsupportedOperationError,
)
from pydantic import ValidationError

from newfuse.adapters.taskclient import TaskSpec
from newfuse.adapters.taskerrors import PayloadTooLargeError
from newfuse.fleetapi.a2amap import (
    TERMINAL,
    TaskRecord,
    skill_of,
    task_id_for,
    task_input,
    task_of,
)
from newfuse.fleetapi.fleets import Fleet

# Keys of ServerCallContext.state the app's context builder fills.
FLEET: str = "newfuse.fleet"
CAPABILITIES: str = "newfuse.capabilities"


def _fleet(context: ServerCallContext) -> tuple[Fleet, list[str]]:
    return context.state[FLEET], context.state[CAPABILITIES]


class FleetTaskHandler(RequestHandler):
    """Serves A2A tasks of the fleet named in each call's context."""

    def __init__(
        self,
        *,
        send_wait: float = 30.0,
        poll_max: float = 0.5,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        """Wait ``send_wait`` s in a blocking SendMessage; poll at most ``poll_max`` s apart."""
        self.send_wait, self.poll_max, self.clock = send_wait, poll_max, clock

    async def _start(self, message: Message, context: ServerCallContext) -> tuple[Task, TaskRecord]:
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
        record = TaskRecord(
            context_id=message.context_id or task_id,
            skill=skill,
            message_id=message.message_id,
            created_at=now,
        )
        try:
            await fleet.tasks.submit(
                TaskSpec(handler=skill, input=task_input(message), task_id=task_id)
            )
        except PayloadTooLargeError as exc:
            raise InvalidParamsError(f"message.parts: {exc}") from None
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise InvalidParamsError(f"message: {where}: {first['msg']}") from None
        kept = TaskRecord.model_validate_json(
            await fleet.store.put_record(task_id, record.model_dump_json(), now)
        )
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

    async def _until_terminal(
        self, fleet: Fleet, task: Task, record: TaskRecord, deadline: float | None
    ) -> Task:
        """Poll the task until it ends or ``deadline`` (monotonic) passes; the task then."""
        delay = 0.01
        while task.status.state not in TERMINAL:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            await asyncio.sleep(delay if left is None else min(delay, left))
            delay = min(delay * 2, self.poll_max)
            task = await self._task(fleet, task.id, record)
        return task

    async def on_message_send(
        self, params: SendMessageRequest, context: ServerCallContext
    ) -> Task | Message:
        """SendMessage: submit, then wait up to `send_wait` unless the client asked not to."""
        task, record = await self._start(params.message, context)
        if params.configuration.return_immediately:
            return task
        fleet, _ = _fleet(context)
        return await self._until_terminal(fleet, task, record, time.monotonic() + self.send_wait)

    async def on_message_send_stream(
        self, params: SendMessageRequest, context: ServerCallContext
    ) -> AsyncGenerator[Event]:
        """SendStreamingMessage: the task, then its output and final status when it ends."""
        task, record = await self._start(params.message, context)
        async for event in self._follow(task, record, context):
            yield event

    async def on_subscribe_to_task(
        self, params: SubscribeToTaskRequest, context: ServerCallContext
    ) -> AsyncGenerator[Event]:
        """SubscribeToTask: like a stream, for a task still running (the spec's rule)."""
        task, record = await self._known(params.id, context)
        if task.status.state in TERMINAL:
            raise UnsupportedOperationError(
                f"task {task.id} is in terminal state {TaskState.Name(task.status.state)}"
            )
        async for event in self._follow(task, record, context):
            yield event

    async def _follow(
        self, task: Task, record: TaskRecord, context: ServerCallContext
    ) -> AsyncGenerator[Event]:
        fleet, _ = _fleet(context)
        yield task
        task = await self._until_terminal(fleet, task, record, None)
        for artifact in task.artifacts:
            yield TaskArtifactUpdateEvent(
                task_id=task.id, context_id=task.context_id, artifact=artifact, last_chunk=True
            )
        yield TaskStatusUpdateEvent(task_id=task.id, context_id=task.context_id, status=task.status)

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
        """Push notifications are not offered yet (the card says so)."""
        raise PushNotificationNotSupportedError

    async def on_get_task_push_notification_config(
        self, params: GetTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> TaskPushNotificationConfig:
        """Push notifications are not offered yet (the card says so)."""
        raise PushNotificationNotSupportedError

    async def on_list_task_push_notification_configs(
        self, params: ListTaskPushNotificationConfigsRequest, context: ServerCallContext
    ) -> ListTaskPushNotificationConfigsResponse:
        """Push notifications are not offered yet (the card says so)."""
        raise PushNotificationNotSupportedError

    async def on_delete_task_push_notification_config(
        self, params: DeleteTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> None:
        """Push notifications are not offered yet (the card says so)."""
        raise PushNotificationNotSupportedError

    async def on_get_extended_agent_card(
        self, params: GetExtendedAgentCardRequest, context: ServerCallContext
    ) -> AgentCard:
        """There is no extended card: the public one says everything."""
        raise ExtendedAgentCardNotConfiguredError
