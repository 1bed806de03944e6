"""The client agents use to call the fleet's OpenAI-compatible model gateway.

A model gateway is slow, rate-limited and sometimes down; a fleet of agents calling it naively
would pile up hung requests, hammer it while it recovers and overrun its quota. So every call:
- has a timeout (httpx), so no task hangs on a dead connection;
- is retried with exponential backoff and full jitter (tenacity) on what another attempt can fix:
  connection errors, timeouts, HTTP 429 and 5xx (a 429's Retry-After is honoured, up to the
  backoff cap). Any other 4xx is the request's fault: it fails the task at once;
- goes through a circuit breaker: after `breaker_failure_threshold` consecutive failed calls (a
  call fails once its retries are spent) the circuit opens and calls fail fast, without touching
  the network, for `breaker_recovery_seconds`; then one trial call is let through (half-open) and
  its outcome closes or re-opens the circuit. A 4xx rejection proves the gateway is up, so it
  counts as a success for the breaker: one malformed task must not cut the fleet off. A 2xx that
  is not a JSON object is not retried but counts as a failure: the gateway is broken;
- waits for the fleet-wide rate limiter (ratelimit.RedisTokenBucket) before each HTTP attempt,
  retries included, since each attempt spends the gateway's quota; at most
  `rate_limit_max_wait_seconds`: a call whose slot would be further out fails at once, retryably.

A retryable failure says when another try makes sense (HandlerError.retry_after) and whether the
work was tried at all (counts_as_attempt): the task runtime schedules its task-level retries from
them. An open circuit answers "after the recovery time, and this was no attempt"; a call whose
retries are spent on 429/5xx answers with the later of the gateway's last Retry-After and the
circuit's recovery time, if it just opened; the rate limiter answers with the wait it refused.

The circuit breaker is newfuse_agent.breaker (hand-written; that module says why).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import httpx
import redis.asyncio as aioredis
from prometheus_client import Counter, Gauge
from redis.exceptions import RedisError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from newfuse.wire.keys import FleetKeys
from newfuse_agent import usage
from newfuse_agent.breaker import Admission as Admission
from newfuse_agent.breaker import CircuitBreaker as CircuitBreaker
from newfuse_agent.breaker import CircuitState as CircuitState
from newfuse_agent.contract import HandlerError
from newfuse_agent.gateway_config import DEFAULT_TIMEOUT_SECONDS as DEFAULT_TIMEOUT_SECONDS
from newfuse_agent.gateway_config import GatewayConfig as GatewayConfig
from newfuse_agent.ratelimit import RateLimitedError, RedisTokenBucket

log = logging.getLogger(__name__)

# When a half-open circuit refuses a call because its one trial is still running, a caller should
# come back about this much later (the retry_after it is given).
HALF_OPEN_RETRY_SECONDS = 1.0
# How much of a gateway's error body goes into an error message.
_MAX_DETAIL_CHARS = 300


class GatewayOutcome(StrEnum):
    """What became of one gateway call (or, for RETRY, of one attempt)."""

    SUCCESS = "success"
    RETRY = "retry"
    FAILURE = "failure"
    CIRCUIT_OPEN = "circuit_open"
    RATE_LIMITED = "rate_limited"


CIRCUIT_STATE_VALUES: Mapping[CircuitState, int] = {
    CircuitState.CLOSED: 0,
    CircuitState.OPEN: 1,
    CircuitState.HALF_OPEN: 2,
}

GATEWAY_REQUESTS = Counter(
    "newfuse_agent_gateway_requests_total",
    "Model gateway calls by outcome (retry counts attempts that will be tried again).",
    ["outcome"],
)
CIRCUIT_STATE_GAUGE = Gauge(
    "newfuse_agent_gateway_circuit_state",
    "The model gateway circuit breaker: 0 closed, 1 open, 2 half-open.",
)


@dataclass
class _Call:
    """What one chat() call learnt across its attempts."""

    # Whether a request went out (the work was tried), and until when (on the client's clock) the
    # gateway's latest Retry-After asked us to stay away.
    sent: bool = False
    retry_at: float | None = None


class _RetryableGatewayError(Exception):
    """A failure another attempt may fix: connection error, timeout, HTTP 429 or 5xx."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _BadResponseError(Exception):
    """A 2xx answer that is not a JSON object: the gateway misbehaves, but retrying won't help."""


class _RequestRejectedError(Exception):
    """The gateway answered and refused this request (a 4xx other than 429, or a 3xx)."""


class _CannotCallError(Exception):
    """The request cannot be sent at all (a malformed URL, say): no attempt will get through."""


def _retry_after_seconds(response: httpx.Response) -> float | None:
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _detail(response: httpx.Response) -> str:
    return response.text[:_MAX_DETAIL_CHARS].strip()


def _set_circuit_gauge(state: CircuitState) -> None:
    CIRCUIT_STATE_GAUGE.set(CIRCUIT_STATE_VALUES[state])
    log.log(
        logging.WARNING if state is CircuitState.OPEN else logging.INFO,
        "model gateway circuit is now %s",
        state,
    )


class GatewayClient:
    """Calls `POST {endpoint}/chat/completions` with timeouts, retries, a breaker and a rate limit.

    The rate limit applies when the config has one and ``redis`` and ``keys`` are given; it is
    shared with every agent of the fleet through ``keys.rate_limit``.
    """

    def __init__(
        self,
        config: GatewayConfig,
        redis: aioredis.Redis | None = None,
        keys: FleetKeys | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """Prepare a client; no connection is made until the first call."""
        self.config = config
        self._clock = clock
        self._sleep = sleep
        # Full jitter: a random wait up to base * 2^attempt, so agents that failed together do
        # not come back together.
        self._jitter = wait_random_exponential(
            multiplier=config.backoff_base_seconds, max=config.backoff_max_seconds
        )
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(config.timeout_seconds))
        self.breaker = CircuitBreaker(
            config.breaker_failure_threshold,
            config.breaker_recovery_seconds,
            clock=clock,
            on_change=_set_circuit_gauge,
        )
        CIRCUIT_STATE_GAUGE.set(CIRCUIT_STATE_VALUES[CircuitState.CLOSED])
        self.limiter: RedisTokenBucket | None = None
        if config.rate_limit_per_second is not None:
            if redis is not None and keys is not None:
                self.limiter = RedisTokenBucket(
                    redis,
                    keys.rate_limit,
                    config.rate_limit_per_second,
                    max_wait_seconds=config.rate_limit_max_wait_seconds,
                    sleep=sleep,
                )
            else:
                log.warning(
                    "gateway rate limit %g/s is configured but there is no Redis to share it "
                    "through; calls are not rate limited",
                    config.rate_limit_per_second,
                )
        self._headers = {"Accept": "application/json"}
        if config.api_key:
            self._headers["Authorization"] = f"Bearer {config.api_key}"

    async def aclose(self) -> None:
        """Close the HTTP connection pool (the Redis client belongs to the caller)."""
        await self._http.aclose()

    async def chat(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        """Send one chat-completions request; return the gateway's JSON answer.

        Raises HandlerError: retryable when the circuit is open, the retries are spent, the rate
        limiter has no slot within its max wait or its Redis is unreachable; not retryable when
        the gateway rejects the request (4xx other than 429) or answers with something that is
        not a JSON object. A retryable error carries retry_after and counts_as_attempt (see the
        module docstring).
        """
        admission = self.breaker.admit()
        if admission is Admission.REFUSED:
            GATEWAY_REQUESTS.labels(GatewayOutcome.CIRCUIT_OPEN).inc()
            # Open: come back when the trial may go. Half-open: the running trial's verdict may
            # come at any moment, and asking again costs nothing but a refusal.
            open_for = self.breaker.retry_in()
            retry_after = open_for or HALF_OPEN_RETRY_SECONDS
            wait = (
                f"failing fast for {open_for:.1f}s more"
                if open_for
                else "a trial call is under way"
            )
            raise HandlerError(
                f"model gateway circuit is open after {self.breaker.consecutive_failures} "
                f"consecutive failed calls; {wait}",
                retryable=True,
                retry_after=retry_after,
                counts_as_attempt=False,
            )
        body: dict[str, Any] = {"messages": messages}
        if self.config.model:
            body["model"] = self.config.model
        call = _Call()
        verdict = False
        try:
            result = await self._with_retries(body, call)
        except _RetryableGatewayError as exc:
            verdict = True
            self.breaker.record_failure(admission)
            GATEWAY_REQUESTS.labels(GatewayOutcome.FAILURE).inc()
            attempts = self.config.max_retries + 1
            raise HandlerError(
                f"model gateway failed after {attempts} attempt(s): {exc}",
                retryable=True,
                retry_after=self._retry_after_spent(call),
            ) from exc
        except _BadResponseError as exc:
            verdict = True
            self.breaker.record_failure(admission)
            GATEWAY_REQUESTS.labels(GatewayOutcome.FAILURE).inc()
            raise HandlerError(str(exc), retryable=False) from exc
        except _RequestRejectedError as exc:
            # The gateway answered, so it is up: whatever is wrong is this request's fault.
            verdict = True
            self.breaker.record_success(admission)
            GATEWAY_REQUESTS.labels(GatewayOutcome.FAILURE).inc()
            raise HandlerError(str(exc), retryable=False) from exc
        except _CannotCallError as exc:
            GATEWAY_REQUESTS.labels(GatewayOutcome.FAILURE).inc()
            raise HandlerError(str(exc), retryable=False) from exc
        except RateLimitedError as exc:
            # Says nothing about the gateway (no verdict); the work was tried only if an earlier
            # attempt of this call was sent before a retry found no slot.
            GATEWAY_REQUESTS.labels(GatewayOutcome.RATE_LIMITED).inc()
            raise HandlerError(
                str(exc), retryable=True, retry_after=exc.wait, counts_as_attempt=call.sent
            ) from exc
        except RedisError as exc:
            GATEWAY_REQUESTS.labels(GatewayOutcome.FAILURE).inc()
            raise HandlerError(
                f"fleet rate limiter unavailable (Redis): {exc}", retryable=True
            ) from exc
        finally:
            if not verdict:
                # Success is recorded below; anything else (cancellation, Redis, a bad URL, the
                # rate limit) says nothing about the gateway but must not hold a half-open trial
                # slot forever.
                self.breaker.release(admission)
        self.breaker.record_success(admission)
        GATEWAY_REQUESTS.labels(GatewayOutcome.SUCCESS).inc()
        usage.count(result, self.config.prices, self.config.model)
        return result

    def _retry_after_spent(self, call: _Call) -> float | None:
        """When a call whose retries are spent may be tried again, if anyone said so."""
        waits = [self.breaker.retry_in()]  # > 0 if this failure opened the circuit
        if call.retry_at is not None:
            waits.append(call.retry_at - self._clock())
        longest = max(waits)
        return longest if longest > 0 else None

    async def _with_retries(self, body: dict[str, Any], call: _Call) -> dict[str, Any]:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.config.max_retries + 1),
            wait=self._backoff,
            retry=retry_if_exception_type(_RetryableGatewayError),
            before_sleep=self._count_retry,
            sleep=self._sleep,
            reraise=True,
        )
        result: dict[str, Any] = await retrying(self._attempt, body, call)
        return result

    def _backoff(self, retry_state: RetryCallState) -> float:
        jittered = self._jitter(retry_state)
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        if isinstance(error, _RetryableGatewayError) and error.retry_after is not None:
            return min(max(jittered, error.retry_after), self.config.backoff_max_seconds)
        return float(jittered)

    @staticmethod
    def _count_retry(retry_state: RetryCallState) -> None:
        GATEWAY_REQUESTS.labels(GatewayOutcome.RETRY).inc()
        outcome = retry_state.outcome
        log.info(
            "model gateway attempt %d failed, retrying: %s",
            retry_state.attempt_number,
            outcome.exception() if outcome is not None else "?",
        )

    async def _attempt(self, body: dict[str, Any], call: _Call) -> dict[str, Any]:
        if self.limiter is not None:
            await self.limiter.acquire()
        call.sent = True
        url = self.config.completions_url
        try:
            response = await self._http.post(url, json=body, headers=self._headers)
        except httpx.TimeoutException as exc:
            raise _RetryableGatewayError(
                f"no answer within {self.config.timeout_seconds:g}s ({type(exc).__name__})"
            ) from exc
        except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError) as exc:
            raise _RetryableGatewayError(f"cannot reach {url}: {exc!r}") from exc
        except httpx.HTTPError as exc:
            raise _CannotCallError(f"cannot call the model gateway at {url}: {exc!r}") from exc
        status = response.status_code
        if status == httpx.codes.TOO_MANY_REQUESTS or status >= httpx.codes.INTERNAL_SERVER_ERROR:
            retry_after = _retry_after_seconds(response)
            if retry_after is not None:
                call.retry_at = self._clock() + retry_after
            raise _RetryableGatewayError(
                f"HTTP {status}: {_detail(response)}", retry_after=retry_after
            )
        if not response.is_success:
            raise _RequestRejectedError(
                f"model gateway rejected the request: HTTP {status}: {_detail(response)}"
            )
        try:
            data = response.json()
        except ValueError as exc:
            raise _BadResponseError(
                f"model gateway answered HTTP {status} with invalid JSON: {_detail(response)}"
            ) from exc
        if not isinstance(data, dict):
            raise _BadResponseError(
                f"model gateway answered with JSON that is not an object: {type(data).__name__}"
            )
        return data
