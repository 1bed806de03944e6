"""Fixtures shared by several unit test modules: the Lua versions the Argo CD tests run under."""

from __future__ import annotations

import pytest

from argocd_lua import LUA_VERSIONS


@pytest.fixture(params=LUA_VERSIONS)
def lua_version(request: pytest.FixtureRequest) -> str:
    """Each test runs under Lua 5.1 (what Argo CD embeds) and Lua 5.4."""
    version: str = request.param
    return version
