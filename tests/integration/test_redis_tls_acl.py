"""Redis over TLS with an ACL user, on a real redis-server: what a production Redis looks like.

The server only speaks TLS (no plain port), its certificate comes from a private CA, and the only
usable user may touch nothing but NewFuse's keys and channels. The operator's store, the task
client and an agent all connect with `rediss://user:password@...` plus the CA bundle, and do their
work; a wrong CA or password is refused instead of silently falling back.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import socket
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from redis.exceptions import AuthenticationError, ConnectionError, NoPermissionError

from localcluster import wait_for
from localcluster.binaries import redis_server_binary
from localcluster.netutil import free_port
from newfuse.adapters.redis_connect import connect
from newfuse.adapters.redis_store import RedisStore
from newfuse.adapters.taskclient import TaskClient, TaskSpec
from newfuse.wire.envelope import MessageType, decode
from newfuse.wire.keys import FleetKeys
from newfuse.wire.signing import Channel, Signing
from newfuse_agent.config import AgentConfig
from newfuse_agent.handlers import TaskContext
from newfuse_agent.handlers.echo import echo
from newfuse_agent.runtime import Agent

PASSWORD = "agent-" + uuid.uuid4().hex
KEY = b"fleet-signing-key-of-at-least-32-bytes"

pytestmark = pytest.mark.asyncio


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_ca_and_server_cert(directory: Path, ca_name: str) -> tuple[Path, Path, Path]:
    """A private CA, and a server certificate for 127.0.0.1 signed by it (PEM files)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name(ca_name))
        .issuer_name(_name(ca_name))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(_name("redis"))
        .issuer_name(ca.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / f"{ca_name}.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@dataclass(frozen=True)
class TlsRedis:
    """A TLS-only redis-server with one ACL user."""

    url: str
    ca_file: str
    port: int


def _accepts_tls(port: int, ca_file: str) -> bool:
    context = ssl.create_default_context(cafile=ca_file)
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=1) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1"),
        ):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    directory = tmp_path_factory.mktemp("redis-tls")
    ca, cert, key = _write_ca_and_server_cert(directory, "newfuse-test-ca")
    port = free_port()
    proc = subprocess.Popen(
        [
            str(redis_server_binary()),
            "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
            "--tls-cert-file", str(cert), "--tls-key-file", str(key),
            "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no",
            "--save", "", "--appendonly", "no", "--dir", str(directory),
            # No default user; "agent" may only touch NewFuse's keys and channels.
            "--user", "default", "off",
            "--user", "agent", "on", f">{PASSWORD}", "~newfuse:*", "&newfuse:*",
            "+@all", "-@admin", "-flushall", "-flushdb",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for(lambda: _accepts_tls(port, str(ca)), 20, what="redis-server TLS port")
        yield TlsRedis(f"rediss://agent:{PASSWORD}@127.0.0.1:{port}/0", str(ca), port)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_operator_store_client_and_agent_work_over_tls_as_an_acl_user(
    tls_redis: TlsRedis,
) -> None:
    keys = FleetKeys("tls", f"f{uuid.uuid4().hex[:8]}")

    async with asyncio.timeout(60):
        store = RedisStore(tls_redis.url, signing_key=KEY, ca_file=tls_redis.ca_file)
        await store.ping()
        # The operator's drain notice is signed: an agent that requires signatures accepts it.
        listener = connect(tls_redis.url, timeout=5, ca_file=tls_redis.ca_file)
        pubsub = listener.pubsub()
        await pubsub.subscribe(keys.coordination_channel)
        await store.publish_drain(keys, "revision:old", dt.datetime.now(dt.UTC))
        message = None
        while message is None or message["type"] != "message":
            message = await pubsub.get_message(timeout=5)
        drain = decode(
            message["data"],
            keyring=Signing.shared(KEY).keyring,
            audience=keys.audience(Channel.COORDINATION),
            require_signature=True,
            now=dt.datetime.now(dt.UTC),
        )
        assert drain.type is MessageType.DRAIN
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await listener.aclose()

        client = TaskClient.from_url(
            tls_redis.url, keys.namespace, keys.fleet, signing_key=KEY, ca_file=tls_redis.ca_file
        )
        config = AgentConfig(
            agent_id="a-0",
            namespace=keys.namespace,
            fleet=keys.fleet,
            redis_url=tls_redis.url,
            redis_ca_file=tls_redis.ca_file,
            signing_key=KEY.decode(),
            require_signatures=True,
            heartbeat_seconds=0.2,
        )
        agent_redis = connect(config.redis_url, timeout=5, ca_file=config.redis_ca_file)
        context = TaskContext("a-0", keys.fleet, keys.namespace, "r1", ())
        agent = Agent(config, agent_redis, {"echo": echo}, context)
        running = asyncio.create_task(agent.run())
        try:
            submitted = await client.submit(TaskSpec("echo", {"over": "tls"}))
            result = await client.wait(submitted.task_id, 20)
            assert result.output == {"over": "tls"}
        finally:
            agent.request_drain()
            await asyncio.wait_for(running, 30)
            await agent_redis.aclose()
            await client.aclose()
            await store.delete_fleet(keys)
            await store.close()


async def test_the_acl_confines_the_user_to_newfuse_keys(tls_redis: TlsRedis) -> None:
    client = connect(tls_redis.url, timeout=5, ca_file=tls_redis.ca_file)
    try:
        await client.set("newfuse:{acl}:probe", "ok")
        with pytest.raises(NoPermissionError):
            await client.set("someone-else:key", "x")
        with pytest.raises(NoPermissionError):
            await client.flushall()
    finally:
        await client.aclose()


async def test_a_wrong_ca_or_password_is_refused(tls_redis: TlsRedis, tmp_path: Path) -> None:
    other_ca, _, _ = _write_ca_and_server_cert(tmp_path, "some-other-ca")

    async def ping(url: str, ca_file: str) -> None:
        client: aioredis.Redis = connect(url, timeout=5, ca_file=ca_file)
        try:
            await client.ping()
        finally:
            await client.aclose()

    with pytest.raises(ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        await ping(tls_redis.url, str(other_ca))
    wrong_password = tls_redis.url.replace(PASSWORD, "not-the-password")
    with pytest.raises(AuthenticationError):
        await ping(wrong_password, tls_redis.ca_file)
