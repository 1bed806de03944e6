"""`newfuse memory provision-pg`: a fleet's own role and schema in a PostgreSQL with pgvector.

The fleet then keeps its memory there (spec.memory.postgres.urlSecretRef) instead of in its Redis.
The command connects with an admin's URL (one that may create roles and the `vector` extension),
creates or updates the fleet's LOGIN role and schema (newfuse.adapters.pgmemory.provision), and
prints the role's DSN with the `kubectl create secret` line that puts it where the fleet's spec
points. Running it again sets a new password: that is how a leaked one is rotated (re-create the
Secret, then restart the fleet's agents). psycopg is imported only here: it is the `memory-pg`
extra, which a CLI installed without it lacks.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
from typing import Annotated, Any

import typer
from rich.markup import escape

from newfuse.cli.common import DEFAULT_NAMESPACE, Fleet, Namespace, console, errors, fail, run
from newfuse.cli.memory import memory_app

SECRET_KEY = "url"  # noqa: S105 - the key's name in the Secret, not a credential
PASSWORD_BYTES = 24  # 32 URL-safe characters


def _password(variable: str | None) -> str:
    if variable is None:
        return secrets.token_urlsafe(PASSWORD_BYTES)
    password = os.environ.get(variable, "")
    if not password:
        raise typer.BadParameter(f"${variable} is unset or empty", param_hint="--password-from-env")
    return password


async def _provision(admin_url: str, namespace: str, fleet: str, password: str) -> str:
    """The fleet's role, created or updated; exits with one clear line if psycopg or PG refuse."""
    try:
        import psycopg

        from newfuse.adapters.pgmemory import provision
    except ImportError as exc:
        fail(f"provision-pg needs the memory-pg extra (pip install 'newfuse[memory-pg]'): {exc}")
        raise typer.Exit(1) from None
    try:
        async with await psycopg.AsyncConnection.connect(admin_url, autocommit=True) as admin:
            return await provision(admin, namespace, fleet, password)
    except psycopg.OperationalError as exc:
        fail(f"cannot reach PostgreSQL with --admin-url: {exc}".strip())
    except psycopg.Error as exc:
        fail(f"PostgreSQL refused to provision the fleet (is the admin a superuser?): {exc}")
    raise typer.Exit(1)


def fleet_dsn(admin_url: str, role: str, password: str, host: str | None) -> str:
    """The fleet role's DSN: the admin's database and server, the fleet's credentials."""
    from psycopg.conninfo import make_conninfo

    more: dict[str, Any] = {"user": role, "password": password}
    if host is not None:
        more["host"] = host
    return make_conninfo(admin_url, **more)


@memory_app.command("provision-pg")
@run
async def provision_pg(
    fleet: Fleet,
    admin_url: Annotated[
        str,
        typer.Option(
            "--admin-url",
            envvar="NEWFUSE_PG_ADMIN_URL",
            help="PostgreSQL URL of a role that may create roles and the vector extension.",
        ),
    ],
    password_from_env: Annotated[
        str | None,
        typer.Option(
            "--password-from-env",
            metavar="VAR",
            help="Take the fleet role's password from $VAR (default: a random one).",
        ),
    ] = None,
    host: Annotated[
        str | None,
        typer.Option(
            "--host", help="Host the agents reach PostgreSQL at (default: the admin URL's)."
        ),
    ] = None,
    secret: Annotated[
        str | None,
        typer.Option("--secret", help="Name of the Secret to print (default: FLEET-memory-pg)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    namespace: Namespace = DEFAULT_NAMESPACE,
) -> None:
    """Create (or rotate) the fleet's PostgreSQL role and schema; print its DSN and Secret."""
    password = _password(password_from_env)
    role = await _provision(admin_url, namespace, fleet, password)
    dsn = fleet_dsn(admin_url, role, password, host)
    name = secret or f"{fleet}-memory-pg"
    literal = f"--from-literal={SECRET_KEY}={dsn}"
    kubectl = shlex.join(["kubectl", "create", "secret", "generic", name, "-n", namespace, literal])
    ref = {"name": name, "key": SECRET_KEY}
    if as_json:
        found = {"role": role, "schema": role, "dsn": dsn, "kubectl": kubectl, "secretRef": ref}
        print(json.dumps(found))
        return
    errors.print(f"fleet {escape(namespace)}/{escape(fleet)}: role and schema {role}")
    console.print(f"dsn: {escape(dsn)}", soft_wrap=True, highlight=False)
    console.print(escape(kubectl), soft_wrap=True, highlight=False)
    console.print(
        f"then set spec.memory.postgres.urlSecretRef: {{name: {name}, key: {SECRET_KEY}}}",
        highlight=False,
    )
