"""Types the fixtures hand to tests (kept out of conftest.py, which tests must not import)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from localcluster import LocalCluster, RedisServer


@dataclass(frozen=True)
class Cluster:
    """The cluster under test: its kubeconfig and, for the local one, its manager."""

    kubeconfig: Path
    local: LocalCluster | None

    def is_local(self) -> bool:
        """True for the local control plane with kwok nodes (not kind or an external cluster)."""
        return self.local is not None


@dataclass
class RedisHandle:
    """The Redis under test; ``server`` is set when this tooling runs it (so tests may stop it)."""

    url: str
    server: RedisServer | None
