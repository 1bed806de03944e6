"""Soak scenarios: minutes of real time started early, overlapping the suite, checked late.

Some promises take minutes of real time by nature: ten minutes of steady load on a full Redis,
memory returning to its baseline after the retention. Waited out one after the other they made
every CI run 14 minutes longer while the machine sat mostly idle. A soak scenario instead runs in
a thread of its own, on resources of its own (a namespace, a redis-server, a pod runner), from the
first e2e test after the real node's (whose timings the README quotes) to its end; the test that
owns it waits for its outcome, which re-raises whatever failed in the thread, assertions included.

A scenario is registered with `@scenario` next to its test: `memory_returns` belongs to the test
named `test_memory_returns`, and starts only when that test is selected.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, wait
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kubernetes import client as k8s_client

from harness import Cluster, Fleets

# How long a session's teardown waits for a scenario it cut short (its resources are gone by
# then, so its next Redis or API call fails).
_JOIN_SECONDS = 30.0


@dataclass
class SoakContext:
    """What a scenario may use: the cluster, and resources that live until the session ends."""

    cluster: Cluster
    api: k8s_client.ApiClient
    state_root: Path
    cleanup: ExitStack = field(default_factory=ExitStack)

    @contextmanager
    def resources(self) -> Iterator[ExitStack]:
        """A scenario's own clean-up, done when it ends or, if it is cut short, with the session."""
        with ExitStack() as stack:
            self.cleanup.callback(stack.close)
            yield stack

    def namespace(self, stack: ExitStack, name: str) -> Fleets:
        """A namespace of the scenario's own, deleted with ``stack``."""
        core = k8s_client.CoreV1Api(self.api)
        ns = f"t-soak-{name[:30].replace('_', '-')}-{uuid.uuid4().hex[:6]}"
        meta = k8s_client.V1ObjectMeta(name=ns, labels={"newfuse.io/test": "true"})
        core.create_namespace(k8s_client.V1Namespace(metadata=meta))
        stack.callback(core.delete_namespace, ns)
        return Fleets(self.api, ns)


Scenario = Callable[[SoakContext], None]
_REGISTERED: dict[str, Scenario] = {}


def scenario(fn: Scenario) -> Scenario:
    """Register ``fn`` as the soak of the test named ``test_<fn name>``."""
    _REGISTERED[f"test_{fn.__name__}"] = fn
    return fn


def registered() -> frozenset[str]:
    """The names of the tests that own a scenario."""
    return frozenset(_REGISTERED)


class Soaks:
    """The scenarios of this session: started once, waited for by their tests."""

    def __init__(self, context: SoakContext) -> None:
        self.context = context
        self._runs: dict[Scenario, tuple[float, Future[None]]] = {}

    def start(self, selected_tests: Iterable[str]) -> None:
        """Start the scenario of each selected test that has one."""
        for test in selected_tests:
            fn = _REGISTERED.get(test)
            if fn is not None and fn not in self._runs:
                self._start(fn)

    def _start(self, fn: Scenario) -> None:
        done: Future[None] = Future()

        def body() -> None:
            try:
                fn(self.context)
            except BaseException as exc:  # re-raised in the owning test, failures and skips
                done.set_exception(exc)
            else:
                done.set_result(None)

        self._runs[fn] = (time.monotonic(), done)
        print(f"soak {fn.__name__} started")
        threading.Thread(target=body, name=f"soak-{fn.__name__}", daemon=True).start()

    def outcome(self, fn: Scenario, timeout: float) -> float:
        """Wait for ``fn`` (starting it if nothing did); re-raise its failure; its run time."""
        if fn not in self._runs:
            self._start(fn)
        started, done = self._runs[fn]
        try:
            done.result(max(0.0, started + timeout - time.monotonic()))
        except TimeoutError:
            pytest.fail(f"soak {fn.__name__} still running {timeout:g}s after it started")
        return time.monotonic() - started

    def close(self) -> None:
        """Free every scenario's resources, then let cut-short threads fail and end."""
        self.context.cleanup.close()
        wait([done for _, done in self._runs.values()], _JOIN_SECONDS)


@contextmanager
def soaks(cluster: Cluster, api: k8s_client.ApiClient, state_root: Path) -> Iterator[Soaks]:
    """The session's soaks, their resources freed at the end."""
    running = Soaks(SoakContext(cluster, api, state_root))
    try:
        yield running
    finally:
        running.close()
