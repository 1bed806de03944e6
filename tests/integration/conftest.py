"""Fixtures shared by several integration test modules (the session-wide ones are in tests/)."""

from __future__ import annotations

import pytest

from harness import RedisHandle
from localcluster.binaries import Binaries


@pytest.fixture(scope="module")
def binaries() -> Binaries:
    return Binaries.ensure()


@pytest.fixture
def fleet_url(redis_server: RedisHandle) -> str:
    return redis_server.url
