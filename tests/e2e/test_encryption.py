"""With `spec.encryption`, no byte of a task's input or result is in Redis in the clear.

The fleet runs real agent processes; the user's CLI holds the data key and sees the plaintext.
Then every key in Redis is read whole (hashes, streams, sorted sets, strings) and searched for a
marker that was in the inputs, the outputs and a handler's error.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import redis
from kubernetes import client as k8s_client

from harness import Fleets, RedisHandle, signing_secret, start_fleet
from localcluster import wait_for
from localcluster.podrunner import PodRunnerProcess
from newfuse.wire.keys import FleetKeys

NEWFUSE = str(Path(sys.executable).with_name("newfuse"))
SIGNING = "encryption-test-signing-key-0123456789"
DATA_KEY = "encryption-test-data-key-0123456789abcdef"


def _everything(url: str) -> bytes:
    """Every key and value in this Redis, as raw bytes."""
    raw: Any = redis.Redis.from_url(url)  # no decoding: the bytes as stored
    dump = bytearray()
    for key in raw.scan_iter(count=1000):
        kind = raw.type(key)
        dump += key
        if kind == b"string":
            dump += raw.get(key) or b""
        elif kind == b"hash":
            for field, value in raw.hgetall(key).items():
                dump += field + value
        elif kind == b"stream":
            for _, fields in raw.xrange(key):
                for field, value in fields.items():
                    dump += field + value
        elif kind == b"zset":
            dump += b"".join(raw.zrange(key, 0, -1))
        elif kind == b"list":
            dump += b"".join(raw.lrange(key, 0, -1))
        elif kind == b"set":
            dump += b"".join(raw.smembers(key))
    raw.close()
    return bytes(dump)


def _cli(
    ns: str, url: str, *args: str, data_key: str | None = DATA_KEY
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NEWFUSE_REDIS_URL": url, "NEWFUSE_SIGNING_KEY": SIGNING, "NO_COLOR": "1"}
    if data_key:
        env["NEWFUSE_ENCRYPTION_KEY"] = data_key
    return subprocess.run(
        [NEWFUSE, "task", "submit", "sealed", "-n", ns, *args],
        capture_output=True, text=True, timeout=90, check=False, env=env,
    )  # fmt: skip


def test_encryption_keeps_every_redis_key_free_of_plaintext(
    fleets: Fleets,
    pod_runner: PodRunnerProcess,
    redis_server: RedisHandle,
    redis_client: redis.Redis,
    k8s_api: k8s_client.ApiClient,
) -> None:
    ns = fleets.namespace
    marker = f"MARKER{uuid.uuid4().hex}"
    k8s_client.CoreV1Api(k8s_api).create_namespaced_secret(
        ns,
        k8s_client.V1Secret(
            metadata=k8s_client.V1ObjectMeta(name="data-key"), string_data={"key": DATA_KEY}
        ),
    )
    signing = {**signing_secret(k8s_api, ns, SIGNING), "required": True}
    encryption = {"keySecretRef": {"name": "data-key", "key": "key"}}
    start_fleet(
        fleets, pod_runner, redis_client, "sealed", 1, signing=signing, encryption=encryption
    )
    [pod] = fleets.pods("sealed")
    env = {e.name: e for e in pod.spec.containers[0].env}
    assert env["NEWFUSE_ENCRYPTION_KEY"].value_from.secret_key_ref.name == "data-key"

    echoed = _cli(ns, redis_server.url, "--id", "e-1", "--payload", f'{{"text": "{marker}"}}',
                  "--wait", "--timeout", "60")  # fmt: skip
    assert echoed.returncode == 0, echoed.stderr
    assert marker in echoed.stdout, "the CLI, holding the key, shows the plaintext result"
    # A failure whose error quotes user input (the handler's name), and a bulk of plain tasks.
    failed = _cli(ns, redis_server.url, "--id", "e-2", "--handler", f"h{marker}"[:64],
                  "--payload", marker, "--wait", "--timeout", "60")  # fmt: skip
    assert failed.returncode != 0 or "failed" in failed.stdout, failed.stderr
    bulk = _cli(ns, redis_server.url, "--count", "20", "--payload", marker)
    assert "submitted 20 task(s)" in bulk.stdout, bulk.stderr
    keys = FleetKeys(ns, "sealed")
    wait_for(lambda: redis_client.hlen(keys.result_index) >= 22, 60, what="22 results")

    dump = _everything(redis_server.url)
    assert b"e-1" in dump, "the scan sees this fleet's keys"
    assert marker.encode() not in dump, "plaintext of an input, output or error in Redis"
    print(f"scanned {len(dump):,} bytes of Redis: no plaintext")

    blind = _cli(ns, redis_server.url, "--id", "e-1", "--wait", "--timeout", "10", data_key=None)
    assert marker not in blind.stdout, "without the key the CLI cannot show it"
