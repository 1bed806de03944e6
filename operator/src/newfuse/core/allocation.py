"""How many agents each revision runs for a rollout step, within the rollout's budgets.

`allocate` turns the step's canary target into pod counts that respect maxSurge (extra pods while
moving), maxUnavailable (Ready agents below replicas) and the capability budget (Ready agents per
capability never below the budget): stable agents are only let go as canary agents become Ready.
"""

from __future__ import annotations

import math

from newfuse.api.rollout import PhasedPolicy


def initial_canary(policy: PhasedPolicy, replicas: int) -> int:
    """Agents stage 1 moves: `count`, or `percent` of replicas rounded up; at least 1."""
    initial = policy.initial
    wanted = initial.count if initial.count is not None else 1
    if initial.percent is not None:
        wanted = math.ceil(replicas * initial.percent / 100)
    return max(1, min(replicas, wanted))


def allocate(
    policy: PhasedPolicy,
    replicas: int,
    canary_target: int,
    ready_canary: int,
    stable_capabilities: frozenset[str],
    canary_capabilities: frozenset[str],
    stable_floor: int = 0,
) -> tuple[int, int]:
    """(stable agents to keep, canary agents to run) for the step's canary target.

    Stable agents go only as canary agents are Ready (minus maxUnavailable), never taking a
    capability below the budget, nor below ``stable_floor`` (the protocol gate's); canary agents
    are added at most maxSurge above replicas.
    """
    stable_keep = max(replicas - canary_target, replicas - ready_canary - policy.max_unavailable, 0)
    budget = min(policy.capability_budget, replicas)
    for capability in stable_capabilities:
        from_canary = ready_canary if capability in canary_capabilities else 0
        stable_keep = max(stable_keep, budget - from_canary)
    stable_keep = min(max(stable_keep, stable_floor), replicas)
    canary_run = max(
        min(canary_target, replicas + policy.max_surge - stable_keep),
        min(ready_canary, canary_target),
    )
    return stable_keep, max(canary_run, 0)
