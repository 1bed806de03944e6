"""The `make kind-*` targets: `make -n` prints the kind.sh calls, with the kind cluster's name.

`make kind-up` runs the script on the same kubeconfig as CLUSTER=kind's `make cluster-up`, and
`make help` lists the targets.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess

import pytest

from kind_path import ROOT

KIND_KUBECONFIG = ROOT / ".local" / "kind" / "kubeconfig"


def make(*args: str) -> list[str]:
    """The lines `make` prints, run in the repository with no CLUSTER from the caller's shell."""
    env = {k: v for k, v in os.environ.items() if k not in ("CLUSTER", "KIND_CLUSTER", "MAKEFLAGS")}
    result = subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def make_n(*args: str) -> list[str]:
    """What `make -n` would run (it runs nothing)."""
    return make("-n", *args)


def script_call(lines: list[str]) -> tuple[dict[str, str], list[str]]:
    """The one line that runs kind.sh, as (its environment assignments, its command)."""
    [line] = [ln for ln in lines if "hack/kind/kind.sh" in ln]
    words = shlex.split(line)
    env = dict(w.split("=", 1) for w in words if re.match(r"^[A-Z_]+=", w))
    return env, [w for w in words if not re.match(r"^[A-Z_]+=", w)]


def test_make_kind_up_only_runs_the_script_on_the_kind_clusters_kubeconfig() -> None:
    lines = make_n("kind-up", "CLUSTER=kind")
    assert len(lines) == 1, lines
    env, command = script_call(lines)
    assert command == ["bash", "hack/kind/kind.sh", "up"]
    assert env == {"KIND_CLUSTER": "newfuse", "KIND_KUBECONFIG": str(KIND_KUBECONFIG)}
    # The same kubeconfig as CLUSTER=kind's `make cluster-up` (and so `CLUSTER=kind make test`).
    written = [ln for ln in make_n("cluster-up", "CLUSTER=kind") if "kind get kubeconfig" in ln]
    assert written == [f"kind get kubeconfig --name newfuse > {KIND_KUBECONFIG}"]


@pytest.mark.parametrize(("target", "command"), [("kind-e2e", "e2e"), ("kind-down", "down")])
def test_make_kind_targets_pass_the_cluster_name(target: str, command: str) -> None:
    env, argv = script_call(make_n(target, "CLUSTER=kind", "KIND_CLUSTER=other"))
    assert argv == ["bash", "hack/kind/kind.sh", command]
    assert env["KIND_CLUSTER"] == "other"


def test_make_help_lists_the_kind_targets() -> None:
    plain = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(make("help")))
    for target in ("kind-up", "kind-e2e", "kind-down"):
        assert re.search(rf"^  {target} +\S", plain, re.MULTILINE), target
