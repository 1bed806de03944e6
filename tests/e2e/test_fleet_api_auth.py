"""Who may call the fleet API: real ServiceAccount tokens, RBAC on the real API server, and a
token issuer the test serves itself.

The gateway runs with its default settings (auth on, decisions cached 10 s).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
import redis
from kubernetes import client as k8s_client

from fleetapi_auth import (
    AUDIENCE,
    SUBMITTER,
    VIEWER,
    OidcIssuer,
    apply_chart_roles,
    bind_user,
    oidc_issuer,
    service_account,
    token_for,
)
from gatewayproc import GatewayProcess
from harness import Cluster, Fleets, RedisHandle, start_fleet
from localcluster import wait_for
from localcluster.podrunner import PodRunnerProcess

pytestmark = pytest.mark.usefixtures("operator")


@pytest.fixture(scope="module")
def issuer() -> Iterator[OidcIssuer]:
    with oidc_issuer() as running:
        yield running


@pytest.fixture
def gateway(
    redis_server: RedisHandle, cluster: Cluster, issuer: OidcIssuer, k8s_api: k8s_client.ApiClient
) -> Iterator[GatewayProcess]:
    apply_chart_roles(k8s_api)
    trusted = [{"issuer": issuer.url, "audience": "newfuse-tests"}]
    with GatewayProcess(
        redis_server.url,
        NEWFUSE_KUBECONFIG=str(cluster.kubeconfig),
        NEWFUSE_GATEWAY_OIDC_ISSUERS=json.dumps(trusted),
    ) as running:
        yield running


@pytest.fixture
def two_fleets(fleets: Fleets, pod_runner: PodRunnerProcess, redis_client: redis.Redis) -> None:
    for name in ("fleet-a", "fleet-b"):
        start_fleet(fleets, pod_runner, redis_client, name, 1, capabilities=["echo"])


def _send(gateway: GatewayProcess, namespace: str, fleet: str, token: str | None) -> httpx.Response:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "SendMessage",
        "params": {
            "message": {"messageId": uuid.uuid4().hex, "role": "ROLE_USER",
                        "parts": [{"text": "hi"}], "metadata": {"skill": "echo"}},
        },
    }  # fmt: skip
    headers = {"A2A-Version": "1.0"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.post(gateway.fleet_url(namespace, fleet), json=body, headers=headers, timeout=60)


def _completed(reply: httpx.Response) -> bool:
    assert reply.status_code == 200, reply.text
    return bool(reply.json()["result"]["task"]["status"]["state"] == "TASK_STATE_COMPLETED")


def test_a_token_rbac_allows_on_fleet_a_submits_to_a_and_gets_403_on_b(
    gateway: GatewayProcess, fleets: Fleets, two_fleets: None, k8s_api: k8s_client.ApiClient
) -> None:
    ns = fleets.namespace
    token = service_account(k8s_api, ns, "only-a", fleets=["fleet-a"])
    assert _completed(_send(gateway, ns, "fleet-a", token))
    refused = _send(gateway, ns, "fleet-b", token)
    assert refused.status_code == 403, refused.text
    assert f"system:serviceaccount:{ns}:only-a" in refused.json()["error"]
    assert "fleet-b" in refused.json()["error"]
    scraped = httpx.get(gateway.url + "/metrics", timeout=10)
    assert scraped.status_code == 200, scraped.status_code
    metrics = scraped.text
    assert 'newfuse_gateway_calls_total{status="200"} 1.0' in metrics
    assert 'newfuse_gateway_calls_total{status="403"} 1.0' in metrics
    # Both tokens were verified with the API server's published keys, with no TokenReview.
    assert 'newfuse_gateway_tokens_verified_total{by="jwks"} 2.0' in metrics
    assert 'by="tokenreview"' not in metrics


def test_the_chart_roles_let_submitters_send_and_viewers_only_read(
    gateway: GatewayProcess, fleets: Fleets, two_fleets: None, k8s_api: k8s_client.ApiClient
) -> None:
    ns = fleets.namespace
    submitter = service_account(k8s_api, ns, "submitter", cluster_role=SUBMITTER)
    viewer = service_account(k8s_api, ns, "viewer", cluster_role=VIEWER)
    sent = _send(gateway, ns, "fleet-b", submitter)
    assert _completed(sent)
    assert _send(gateway, ns, "fleet-b", viewer).status_code == 403
    task_id = sent.json()["result"]["task"]["id"]
    get = {"jsonrpc": "2.0", "id": 2, "method": "GetTask", "params": {"id": task_id}}
    reply = httpx.post(
        gateway.fleet_url(ns, "fleet-b"),
        json=get,
        headers={"A2A-Version": "1.0", "Authorization": f"Bearer {viewer}"},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["result"]["id"] == task_id


def _forged(token: str) -> str:
    """The token with its subject changed and the API server's signature kept."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "system:serviceaccount:kube-system:admin"
    changed = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{changed}.{signature}"


def _self_signed(token: str, issuer: OidcIssuer) -> str:
    """The same claims and key id, signed by a key that is not the API server's."""
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    kid = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))["kid"]
    return jwt.encode(claims, issuer.key, algorithm="RS256", headers={"kid": kid})


def test_expired_forged_and_wrong_audience_tokens_get_401(
    gateway: GatewayProcess,
    fleets: Fleets,
    two_fleets: None,
    k8s_api: k8s_client.ApiClient,
    issuer: OidcIssuer,
) -> None:
    ns = fleets.namespace
    good = service_account(k8s_api, ns, "caller", cluster_role=SUBMITTER)
    assert _completed(_send(gateway, ns, "fleet-a", good))
    bind_user(k8s_api, ns, "oidc:alice", SUBMITTER)
    refused: dict[str, Any] = {
        "no token": None,
        "not a JWT": "not-a-token",
        "forged subject": _forged(good),
        "signed by another key": _self_signed(good, issuer),
        "wrong audience": token_for(k8s_api, ns, "caller", audience="someone-else"),
        "expired": issuer.token("alice", "newfuse-tests", expires_in=-60),
        "OIDC token for another audience": issuer.token("alice", AUDIENCE),
    }
    for case, token in refused.items():
        reply = _send(gateway, ns, "fleet-a", token)
        assert reply.status_code == 401, f"{case}: {reply.status_code} {reply.text}"
        assert reply.headers["WWW-Authenticate"].startswith("Bearer"), case
    assert "expired" in _send(gateway, ns, "fleet-a", refused["expired"]).json()["error"]


def test_a_token_of_a_configured_oidc_issuer_works_and_rbac_sees_its_user(
    gateway: GatewayProcess,
    fleets: Fleets,
    two_fleets: None,
    k8s_api: k8s_client.ApiClient,
    issuer: OidcIssuer,
) -> None:
    ns = fleets.namespace
    token = issuer.token("bob", "newfuse-tests", groups=["team-b"])
    assert _send(gateway, ns, "fleet-a", token).status_code == 403, "bound to nothing yet"
    bind_user(k8s_api, ns, "oidc:bob", SUBMITTER)
    # Decisions are cached for 10 s by default: a new grant shows within that.
    wait_for(lambda: _send(gateway, ns, "fleet-a", token).status_code == 200, 30, what="the grant")
    assert _completed(_send(gateway, ns, "fleet-a", token))


def test_the_agent_card_is_public_and_names_the_bearer_scheme(
    gateway: GatewayProcess, fleets: Fleets, two_fleets: None
) -> None:
    card = httpx.get(
        gateway.fleet_url(fleets.namespace, "fleet-a") + ".well-known/agent-card.json", timeout=10
    ).json()
    assert card["securitySchemes"]["bearer"]["httpAuthSecurityScheme"]["scheme"] == "Bearer"
    assert card["securityRequirements"] == [{"schemes": {"bearer": {}}}]
