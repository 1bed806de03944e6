"""Chart fixes that `helm template` alone can show (no cluster): issue 12's four chart gaps.

- The default render is the same bytes every time, so a GitOps tool that renders with `helm
  template` (Argo CD) sees no drift and rotates no key: the chart renders no signing key.
- The PodDisruptionBudget exists only with more than one replica: at one, minAvailable 1 would
  forbid every eviction and no node drain could finish.
- The trial Redis's password is in no process's arguments (`ps` shows those to every user of
  the node), nor in its environment: redis-server reads a mounted config file, the probe's
  redis-cli gets REDISCLI_AUTH inside its shell from the mounted password file.
tests/integration/test_chart_*.py check the rest of the wiring against an API server.
"""

from __future__ import annotations

import base64
import json

import pytest

from helm_chart import docs, operator_cluster_roles, template


@pytest.mark.parametrize(
    "sets",
    [[], ["rbac.namespaced=true", "watchNamespaces={team-a}"], ["networkPolicy.enabled=true"]],
    ids=["defaults", "namespaced", "network-policies"],
)
def test_rendering_twice_gives_the_same_bytes(sets: list[str]) -> None:
    first = template(*sets)
    assert template(*sets) == first
    assert "kind: Secret" not in first, "no generated key material"


@pytest.mark.parametrize(("replicas", "pdb"), [(1, False), (2, True), (3, True)])
def test_the_pdb_exists_only_with_more_than_one_replica(replicas: int, pdb: bool) -> None:
    rendered = docs(f"replicaCount={replicas}")
    assert bool([d for d in rendered if d["kind"] == "PodDisruptionBudget"]) is pdb


def test_the_trial_redis_password_is_never_an_argument_or_env_value() -> None:
    rendered = docs("redis.internal.enabled=true")
    secrets = {d["metadata"]["name"]: d for d in rendered if d["kind"] == "Secret"}
    secret = secrets["nf-newfuse-operator-redis"]
    [redis] = [
        d
        for d in rendered
        if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-redis")
    ]
    [container] = redis["spec"]["template"]["spec"]["containers"]
    argv = [*container["command"], *container["args"]]
    probe = container["readinessProbe"]["exec"]["command"]
    for process in (argv, probe):
        assert not [a for a in process if "requirepass" in a or "REDIS_PASSWORD" in a], process
        assert "-a" not in process, process
    assert "env" not in container
    assert argv[:2] == ["redis-server", "/etc/redis/auth/auth.conf"]
    assert set(secret["data"]) == {"password", "auth.conf"}
    assert probe[-1].startswith('REDISCLI_AUTH="$(cat /etc/redis/auth/password)" redis-cli ping')
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/etc/redis/auth"] == {
        "name": "auth",
        "mountPath": "/etc/redis/auth",
        "readOnly": True,
    }
    # The password itself appears nowhere in the Deployment.
    password = base64.b64decode(secret["data"]["password"]).decode()
    assert len(password) == 32
    assert password not in json.dumps(redis)


@pytest.mark.parametrize(
    ("sets", "env", "secrets_rule"),
    [
        ((), {"NEWFUSE_PER_FLEET_KEYS": "false", "NEWFUSE_MANAGE_REDIS_USERS": "false"}, False),
        (("signing.perFleetKeys=true",), {"NEWFUSE_PER_FLEET_KEYS": "true"}, True),
        (("redis.perFleetUsers=true",), {"NEWFUSE_MANAGE_REDIS_USERS": "true"}, True),
    ],
    ids=["defaults", "per-fleet keys", "per-fleet Redis users"],
)
def test_per_fleet_credentials_switch_the_operator_and_its_secret_rights(
    sets: tuple[str, ...], env: dict[str, str], secrets_rule: bool
) -> None:
    rendered = docs(*sets)
    [deployment] = [d for d in rendered if d["kind"] == "Deployment"]
    values = {
        e["name"]: e.get("value")
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert {k: values[k] for k in env} == env
    [cluster_role] = operator_cluster_roles(rendered)
    granted = [r for r in cluster_role["rules"] if "secrets" in r["resources"]]
    assert granted == (
        [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create"]}]
        if secrets_rule
        else []
    )
