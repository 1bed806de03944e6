"""The pod runner's watch loop: keep one PodProcess per runnable pod, publish the state file.

This is the kubelet's part of the runner: it lists and watches the operator's pods, decides which
ones run here (pods on kwok nodes, with an agent container whose env resolves) and keeps their
processes in line with the API server, resyncing after every watch expiry or error. What a pod
runs is podenv's business, how a process is supervised podprocess's.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from localcluster.cluster import KWOK_NODE_ANNOTATION
from localcluster.podenv import (
    AGENT_IMAGE_REPOSITORY,
    HOST_ENV_WINS,
    REDIS_URL_VAR,
    EnvResolutionError,
    RefLookup,
    command_template,
    local_redis_url,
    resolve_env,
    runner_base_env,
)
from localcluster.podprocess import (
    BACKOFF_INITIAL_SECONDS,
    BACKOFF_MAX_SECONDS,
    AgentSpec,
    PodProcess,
)

# The runner's modules share one logger, so its log reads as one program's.
log = logging.getLogger("podrunner")

LABEL_SELECTOR: Final = "app.kubernetes.io/managed-by=newfuse-operator"
AGENT_CONTAINER: Final = "agent"
DEFAULT_GRACE_SECONDS: Final = 30.0
# Server-side watch timeout: every expiry re-lists, which is also the resync that retries pods
# whose env could not be resolved (a Secret created after the pod).
WATCH_SECONDS: Final = 30
# On its own SIGTERM the runner gives agents at most this long before SIGKILL, so that
# PodRunnerProcess.down() (which waits a little longer) never has to SIGKILL the runner itself.
SHUTDOWN_GRACE_SECONDS: Final = 10.0

STATE_FILE: Final = "agents.json"


class PodPhase(StrEnum):
    """The pod phases after which the kubelet runs no container."""

    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


def _pod_key(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"


class PodRunner:
    """Keeps the agent processes in line with the pods the API server reports."""

    def __init__(
        self,
        api_client: Any,
        redis_url: str,
        state_dir: Path,
        namespace: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """Run the pods visible through ``api_client`` (in ``namespace``, or all namespaces)."""
        from kubernetes import client as k8s_client

        # Every call passes _preload_content=False and decodes the raw JSON itself (plain dicts,
        # as the watch yields them), which the client's declared model return types do not say.
        self._core: Any = k8s_client.CoreV1Api(api_client)
        self._redis_url = redis_url
        self.state_dir = state_dir
        self._namespace = namespace
        environ = os.environ if environ is None else environ
        self._base_env = runner_base_env(environ)
        self._host_env = {k: v for k, v in environ.items() if k in HOST_ENV_WINS}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._processes: dict[str, PodProcess] = {}  # by pod uid
        self._deleted: set[str] = set()  # uids seen deleted: never started again
        self._kwok_nodes: dict[str, bool] = {}
        self._reported: dict[str, str] = {}  # uid -> last problem logged, against log spam
        self._stopping = False
        self._synced = False

    # -- state file ------------------------------------------------------------------------

    def write_state(self) -> None:
        """Atomically replace the state file with every live agent process."""
        with self._lock:
            supervised = list(self._processes.values())
            synced = self._synced
        entries = [e for e in (p.snapshot() for p in supervised) if e is not None]
        body = {
            "runner_pid": os.getpid(),
            "synced": synced,
            "updated": time.time(),
            "agents": [e.to_json() for e in sorted(entries, key=lambda e: (e.namespace, e.pod))],
        }
        with self._write_lock:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.state_dir / f".{STATE_FILE}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(body, indent=2))
            tmp.replace(self.state_dir / STATE_FILE)

    def _finished(self, proc: PodProcess) -> None:
        with self._lock:
            if self._processes.get(proc.spec.uid) is proc:
                del self._processes[proc.spec.uid]
        self.write_state()

    # -- pods ------------------------------------------------------------------------------

    def _report(self, uid: str, message: str, level: int = logging.INFO) -> None:
        if self._reported.get(uid) != message:
            self._reported[uid] = message
            log.log(level, message)

    def _is_kwok_node(self, name: str) -> bool:
        from kubernetes.client.exceptions import ApiException

        if name not in self._kwok_nodes:
            try:
                resp = self._core.read_node(name, _preload_content=False, _request_timeout=10)
            except ApiException as exc:
                log.warning("cannot read node %s: %s %s", name, exc.status, exc.reason)
                return False
            annotations = json.loads(resp.data).get("metadata", {}).get("annotations") or {}
            self._kwok_nodes[name] = annotations.get(KWOK_NODE_ANNOTATION) == "fake"
            if not self._kwok_nodes[name]:
                log.info("node %s is not a kwok node: its kubelet runs its pods", name)
        return self._kwok_nodes[name]

    def _terminate(self, uid: str) -> None:
        self._deleted.add(uid)
        self._reported.pop(uid, None)
        with self._lock:
            proc = self._processes.get(uid)
        if proc is not None:
            proc.terminate()

    def handle(self, pod: Mapping[str, Any], *, deleted: bool = False) -> None:
        """Bring the process of one pod in line with what the API server says about it."""
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        uid = str(meta.get("uid", ""))
        phase = (pod.get("status") or {}).get("phase")
        if deleted or meta.get("deletionTimestamp") or phase in tuple(PodPhase):
            self._terminate(uid)
            return
        node = spec.get("nodeName")
        with self._lock:
            if self._stopping or uid in self._processes or uid in self._deleted:
                return
        if not node or not self._is_kwok_node(str(node)):
            return
        agent = self._agent_spec(pod)
        if agent is None:
            return
        proc = PodProcess(agent, self.write_state, self._finished)
        with self._lock:
            if self._stopping or uid in self._processes:
                return
            self._processes[uid] = proc
        proc.start()

    def _command(
        self, uid: str, key: str, spec: Mapping[str, Any]
    ) -> tuple[Mapping[str, Any], list[str]] | None:
        """The agent container and its argv template, or None (reported) if it cannot run here."""
        container = next(
            (c for c in spec.get("containers") or [] if c.get("name") == AGENT_CONTAINER), None
        )
        if container is None:
            self._report(uid, f"{key}: no container named {AGENT_CONTAINER!r}; skipped")
            return None
        template = command_template(container)
        if template is None:
            self._report(
                uid,
                f"{key}: image {container.get('image')!r} has no command and is not "
                f"{AGENT_IMAGE_REPOSITORY}; skipped",
                logging.WARNING,
            )
            return None
        return container, template

    def _agent_spec(self, pod: Mapping[str, Any]) -> AgentSpec | None:
        """Everything to start the pod's agent, or None (reported) if it cannot start yet."""
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        uid = str(meta.get("uid", ""))
        command = self._command(uid, _pod_key(pod), spec)
        if command is None:
            return None
        container, template = command
        namespace, name = str(meta["namespace"]), str(meta["name"])
        try:
            pod_env = resolve_env(pod, container, RefLookup(self._core, namespace))
        except EnvResolutionError as exc:
            # The kubelet's CreateContainerConfigError: retried on the next event or resync.
            self._report(uid, f"{_pod_key(pod)}: cannot resolve env: {exc}", logging.ERROR)
            return None
        self._reported.pop(uid, None)
        tmp_dir = self.state_dir / "tmp" / f"{namespace}_{name}_{uid[:8]}"
        # kwok force-deletes a pod once it is marked for deletion, so the deletion's own grace
        # period is gone by the time the watch reports it: the pod spec's is what is left.
        grace = spec.get("terminationGracePeriodSeconds")
        return AgentSpec(
            namespace=namespace,
            pod=name,
            uid=uid,
            argv=tuple(template),
            env=self._agent_env(container, pod_env, tmp_dir),
            grace_seconds=DEFAULT_GRACE_SECONDS if grace is None else float(grace),
            log_path=self.state_dir / "logs" / f"{namespace}_{name}.log",
            tmp_dir=tmp_dir,
        )

    def _agent_env(
        self, container: Mapping[str, Any], pod_env: Mapping[str, str], tmp_dir: Path
    ) -> dict[str, str]:
        """The pod's env over the runner's, with this host's paths and Redis where they differ."""
        env = {**self._base_env, "TMPDIR": str(tmp_dir), **pod_env, **self._host_env}
        if REDIS_URL_VAR in env:
            declared = [v for v in container.get("env") or [] if v.get("name") == REDIS_URL_VAR]
            from_secret = bool(declared) and "valueFrom" in declared[-1]
            env[REDIS_URL_VAR] = local_redis_url(
                self._redis_url, env[REDIS_URL_VAR], from_secret=from_secret
            )
        return env

    # -- watch -----------------------------------------------------------------------------

    def _list(self) -> tuple[list[dict[str, Any]], str]:
        kwargs: dict[str, Any] = {
            "label_selector": LABEL_SELECTOR,
            "_preload_content": False,
            "_request_timeout": 30,
        }
        if self._namespace:
            resp = self._core.list_namespaced_pod(self._namespace, **kwargs)
        else:
            resp = self._core.list_pod_for_all_namespaces(**kwargs)
        body = json.loads(resp.data)
        return list(body.get("items") or []), str(body["metadata"]["resourceVersion"])

    def sync(self) -> str:
        """List the pods, reconcile every one (and stop orphans); return the resourceVersion."""
        pods, version = self._list()
        self._kwok_nodes.clear()
        listed = {str(p["metadata"]["uid"]) for p in pods}
        for pod in pods:
            self.handle(pod)
        # Pods deleted while no watch was open: their DELETED events are lost.
        with self._lock:
            orphans = [uid for uid in self._processes if uid not in listed]
        for uid in orphans:
            self._terminate(uid)
        self._deleted &= listed
        self._reported = {u: m for u, m in self._reported.items() if u in listed}
        with self._lock:
            self._synced = True
        self.write_state()
        return version

    def watch_forever(self, stop: threading.Event) -> None:
        """List then watch, re-listing after every expiry or error, until ``stop`` is set."""
        failures = 0
        while not stop.is_set():
            try:
                self._watch_once(stop)
                failures = 0
            except Exception as exc:
                # 410 Gone (expired resourceVersion), a dropped connection, an API server restart:
                # all mean the same thing here, start again from a fresh list.
                failures += 1
                delay = min(BACKOFF_INITIAL_SECONDS * 2 ** (failures - 1), BACKOFF_MAX_SECONDS)
                log.warning("watch failed (%s); re-listing in %.0fs", exc, delay)
                stop.wait(delay)

    def _watch_once(self, stop: threading.Event) -> None:
        """One list, then one watch from its resourceVersion until it expires or ``stop``."""
        from kubernetes import watch

        list_call: tuple[Any, ...] = (
            (self._core.list_namespaced_pod, self._namespace)
            if self._namespace
            else (self._core.list_pod_for_all_namespaces,)
        )
        version = self.sync()
        stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
            *list_call,
            label_selector=LABEL_SELECTOR,
            resource_version=version,
            allow_watch_bookmarks=False,
            timeout_seconds=WATCH_SECONDS,
            _request_timeout=(10, WATCH_SECONDS + 15),
            deserialize=False,
        )
        for event in stream:
            if stop.is_set():
                return
            kind, pod = event.get("type"), event.get("object") or {}
            if kind in ("ADDED", "MODIFIED", "DELETED"):
                self.handle(pod, deleted=kind == "DELETED")

    def shutdown(self, grace_seconds: float = SHUTDOWN_GRACE_SECONDS) -> None:
        """Stop every agent (SIGTERM, SIGKILL after at most ``grace_seconds``) and wait."""
        with self._lock:
            self._stopping = True
            supervised = list(self._processes.values())
        for proc in supervised:
            proc.terminate(min(proc.spec.grace_seconds, grace_seconds))
        deadline = time.monotonic() + grace_seconds + 5
        for proc in supervised:
            proc.wait(max(0.0, deadline - time.monotonic()))
        self.write_state()
