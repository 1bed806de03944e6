"""Where the fleet API serves each fleet, and the names its clients read, in one place.

The operator writes the URLs into status (`status.endpoints.a2a`); the gateway routes them; the
CLI (`newfuse --server`) calls them and reads the message and task metadata keys below.
"""

from __future__ import annotations

from typing import Final

A2A_PREFIX: Final = "/a2a"
LIVE_PREFIX: Final = "/live"
# A fleet's review queue: GET lists the open reviews, GET <id> shows one, POST <id> decides it,
# GET feedback reads the decisions (the feedback dataset).
REVIEWS_PREFIX: Final = "/reviews"
FEEDBACK: Final = "feedback"
# The message metadata key that picks a skill (the fleet's capability, which names a handler).
SKILL_KEY: Final = "skill"
# The artifact that carries a completed task's output.
RESULT_ARTIFACT: Final = "result"
# Task metadata of an ended task: who ran it, how often, how long (ResultPayload's fields).
RESULT_METADATA: Final = ("agentId", "attempts", "latencyMs", "revision", "reason", "finishedAt")


def a2a_path(namespace: str, fleet: str) -> str:
    """The path of a fleet's A2A endpoint; its Agent Card is under it."""
    return f"{A2A_PREFIX}/{namespace}/{fleet}/"


def a2a_url(gateway_url: str, namespace: str, fleet: str) -> str:
    """The fleet's A2A endpoint on the gateway at ``gateway_url``."""
    return gateway_url.rstrip("/") + a2a_path(namespace, fleet)


def live_path(namespace: str, fleet: str) -> str:
    """The path of a fleet's live feed (WebSocket) and page; `/events` under it is the SSE feed."""
    return f"{LIVE_PREFIX}/{namespace}/{fleet}"


def reviews_path(namespace: str, fleet: str, review: str = "") -> str:
    """The path of a fleet's review queue, or of one review (or `feedback`) in it."""
    base = f"{REVIEWS_PREFIX}/{namespace}/{fleet}"
    return f"{base}/{review}" if review else base
