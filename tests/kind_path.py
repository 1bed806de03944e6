"""What the kind path tests share: hack/kind/kind.sh run against stand-in commands, and Dockerfile.

CI has no Docker engine, so kind never starts in the tests: run_kind_sh runs the script against
stand-in docker, kind, helm, kubectl and `newfuse` commands that only record their arguments (and
answer like a cluster holding the chart would). dockerfile_instructions, global_args,
target_instructions and target_stages read the one multi-target Dockerfile.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "hack" / "kind" / "kind.sh"
DOCKERFILE = ROOT / "Dockerfile"
# Each image is the Dockerfile's target of the same name.
TARGETS = ("agent", "operator")
PF_PORT = 41234
# What the stand-in cluster holds: the trial Redis' URL (as the chart's URL Secret has it) and the
# signing key. Neither may ever appear on a command line.
PASSWORD = "s3cret-for-tests"
REDIS_URL = f"redis://:{PASSWORD}@newfuse-newfuse-operator-redis.newfuse-system.svc:6379/0"
SIGNING_KEY = "k3y-for-tests"


# One stand-in for every external command, told apart by the name it is called by. Each call is
# one JSON line in $STUB_LOG (with its stdin for `kubectl apply -f -`).
STUB = r"""
import base64, hashlib, json, os, sys, time

tool, args = os.path.basename(sys.argv[0]), sys.argv[1:]
record = {"tool": tool, "args": args}
if tool == "kubectl" and args[-2:] == ["-f", "-"]:
    record["stdin"] = sys.stdin.read()
if tool == "newfuse":
    record["env"] = {k: os.environ.get(k) for k in ("NEWFUSE_REDIS_URL", "NEWFUSE_SIGNING_KEY")}
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps(record) + "\n")


def has(*words):
    return all(w in args for w in words)


def after(word):
    return args[args.index(word) + 1] if word in args else None


if tool == "docker" and args[:1] == ["info"]:
    sys.exit(int(os.environ.get("STUB_DOCKER_DOWN", "0")))
elif tool == "docker" and has("image", "inspect"):
    print("sha256:" + hashlib.sha256(args[-1].encode()).hexdigest())
elif tool == "kind" and has("get", "clusters"):
    print(os.environ.get("STUB_KIND_CLUSTERS", ""))
elif tool == "kind" and has("get", "kubeconfig"):
    print("apiVersion: v1\nkind: Config\n# from the kind stub")
elif tool == "kubectl" and has("get", "deployments") and after("-o") == "name":
    print("deployment.apps/newfuse-newfuse-operator\ndeployment.apps/newfuse-newfuse-operator-redis")
elif tool == "kubectl" and has("get", "deployments"):
    print("newfuse-newfuse-operator operator\nnewfuse-newfuse-operator-redis redis")
elif tool == "kubectl" and has("get", "deployment", "newfuse-newfuse-operator"):
    # The operator's env, as the chart renders it; STUB_SIGNING: on (the default),
    # not-by-default (signing.agentsByDefault=false) or off (signing.enabled=false).
    query, signing = after("-o"), os.environ.get("STUB_SIGNING", "on")
    if "NEWFUSE_REDIS_URL" in query:
        print("newfuse-newfuse-operator-redis-url url", end="")
    elif "NEWFUSE_AGENT_REDIS_SECRET" in query:
        print("newfuse-redis-url/url", end="")
    elif "NEWFUSE_SIGNING_KEY" in query:
        print("newfuse-newfuse-operator-signing key" if signing != "off" else " ", end="")
    elif "NEWFUSE_AGENT_SIGNING_SECRET" in query and signing == "on":
        print("newfuse-newfuse-operator-signing/key", end="")
elif tool == "kubectl" and has("get", "secret"):
    name = after("secret")
    print(os.environ["STUB_REDIS_URL"] if name.endswith("-url") else os.environ["STUB_KEY"], end="")
elif tool == "kubectl" and has("create", "secret", "generic"):
    key, path = next(a for a in args if a.startswith("--from-file=")).split("=", 2)[1:]
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode()
    print(f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: {after('generic')}\n"
          f"data:\n  {key}: {data}")
elif tool == "kubectl" and "port-forward" in args:
    with open(os.environ["STUB_PF_PIDFILE"], "w") as f:
        f.write(str(os.getpid()))
    print(f"Forwarding from 127.0.0.1:{os.environ['STUB_PF_PORT']} -> 6379", flush=True)
    time.sleep(60)
elif tool == "kubectl" and has("create", "namespace"):
    print(f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {after('namespace')}")
elif tool == "newfuse" and "--count" in args:
    count, failed = int(after("--count")), int(os.environ.get("STUB_FAILED", "0"))
    print(f"submitted {count} task(s)\n{count - failed} succeeded, {failed} failed")
elif tool == "newfuse" and "submit" in args:
    payload = json.loads(after("--payload"))
    print("task t1 submitted\n" + json.dumps({"status": "succeeded", "output": payload}, indent=2))
"""


@dataclass
class Run:
    """One run of kind.sh against the stand-ins."""

    result: subprocess.CompletedProcess[str]
    calls: list[dict[str, Any]]
    kubeconfig: Path
    forwarder_left: bool  # the port-forward still ran after the script exited

    def of(self, tool: str, *words: str) -> list[list[str]]:
        """The arguments of every call of ``tool`` whose arguments hold all of ``words``."""
        return [
            c["args"]
            for c in self.calls
            if c["tool"] == tool and all(w in c["args"] for w in words)
        ]

    def index(self, tool: str, *words: str) -> int:
        """Position of the first such call among all calls."""
        for i, c in enumerate(self.calls):
            if c["tool"] == tool and all(w in c["args"] for w in words):
                return i
        raise AssertionError(f"no call of {tool} {words}")


def option(args: list[str], name: str) -> str:
    """The value after ``name`` (or of ``name=value``) in one command line."""
    for i, arg in enumerate(args):
        if arg == name:
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{name} not in {args}")


def helm_values(args: list[str]) -> dict[str, str]:
    return dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--set")


def run_kind_sh(tmp_path: Path, command: str, **env: str) -> Run:
    bin_dir, venv_bin = tmp_path / "bin", tmp_path / "venv-bin"
    bin_dir.mkdir()
    venv_bin.mkdir()
    for tool in ("docker", "kind", "helm", "kubectl"):
        (bin_dir / tool).write_text(f"#!{sys.executable}\n{STUB}")
        (bin_dir / tool).chmod(0o755)
    (venv_bin / "newfuse").write_text(f"#!{sys.executable}\n{STUB}")
    (venv_bin / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    for exe in venv_bin.iterdir():
        exe.chmod(0o755)
    log, kubeconfig, pidfile = tmp_path / "calls.jsonl", tmp_path / "kubeconfig", tmp_path / "pf"
    # The script's settings come from this test only, never from the developer's shell.
    settings = {
        *("KIND_CLUSTER", "KIND_KUBECONFIG", "IMAGE_TAG", "BASE_IMAGE", "RELEASE", "KUBECONFIG"),
        *("OPERATOR_NAMESPACE", "E2E_NAMESPACE", "E2E_TASKS", "WAIT_TIMEOUT", "VENV_BIN"),
        *("DOCKER", "KIND", "HELM", "KUBECTL", "NEWFUSE_REDIS_URL", "NEWFUSE_SIGNING_KEY"),
    }
    base = {k: v for k, v in os.environ.items() if k not in settings}
    result = subprocess.run(
        ["bash", str(SCRIPT), command],
        env={
            **base,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            # .local/bin may hold the real helm and kubectl: name the stand-ins explicitly.
            "HELM": str(bin_dir / "helm"),
            "KUBECTL": str(bin_dir / "kubectl"),
            "VENV_BIN": str(venv_bin),
            "KIND_KUBECONFIG": str(kubeconfig),
            "TMPDIR": str(tmp_path),
            "STUB_LOG": str(log),
            "STUB_PF_PIDFILE": str(pidfile),
            "STUB_PF_PORT": str(PF_PORT),
            "STUB_REDIS_URL": REDIS_URL,
            "STUB_KEY": SIGNING_KEY,
            **env,
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    forwarder_left = False
    if pidfile.exists():
        pid = int(pidfile.read_text())
        try:
            os.kill(pid, signal.SIGKILL)  # a broken script must not leave it behind
            forwarder_left = True
        except ProcessLookupError:
            pass
    return Run(result, calls, kubeconfig, forwarder_left)


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def global_args(path: Path) -> dict[str, str]:
    """The ARGs before the first FROM (the base arguments), with their defaults."""
    args = {}
    for word, rest in dockerfile_instructions(path):
        if word == "FROM":
            break
        if word == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
    return args


@dataclass
class Stage:
    """One build stage: what it starts FROM (an image or an earlier stage) and what follows."""

    name: str
    base: str
    instructions: list[tuple[str, str]]


def dockerfile_stages(path: Path) -> dict[str, Stage]:
    """The stages in order, by their `AS` name (an unnamed stage by its index)."""
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for word, rest in dockerfile_instructions(path):
        if word == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            current = stages[name] = Stage(name, words[0], [])
        elif current is not None:
            current.instructions.append((word, rest))
    return stages


def target_instructions(path: Path, target: str) -> list[tuple[str, str]]:
    """What makes the target's image: the instructions of its stage and of the stages it is FROM.

    Oldest first: USER, ENV, ENTRYPOINT, LABEL and EXPOSE carry over a `FROM <stage>`.
    """
    stages = dockerfile_stages(path)
    chain = [stages[target]]
    while chain[0].base in stages:
        chain.insert(0, stages[chain[0].base])
    return [instruction for stage in chain for instruction in stage.instructions]


def target_stages(path: Path, target: str) -> set[str]:
    """Every stage a build of the target runs: itself, what it is FROM, what it COPYs --from."""
    stages = dockerfile_stages(path)
    needed: set[str] = set()
    todo = [target]
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        stage = stages[name]
        todo += [stage.base] if stage.base in stages else []
        for word, rest in stage.instructions:
            source = re.search(r"--from=(\S+)", rest) if word == "COPY" else None
            if source and source.group(1) in stages:
                todo.append(source.group(1))
    return needed


def built_refs(run: Run) -> dict[str, str]:
    """Which image reference each target was built and tagged as ("operator"/"agent")."""
    refs = {}
    for which in TARGETS:
        [build] = [
            b
            for b in run.of("docker", "build")
            if option(b, "-f") == str(DOCKERFILE.relative_to(ROOT))
            and option(b, "--target") == which
        ]
        [tag] = [t for t in run.of("docker", "tag") if t[1] == option(build, "-t")]
        refs[which] = tag[2]
    return refs
