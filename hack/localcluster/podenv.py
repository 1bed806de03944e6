"""How the pod runner turns a pod's agent container into a local command and environment.

The kubelet resolves env (Secrets, ConfigMaps, the Downward API, `$(VAR)` references) before it
starts a container; the runner must do the same, and then translate what only makes sense inside
a cluster (the Redis address, container paths) to this host. That translation is pure apart from
reading Secrets and ConfigMaps, so it lives apart from the process and watch machinery.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

AGENT_IMAGE_REPOSITORY: Final = "newfuse/agent"
LOCAL_POD_IP: Final = "127.0.0.1"
# In-cluster addresses mean nothing on this host: the runner's Redis replaces the pod's, and
# every agent gets its own free port (all pods would say 8080), on the loopback only.
REDIS_URL_VAR: Final = "NEWFUSE_REDIS_URL"
HTTP_PORT_VAR: Final = "NEWFUSE_HTTP_PORT"
HTTP_ADDRESS_VAR: Final = "NEWFUSE_HTTP_ADDRESS"
# Container paths mean nothing on this host either; these keep `python -m newfuse_agent` working.
HOST_ENV_WINS: Final = ("PATH", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "LD_LIBRARY_PATH")
# The runner's own configuration must not leak into agents as if the pod had set it.
RUNNER_ENV_PREFIXES: Final = ("NEWFUSE_", "AI_", "KUBECONFIG")


class EnvResolutionError(Exception):
    """A required env source (Secret, ConfigMap, key, field) is missing or unreadable."""


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: `$$` escapes, unknown references stay as written."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        if text.startswith("$(", i):
            end = text.find(")", i + 2)
            if end != -1:
                name = text[i + 2 : end]
                out.append(env.get(name, text[i : end + 1]))
                i = end + 1
                continue
        out.append(text[i])
        i += 1
    return "".join(out)


def image_repository(image: str) -> str:
    """The repository part of an image reference (no tag, no digest)."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def is_agent_image(image: str) -> bool:
    """Whether the image is the NewFuse agent (any tag or digest, any registry prefix)."""
    repository = image_repository(image)
    return repository == AGENT_IMAGE_REPOSITORY or repository.endswith("/" + AGENT_IMAGE_REPOSITORY)


def command_template(container: Mapping[str, Any]) -> list[str] | None:
    """The argv (before `$(VAR)` expansion) for the container, or None if it cannot run here.

    An explicit `command` runs as given (with `args`); the agent image's entry point is
    `python -m newfuse_agent`, which runs here with this interpreter; any other image has an
    entry point this host does not know.
    """
    args = [str(a) for a in container.get("args") or []]
    command = container.get("command")
    if command:
        return [str(c) for c in command] + args
    if is_agent_image(str(container.get("image", ""))):
        return [sys.executable, "-m", "newfuse_agent", *args]
    return None


class RefLookup:
    """Secrets and ConfigMaps read through the API, each at most once per resolution."""

    def __init__(self, core: Any, namespace: str) -> None:
        """Read objects of ``namespace`` with a CoreV1Api."""
        self._core = core
        self._namespace = namespace
        self._cache: dict[tuple[str, str], dict[str, str] | None] = {}

    def _read(self, kind: str, name: str) -> dict[str, str] | None:
        from kubernetes.client.exceptions import ApiException

        key = (kind, name)
        if key not in self._cache:
            reader = (
                self._core.read_namespaced_secret
                if kind == "Secret"
                else self._core.read_namespaced_config_map
            )
            try:
                resp = reader(name, self._namespace, _preload_content=False, _request_timeout=10)
            except ApiException as exc:
                if exc.status == 404:
                    self._cache[key] = None
                    return None
                raise EnvResolutionError(
                    f"cannot read {kind} {self._namespace}/{name}: {exc.status} {exc.reason}"
                ) from exc
            body = json.loads(resp.data)
            data: dict[str, str] = {}
            if kind == "Secret":
                for k, v in (body.get("data") or {}).items():
                    data[k] = base64.b64decode(v).decode("utf-8", errors="surrogateescape")
            else:
                data.update(body.get("data") or {})
                for k, v in (body.get("binaryData") or {}).items():
                    data[k] = base64.b64decode(v).decode("utf-8", errors="surrogateescape")
            self._cache[key] = data
        return self._cache[key]

    def secret(self, name: str) -> dict[str, str] | None:
        """The decoded data of a Secret, or None if it does not exist."""
        return self._read("Secret", name)

    def config_map(self, name: str) -> dict[str, str] | None:
        """The data of a ConfigMap, or None if it does not exist."""
        return self._read("ConfigMap", name)


def _field(pod: Mapping[str, Any], path: str) -> str:
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    simple: dict[str, Any] = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        # The process runs on this host, so the pod's and the node's address are the loopback.
        "status.podIP": LOCAL_POD_IP,
        "status.podIPs": LOCAL_POD_IP,
        "status.hostIP": LOCAL_POD_IP,
        "status.hostIPs": LOCAL_POD_IP,
    }
    if path in simple:
        if simple[path] is None:
            raise EnvResolutionError(f"field {path} is not set")
        return str(simple[path])
    for prefix, mapping in (
        ("metadata.labels", meta.get("labels")),
        ("metadata.annotations", meta.get("annotations")),
    ):
        if path.startswith(f"{prefix}['") and path.endswith("']"):
            return str((mapping or {}).get(path[len(prefix) + 2 : -2], ""))
    raise EnvResolutionError(f"unsupported fieldRef {path!r}")


def _key_ref(kind: str, ref: Mapping[str, Any], data: Mapping[str, str] | None) -> str | None:
    optional = bool(ref.get("optional", False))
    name, key = ref.get("name", ""), ref.get("key", "")
    if data is None:
        if optional:
            return None
        raise EnvResolutionError(f"{kind} {name!r} not found")
    if key not in data:
        if optional:
            return None
        raise EnvResolutionError(f"key {key!r} not found in {kind} {name!r}")
    return data[key]


def _env_from(container: Mapping[str, Any], lookup: RefLookup) -> dict[str, str]:
    """The variables of the container's envFrom sources, in order (later ones win)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = str(source.get("prefix", ""))
        for kind, field, read in (
            ("ConfigMap", "configMapRef", lookup.config_map),
            ("Secret", "secretRef", lookup.secret),
        ):
            ref = source.get(field)
            if ref is None:
                continue
            data = read(str(ref.get("name", "")))
            if data is None:
                if ref.get("optional", False):
                    continue
                raise EnvResolutionError(f"{kind} {ref.get('name')!r} not found")
            env.update({prefix + k: v for k, v in data.items()})
    return env


def _value_from(
    pod: Mapping[str, Any], name: str, value_from: Mapping[str, Any], lookup: RefLookup
) -> str | None:
    """One valueFrom reference; None for a missing optional one."""
    if "fieldRef" in value_from:
        return _field(pod, str(value_from["fieldRef"].get("fieldPath", "")))
    if "secretKeyRef" in value_from:
        ref = value_from["secretKeyRef"]
        return _key_ref("Secret", ref, lookup.secret(str(ref.get("name", ""))))
    if "configMapKeyRef" in value_from:
        ref = value_from["configMapKeyRef"]
        return _key_ref("ConfigMap", ref, lookup.config_map(str(ref.get("name", ""))))
    raise EnvResolutionError(f"{name}: unsupported valueFrom {sorted(value_from)}")


def resolve_env(
    pod: Mapping[str, Any], container: Mapping[str, Any], lookup: RefLookup
) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom, then env in order.

    Literal values get `$(VAR)` expansion against the variables defined before them; an
    unresolvable optional reference is skipped; a missing required one raises.
    """
    env = _env_from(container, lookup)
    for var in container.get("env") or []:
        name = str(var["name"])
        value_from = var.get("valueFrom")
        if value_from is None:
            env[name] = expand(str(var.get("value", "")), env)
            continue
        value = _value_from(pod, name, value_from, lookup)
        if value is not None:
            env[name] = value
    return env


def runner_base_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The runner's environment minus its own configuration: what an agent starts from."""
    return {k: v for k, v in environ.items() if not k.startswith(RUNNER_ENV_PREFIXES)}


def local_redis_url(local: str, pod_url: str, *, from_secret: bool = False) -> str:
    """The runner's Redis, logged in as the pod's URL says (a fleet's own ACL user, say).

    Agents run on this host, so only the server changes: the credentials stay the pod's. A URL
    from a Secret (a fleet's spec.redis) on this host's loopback is a server of its own (in
    tests), reachable as it is; the operator's plain default is always the runner's Redis.
    """
    pod = urlsplit(pod_url)
    if from_secret and pod.hostname in ("127.0.0.1", "localhost", "::1"):
        return pod_url
    if pod.username is None and pod.password is None:
        return local
    parts = urlsplit(local)
    login = pod.netloc.rsplit("@", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{login}@{parts.netloc.rsplit('@', 1)[-1]}"))
