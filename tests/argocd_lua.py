"""Running Argo CD's Lua scripts for NewFuseAgent the way Argo CD does, for the Argo CD tests.

Argo CD runs charts/newfuse-operator/argocd/*.lua in gopher-lua (Lua 5.1) with only the base,
table and package libraries and os.time/os.date. run_lua runs the same files with lupa's Lua 5.1
or 5.4, in a sandbox stripped to those libraries; load reads a sample fleet from
tests/unit/argocd_samples/.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml

import argocd_cm

ARGOCD = argocd_cm.ARGOCD_DIR
HEALTH = ARGOCD / "health.lua"
DISCOVERY = ARGOCD / "actions" / "discovery.lua"
SAMPLES = Path(__file__).parent / "unit" / "argocd_samples"
ACTIONS = ("pause", "resume", "promote", "promote-full", "abort", "retry")
# gopher-lua is Lua 5.1; 5.4 catches anything that only works by accident of one version.
LUA_VERSIONS = ("lua51", "lua54")


# Argo CD opens base, table, package and a safe os (time, date) only; everything else goes, and
# strings lose their methods (("x"):sub() needs the string library).
SANDBOX = """
local safe_os = {time = os.time, date = os.date}
getmetatable("").__index = nil
for _, name in ipairs({"string", "math", "io", "debug", "coroutine", "utf8", "bit32", "jit",
                       "ffi", "python"}) do
  _G[name] = nil
  package.loaded[name] = nil
end
os = safe_os
package.loaded.os = safe_os
"""


def _to_lua(lua: Any, value: object) -> object:
    """A JSON value as Argo CD hands it to Lua: objects and lists become tables (lists 1-based)."""
    if isinstance(value, dict):
        table = lua.table()
        for key, item in value.items():
            if item is not None:  # a JSON null is an absent field
                table[key] = _to_lua(lua, item)
        return table
    if isinstance(value, list):
        table = lua.table()
        for index, item in enumerate(value, start=1):
            table[index] = _to_lua(lua, item)
        return table
    if isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"not a JSON value: {value!r}")


def _from_lua(module: Any, value: Any) -> object:
    """A Lua result as Python: a table with keys 1..n is a list, any other table a dict."""
    if module.lua_type(value) != "table":
        return value
    items = {key: _from_lua(module, item) for key, item in value.items()}
    if items and list(items) == list(range(1, len(items) + 1)):
        return list(items.values())
    return items


def run_lua(script: Path, obj: dict[str, Any], version: str) -> Any:
    """Run one script the way Argo CD does: global `obj`, sandboxed libraries, its return value."""
    module = importlib.import_module(f"lupa.{version}")
    lua = module.LuaRuntime(register_eval=False, register_builtins=False)
    lua.execute(SANDBOX)
    lua.globals().obj = _to_lua(lua, obj)
    return _from_lua(module, lua.execute(script.read_text(), name=script.name))


def load(name: str) -> dict[str, Any]:
    """One sample fleet."""
    body = yaml.safe_load((SAMPLES / f"{name}.yaml").read_text())
    assert isinstance(body, dict)
    return body
