"""How the Helm chart wires Redis: credentials only from Secrets, and the trial Redis.

The trial Redis (redis.internal) runs restricted, with one generated password that never appears
in a process's arguments, and keeps an append-only file by default.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from helm_chart import _env, render
from localcluster.binaries import Binaries


def test_redis_credentials_only_come_from_secrets(binaries: Binaries) -> None:
    env = _env(render(binaries))
    assert env["NEWFUSE_REDIS_URL"] == "redis://redis:6379/0"
    assert "NEWFUSE_AGENT_REDIS_SECRET" not in env
    assert "NEWFUSE_REDIS_CA_FILE" not in env

    docs = render(
        binaries,
        "--set",
        "redis.existingSecret=redis-creds",
        "--set",
        "redis.agentSecret.name=agent-redis",
        "--set",
        "redis.agentSecret.key=the-url",
        "--set",
        "redis.tls.caSecret.name=redis-ca",
    )
    env = _env(docs)
    assert env["NEWFUSE_REDIS_URL"] == {"secretKeyRef": {"name": "redis-creds", "key": "url"}}
    assert env["NEWFUSE_AGENT_REDIS_SECRET"] == "agent-redis/the-url"
    assert env["NEWFUSE_REDIS_CA_FILE"] == "/etc/newfuse/redis-ca/ca.crt"
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "redis-ca"]
    assert volume["secret"]["secretName"] == "redis-ca"
    assert volume["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "redis-ca"]
    assert mount == {"name": "redis-ca", "mountPath": "/etc/newfuse/redis-ca", "readOnly": True}


def test_internal_redis_is_restricted_and_uses_one_generated_password(
    binaries: Binaries,
) -> None:
    docs = render(binaries, "--set", "redis.internal.enabled=true")
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    password = base64.b64decode(secrets["nf-newfuse-operator-redis"]["data"]["password"]).decode()
    url = base64.b64decode(secrets["nf-newfuse-operator-redis-url"]["data"]["url"]).decode()
    assert len(password) == 32
    assert url == (f"redis://:{password}@nf-newfuse-operator-redis.newfuse-system.svc:6379/0")
    assert _env(docs)["NEWFUSE_REDIS_URL"] == {
        "secretKeyRef": {"name": "nf-newfuse-operator-redis-url", "key": "url"}
    }
    [redis] = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-redis")
    ]
    pod = redis["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == "redis:7.4-alpine"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10999
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    assert {"name": "data", "emptyDir": {}} in pod["volumes"]
    # The password reaches redis-server as a config file mounted from the Secret, and the
    # probe's redis-cli through REDISCLI_AUTH: never in any process's arguments (`ps` shows those).
    assert container["args"][0] == "/etc/redis/auth/auth.conf"
    assert password not in json.dumps(redis)
    assert "requirepass" not in json.dumps(container["args"])
    assert "env" not in container, "no secret as an environment variable either"
    auth_conf = base64.b64decode(secrets["nf-newfuse-operator-redis"]["data"]["auth.conf"])
    assert auth_conf.decode() == f'requirepass "{password}"\n'
    [auth] = [v for v in pod["volumes"] if v["name"] == "auth"]
    assert auth["secret"] == {"secretName": "nf-newfuse-operator-redis", "defaultMode": 0o440}
    assert {"name": "auth", "mountPath": "/etc/redis/auth", "readOnly": True} in container[
        "volumeMounts"
    ]
    probe = container["readinessProbe"]["exec"]["command"]
    assert probe[-1].startswith('REDISCLI_AUTH="$(cat /etc/redis/auth/password)" redis-cli ping')


def _redis_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [redis] = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-redis")
    ]
    pod: dict[str, Any] = redis["spec"]["template"]["spec"]
    return pod


def _redis_flags(pod: dict[str, Any]) -> dict[str, str]:
    args = pod["containers"][0]["args"][1:]  # after the config file
    return {args[i]: args[i + 1] for i in range(0, len(args) - 1, 2) if args[i].startswith("--")}


@pytest.mark.parametrize(
    ("sets", "appendonly", "appendfsync", "volume"),
    [
        ([], "yes", "everysec", {"emptyDir": {}}),
        (["redis.internal.persistence.appendfsync=always"], "yes", "always", {"emptyDir": {}}),
        (["redis.internal.persistence.appendfsync=no"], "yes", "no", {"emptyDir": {}}),
        (["redis.internal.persistence.appendonly=false"], "no", "everysec", {"emptyDir": {}}),
        (
            ["redis.internal.persistence.existingClaim=redis-data"],
            "yes",
            "everysec",
            {"persistentVolumeClaim": {"claimName": "redis-data"}},
        ),
    ],
    ids=["default", "always", "no", "off", "claim"],
)
def test_trial_redis_keeps_an_append_only_file_by_default(
    binaries: Binaries, sets: list[str], appendonly: str, appendfsync: str, volume: dict[str, Any]
) -> None:
    """So a restart of the trial Redis keeps the queue; appendfsync and the volume are values."""
    flags = [f for s in sets for f in ("--set", s)]
    docs = render(binaries, "--set", "redis.internal.enabled=true", *flags)
    pod = _redis_pod(docs)
    args = _redis_flags(pod)
    assert args["--appendonly"] == appendonly
    assert args["--appendfsync"] == appendfsync
    assert args["--dir"] == "/data"
    assert args["--save"] == "", "the AOF is the persistence; no RDB snapshots besides it"
    [data] = [v for v in pod["volumes"] if v["name"] == "data"]
    assert data == {"name": "data", **volume}
