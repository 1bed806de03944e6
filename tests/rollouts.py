"""What the rollout tests share: fast phased settings, steady task traffic, and the final count."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
from typing import Any, cast

import redis

from harness import NEWFUSE_CLI, Fleets, Kubectl
from localcluster import wait_for
from newfuse.adapters.taskclient import StreamEntries, TaskClient, TaskSpec
from newfuse.core import naming
from newfuse.wire.keys import FleetKeys

# Short soaks and small gates so a whole rollout fits in a test; the logic is the same.
FAST_PHASED: dict[str, Any] = {
    "strategy": "Phased",
    "initial": {"soakSeconds": 1, "gate": {"minTasks": 5, "minSuccessRate": 0.9}},
    "gradual": {"step": 1, "intervalSeconds": 1, "gate": {"minTasks": 5, "minSuccessRate": 0.9}},
    "progressDeadlineSeconds": 120,
}


# A canary that soaks for an hour at each step: tests steer these rollouts themselves (promote,
# abort, /scale) while the canary stays put.
SLOW_PHASED: dict[str, Any] = {
    "strategy": "Phased",
    "initial": {"soakSeconds": 3600},
    "gradual": {"intervalSeconds": 3600},
}


class Traffic:
    """Submits echo tasks at a steady pace from a thread until stopped; remembers every id."""

    def __init__(
        self,
        redis_url: str,
        namespace: str,
        fleet: str,
        per_second: int = 60,
        signing_key: bytes | None = None,
        handler: str = "echo",
        protocol_version: str = "1.0",
    ) -> None:
        self.redis_url, self.namespace, self.fleet, self.per_second = (
            redis_url,
            namespace,
            fleet,
            per_second,
        )
        self.signing_key = signing_key  # switched by a key rotation while it runs
        self.handler, self.protocol_version = handler, protocol_version
        self.ids: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        clients: dict[bytes | None, TaskClient] = {}
        try:
            while not self._stop.is_set():
                key = self.signing_key
                if key not in clients:
                    clients[key] = TaskClient.from_url(
                        self.redis_url, self.namespace, self.fleet, signing_key=key
                    )
                client = clients[key]
                batch = [
                    TaskSpec(self.handler, f"q{i}", protocol_version=self.protocol_version)
                    for i in range(self.per_second // 10)
                ]
                async for done in client.submit_many(batch):
                    self.ids += [s.task_id for s in done]
                await asyncio.sleep(0.1)
        finally:
            for client in clients.values():
                await client.aclose()

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def rollout_of(fleets: Fleets, name: str) -> dict[str, Any]:
    return (fleets.get(name).get("status") or {}).get("rollout") or {}


def rolled_back_to(fleets: Fleets, name: str, stable: str, what: str) -> dict[str, Any]:
    """Wait for ``what`` to roll the fleet back and every agent to be on ``stable``; the state."""

    def rolled_back() -> dict[str, Any] | None:
        state = rollout_of(fleets, name)
        return state if state.get("phase") == "RolledBack" else None

    rolled: dict[str, Any] = wait_for(rolled_back, 300, what=what)

    def revisions() -> set[str | None]:
        return {
            (p.metadata.labels or {}).get(naming.LABEL_REVISION)
            for p in fleets.pods(name)
            if p.metadata
        }

    wait_for(
        lambda: revisions() == {stable},
        90,
        what="every agent back on the stable revision",
    )
    return rolled


def every_task_accounted_for(client: redis.Redis, keys: FleetKeys, ids: list[str]) -> None:
    """Each submitted task has exactly one final result (failed ones are also dead-lettered)."""
    wait_for(
        lambda: client.hlen(keys.result_index) >= len(ids), 90, what=f"{len(ids)} final results"
    )
    entries = cast(StreamEntries, client.xrange(keys.result_stream))
    results = [fields["task_id"] for _, fields in entries]
    assert sorted(results) == sorted(ids), (
        "every task has exactly one result, none lost, none doubled"
    )


def wait_phase(fleets: Fleets, name: str, phase: str, timeout: float = 180) -> dict[str, Any]:
    """The fleet's rollout status once its phase is ``phase``."""
    return cast(
        dict[str, Any],
        wait_for(
            lambda: rollout_of(fleets, name).get("phase") == phase and rollout_of(fleets, name),
            timeout,
            what=f"rollout of {name} {phase}",
        ),
    )


def newfuse_rollout(kubectl: Kubectl, *args: str) -> str:
    result = subprocess.run(
        [NEWFUSE_CLI, "rollout", *args, "--kubeconfig", str(kubectl.kubeconfig)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout
