"""Prometheus metrics, OpenTelemetry tracing and JSON logs for the operator process."""

from __future__ import annotations

import logging
import sys

from opentelemetry import trace
from prometheus_client import Counter, Gauge, Histogram
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from newfuse.config import LogFormat
from newfuse.fleetgauges import FLEET_GAUGES
from newfuse.logcontext import ContextFilter

KOPF_EXTRAS = ("settings", "k8s_ref", "k8s_skip")

RECONCILES = Counter("newfuse_reconciles_total", "Fleet reconciles, by result.", ["result"])
RECONCILE_SECONDS = Histogram(
    "newfuse_reconcile_duration_seconds",
    "Time one fleet reconcile takes.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
FLEETS = Gauge("newfuse_fleets", "NewFuseAgent resources, by phase.", ["phase"])
PODS_MANAGED = Gauge("newfuse_pods_managed", "Agent pods the operator owns.")
POD_ACTIONS = Counter("newfuse_pod_actions_total", "Pods created or deleted.", ["action", "reason"])
REDIS_UP = Gauge(
    "newfuse_redis_up", "1 while the Redis circuit is closed: the last call reached Redis."
)
REDIS_MALFORMED_RECORDS = Counter(
    "newfuse_redis_malformed_records",
    "Agent-written Redis records skipped as malformed, by hash.",
    ["key"],
)
QUEUE_DEPTH = Gauge("newfuse_workqueue_depth", "Fleets waiting for reconcile.")
ROLLOUT_PHASE = Gauge("newfuse_rollout_phase", "Fleets by phased-rollout phase.", ["phase"])
ROLLOUT_SECONDS = Histogram(
    "newfuse_rollout_duration_seconds",
    "From a rollout's start to its end (completed, rolled back or aborted), by outcome.",
    ["outcome"],
    buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
)
GATE_VERDICTS = Counter("newfuse_rollout_gate_verdicts_total", "Rollout gate verdicts.", ["result"])
FLEET_SPEND = FLEET_GAUGES.gauge(
    "newfuse_fleet_spend_today",
    "A fleet's model spend this UTC day, as its agents report it: unit cost or tokens.",
    "unit",
)
GOLDEN_PASS_RATE = FLEET_GAUGES.gauge(
    "newfuse_rollout_golden_pass_rate",
    "Share of the current rollout step's golden cases answered right, by canary or stable.",
    "role",
)
PROTOCOL_SEEN = FLEET_GAUGES.gauge(
    "newfuse_fleet_protocol_seen_seconds",
    "Seconds since a task of each protocol major was last submitted or taken (read while a "
    "rollout is in flight: the protocol gate's input).",
    "major",
)
LEADER = Gauge("newfuse_leader", "1 while this process holds the leader Lease (or runs alone).")
DEAD_LETTERS = FLEET_GAUGES.gauge(
    "newfuse_dead_letters", "Entries in a fleet's dead-letter stream."
)
FLEET_BACKLOG = FLEET_GAUGES.gauge(
    "newfuse_fleet_backlog",
    "Tasks of a fleet not yet delivered to any agent, by priority.",
    "priority",
)
FLEET_OLDEST_WAITING = FLEET_GAUGES.gauge(
    "newfuse_fleet_oldest_waiting_seconds",
    "How long the oldest waiting task of a fleet has waited, by priority (0: none waits).",
    "priority",
)

tracer = trace.get_tracer("newfuse.operator")


def configure_logging(fmt: LogFormat, level: str) -> None:
    """JSON lines on stdout (one object per line, for log shippers) or plain text."""
    handler = logging.StreamHandler(sys.stdout)
    if fmt is LogFormat.JSON:
        handler.setFormatter(
            JsonFormatter(
                "{asctime}{levelname}{name}{message}",
                style="{",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                # kopf's log records carry its settings and object references as extras: they are
                # not JSON, and each one used to print a "Logging error" traceback instead.
                reserved_attrs=[*RESERVED_ATTRS, *KOPF_EXTRAS],
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # kopf's health endpoint logs every request: a line per kubelet probe, forever. Its failures
    # still show (WARNING and up); DEBUG keeps them all.
    quiet = level.upper() != "DEBUG"
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING if quiet else logging.NOTSET)
