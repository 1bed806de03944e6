"""The local pod runner: really runs the agent containers of pods that kwok only pretends to run.

kwok makes pods scheduled on its fake nodes Running and Ready but starts no process, so the
operator would manage fleets of agents that never take a task. This runner stands in for the
kubelet on those nodes: it watches the operator's pods, starts the `agent` container of each as a
local process (with the env the kubelet would have resolved), restarts it with back-off when it
exits (restartPolicy Always) and stops it with SIGTERM, then SIGKILL after the grace period, when
the pod is deleted. Pods on real nodes are left to their kubelet.

It writes a state file listing every agent process, so tests and the demo can find an agent (to
kill it, or to read its log). Dev and test tooling only: the product never imports it.

    python -m localcluster.podrunner --kubeconfig K --redis-url U --state-dir D
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from localcluster import processes
from localcluster.binaries import REPO_ROOT
from localcluster.cluster import KWOK_NODE_ANNOTATION
from localcluster.netutil import free_port
from localcluster.waiting import wait_for

log = logging.getLogger("podrunner")

LABEL_SELECTOR: Final = "app.kubernetes.io/managed-by=newfuse-operator"
AGENT_CONTAINER: Final = "agent"
AGENT_IMAGE_REPOSITORY: Final = "newfuse/agent"
DEFAULT_GRACE_SECONDS: Final = 30.0
# restartPolicy Always, with the kubelet's doubling back-off (shorter, for a dev loop), reset once
# a process has run for a while so a crash a day later does not wait the maximum.
BACKOFF_INITIAL_SECONDS: Final = 1.0
BACKOFF_MAX_SECONDS: Final = 30.0
BACKOFF_RESET_AFTER_SECONDS: Final = 600.0
# Server-side watch timeout: every expiry re-lists, which is also the resync that retries pods
# whose env could not be resolved (a Secret created after the pod).
WATCH_SECONDS: Final = 30
# On its own SIGTERM the runner gives agents at most this long before SIGKILL, so that
# PodRunnerProcess.down() (which waits a little longer) never has to SIGKILL the runner itself.
SHUTDOWN_GRACE_SECONDS: Final = 10.0
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

STATE_FILE: Final = "agents.json"
RECORD_FILE: Final = "podrunner.json"


class AgentState(StrEnum):
    """What an agent process listed in the state file is doing."""

    RUNNING = "Running"
    TERMINATING = "Terminating"


class PodPhase(StrEnum):
    """The pod phases after which the kubelet runs no container."""

    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class EnvResolutionError(Exception):
    """A required env source (Secret, ConfigMap, key, field) is missing or unreadable."""


# ---------------------------------------------------------------------------------------------
# What to run: command and env, resolved the way the kubelet would.
# ---------------------------------------------------------------------------------------------


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


def resolve_env(
    pod: Mapping[str, Any], container: Mapping[str, Any], lookup: RefLookup
) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom, then env in order.

    Literal values get `$(VAR)` expansion against the variables defined before them; an
    unresolvable optional reference is skipped; a missing required one raises.
    """
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
    for var in container.get("env") or []:
        name = str(var["name"])
        value_from = var.get("valueFrom")
        if value_from is None:
            env[name] = expand(str(var.get("value", "")), env)
            continue
        value: str | None
        if "fieldRef" in value_from:
            value = _field(pod, str(value_from["fieldRef"].get("fieldPath", "")))
        elif "secretKeyRef" in value_from:
            ref = value_from["secretKeyRef"]
            value = _key_ref("Secret", ref, lookup.secret(str(ref.get("name", ""))))
        elif "configMapKeyRef" in value_from:
            ref = value_from["configMapKeyRef"]
            value = _key_ref("ConfigMap", ref, lookup.config_map(str(ref.get("name", ""))))
        else:
            raise EnvResolutionError(f"{name}: unsupported valueFrom {sorted(value_from)}")
        if value is not None:
            env[name] = value
    return env


def runner_base_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The runner's environment minus its own configuration: what an agent starts from."""
    return {k: v for k, v in environ.items() if not k.startswith(RUNNER_ENV_PREFIXES)}


# ---------------------------------------------------------------------------------------------


def local_redis_url(local: str, pod_url: str, from_secret: bool = False) -> str:
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


# One pod's agent process: start, restart with back-off, stop on deletion.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentEntry:
    """One agent process as listed in the state file."""

    namespace: str
    pod: str
    uid: str
    pid: int
    executable: str
    http_port: int
    restarts: int
    state: AgentState
    log: str

    def to_json(self) -> dict[str, Any]:
        """Serialise for the state file."""
        return {**asdict(self), "state": str(self.state)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AgentEntry:
        """Read back from the state file."""
        return cls(
            namespace=str(data["namespace"]),
            pod=str(data["pod"]),
            uid=str(data["uid"]),
            pid=int(data["pid"]),
            executable=str(data["executable"]),
            http_port=int(data["http_port"]),
            restarts=int(data["restarts"]),
            state=AgentState(data["state"]),
            log=str(data["log"]),
        )

    def record(self) -> processes.ProcessRecord:
        """The process record, for PID-recycling-safe liveness checks and stopping."""
        return processes.ProcessRecord(
            f"agent {self.namespace}/{self.pod}", self.pid, self.executable, self.log
        )


@dataclass(frozen=True)
class AgentSpec:
    """Everything needed to (re)start one pod's agent container here."""

    namespace: str
    pod: str
    uid: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    grace_seconds: float
    log_path: Path
    tmp_dir: Path


class PodProcess:
    """The agent process of one pod, supervised by its own thread like a kubelet container."""

    def __init__(
        self,
        spec: AgentSpec,
        on_change: Callable[[], None],
        on_finished: Callable[[PodProcess], None],
    ) -> None:
        """Prepare (but do not start) the supervisor of ``spec``."""
        self.spec = spec
        self._on_change = on_change
        self._on_finished = on_finished
        self._lock = threading.Lock()
        self._deleting = threading.Event()
        self._done = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._executable = ""
        self._port = 0
        self._restarts = 0
        self._kill_deadline = float("inf")
        self._thread = threading.Thread(
            target=self._run, name=f"pod {spec.namespace}/{spec.pod}", daemon=True
        )

    def start(self) -> None:
        """Start supervising (the first process starts right away)."""
        self._thread.start()

    def snapshot(self) -> AgentEntry | None:
        """The state-file entry, or None while no process is alive (back-off, finished)."""
        with self._lock:
            proc = self._proc
            if proc is None or proc.returncode is not None:
                return None
            return AgentEntry(
                namespace=self.spec.namespace,
                pod=self.spec.pod,
                uid=self.spec.uid,
                pid=proc.pid,
                executable=self._executable,
                http_port=self._port,
                restarts=self._restarts,
                state=AgentState.TERMINATING if self._deleting.is_set() else AgentState.RUNNING,
                log=str(self.spec.log_path),
            )

    def terminate(self, grace_seconds: float | None = None) -> None:
        """Stop for good: SIGTERM now, SIGKILL after the grace period. Never blocks.

        Called again (every later watch event of a deleted pod), it only ever brings the SIGKILL
        forward, as a shorter grace period from the runner's own shutdown does.
        """
        grace = self.spec.grace_seconds if grace_seconds is None else grace_seconds
        deadline = time.monotonic() + grace
        with self._lock:
            first = not self._deleting.is_set()
            self._deleting.set()
            proc = self._proc
            if proc is None or deadline >= self._kill_deadline:
                return
            self._kill_deadline = deadline
            if first:
                log.info(
                    "%s/%s: stopping pid %d (grace %gs)",
                    self.spec.namespace,
                    self.spec.pod,
                    proc.pid,
                    grace,
                )
                self._signal(proc, signal.SIGTERM)
        if first:
            self._on_change()
        timer = threading.Timer(grace, self._kill, args=(proc,))
        timer.daemon = True
        timer.start()

    def wait(self, timeout: float) -> bool:
        """Wait until supervision ended (process gone, no restart coming). True if it did."""
        return self._done.wait(timeout)

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        # The agent leads its own process group (start_new_session), so anything it forked is
        # signalled too; a reaped leader means the pid may be recycled, so leave it alone.
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)

    def _kill(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            log.warning(
                "%s/%s: pid %d outlived its grace period; SIGKILL",
                self.spec.namespace,
                self.spec.pod,
                proc.pid,
            )
            self._signal(proc, signal.SIGKILL)

    def _spawn(self) -> subprocess.Popen[bytes] | None:
        port = free_port()
        env = dict(self.spec.env)
        env[HTTP_PORT_VAR] = str(port)
        env[HTTP_ADDRESS_VAR] = LOCAL_POD_IP
        argv = [expand(a, env) for a in self.spec.argv]
        self.spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.spec.log_path.open("ab") as out:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            out.write(f"--- {stamp} podrunner: start #{self._restarts}: {argv}\n".encode())
            out.flush()
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            except OSError as exc:
                out.write(f"--- podrunner: cannot start: {exc}\n".encode())
                log.error(
                    "%s/%s: cannot start %s: %s", self.spec.namespace, self.spec.pod, argv, exc
                )
                return None
        # Popen returns after exec succeeded, so /proc already shows the real executable (the
        # interpreter, for a script): what the recycling-safe liveness checks compare against.
        try:
            self._executable = os.path.realpath(f"/proc/{proc.pid}/exe")
        except OSError:
            self._executable = ""
        self._port = port
        log.info(
            "%s/%s: started pid %d on port %d (restarts %d)",
            self.spec.namespace,
            self.spec.pod,
            proc.pid,
            port,
            self._restarts,
        )
        return proc

    def _run(self) -> None:
        backoff = BACKOFF_INITIAL_SECONDS
        try:
            self.spec.tmp_dir.mkdir(parents=True, exist_ok=True)
            while True:
                with self._lock:
                    if self._deleting.is_set():
                        return
                    self._proc = proc = self._spawn()
                self._on_change()
                started = time.monotonic()
                if proc is not None:
                    code = proc.wait()
                    log.log(
                        logging.INFO if self._deleting.is_set() else logging.WARNING,
                        "%s/%s: pid %d exited with %d",
                        self.spec.namespace,
                        self.spec.pod,
                        proc.pid,
                        code,
                    )
                with self._lock:
                    self._proc = None
                self._on_change()
                if time.monotonic() - started >= BACKOFF_RESET_AFTER_SECONDS:
                    backoff = BACKOFF_INITIAL_SECONDS
                if self._deleting.wait(backoff):
                    return
                backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
                with self._lock:
                    self._restarts += 1
        except Exception:
            log.exception("%s/%s: supervisor failed", self.spec.namespace, self.spec.pod)
        finally:
            # The pod's /tmp is an emptyDir: it goes with the pod.
            shutil.rmtree(self.spec.tmp_dir, ignore_errors=True)
            self._done.set()
            self._on_finished(self)


# ---------------------------------------------------------------------------------------------
# The runner: watch pods, keep one PodProcess per runnable pod, publish the state file.
# ---------------------------------------------------------------------------------------------


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

    def handle(self, pod: Mapping[str, Any], deleted: bool = False) -> None:
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
        key = _pod_key(pod)
        container = next(
            (c for c in spec.get("containers") or [] if c.get("name") == AGENT_CONTAINER), None
        )
        if container is None:
            self._report(uid, f"{key}: no container named {AGENT_CONTAINER!r}; skipped")
            return
        template = command_template(container)
        if template is None:
            self._report(
                uid,
                f"{key}: image {container.get('image')!r} has no command and is not "
                f"{AGENT_IMAGE_REPOSITORY}; skipped",
                logging.WARNING,
            )
            return
        namespace, name = str(meta["namespace"]), str(meta["name"])
        try:
            pod_env = resolve_env(pod, container, RefLookup(self._core, namespace))
        except EnvResolutionError as exc:
            # The kubelet's CreateContainerConfigError: retried on the next event or resync.
            self._report(uid, f"{key}: cannot resolve env: {exc}", logging.ERROR)
            return
        self._reported.pop(uid, None)
        tmp_dir = self.state_dir / "tmp" / f"{namespace}_{name}_{uid[:8]}"
        env = {**self._base_env, "TMPDIR": str(tmp_dir), **pod_env, **self._host_env}
        if REDIS_URL_VAR in env:
            declared = [v for v in container.get("env") or [] if v.get("name") == REDIS_URL_VAR]
            from_secret = bool(declared) and "valueFrom" in declared[-1]
            env[REDIS_URL_VAR] = local_redis_url(self._redis_url, env[REDIS_URL_VAR], from_secret)
        # kwok force-deletes a pod once it is marked for deletion, so the deletion's own grace
        # period is gone by the time the watch reports it: the pod spec's is what is left.
        grace = spec.get("terminationGracePeriodSeconds")
        agent = AgentSpec(
            namespace=namespace,
            pod=name,
            uid=uid,
            argv=tuple(template),
            env=env,
            grace_seconds=DEFAULT_GRACE_SECONDS if grace is None else float(grace),
            log_path=self.state_dir / "logs" / f"{namespace}_{name}.log",
            tmp_dir=tmp_dir,
        )
        proc = PodProcess(agent, self.write_state, self._finished)
        with self._lock:
            if self._stopping or uid in self._processes:
                return
            self._processes[uid] = proc
        proc.start()

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
        from kubernetes import watch

        list_call: tuple[Any, ...] = (
            (self._core.list_namespaced_pod, self._namespace)
            if self._namespace
            else (self._core.list_pod_for_all_namespaces,)
        )
        failures = 0
        while not stop.is_set():
            try:
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
                failures = 0
            except Exception as exc:
                # 410 Gone (expired resourceVersion), a dropped connection, an API server restart:
                # all mean the same thing here, start again from a fresh list.
                failures += 1
                delay = min(BACKOFF_INITIAL_SECONDS * 2 ** (failures - 1), BACKOFF_MAX_SECONDS)
                log.warning("watch failed (%s); re-listing in %.0fs", exc, delay)
                stop.wait(delay)

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


def main(argv: Sequence[str] | None = None) -> int:
    """Run until SIGTERM or SIGINT, then stop every agent process."""
    parser = argparse.ArgumentParser(prog="python -m localcluster.podrunner", description=__doc__)
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--redis-url", required=True, help="replaces NEWFUSE_REDIS_URL of agents")
    parser.add_argument("--state-dir", type=Path, required=True, help="state file and logs")
    parser.add_argument("--namespace", help="only this namespace (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from kubernetes import config as k8s_config

    api = k8s_config.new_client_from_config(config_file=str(args.kubeconfig))  # type: ignore[no-untyped-call]
    runner = PodRunner(api, args.redis_url, args.state_dir, args.namespace)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s; stopping agents", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # The watch blocks in socket reads, so it runs in a daemon thread and the main thread stays
    # free to react to signals.
    threading.Thread(target=runner.watch_forever, args=(stop,), name="watch", daemon=True).start()
    while not stop.wait(1.0):
        pass
    runner.shutdown()
    log.info("stopped")
    return 0


# ---------------------------------------------------------------------------------------------
# The runner as a tracked background process, for tests and the demo.
# ---------------------------------------------------------------------------------------------


class PodRunnerProcess:
    """One pod runner process whose PID, state file and logs live in ``state_dir``."""

    def __init__(self, state_dir: Path) -> None:
        """Manage the pod runner recorded in ``state_dir``."""
        self.state_dir = state_dir
        self._record_file = state_dir / RECORD_FILE
        self._state_file = state_dir / STATE_FILE

    def _record(self) -> processes.ProcessRecord | None:
        if not self._record_file.exists():
            return None
        return processes.ProcessRecord.from_json(json.loads(self._record_file.read_text()))

    def _state(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self._state_file.read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def running(self) -> bool:
        """Whether the recorded runner process is alive."""
        record = self._record()
        return record is not None and processes.is_running(record)

    def agents(self) -> list[AgentEntry]:
        """The agent processes listed in the runner's state file."""
        return [AgentEntry.from_json(a) for a in self._state().get("agents") or []]

    def up(
        self,
        kubeconfig: Path,
        redis_url: str,
        log: Callable[[str], None],
        namespace: str | None = None,
    ) -> None:
        """Start the runner unless it runs; wait until it has listed the pods once."""
        if self.running():
            log("pod runner already running")
            return
        # Agents of a runner that died without cleaning up: nobody would ever stop them.
        self._stop_agents()
        self._state_file.unlink(missing_ok=True)
        argv = [
            sys.executable, "-m", "localcluster.podrunner",
            "--kubeconfig", str(kubeconfig),
            "--redis-url", redis_url,
            "--state-dir", str(self.state_dir),
            *(["--namespace", namespace] if namespace else []),
        ]  # fmt: skip
        hack = str(REPO_ROOT / "hack")
        pythonpath = os.pathsep.join(p for p in (hack, os.environ.get("PYTHONPATH")) if p)
        record = processes.start(
            "newfuse-podrunner",
            argv,
            self.state_dir / "logs" / "podrunner.log",
            {"PYTHONPATH": pythonpath},
        )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._record_file.write_text(json.dumps(record.to_json()))

        def synced() -> bool:
            if not processes.is_running(record):
                raise RuntimeError(f"the pod runner exited; see {record.log}")
            state = self._state()
            return bool(state.get("runner_pid") == record.pid and state.get("synced"))

        wait_for(synced, 60, what="the pod runner's first pod list")
        log(f"pod runner running (pid {record.pid}), agents listed in {self._state_file}")

    def _stop_agents(self) -> bool:
        stopped = False
        for agent in self.agents():
            record = agent.record()
            # is_running compares the executable, so a recycled pid is never signalled.
            if processes.is_running(record):
                processes.stop(record, grace=5.0)
                stopped = True
        return stopped

    def down(self) -> bool:
        """Stop the runner (it stops its agents) and any agent it left. True if any was running."""
        record = self._record()
        stopped = False
        if record is not None and processes.is_running(record):
            processes.stop(record, grace=SHUTDOWN_GRACE_SECONDS + 10)
            stopped = True
        return self._stop_agents() or stopped

    def pids(self) -> list[int]:
        """The runner's PID and its agents' PIDs that are still running (for leak checks)."""
        record = self._record()
        pids = [record.pid] if record is not None and processes.is_running(record) else []
        return pids + [a.pid for a in self.agents() if processes.is_running(a.record())]


if __name__ == "__main__":
    sys.exit(main())
