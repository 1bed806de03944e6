"""`python -m newfuse`: run the operator."""

from __future__ import annotations

import asyncio
import logging
import sys

import kopf
from prometheus_client import start_http_server

from newfuse.adapters.redis_connect import redacted
from newfuse.config import OperatorConfig
from newfuse.handlers.operator import build_registry
from newfuse.observability import configure_logging
from newfuse.tracing import configure_tracing


def main() -> int:
    """Read the configuration, then run kopf with the operator's handlers until stopped."""
    try:
        config = OperatorConfig.from_env()
    except ValueError as exc:
        print(f"newfuse: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_format, config.log_level)
    configure_tracing(config.trace_exporter, "newfuse-operator")
    if config.metrics_port:
        start_http_server(config.metrics_port, addr=config.metrics_address)
    logging.getLogger("newfuse").info(
        "starting",
        extra={"namespaces": list(config.namespaces) or "all", "redis": redacted(config.redis_url)},
    )
    asyncio.run(
        kopf.operator(
            registry=build_registry(config),
            standalone=True,
            clusterwide=not config.namespaces,
            namespaces=config.namespaces,
            liveness_endpoint=config.health_endpoint,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
