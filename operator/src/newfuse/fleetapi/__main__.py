"""`newfuse-gateway` (`python -m newfuse.fleetapi`): serve each fleet's A2A endpoint (uvicorn)."""

from __future__ import annotations

import logging
import sys

import uvicorn

from newfuse.adapters.redis_connect import connect, redacted
from newfuse.fleetapi.app import create_app
from newfuse.fleetapi.config import GatewayConfig
from newfuse.fleetapi.fleets import Fleets
from newfuse.fleetapi.tasks import FleetTaskHandler


def main() -> int:
    """Read the configuration, then serve until stopped (SIGTERM: uvicorn's graceful shutdown)."""
    try:
        config = GatewayConfig.from_env()
    except ValueError as exc:
        print(f"newfuse-gateway: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO)
    logging.getLogger("newfuse").info(
        "gateway on %s:%s, redis %s", config.host, config.port, redacted(config.redis_url)
    )
    fleets = Fleets(
        connect(config.redis_url, timeout=30, ca_file=config.redis_ca_file),
        signing_key=config.signing_key_bytes,
        encryption_key=config.encryption_key_bytes,
    )
    handler = FleetTaskHandler(send_wait=config.send_wait_seconds)
    app = create_app(fleets, handler, config.public_url)
    uvicorn.run(app, host=config.host, port=config.port, log_level="info", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
