"""Watch handlers run on the event loop (the caches and queue are asyncio-only); kopf settings.

kopf runs a sync handler in a thread pool. The work queue refuses any caller off its loop, and the
handlers are invoked here exactly as kopf invokes them, so a handler made sync again fails here.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, cast

import kopf
import pytest
from kopf._core.actions.invocation import invoke

from factories import NOW
from newfuse.config import OperatorConfig
from newfuse.core import naming
from newfuse.handlers.operator import build_registry, tune
from newfuse.runtime.controller import Controller
from newfuse.runtime.workqueue import WorkQueue

FLEET = {
    "apiVersion": "newfuse.io/v1alpha1",
    "kind": "NewFuseAgent",
    "metadata": {"name": "demo", "namespace": "ns", "uid": "u1", "resourceVersion": "1"},
    "spec": {"image": "agent:1"},
}
POD = {
    "metadata": {
        "name": "demo-abc-0",
        "namespace": "ns",
        "uid": "p1",
        "labels": {naming.LABEL_FLEET: "demo", naming.LABEL_REVISION: "abc"},
        "creationTimestamp": NOW.isoformat(),
    },
    "spec": {},
    "status": {"phase": "Running"},
}


@pytest.mark.asyncio
async def test_the_queue_refuses_callers_off_its_loop() -> None:
    errors: list[BaseException] = []

    queue = WorkQueue()
    queue.add("ns/a")

    def from_a_thread() -> None:
        try:
            queue.add("ns/b")
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=from_a_thread)
    thread.start()
    thread.join()
    assert await queue.get() == "ns/a"
    assert len(queue) == 0
    assert len(errors) == 1
    assert "off its event loop" in str(errors[0])


def test_the_queue_refuses_a_second_loop() -> None:
    queue = WorkQueue()

    async def add(key: str) -> None:
        queue.add(key)

    asyncio.run(add("ns/a"))
    with pytest.raises(RuntimeError, match="second event loop"):
        asyncio.run(add("ns/b"))


@pytest.mark.asyncio
async def test_watch_handlers_run_on_the_loop_as_kopf_invokes_them() -> None:
    controller = Controller(OperatorConfig(), cast(Any, None), cast(Any, None))
    registry = build_registry(OperatorConfig(), state={"controller": controller})
    handlers = list(registry._watching.get_all_handlers())
    assert len(handlers) == 2
    for handler in handlers:
        assert handler.selector is not None
        body = POD if handler.selector.any_name == "pods" else FLEET
        await invoke(
            handler.fn,
            settings=kopf.OperatorSettings(),
            kwargs={"type": "ADDED", "body": body},
        )
    keys = []
    while len(controller.queue):
        keys.append(await controller.queue.get())
    assert keys == ["ns/demo"]


@pytest.mark.parametrize(("namespaces", "scanning_off"), [((), False), (("a", "b"), True)])
def test_a_namespaced_operator_keeps_watching_namespaces_being_deleted(
    namespaces: tuple[str, ...], scanning_off: bool
) -> None:
    # kopf's namespace observer drops a namespace once it is marked for deletion: its fleets'
    # deletion would never be seen and the namespace would hang on their finalizers.
    settings = kopf.OperatorSettings()
    tune(settings, OperatorConfig(namespaces=namespaces))
    assert settings.scanning.disabled is scanning_off


def test_kopf_workers_give_their_slots_back_soon_after_their_objects_last_event() -> None:
    # 64 slots each held for kopf's default 5 s after an object's last event let about 13 new
    # objects a second through: at 10,000 fleets the watch fell minutes behind (README, scale).
    settings = kopf.OperatorSettings()
    default_idle = settings.queueing.idle_timeout
    tune(settings, OperatorConfig())
    limit = settings.queueing.worker_limit
    assert limit is not None
    assert limit / settings.queueing.idle_timeout >= 500 > limit / default_idle
