"""The golden and shadow gates' reads and writes: cases from their ConfigMap, runs in Redis.

Each reconcile of a fleet whose rollout is at a gate publishes the run for the current step
(idempotently: the same run again changes nothing) and scores what the agents recorded so far.
Anything in the way (no ConfigMap, bad cases, Redis down) becomes the observation's problem: the
gate stays inconclusive and says why, and the progress deadline decides from there.
"""

from __future__ import annotations

from kubernetes.client.exceptions import ApiException
from redis.exceptions import RedisError

from newfuse import observability as obs
from newfuse.api.v1alpha1 import NewFuseAgent
from newfuse.core.golden import (
    GoldenCasesError,
    GoldenObservation,
    golden_run,
    parse_cases,
    score,
    wants_run,
)
from newfuse.core.shadow import ShadowObservation, shadow_config
from newfuse.core.shadow import score as shadow_score
from newfuse.runtime.ports import KubePort, RedisPort
from newfuse.wire.keys import FleetKeys

# A model grades the answers: the stable revision's agents ask it through the fleet's gateway.
NEEDS_GATEWAY = "{what} need spec.gateway (the stable revision's agents ask its model)"


class GoldenDriver:
    """Publishes a rollout step's golden run and scores its outputs."""

    def __init__(self, kube: KubePort, redis: RedisPort) -> None:
        """Read cases through ``kube``, run them through ``redis``."""
        self.kube, self.redis = kube, redis

    async def observe(self, fleet: NewFuseAgent) -> GoldenObservation | None:
        """The current step's golden scores, or None when the fleet has no golden gate now."""
        spec = fleet.spec.rollout.analysis.golden_tasks
        state = fleet.status.rollout
        if spec is None or state is None or not wants_run(state):
            return None
        meta = fleet.metadata
        where = f"ConfigMap {meta.namespace}/{spec.config_map} key {spec.key!r}"
        try:
            data = await self.kube.read_config_map(meta.namespace, spec.config_map)
        except ApiException as exc:
            return GoldenObservation(problem=f"{where}: cannot be read ({exc.status} {exc.reason})")
        if data is None or spec.key not in data:
            return GoldenObservation(problem=f"{where}: not found")
        try:
            cases = parse_cases(data[spec.key], where)
        except GoldenCasesError as exc:
            return GoldenObservation(problem=str(exc))
        if fleet.spec.gateway is None and any(c.expect.llm_judge for c in cases):
            problem = NEEDS_GATEWAY.format(what="llmJudge cases")
            return GoldenObservation(problem=f"{where}: {problem}")
        run = golden_run(state, cases)
        keys = FleetKeys(meta.namespace, meta.name)
        try:
            await self.redis.publish_golden(keys, run)
            current, outputs = await self.redis.golden_outputs(keys)
        except (RedisError, OSError) as exc:
            return GoldenObservation(problem=f"golden run unreachable in Redis: {exc}")
        if current != run.id:
            return GoldenObservation(problem=f"golden run {run.id} replaced by {current}")
        scores = {rev: score(cases, outputs, rev) for rev in run.revisions}
        for role, rev in (("canary", state.canary_revision), ("stable", state.stable_revision)):
            rate = scores[rev].pass_rate if rev in scores else None
            if rate is not None:
                obs.GOLDEN_PASS_RATE.set(meta.namespace, meta.name, rate, role)
        return GoldenObservation(run.id, scores)


class ShadowDriver:
    """Publishes a rollout step's shadow run and scores the canary's copies."""

    def __init__(self, redis: RedisPort) -> None:
        """Run copies through ``redis``."""
        self.redis = redis

    async def observe(self, fleet: NewFuseAgent) -> ShadowObservation | None:
        """The current step's shadow score, or None when the fleet has no shadow gate now."""
        spec = fleet.spec.rollout.analysis.shadow
        state = fleet.status.rollout
        if spec is None or state is None or not wants_run(state):
            return None
        if spec.judge is not None and fleet.spec.gateway is None:
            problem = NEEDS_GATEWAY.format(what="copies graded by shadow.judge")
            return ShadowObservation(problem=problem)
        config = shadow_config(state, spec)
        keys = FleetKeys(fleet.metadata.namespace, fleet.metadata.name)
        try:
            await self.redis.publish_shadow(keys, config)
            current, cases, outputs = await self.redis.shadow_outputs(keys)
        except (RedisError, OSError) as exc:
            return ShadowObservation(problem=f"shadow run unreachable in Redis: {exc}")
        if current != config.id:
            return ShadowObservation(problem=f"shadow run {config.id} replaced by {current}")
        judged = spec.judge is not None
        return ShadowObservation(config.id, shadow_score(cases, outputs, judged=judged))
