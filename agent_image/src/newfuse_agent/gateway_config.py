"""How an agent reaches its fleet's model gateway, read from the variables the operator sets.

Every setting is checked when it is read, so a typo in a fleet's `spec.gateway` stops the agent
with a message naming the variable instead of surfacing as a hung or spinning client later.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import ValidationError

from newfuse.wire.agentenv import AgentEnv
from newfuse.wire.usage import PRICES, Price
from newfuse_agent.ratelimit import DEFAULT_MAX_WAIT_SECONDS

ENV_ENDPOINT = AgentEnv.GATEWAY_ENDPOINT
ENV_MODEL = AgentEnv.GATEWAY_MODEL
ENV_API_KEY = AgentEnv.GATEWAY_API_KEY
ENV_TIMEOUT = AgentEnv.GATEWAY_TIMEOUT_SECONDS
ENV_RATE_LIMIT = AgentEnv.GATEWAY_RATE_LIMIT
ENV_PRICES = AgentEnv.GATEWAY_PRICES

DEFAULT_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class GatewayConfig:
    """How to reach the model gateway, and how hard to try."""

    endpoint: str
    model: str | None = None
    api_key: str | None = None
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    rate_limit_per_second: float | None = None
    rate_limit_max_wait_seconds: float = DEFAULT_MAX_WAIT_SECONDS
    max_retries: int = 3
    backoff_base_seconds: float = 0.2
    backoff_max_seconds: float = 5.0
    breaker_failure_threshold: int = 5
    breaker_recovery_seconds: float = 30.0
    prices: tuple[Price, ...] = ()

    def __post_init__(self) -> None:
        """Reject settings that would make the client hang, spin or never retry sensibly."""
        if not self.endpoint:
            raise ValueError("gateway endpoint must not be empty")
        if not _positive(self.timeout_seconds):
            raise ValueError(f"timeout_seconds must be > 0, got {self.timeout_seconds!r}")
        if self.rate_limit_per_second is not None and not _positive(self.rate_limit_per_second):
            raise ValueError(
                f"rate_limit_per_second must be > 0 or None, got {self.rate_limit_per_second!r}"
            )
        if not (
            math.isfinite(self.rate_limit_max_wait_seconds)
            and self.rate_limit_max_wait_seconds >= 0
        ):
            raise ValueError(
                "rate_limit_max_wait_seconds must be a finite number >= 0, got "
                f"{self.rate_limit_max_wait_seconds!r}"
            )
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.backoff_base_seconds < 0 or self.backoff_max_seconds < 0:
            raise ValueError("backoff times must be >= 0")
        if self.breaker_failure_threshold < 1:
            raise ValueError("breaker_failure_threshold must be >= 1")
        if self.breaker_recovery_seconds < 0:
            raise ValueError("breaker_recovery_seconds must be >= 0")

    @property
    def completions_url(self) -> str:
        """The chat-completions URL under the endpoint."""
        return f"{self.endpoint.rstrip('/')}/chat/completions"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GatewayConfig | None:
        """Read the NEWFUSE_GATEWAY_* variables the operator sets; None when no endpoint is set.

        Raises ValueError naming the variable when a value is malformed.
        """
        endpoint = env.get(ENV_ENDPOINT, "").strip()
        if not endpoint:
            return None
        timeout = _float_env(env, ENV_TIMEOUT)
        return cls(
            endpoint=endpoint,
            model=env.get(ENV_MODEL, "").strip() or None,
            api_key=env.get(ENV_API_KEY, "").strip() or None,
            timeout_seconds=DEFAULT_TIMEOUT_SECONDS if timeout is None else timeout,
            rate_limit_per_second=_float_env(env, ENV_RATE_LIMIT),
            prices=_prices(env.get(ENV_PRICES, "")),
        )


def _prices(raw: str) -> tuple[Price, ...]:
    if not raw.strip():
        return ()
    try:
        return tuple(PRICES.validate_json(raw))
    except ValidationError as exc:
        raise ValueError(f"{ENV_PRICES}: not a price table: {exc.errors()[0]['msg']}") from None


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def _float_env(env: Mapping[str, str], name: str) -> float | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}: not a number: {raw!r}") from None
    if not _positive(value):
        raise ValueError(f"{name}: must be a positive number, got {raw!r}")
    return value
