"""`kind.sh up` and `down`, run against stand-in commands (tests/kind_path.py), without Docker.

The script parses; every image tag it builds is the one it loads into kind and the one it deploys
through the chart; it only ever uses its own kubeconfig; missing tools are named with how to get
them. The real chart, rendered with the script's helm arguments, wires what `kind.sh e2e` reads
back (test_kind_e2e.py).
"""

from __future__ import annotations

import base64
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from gen_kustomize import helm_binary
from kind_path import (
    DOCKERFILE,
    ROOT,
    SCRIPT,
    Run,
    built_refs,
    global_args,
    helm_values,
    option,
    run_kind_sh,
)

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


def test_up_builds_both_images_from_one_base_and_tags_them_by_content(up_run: Run) -> None:
    assert up_run.result.returncode == 0, up_run.result.stderr
    builds = up_run.of("docker", "build")
    assert [option(b, "-f") for b in builds] == ["Dockerfile", "Dockerfile"]
    assert sorted(option(b, "--target") for b in builds) == ["agent", "operator"]
    assert all(b[-1] == "." for b in builds), "the build context is the repository root"
    base = {option(b, "--build-arg") for b in builds}
    assert base == {f"BASE={global_args(DOCKERFILE)['BASE']}"}
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
