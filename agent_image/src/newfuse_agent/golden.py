"""The agent's part of the golden and shadow gates: run the cases published for its revision.

The operator publishes a rollout step's cases (newfuse.wire.golden); every agent of the canary and
stable revisions takes them one at a time, beside its live tasks, and records what its handler
returned. Judging the answers is the operator's (newfuse.core.golden): an agent only runs them.
A case whose agent dies mid-run is taken by another agent of the revision once its claim is stale
(the task timeout plus the claim bound), so a run always finishes. Shadow copies (live tasks the
stable revision answered, newfuse_agent.shadow) are run the same way by canary agents, and their
answers go to a hash of their own: never to the task's result. Stable agents also grade the
answers of llmJudge cases with their model (newfuse_agent.judge).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from newfuse.wire import golden, shadow
from newfuse.wire.golden import GoldenOutput, GoldenRun
from newfuse.wire.keys import FleetKeys
from newfuse.wire.shadow import ShadowCase
from newfuse_agent import metrics
from newfuse_agent.config import AgentConfig
from newfuse_agent.contract import DelegationRequired, Handler, InputRequired, TaskContext
from newfuse_agent.judge import Judge

log = logging.getLogger("newfuse_agent.golden")


class GoldenRunner:
    """Runs its revision's golden cases while the agent lives."""

    def __init__(
        self,
        config: AgentConfig,
        client: aioredis.Redis,
        handlers: Mapping[str, Handler],
        context: TaskContext,
    ) -> None:
        """Run cases for ``config``'s revision with ``handlers``, recording through ``client``."""
        self.config, self.handlers, self.context = config, handlers, context
        self.keys = FleetKeys(config.namespace, config.fleet)
        policy = config.tasks
        self.timeout = policy.default_timeout_seconds
        self.stale_ms = round((policy.default_timeout_seconds + policy.claim_bound_seconds) * 1000)
        self._claim = client.register_script(golden.CLAIM_LUA)
        self._record = client.register_script(golden.RECORD_LUA)
        self._claim_shadow = client.register_script(shadow.CLAIM_LUA)
        self.judge = Judge(
            client, self.keys, config.revision, config.consumer, context.gateway, self.stale_ms
        )

    async def loop(self) -> None:
        """Look for cases every GOLDEN_POLL_SECONDS; run every one found. Cancelled on drain."""
        while True:
            try:
                while await self.run_one():
                    pass
            except (RedisError, OSError) as exc:
                log.warning("golden cases unreachable: %s", exc)
            await asyncio.sleep(golden.GOLDEN_POLL_SECONDS)

    async def run_one(self) -> bool:
        """Claim, run and record one golden case, shadow copy or grading; False if none is left."""
        return (
            await self._golden_case() or await self._shadow_copy() or await self.judge.grade_one()
        )

    async def _shadow_copy(self) -> bool:
        keys = self.keys
        claimed = await self._claim_shadow(
            keys=[keys.shadow, keys.shadow_cases, keys.shadow_outputs, keys.shadow_claims],
            args=[self.config.revision, self.config.consumer, self.stale_ms],
        )
        if not claimed:
            return False
        run_id, task_id, body = claimed
        case = ShadowCase.model_validate_json(body)
        output = await self._answer(case.handler, case.input, f"shadow:{run_id}:{task_id}")
        metrics.GOLDEN_CASES.labels("shadow", "returned" if output.ok else "raised").inc()
        await self._record(keys=[keys.shadow, keys.shadow_outputs],
                           args=[run_id, task_id, output.model_dump_json()])  # fmt: skip
        return True

    async def _golden_case(self) -> bool:
        claimed = await self._claim(
            keys=[self.keys.golden, self.keys.golden_outputs, self.keys.golden_claims],
            args=[self.config.revision, self.config.consumer, self.stale_ms],
        )
        if not claimed or claimed[0] == golden.NO_RUN:
            return False
        run_id, index, body = claimed[0], int(claimed[1]), claimed[2]
        case = GoldenRun.model_validate_json(body).cases[index]
        output = await self._answer(case.handler, case.input, f"golden:{run_id}:{case.name}")
        metrics.GOLDEN_CASES.labels("golden", "returned" if output.ok else "raised").inc()
        field = golden.output_field(self.config.revision, case.name)
        await self._record(
            keys=[self.keys.golden, self.keys.golden_outputs],
            args=[run_id, field, output.model_dump_json()],
        )
        return True

    async def _answer(self, name: str, task_input: Any, task_id: str) -> GoldenOutput:
        """Run one handler on one input, as a task would: its answer, time and model cost."""
        handler = self.handlers.get(name)
        if handler is None:
            return self._output(ok=False, error=f"no handler {name!r}")
        context = replace(self.context, task_id=task_id)
        started = time.perf_counter()
        async with self.judge.spending() as meter:
            try:
                async with asyncio.timeout(self.timeout):
                    result = await handler(task_input, context)
            except (InputRequired, DelegationRequired):
                return self._output(ok=False, error="gate cases cannot wait for people or fleets")
            except Exception as exc:  # a wrong answer, for the gate: never the agent's crash
                return self._output(ok=False, error=f"{type(exc).__name__}: {exc}"[:2000])
        cost = meter.cost or meter.tokens
        return self._output(ok=True, output=_jsonable(result), started=started, cost=cost)

    def _output(
        self,
        *,
        ok: bool,
        output: Any = None,
        error: str | None = None,
        started: float = 0.0,
        cost: float = 0.0,
    ) -> GoldenOutput:
        seconds = time.perf_counter() - started if started else 0.0
        agent = self.config.agent_id
        return GoldenOutput(
            ok=ok, output=output, error=error, seconds=seconds, agent=agent, cost=cost
        )


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
