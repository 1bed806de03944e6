"""The model-graded scorers' agent side: stable agents ask their model to grade answers.

Some right answers have no exact form (a summary, an apology, a plan), so a golden case may name
criteria instead, and a model grades each answer by them. The grader is never the revision being
judged: only agents of the run's judge revision (the stable one) take grading jobs
(newfuse.wire.golden.JUDGE_CLAIM_LUA), through their own gateway, so a canary's new model or prompt
cannot pass itself. The verdict is recorded beside the outputs, where the operator scores it.
The same agents grade shadow copies when the shadow gate names `judge` criteria: does the
canary's answer to a live task agree with the stable answer, by those criteria?
A call that fails, or a reply that is not PASS or FAIL, drops its claim: it is asked again at the
next poll, and the gate stays inconclusive meanwhile (the progress deadline bounds that).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from newfuse.wire import golden, shadow
from newfuse.wire.golden import GoldenOutput
from newfuse.wire.keys import FleetKeys
from newfuse.wire.shadow import ShadowCase
from newfuse_agent import metrics
from newfuse_agent.contract import ChatGateway
from newfuse_agent.usage import Meter, UsageLedger, metering

log = logging.getLogger("newfuse_agent.judge")

SYSTEM = (
    "You grade one answer of an AI agent against the criteria given. Reply with PASS or FAIL as "
    "the first word, then one short sentence saying why."
)
_VERDICT = re.compile(r"^\W*(PASS|FAIL)\b", re.IGNORECASE)


def prompt(criteria: str, task_input: str, output: str) -> list[dict[str, str]]:
    """The judge's chat messages for one answer."""
    user = f"Criteria:\n{criteria}\n\nTask input (JSON):\n{task_input}\n\nAnswer (JSON):\n{output}"
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def verdict(content: str) -> bool | None:
    """PASS -> True, FAIL -> False, anything else -> None (not a grade)."""
    found = _VERDICT.match(content)
    return None if found is None else found.group(1).upper() == "PASS"


class Judge:
    """Grades answered llmJudge cases for the runs that name this agent's revision as judge."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: FleetKeys,
        revision: str,
        agent: str,
        gateway: ChatGateway | None,
        stale_ms: int,
    ) -> None:
        """Claim as ``agent`` of ``revision`` and ask ``gateway`` (None: never claims)."""
        self.client, self.keys, self.revision, self.agent = client, keys, revision, agent
        self.gateway, self.stale_ms = gateway, stale_ms
        # Gate runs and gradings spend like tasks: the day's totals (budgets) count them, under a
        # revision name of their own so the cost gate's per-task figures do not.
        self.ledger = UsageLedger(client, keys, f"gates:{revision}")
        self._claim_golden = client.register_script(golden.JUDGE_CLAIM_LUA)
        self._claim_shadow = client.register_script(shadow.JUDGE_CLAIM_LUA)
        self._record = client.register_script(golden.RECORD_LUA)

    @contextlib.asynccontextmanager
    async def spending(self) -> AsyncIterator[Meter]:
        """Meter the model calls inside, and add them to the fleet's usage (best effort)."""
        with metering() as meter:
            try:
                yield meter
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await self.ledger.record(meter)

    async def grade_one(self) -> bool:
        """Claim, grade and record one answer; False when there is none to grade."""
        if self.gateway is None:
            return False
        return await self._golden() or await self._shadow()

    async def _golden(self) -> bool:
        keys = self.keys
        claimed = await self._claim_golden(
            keys=[keys.golden, keys.golden_outputs, keys.golden_claims],
            args=[self.revision, self.agent, self.stale_ms],
        )
        if not claimed or claimed[0] == golden.NO_RUN:
            return False
        run_id, field, criteria, task_input, raw = claimed
        answer = GoldenOutput.model_validate_json(raw)
        messages = prompt(criteria, task_input, _json(answer.output))
        where = (keys.golden, keys.golden_outputs, keys.golden_claims)
        return await self._grade(messages, run_id, field, where)

    async def _shadow(self) -> bool:
        """Grade a canary's answer to a shadow copy against the stable answer (shadow.judge)."""
        keys = self.keys
        claimed = await self._claim_shadow(
            keys=[keys.shadow, keys.shadow_cases, keys.shadow_outputs, keys.shadow_claims],
            args=[self.revision, self.agent, self.stale_ms],
        )
        if not claimed:
            return False
        run_id, task_id, criteria, case_raw, raw = claimed
        case = ShadowCase.model_validate_json(case_raw)
        answer = GoldenOutput.model_validate_json(raw)
        reference = f"{criteria}\n\nReference answer (JSON):\n{_json(case.output)}"
        messages = prompt(reference, _json(case.input), _json(answer.output))
        where = (keys.shadow, keys.shadow_outputs, keys.shadow_claims)
        return await self._grade(messages, run_id, task_id, where)

    async def _grade(
        self, messages: list[dict[str, str]], run_id: str, field: str, where: tuple[str, str, str]
    ) -> bool:
        """Ask the model; record its grade of ``field`` in ``where``, or drop the claim."""
        run, outputs, claims = where
        judged = golden.judge_field(field)
        assert self.gateway is not None
        try:
            async with self.spending():
                reply = await self.gateway.chat(messages)
            content = str(reply["choices"][0]["message"]["content"])
        except Exception as exc:  # a failed grading is asked again, never the agent's crash
            log.warning("judging %s failed: %s", field, exc)
            content = ""
        right = verdict(content)
        if right is None:
            if content:
                log.warning("judge reply for %s is not PASS or FAIL: %.200s", field, content)
            await self.client.hdel(claims, judged)
            metrics.GOLDEN_CASES.labels("judge", "raised").inc()
            return False
        metrics.GOLDEN_CASES.labels("judge", "returned").inc()
        grade = GoldenOutput(ok=right, output=content[:2000], agent=self.agent)
        await self._record(keys=[run, outputs], args=[run_id, judged, grade.model_dump_json()])
        return True


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)
