"""`newfuse-gateway` (`python -m newfuse.fleetapi`): serve each fleet's A2A endpoint (uvicorn)."""

from __future__ import annotations

import logging
import os
import socket
import sys

import httpx
import uvicorn

from newfuse.adapters.kube import load_config
from newfuse.adapters.kubeauth import KubeAuth
from newfuse.adapters.redis_connect import connect, redacted
from newfuse.fleetapi.app import Guard, create_app
from newfuse.fleetapi.auth import Authenticator, Authorizer, OidcIssuer
from newfuse.fleetapi.config import Auth, GatewayConfig, OidcIssuerConfig
from newfuse.fleetapi.fleets import Fleets
from newfuse.fleetapi.pushconfig import screen_for
from newfuse.fleetapi.tasks import FleetTaskHandler
from newfuse.fleetapi.webhooks import Pusher, PushSettings


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
    screen = screen_for(allow_private=config.push_allow_private)
    handler = FleetTaskHandler(send_wait=config.send_wait_seconds, push_screen=screen)
    settings = PushSettings(
        config.push_attempts, config.push_backoff_seconds, config.push_timeout_seconds
    )
    consumer = f"{socket.gethostname()}-{os.getpid()}"
    pusher = Pusher(fleets.client, fleets, screen, settings, consumer)
    try:
        guard = _guard(config)
    except (OSError, ValueError, KeyError, httpx.HTTPError) as exc:
        print(f"newfuse-gateway: {exc}", file=sys.stderr)
        return 2
    if guard is None:
        logging.getLogger("newfuse").warning(
            "NEWFUSE_GATEWAY_AUTH=none: every caller may do anything"
        )
    app = create_app(fleets, handler, config.public_url, guard, pusher)
    uvicorn.run(app, host=config.host, port=config.port, log_level="info", access_log=False)
    return 0


def _jwks_uri(issuer: OidcIssuerConfig) -> str:
    """The issuer's JWKS URI: configured, or from its discovery document."""
    if issuer.jwks_uri:
        return issuer.jwks_uri
    discovery = issuer.issuer.rstrip("/") + "/.well-known/openid-configuration"
    reply = httpx.get(discovery, timeout=10)
    reply.raise_for_status()
    return str(reply.json()["jwks_uri"])


def _guard(config: GatewayConfig) -> Guard | None:
    if config.auth is Auth.NONE:
        return None
    kube = KubeAuth(load_config(config.kubeconfig, pool_size=8))
    oidc = [
        OidcIssuer(
            issuer=o.issuer,
            audience=o.audience,
            jwks_uri=_jwks_uri(o),
            username_claim=o.username_claim,
            groups_claim=o.groups_claim,
            prefix=o.prefix,
        )
        for o in config.oidc_issuers
    ]
    return Guard(
        Authenticator(kube, config.audience, oidc),
        Authorizer(kube, ttl=config.decision_cache_seconds),
    )


if __name__ == "__main__":
    sys.exit(main())
