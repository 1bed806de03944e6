"""The gateway's Prometheus series (served at /metrics, documented in the README's tables)."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

CALLS: Final = Counter(
    "newfuse_gateway_calls_total",
    "Fleet API JSON-RPC calls, by the HTTP status answered (401, 403 and 404 are refusals).",
    ["status"],
)
STREAMS: Final = Gauge("newfuse_gateway_streams", "Event streams (SSE) the gateway holds open.")
WATCHERS: Final = Gauge(
    "newfuse_gateway_watchers", "Live-feed clients (WebSocket and SSE) the gateway serves."
)
WATCHERS_CUT: Final = Counter(
    "newfuse_gateway_watchers_cut_total",
    "Live-feed clients disconnected because they fell a whole queue behind (slow consumers).",
)
TOKENS: Final = Counter(
    "newfuse_gateway_tokens_verified_total",
    "Bearer tokens checked, by how: jwks (the API server's keys, locally), tokenreview (asked "
    "the API server), oidc (a configured issuer's keys).",
    ["by"],
)
PUSHES: Final = Counter(
    "newfuse_gateway_webhooks_total",
    "Webhook deliveries (push notifications), by outcome: delivered, or dead (given up on and "
    "recorded in the fleet's push dead-letter stream).",
    ["outcome"],
)
REVIEWS: Final = Counter(
    "newfuse_gateway_reviews_total",
    "Review decisions taken through the gateway, by verdict (approve, reject, answer), and "
    "decisions refused (refused: expired, already decided, or not fitting the question).",
    ["verdict"],
)
REVIEW_SECONDS: Final = Histogram(
    "newfuse_gateway_review_decision_seconds",
    "From a review's request to a reviewer's decision through the gateway.",
    buckets=(1, 5, 30, 60, 300, 900, 3600, 4 * 3600, 86400, 7 * 86400),
)
