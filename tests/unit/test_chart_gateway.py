"""The chart's fleet API gateway (gateway.enabled), as `helm template` renders it.

What a wrong render would break on a user's cluster: a gateway selector that also matches the
operator's pods (the Service would send A2A calls to the operator), a container that is not
restricted (admission refuses it under Pod Security `restricted`), a gateway that cannot reach
the Redis the operator uses, or an operator that does not name the gateway in fleet status.
"""

from __future__ import annotations

from typing import Any

import pytest

from helm_chart import docs
from newfuse.fleetapi.config import env_var

pytestmark = pytest.mark.unit
GATEWAY = "nf-newfuse-operator-gateway"
ENV_GATEWAY_URL = "NEWFUSE_GATEWAY_URL"  # the operator's (OperatorConfig.gateway_url)


def _named(rendered: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [found] = [d for d in rendered if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def _env(deployment: dict[str, Any]) -> dict[str, Any]:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_no_gateway_by_default() -> None:
    rendered = docs()
    assert not [d for d in rendered if d["metadata"]["name"].startswith(GATEWAY)]
    operator = _named(rendered, "Deployment", "nf-newfuse-operator")
    assert ENV_GATEWAY_URL not in _env(operator)


def test_the_gateway_selects_only_its_own_pods_and_the_operator_names_it() -> None:
    rendered = docs("gateway.enabled=true", "networkPolicy.enabled=true")
    gateway = _named(rendered, "Deployment", GATEWAY)
    operator = _named(rendered, "Deployment", "nf-newfuse-operator")
    mine = gateway["spec"]["selector"]["matchLabels"]
    theirs = operator["spec"]["template"]["metadata"]["labels"]
    assert not mine.items() <= theirs.items(), "the gateway's selector must not match the operator"
    service = _named(rendered, "Service", GATEWAY)
    assert service["spec"]["selector"] == mine
    assert _named(rendered, "NetworkPolicy", GATEWAY)["spec"]["podSelector"]["matchLabels"] == mine
    url = "http://nf-newfuse-operator-gateway.newfuse-system.svc:8080"
    assert _env(operator)[ENV_GATEWAY_URL] == url
    env = _env(gateway)
    assert env[env_var("public_url")] == url
    told = (env[env_var("auth")], env[env_var("audience")], env[env_var("port")])
    assert told == ("kubernetes", "newfuse-gateway", "8080")
    assert env[env_var("redis_url")] == _env(operator)[env_var("redis_url")]


def test_the_gateway_is_restricted_and_reviews_nothing_but_tokens_and_access() -> None:
    rendered = docs("gateway.enabled=true")
    pod = _named(rendered, "Deployment", GATEWAY)["spec"]["template"]["spec"]
    [container] = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    rules = _named(rendered, "ClusterRole", GATEWAY)["rules"]
    resources = {r for rule in rules for r in rule.get("resources", ())}
    assert resources == {"tokenreviews", "subjectaccessreviews"}
    assert all("*" not in rule["verbs"] for rule in rules)


def test_one_gateway_replica_has_no_pdb() -> None:
    rendered = docs("gateway.enabled=true", "gateway.replicaCount=1")
    budgets = [d["metadata"]["name"] for d in rendered if d["kind"] == "PodDisruptionBudget"]
    assert GATEWAY not in budgets
