"""The kind path (Dockerfiles, hack/kind/kind.sh, make kind-*), checked without Docker.

CI has no Docker engine, so kind never starts here (buildah builds the images here instead:
hack/localcluster/images.py). What can be checked on paper is checked: the script parses; run
against stand-in docker, kind, helm, kubectl and `newfuse` commands that only record their
arguments, every image tag it builds is the one it loads into kind and the one it deploys (the
operator's through the chart, the agent's in the sample fleet); the fleet it applies is a valid
NewFuseAgent; the condition it waits for is one the operator sets; secrets never reach a command
line. The real chart, rendered with the script's helm arguments, wires what the script reads back.
Both Dockerfiles start modules that exist, and `make -n` prints the script calls.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from gen_kustomize import helm_binary
from newfuse.api.v1alpha1 import SINGULAR, ConditionType, NewFuseAgent

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "hack" / "kind" / "kind.sh"
DOCKERFILES = {
    "operator": ROOT / "operator" / "Dockerfile",
    "agent": ROOT / "agent_image" / "Dockerfile",
}
KIND_KUBECONFIG = ROOT / ".local" / "kind" / "kubeconfig"
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


def entrypoint(path: Path) -> list[str]:
    [argv] = [
        json.loads(rest) for word, rest in dockerfile_instructions(path) if word == "ENTRYPOINT"
    ]
    assert isinstance(argv, list)
    return [str(a) for a in argv]


# --- the script -------------------------------------------------------------------------------


def test_the_script_parses() -> None:
    result = subprocess.run(
        ["bash", "-n", str(SCRIPT)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "set -euo pipefail" in SCRIPT.read_text()


@pytest.fixture(scope="module")
def up_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return run_kind_sh(tmp_path_factory.mktemp("up"), "up")


@pytest.fixture(scope="module")
def e2e_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return run_kind_sh(tmp_path_factory.mktemp("e2e"), "e2e")


def built_refs(run: Run) -> dict[str, str]:
    """Which image reference each Dockerfile was built and tagged as ("operator"/"agent")."""
    refs = {}
    for which, dockerfile in DOCKERFILES.items():
        [build] = [
            b
            for b in run.of("docker", "build")
            if option(b, "-f") == str(dockerfile.relative_to(ROOT))
        ]
        [tag] = [t for t in run.of("docker", "tag") if t[1] == option(build, "-t")]
        refs[which] = tag[2]
    return refs


def test_up_builds_both_images_from_one_base_and_tags_them_by_content(up_run: Run) -> None:
    assert up_run.result.returncode == 0, up_run.result.stderr
    builds = up_run.of("docker", "build")
    assert sorted(option(b, "-f") for b in builds) == [
        "agent_image/Dockerfile",
        "operator/Dockerfile",
    ]
    assert all(b[-1] == "." for b in builds), "the build context is the repository root"
    base = {option(b, "--build-arg") for b in builds}
    assert base == {f"BASE={global_args(DOCKERFILES['operator'])['BASE']}"}
    refs = built_refs(up_run)
    assert refs["operator"].startswith("newfuse/operator:dev-")
    assert refs["agent"].startswith("newfuse/agent:dev-")
    assert all(re.fullmatch(r"[a-z/]+:dev-[0-9a-f]{12}", r) for r in refs.values()), refs


def test_up_loads_exactly_the_built_tags_and_deploys_the_operator_one(up_run: Run) -> None:
    refs = built_refs(up_run)
    [load] = up_run.of("kind", "load", "docker-image")
    assert option(load, "--name") == "newfuse"
    loaded = [a for a in load[2:] if a not in ("--name", "newfuse")]
    assert sorted(loaded) == sorted(refs.values())
    [helm] = up_run.of("helm", "upgrade", "--install")
    values = helm_values(helm)
    assert f"{values['image.repository']}:{values['image.tag']}" == refs["operator"]
    assert values["image.pullPolicy"] == "Never"
    assert values["redis.internal.enabled"] == "true"
    chart = helm[3]
    assert (ROOT / chart / "Chart.yaml").is_file(), chart
    assert "--wait" in helm
    last_tag = max(i for i, c in enumerate(up_run.calls) if c["args"][:1] == ["tag"])
    assert last_tag < up_run.index("kind", "load") < up_run.index("helm", "upgrade")


def test_up_creates_the_cluster_and_only_ever_uses_its_own_kubeconfig(up_run: Run) -> None:
    [create] = up_run.of("kind", "create", "cluster")
    assert option(create, "--name") == "newfuse"
    assert option(create, "--kubeconfig") == str(up_run.kubeconfig)
    assert "from the kind stub" in up_run.kubeconfig.read_text()
    for args in up_run.of("kubectl") + up_run.of("helm"):
        assert option(args, "--kubeconfig") == str(up_run.kubeconfig), args
    rollouts = up_run.of("kubectl", "rollout", "status")
    assert {r[r.index("status") + 1] for r in rollouts} == {
        "deployment.apps/newfuse-newfuse-operator",
        "deployment.apps/newfuse-newfuse-operator-redis",
    }, "every Deployment of the release is waited for"


def test_the_chart_takes_the_scripts_values_and_wires_what_e2e_reads(up_run: Run) -> None:
    """Render the chart with exactly the script's helm arguments (the real helm, no cluster)."""
    # The pinned helm (built into the cache on first use), never skipped: a skip would let the
    # script and the chart drift apart unnoticed.
    helm = str(helm_binary())
    [args] = up_run.of("helm", "upgrade", "--install")
    release, chart = args[2], args[3]
    sets = [a for i, a in enumerate(args) if i and args[i - 1] == "--set"]
    namespace = option(args, "--namespace")
    versions = dict(
        line.split("=", 1)
        for line in (ROOT / "hack" / "versions.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    rendered = subprocess.run(
        [helm, "template", release, chart, "--namespace", namespace,
         "--kube-version", versions["KUBERNETES_VERSION"], *(f"--set={v}" for v in sets)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    # operator_deployment: the release's Deployment whose first container is "operator".
    [operator] = [
        d
        for d in by_kind["Deployment"].values()
        if d["spec"]["template"]["spec"]["containers"][0]["name"] == "operator"
        and d["metadata"]["labels"]["app.kubernetes.io/instance"] == release
    ]
    container = operator["spec"]["template"]["spec"]["containers"][0]
    values = helm_values(args)
    assert container["image"] == f"{values['image.repository']}:{values['image.tag']}"
    assert container["imagePullPolicy"] == "Never"
    env = {e["name"]: e for e in container["env"]}
    agent_secret = f"{values['redis.agentSecret.name']}/{values['redis.agentSecret.key']}"
    assert env["NEWFUSE_AGENT_REDIS_SECRET"]["value"] == agent_secret
    # e2e reads the URL from the Secret behind NEWFUSE_REDIS_URL, and port-forwards the Service
    # its host names (<service>.<namespace>.svc).
    ref = env["NEWFUSE_REDIS_URL"]["valueFrom"]["secretKeyRef"]
    url = base64.b64decode(by_kind["Secret"][ref["name"]]["data"][ref["key"]]).decode()
    service, service_namespace, svc = str(urlsplit(url).hostname).split(".")
    assert (service_namespace, svc) == (namespace, "svc")
    assert urlsplit(url).port in {p["port"] for p in by_kind["Service"][service]["spec"]["ports"]}
    # ... and the signing key from the Secret behind NEWFUSE_SIGNING_KEY (signing is on), which
    # agents find under the same name and key in their namespace (signing.agentsByDefault).
    # The operator creates that Secret on its first start (the chart renders no key: it would
    # change on every `helm template`); it creates exactly the one its env names.
    signing = env["NEWFUSE_SIGNING_KEY"]["valueFrom"]["secretKeyRef"]
    assert signing.pop("optional") is True
    assert env["NEWFUSE_SIGNING_SECRET"]["value"] == f"{signing['name']}/{signing['key']}"
    agent_signing = f"{signing['name']}/{signing['key']}"
    assert env["NEWFUSE_AGENT_SIGNING_SECRET"]["value"] == agent_signing
    # The stand-in cluster answers with these same names.
    assert (operator["metadata"]["name"], ref["name"], service, agent_signing) == (
        "newfuse-newfuse-operator",
        "newfuse-newfuse-operator-redis-url",
        "newfuse-newfuse-operator-redis",
        "newfuse-newfuse-operator-signing/key",
    )


def test_up_reuses_an_existing_cluster(tmp_path: Path) -> None:
    run = run_kind_sh(tmp_path, "up", STUB_KIND_CLUSTERS="other\nnewfuse")
    assert run.result.returncode == 0, run.result.stderr
    assert run.of("kind", "create") == []
    assert run.of("kind", "get", "kubeconfig")


def applied(run: Run, kind: str) -> list[tuple[list[str], dict[str, Any]]]:
    """The arguments and body of every `kubectl apply -f -` of a ``kind`` object."""
    out = []
    for c in run.calls:
        if f"kind: {kind}" in c.get("stdin", ""):
            out.append((c["args"], yaml.safe_load(c["stdin"])))
    return out


def e2e_secrets(run: Run) -> dict[str, dict[str, str]]:
    """The Secrets applied in the e2e namespace: name -> decoded data."""
    [(fleet_args, _)] = applied(run, "NewFuseAgent")
    namespace = option(fleet_args, "-n")
    return {
        body["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in body["data"].items()}
        for args, body in applied(run, "Secret")
        if option(args, "-n") == namespace
    }


def test_e2e_runs_the_sample_fleet_on_the_loaded_agent_image(e2e_run: Run) -> None:
    assert e2e_run.result.returncode == 0, e2e_run.result.stderr
    refs = built_refs(e2e_run)
    [(args, body)] = applied(e2e_run, "NewFuseAgent")
    fleet = NewFuseAgent.model_validate(body)  # what the API server gets is a valid fleet
    assert fleet.spec.image == refs["agent"]
    assert body["spec"]["imagePullPolicy"] == "Never"
    namespace = option(args, "-n")
    [label] = e2e_run.of("kubectl", "label", "namespace", namespace)
    assert "pod-security.kubernetes.io/enforce=restricted" in label
    assert e2e_run.index("kubectl", "label") < e2e_run.index("kubectl", "apply", namespace)
    [wait] = e2e_run.of("kubectl", "wait")
    assert option(wait, "--for") == f"condition={ConditionType.AVAILABLE.value}"
    assert f"{SINGULAR}/{fleet.metadata.name}" in wait
    assert option(wait, "-n") == namespace


def test_e2e_copies_the_redis_url_and_signing_key_where_the_agents_read_them(
    e2e_run: Run,
) -> None:
    # The operator's env (the stand-in says what the chart renders; the chart test above checks
    # the chart) names these Secrets in fleet namespaces: NEWFUSE_AGENT_REDIS_SECRET (from
    # redis.agentSecret, as the script sets it) and NEWFUSE_AGENT_SIGNING_SECRET.
    values = helm_values(e2e_run.of("helm", "upgrade")[0])
    assert e2e_secrets(e2e_run) == {
        values["redis.agentSecret.name"]: {values["redis.agentSecret.key"]: REDIS_URL},
        "newfuse-newfuse-operator-signing": {"key": SIGNING_KEY},
    }
    [(_, body)] = applied(e2e_run, "NewFuseAgent")
    assert "signing" not in body["spec"], "the chart's default key is the fleet's"
    for call in e2e_run.calls:
        assert not any(PASSWORD in a or SIGNING_KEY in a for a in call["args"]), call["args"]


def test_e2e_submits_signed_tasks_through_the_forwarded_trial_redis(e2e_run: Run) -> None:
    assert e2e_run.result.returncode == 0, e2e_run.result.stderr
    [forward] = e2e_run.of("kubectl", "port-forward")
    assert "service/newfuse-newfuse-operator-redis" in forward
    assert ":6379" in forward
    assert option(forward, "-n") == "newfuse-system"
    [(args, body)] = applied(e2e_run, "NewFuseAgent")
    fleet = body["metadata"]["name"]
    submits = e2e_run.of("newfuse", "task", "submit", fleet, "--wait")
    assert len(submits) == 2
    assert any("--count" in s for s in submits)
    clis = [c for c in e2e_run.calls if c["tool"] == "newfuse"]
    assert len(clis) == 3
    for cli in clis:
        assert fleet in cli["args"]
        assert option(cli["args"], "--namespace") == option(args, "-n")
        assert cli["env"] == {
            "NEWFUSE_REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:{PF_PORT}/0",
            "NEWFUSE_SIGNING_KEY": SIGNING_KEY,
        }
    assert "e2e passed" in e2e_run.result.stderr
    assert not e2e_run.forwarder_left, "the script left its port-forward running"


@pytest.mark.parametrize(
    ("signing", "fleet_signing", "secrets", "cli_key"),
    [
        # signing.agentsByDefault=false: the fleet names its key's Secret (the chart's NOTES, b.).
        (
            "not-by-default",
            {"keySecretRef": {"name": "newfuse-signing", "key": "key"}},
            {"newfuse-redis-url", "newfuse-signing"},
            SIGNING_KEY,
        ),
        # signing.enabled=false: nothing to sign with.
        ("off", None, {"newfuse-redis-url"}, ""),
    ],
)
def test_e2e_follows_the_charts_signing_settings(
    tmp_path: Path,
    signing: str,
    fleet_signing: dict[str, Any] | None,
    secrets: set[str],
    cli_key: str,
) -> None:
    run = run_kind_sh(tmp_path, "e2e", STUB_SIGNING=signing)
    assert run.result.returncode == 0, run.result.stderr
    [(_, body)] = applied(run, "NewFuseAgent")
    assert NewFuseAgent.model_validate(body)
    assert body["spec"].get("signing") == fleet_signing
    assert set(e2e_secrets(run)) == secrets
    assert [c["env"]["NEWFUSE_SIGNING_KEY"] for c in run.calls if c["tool"] == "newfuse"] == [
        cli_key
    ] * 3


def test_e2e_fails_when_a_task_fails(tmp_path: Path) -> None:
    run = run_kind_sh(tmp_path, "e2e", STUB_FAILED="1")
    assert run.result.returncode != 0
    assert "expected '5 succeeded, 0 failed'" in run.result.stderr
    assert not run.forwarder_left, "a failed run must stop its port-forward too"


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"DOCKER": "newfuse-no-such-docker"}, "https://docs.docker.com/get-docker/"),
        ({"STUB_DOCKER_DOWN": "1"}, "its daemon does not answer"),
        ({"KIND": "newfuse-no-such-kind"}, "https://kind.sigs.k8s.io/"),
    ],
)
def test_missing_tools_are_named_with_how_to_get_them(
    tmp_path: Path, env: dict[str, str], says: str
) -> None:
    run = run_kind_sh(tmp_path, "up", **env)
    assert run.result.returncode == 1
    assert says in run.result.stderr
    assert run.of("docker", "build") == []


def test_down_deletes_the_cluster(tmp_path: Path) -> None:
    run = run_kind_sh(tmp_path, "down")
    assert run.result.returncode == 0, run.result.stderr
    [delete] = run.of("kind", "delete", "cluster")
    assert option(delete, "--name") == "newfuse"


# --- the Dockerfiles --------------------------------------------------------------------------


@pytest.mark.parametrize("which", sorted(DOCKERFILES))
def test_the_entrypoint_module_exists_and_is_a_packaged_script(which: str) -> None:
    argv = entrypoint(DOCKERFILES[which])
    assert argv[1] == "-m", argv
    module = argv[2]
    assert importlib.util.find_spec(f"{module}.__main__") is not None, module
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert f"{module}.__main__:main" in scripts.values()
    assert module == {"operator": "newfuse", "agent": "newfuse_agent"}[which]


def test_the_charts_command_runs_the_operator_images_entrypoint() -> None:
    argv = entrypoint(DOCKERFILES["operator"])
    template = (ROOT / "charts" / "newfuse-operator" / "templates" / "deployment.yaml").read_text()
    match = re.search(r"^\s*command:\s*(\[.*\])\s*$", template, re.MULTILINE)
    assert match, "the chart's operator container has no command"
    command = json.loads(match.group(1))
    assert command[1:] == argv[1:]
    # The chart's bare `python` is the entry point's interpreter through the image's PATH.
    env = " ".join(
        rest for word, rest in dockerfile_instructions(DOCKERFILES["operator"]) if word == "ENV"
    )
    assert f"PATH={Path(argv[0]).parent}:$PATH" in env
    assert Path(argv[0]).name == command[0]


@pytest.mark.parametrize("which", sorted(DOCKERFILES))
def test_the_image_is_non_root_and_installs_the_whole_wheel(which: str) -> None:
    instructions = dockerfile_instructions(DOCKERFILES[which])
    users = [rest for word, rest in instructions if word == "USER"]
    assert users[-1] == "65532:65532", "numeric, so the kubelet can check runAsNonRoot"
    # COPY <source>... <destination>, for the build context (not --from another stage).
    sources = {
        src
        for word, rest in instructions
        if word == "COPY" and "--from" not in rest
        for src in rest.split()[:-1]
    }
    assert {"pyproject.toml", "uv.lock", "README.md"} <= sources, "hatchling needs them"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for package in pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]:
        assert any(package.startswith(src + "/") for src in sources), f"{package} is not copied"


def test_both_dockerfiles_share_base_arguments_and_label_keys() -> None:
    operator_args, agent_args = (global_args(p) for p in DOCKERFILES.values())
    assert set(operator_args) == set(agent_args) == {"BASE", "UV_VERSION"}
    makefile = (ROOT / "Makefile").read_text()
    uv_version = re.search(r"^UV_VERSION := (\S+)$", makefile, re.MULTILINE)
    assert uv_version
    assert operator_args["UV_VERSION"] == agent_args["UV_VERSION"] == uv_version.group(1)
    labels = []
    for path in DOCKERFILES.values():
        text = " ".join(rest for word, rest in dockerfile_instructions(path) if word == "LABEL")
        labels.append(dict(re.findall(r'(org\.opencontainers\.image\.[a-z]+)="([^"]*)"', text)))
    assert set(labels[0]) == set(labels[1]), "the same label keys on both images"
    for key in ("title", "description", "licenses"):
        assert f"org.opencontainers.image.{key}" in labels[0]
    assert labels[0]["org.opencontainers.image.title"] == "newfuse-operator"


# --- the Makefile -----------------------------------------------------------------------------


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
