"""`python -m newfuse`: run the operator."""

from __future__ import annotations

import asyncio
import logging
import sys

import kopf
import uvloop
from pydantic import SecretStr

from newfuse.adapters.kube import load_config
from newfuse.adapters.kuberest import RawSecrets
from newfuse.adapters.redis_connect import redacted
from newfuse.adapters.signing_secret import ensure_signing_key
from newfuse.config import OperatorConfig
from newfuse.handlers.operator import build_registry
from newfuse.metricsserver import start_metrics_server
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
    config = with_signing_key(config)
    if config.metrics_port:
        start_metrics_server(config.metrics_port, config.metrics_address)
    logging.getLogger("newfuse").info(
        "starting",
        extra={"namespaces": list(config.namespaces) or "all", "redis": redacted(config.redis_url)},
    )
    operator = kopf.operator(
        registry=build_registry(config),
        standalone=True,
        clusterwide=not config.namespaces,
        namespaces=config.namespaces,
        liveness_endpoint=config.health_endpoint,
    )
    # uvloop, as in the agents: at thousands of fleets the loop's own bookkeeping (watch streams,
    # timers, a task per event) is a fair share of the operator's CPU.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(operator)
    return 0


def with_signing_key(config: OperatorConfig) -> OperatorConfig:
    """``config`` with the key from NEWFUSE_SIGNING_SECRET when no key was given directly.

    The chart's first start has no key yet: the Secret is created here, before anything signs.
    """
    if config.signing_key is not None or not config.signing_secret:
        return config
    name, key = config.signing_secret.split("/", 1)
    namespace = str(config.signing_secret_namespace)
    with load_config(config.kubeconfig, pool_size=1) as api:
        value = ensure_signing_key(RawSecrets(api), namespace, name, key)
    return config.model_copy(update={"signing_key": SecretStr(value)})


if __name__ == "__main__":
    sys.exit(main())
