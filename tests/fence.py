"""The chart's NewFuseAgent reference fence, shared by its unit and integration tests.

The unit tests read the rendered policy and the integration tests install the same rendering on
the real API server, so both render here, with one set of allow-lists and one spec that sets
every reference field the policy must fence.
"""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path
from typing import Any, Final

import yaml

from gen_kustomize import helm_binary, kube_version

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "newfuse-operator"
TEMPLATE = "templates/admission-policy.yaml"
POLICY_KINDS: Final = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")

# What the tests allow in their tenant namespace.
ALLOWED: Final = {
    "serviceAccounts": ["agents"],
    "secrets": [
        "gateway-key",
        "redis-url",
        "redis-ca",
        "memory-pg",
        "fleet-signing",
        "fleet-signing-old",
        "data-key",
        "data-key-old",
        "env-token",
    ],
    "tolerationKeys": ["nvidia.com/gpu"],
    "nodeSelectors": ["pool=team-a", "zone"],
}

# A spec that uses every reference field of NewFuseAgentSpec, each with an allowed name. The unit
# test checks it sets every SecretKeyRef field of the models, so a new one cannot be forgotten.
EVERY_REFERENCE: Final[dict[str, Any]] = {
    "image": "newfuse/agent:0.1.0",
    "serviceAccountName": "agents",
    "env": [
        {"name": "PLAIN", "value": "1"},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "env-token", "key": "t"}}},
    ],
    "gateway": {
        "endpoint": "http://gateway:8080/v1",
        "credentialsSecretRef": {"name": "gateway-key", "key": "k"},
    },
    "redis": {
        "urlSecretRef": {"name": "redis-url", "key": "url"},
        "caSecretRef": {"name": "redis-ca", "key": "ca.crt"},
    },
    "signing": {
        "keySecretRef": {"name": "fleet-signing", "key": "key"},
        "acceptKeySecretRef": {"name": "fleet-signing-old", "key": "keys"},
    },
    "encryption": {
        "keySecretRef": {"name": "data-key", "key": "key"},
        "acceptKeySecretRef": {"name": "data-key-old", "key": "keys"},
    },
    "memory": {"postgres": {"urlSecretRef": {"name": "memory-pg", "key": "url"}}},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "nodeSelector": {"pool": "team-a", "zone": "any-zone"},
}


@functools.cache
def helm() -> str:
    """The pinned helm (built into the cache on first use), looked up once."""
    return str(helm_binary())


def render_raw(
    *sets: str,
    release: str = "nf",
    namespace: str = "newfuse-system",
    values: dict[str, Any] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `helm template` of the chart (values given as a -f file on stdin)."""
    argv = [helm(), "template", release, str(CHART), "-n", namespace]
    argv += ["--kube-version", kube_version()]
    for value in sets:
        argv += ["--set", value]
    stdin = None
    if values is not None:
        argv += ["-f", "-"]
        stdin = json.dumps(values)
    return subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=120, check=False
    )


def render(
    *sets: str,
    release: str = "nf",
    namespace: str = "newfuse-system",
    values: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The chart's objects, rendered by `helm template`."""
    result = render_raw(*sets, release=release, namespace=namespace, values=values)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def fence_values(namespace: str, **overrides: Any) -> dict[str, Any]:
    """Values turning the fence on for one tenant namespace, with the tests' allow-lists."""
    policy: dict[str, Any] = {
        "enabled": True,
        "namespaces": {namespace: ALLOWED},
        **overrides,
    }
    return {"admissionPolicy": policy}


def fence_docs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The fence's objects: the policy and its binding."""
    return [d for d in docs if d["kind"] in POLICY_KINDS]


def allow_lists(policy: dict[str, Any]) -> dict[str, dict[str, list[str]]]:
    """The allow-lists rendered into the policy (a JSON object is also a CEL literal)."""
    [expr] = [v["expression"] for v in policy["spec"]["variables"] if v["name"] == "allowed"]
    lists: dict[str, dict[str, list[str]]] = json.loads(expr)
    return lists


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The single object of that kind."""
    [doc] = [d for d in docs if d["kind"] == kind]
    return doc


def nfa(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    """A NewFuseAgent manifest: EVERY_REFERENCE, with fields replaced (None removes one)."""
    body = {**EVERY_REFERENCE, **spec}
    return {
        "apiVersion": "newfuse.io/v1alpha1",
        "kind": "NewFuseAgent",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {k: v for k, v in body.items() if v is not None},
    }
