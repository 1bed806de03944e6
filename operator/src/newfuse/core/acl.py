"""A Redis ACL user per fleet: its agents can touch their own fleet's keys and channels only.

With one credential for every fleet, an agent running an image its team chose could read, write
or delete any other team's tasks and results. Given a Redis connection allowed to manage users,
the operator creates one user per fleet, confined by key and channel patterns to the fleet's hash
tag (newfuse.wire.keys), and hands its agents that user's URL through a Secret the fleet owns.

The commands stay broad (`+@all -@dangerous`): the agents' scripts and stream commands change as
the task flow grows, and the patterns, not a command list, are what keeps fleets apart.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import quote, urlsplit, urlunsplit

from newfuse.wire.keys import KEY_ROOT, FleetKeys

SECRET_URL_KEY: Final = "url"  # noqa: S105 - a key name, not a secret
SECRET_SUFFIX: Final = "-newfuse-redis"  # noqa: S105 - a name suffix
USER_PREFIX: Final = "newfuse:"
COMMANDS: Final = ("+@all", "-@dangerous")


def user_name(keys: FleetKeys) -> str:
    """The fleet's ACL user (namespace and fleet are DNS labels: no spaces, no separators)."""
    return f"{USER_PREFIX}{keys.namespace}/{keys.fleet}"


def secret_name(fleet: str) -> str:
    """The fleet's own Secret holding its agents' Redis URL."""
    return f"{fleet}{SECRET_SUFFIX}"


def rules(keys: FleetKeys, password: str) -> list[str]:
    """ACL SETUSER arguments: from nothing, on, this password, these keys and channels only."""
    pattern = f"{KEY_ROOT}:{{{keys.namespace}/{keys.fleet}}}:*"
    return ["reset", "on", f">{password}", f"~{pattern}", f"&{pattern}", *COMMANDS]


def url_for(base_url: str, user: str, password: str) -> str:
    """``base_url`` (the agents' Redis) logged in as ``user``."""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc + (f":{parts.port}" if parts.port else "")))
