"""A rediss:// connection checks the server's host name, whatever redis-py's default is.

redis-py 5 skipped the check by default: any certificate the CA signed, for any name, was
accepted. The dependency bound (>= 6.2) and an explicit ssl_check_hostname=True in
redis_connect.connect both close that; this test looks at the TLS context a connection of the
pool really builds, so a change of either that drops the check fails here.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from redis.asyncio.connection import SSLConnection

from newfuse.adapters.redis_connect import connect

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("ca_file", [None, "/etc/newfuse/redis-ca/ca.crt"])
def test_rediss_connections_check_the_host_name(ca_file: str | None) -> None:
    client = connect("rediss://user:pw@redis.example:6380/0", timeout=1, ca_file=ca_file)
    pool = client.connection_pool
    assert pool.connection_kwargs["ssl_check_hostname"] is True
    connection = pool.make_connection()  # type: ignore[no-untyped-call]
    assert isinstance(connection, SSLConnection)
    context = connection.ssl_context
    assert context.check_hostname is True
    assert context.cert_reqs == ssl.CERT_REQUIRED
    assert context.ca_certs == ca_file


def test_plain_connections_get_no_tls_options() -> None:
    pool = connect("redis://redis:6379/0", timeout=1, ca_file="/ca.crt").connection_pool
    assert "ssl_check_hostname" not in pool.connection_kwargs
    assert "ssl_ca_certs" not in pool.connection_kwargs


def test_the_dependency_admits_no_redis_py_that_skips_the_check_by_default() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"redis>=6.2",' in pyproject
