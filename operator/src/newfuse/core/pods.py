"""Agent pods: reading what the API server reports, and writing the manifest of a desired one."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from newfuse.api.memory import MemorySpec
from newfuse.api.review import ReviewSpec
from newfuse.api.services import GatewaySpec
from newfuse.api.tasks import TaskPolicySpec
from newfuse.api.v1alpha1 import API_VERSION, KIND, NewFuseAgent, SecretKeyRef
from newfuse.core import naming
from newfuse.wire.agentenv import AgentEnv
from newfuse.wire.review import ReviewPolicy
from newfuse.wire.taskpolicy import TaskPolicy

AGENT_HTTP_PORT: Final = 8080
# Waiting reasons after which a pod will not become Ready by itself.
FAILING_WAIT_REASONS: Final = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "CreateContainerConfigError",
        "InvalidImageName",
    }
)


OOM_KILLED: Final = "OOMKilled"


def _last_exit(container: Mapping[str, Any]) -> str:
    """How the container last ended ("OOMKilled", "Error (exit code 3)", ...), or "" if never."""
    ended = (container.get("lastState") or {}).get("terminated") or {}
    if not ended:
        return ""
    reason, code = str(ended.get("reason") or "Terminated"), ended.get("exitCode")
    return reason if reason == OOM_KILLED or code is None else f"{reason} (exit code {code})"


class PodHealth(StrEnum):
    """What an observed pod means for the fleet."""

    READY = "Ready"
    STARTING = "Starting"
    CRASH_LOOPING = "CrashLooping"
    FAILED = "Failed"


@dataclass(frozen=True)
class ObservedPod:
    """The facts about one existing pod that the planner and status need."""

    name: str
    revision: str
    ordinal: int
    health: PodHealth
    terminating: bool
    detail: str = ""
    # How the agent container last ended (e.g. "OOMKilled"), if it has restarted.
    last_exit: str = ""

    @property
    def oom_killed(self) -> bool:
        """Whether the kernel killed the agent for exceeding its memory limit."""
        return self.last_exit == OOM_KILLED

    @property
    def ready(self) -> bool:
        """Ready and not on its way out."""
        return self.health is PodHealth.READY and not self.terminating


def observe_pod(pod: Mapping[str, Any]) -> ObservedPod | None:
    """Summarise a pod body; None if it is not one of ours (missing labels)."""
    meta = pod.get("metadata", {})
    labels = meta.get("labels") or {}
    revision, ordinal = labels.get(naming.LABEL_REVISION), labels.get(naming.LABEL_ORDINAL)
    if revision is None or ordinal is None or not str(ordinal).isdigit():
        return None
    status = pod.get("status") or {}
    phase = status.get("phase", "Pending")
    health, detail, last_exit = PodHealth.STARTING, "", ""
    if phase in ("Failed", "Succeeded"):
        health, detail = PodHealth.FAILED, status.get("reason") or phase
    else:
        for container in status.get("containerStatuses") or []:
            reason = ((container.get("state") or {}).get("waiting") or {}).get("reason")
            if reason in FAILING_WAIT_REASONS:
                last_exit = _last_exit(container)
                health = PodHealth.CRASH_LOOPING
                detail = f"{reason}, last exit: {last_exit}" if last_exit else reason
                break
        else:
            conditions = status.get("conditions") or []
            if phase == "Running" and any(
                c.get("type") == "Ready" and c.get("status") == "True" for c in conditions
            ):
                health = PodHealth.READY
    return ObservedPod(
        name=meta["name"],
        revision=revision,
        ordinal=int(ordinal),
        health=health,
        terminating=meta.get("deletionTimestamp") is not None,
        detail=detail,
        last_exit=last_exit,
    )


@dataclass(frozen=True)
class AgentDefaults:
    """Operator-level settings every agent pod inherits."""

    redis_url: str
    heartbeat_seconds: float = 5.0
    termination_grace_seconds: int = 30
    # Secrets (same name in every fleet's namespace) that fleets use unless their spec says
    # otherwise: credentials never travel as plain env values.
    redis_secret: SecretKeyRef | None = None
    signing_secret: SecretKeyRef | None = None


# str(name): a manifest holds plain strings (YAML and JSON dumpers refuse enum members).
def _memory_env(memory: MemorySpec) -> list[dict[str, Any]]:
    env = [
        _env(AgentEnv.MEMORY_MODEL, memory.model.value),
        _env(AgentEnv.MEMORY_MAX_ITEMS, str(memory.max_items)),
    ]
    if memory.ttl_seconds is not None:
        env.append(_env(AgentEnv.MEMORY_TTL_SECONDS, str(memory.ttl_seconds)))
    if memory.postgres is not None:
        ref = memory.postgres.url_secret_ref
        env.append(_secret_env(AgentEnv.MEMORY_POSTGRES_URL, ref.name, ref.key))
    return env


def _env(name: str, value: str) -> dict[str, Any]:
    return {"name": str(name), "value": value}


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": str(name), "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": str(name), "valueFrom": {"fieldRef": {"fieldPath": path}}}


# spec.tasks field -> TaskPolicy field (the names differ where the API follows Kubernetes style).
TASK_POLICY_FIELDS: Final = {
    "timeout_seconds": "default_timeout_seconds",
    "claim_idle_seconds": "claim_idle_seconds",
    "lease_renew_seconds": "lease_renew_seconds",
    "retry_base_seconds": "retry_base_seconds",
    "retry_max_seconds": "retry_max_seconds",
    "result_ttl_seconds": "result_ttl_seconds",
    "result_stream_max_len": "result_stream_max",
    "dead_letter_max_len": "dead_letter_max",
    "max_payload_bytes": "max_payload_bytes",
    "max_clock_skew_seconds": "max_clock_skew_seconds",
}


def task_policy(spec: TaskPolicySpec | None) -> TaskPolicy:
    """The fleet's task policy: what spec.tasks sets, TaskPolicy's defaults for the rest."""
    if spec is None:
        return TaskPolicy()
    values = spec.model_dump(exclude_none=True)
    return TaskPolicy.model_validate({TASK_POLICY_FIELDS[k]: v for k, v in values.items()})


def review_policy(spec: ReviewSpec) -> ReviewPolicy:
    """The agents' copy of spec.review."""
    return ReviewPolicy.model_validate(spec.model_dump(mode="json"))


def agent_env(fleet: NewFuseAgent, revision: str, defaults: AgentDefaults) -> list[dict[str, Any]]:
    """What an agent needs: identity, Redis, capabilities, task policy, gateway.

    No channel names: the agent derives them from its namespace and fleet (FleetKeys), as the
    operator and the CLI do, so they cannot disagree.
    """
    spec = fleet.spec
    env = [
        _field_env(AgentEnv.AGENT_ID, "metadata.name"),
        _field_env(AgentEnv.NAMESPACE, "metadata.namespace"),
        _env(AgentEnv.FLEET, fleet.metadata.name),
        _env(AgentEnv.REVISION, revision),
        _env(AgentEnv.CAPABILITIES, ",".join(spec.capabilities)),
        _env(AgentEnv.PROTOCOL_VERSION, spec.protocol_version),
        _env(AgentEnv.CONCURRENCY, str(spec.concurrency)),
        _env(AgentEnv.HEARTBEAT_SECONDS, f"{defaults.heartbeat_seconds:g}"),
        _env(AgentEnv.HTTP_PORT, str(AGENT_HTTP_PORT)),
        # Every policy variable, defaults included, so an agent never guesses (or keeps a default
        # of its own image that differs from the operator's).
        *(_env(name, value) for name, value in task_policy(spec.tasks).to_env().items()),
    ]
    if spec.review is not None:
        env.append(_env(AgentEnv.REVIEW_POLICY, review_policy(spec.review).model_dump_json()))
    if spec.memory is not None:
        env += _memory_env(spec.memory)
    redis_ref = (spec.redis.url_secret_ref if spec.redis else None) or defaults.redis_secret
    if redis_ref:
        env.append(_secret_env(AgentEnv.REDIS_URL, redis_ref.name, redis_ref.key))
    else:
        env.append(_env(AgentEnv.REDIS_URL, defaults.redis_url))
    if spec.redis and spec.redis.ca_secret_ref:
        env.append(_env(AgentEnv.REDIS_CA_FILE, REDIS_CA_FILE))
    signing_ref = (spec.signing.key_secret_ref if spec.signing else None) or defaults.signing_secret
    if signing_ref:
        env.append(_secret_env(AgentEnv.SIGNING_KEY, signing_ref.name, signing_ref.key))
        required = spec.signing.required if spec.signing else True
        env.append(_env(AgentEnv.REQUIRE_SIGNATURES, str(required).lower()))
    accept_ref = spec.signing.accept_key_secret_ref if spec.signing else None
    if accept_ref:
        env.append(_secret_env(AgentEnv.SIGNING_ACCEPT, accept_ref.name, accept_ref.key))
    if spec.encryption:
        key_ref, older = spec.encryption.key_secret_ref, spec.encryption.accept_key_secret_ref
        env.append(_secret_env(AgentEnv.ENCRYPTION_KEY, key_ref.name, key_ref.key))
        if older:
            env.append(_secret_env(AgentEnv.ENCRYPTION_ACCEPT, older.name, older.key))
    if spec.gateway and spec.gateway.endpoint:
        env += _gateway_env(spec.gateway)
    # The user's variables come first so that, on a name clash, the operator's identity wins
    # (Kubernetes keeps the last duplicate).
    user = [var.to_api() for var in spec.env or []]
    return user + env


def _gateway_env(gateway: GatewaySpec) -> list[dict[str, Any]]:
    env = [
        _env(AgentEnv.GATEWAY_ENDPOINT, gateway.endpoint or ""),
        _env(AgentEnv.GATEWAY_TIMEOUT_SECONDS, f"{gateway.timeout_seconds:g}"),
    ]
    if gateway.model:
        env.append(_env(AgentEnv.GATEWAY_MODEL, gateway.model))
    if gateway.rate_limit_per_second:
        env.append(_env(AgentEnv.GATEWAY_RATE_LIMIT, f"{gateway.rate_limit_per_second:g}"))
    if gateway.prices:
        prices = json.dumps([p.to_api() for p in gateway.prices], separators=(",", ":"))
        env.append(_env(AgentEnv.GATEWAY_PRICES, prices))
    if gateway.credentials_secret_ref:
        ref = gateway.credentials_secret_ref
        env.append(_secret_env(AgentEnv.GATEWAY_API_KEY, ref.name, ref.key))
    return env


RESTRICTED_CONTAINER_SECURITY: Final = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


# The agent image's USER, set explicitly: with only the image's "65532:65532", containerd's CRI
# looks the uid up in the image's /etc/passwd, finds nothing, and runs the agent in group 0
# (seen on the real node). Images built FROM the agent image inherit this user.
AGENT_UID: Final = 65532
AGENT_GID: Final = 65532
REDIS_CA_DIR: Final = "/etc/newfuse/redis-ca"
REDIS_CA_FILE: Final = f"{REDIS_CA_DIR}/ca.crt"


def build_pod(
    fleet: NewFuseAgent, revision: str, ordinal: int, defaults: AgentDefaults
) -> dict[str, Any]:
    """The full manifest of one agent pod (restricted Pod Security Standard)."""
    spec, meta = fleet.spec, fleet.metadata
    labels = {
        **naming.fleet_labels(meta.name),
        naming.LABEL_COMPONENT: naming.COMPONENT_AGENT,
        naming.LABEL_REVISION: revision,
        naming.LABEL_ORDINAL: str(ordinal),
        **{naming.capability_label(c): "true" for c in spec.capabilities},
    }
    container: dict[str, Any] = {
        "name": naming.AGENT_CONTAINER,
        "image": spec.image,
        "env": agent_env(fleet, revision, defaults),
        "ports": [{"name": "http", "containerPort": AGENT_HTTP_PORT, "protocol": "TCP"}],
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5},
        "securityContext": RESTRICTED_CONTAINER_SECURITY,
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108 - an emptyDir
    }
    optional = {
        "imagePullPolicy": spec.image_pull_policy,
        "command": spec.command,
        "args": spec.args,
        "resources": spec.resources.to_api() if spec.resources else None,
    }
    container.update({k: v for k, v in optional.items() if v is not None})
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "restartPolicy": "Always",
        # Agents talk to Redis and the model gateway, never to the API server.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": defaults.termination_grace_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": AGENT_UID,
            "runAsGroup": AGENT_GID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}],
    }
    if spec.redis and spec.redis.ca_secret_ref:
        ca = spec.redis.ca_secret_ref
        pod_spec["volumes"].append(
            {
                "name": "redis-ca",
                "secret": {"secretName": ca.name, "items": [{"key": ca.key, "path": "ca.crt"}]},
            }
        )
        container["volumeMounts"].append(
            {"name": "redis-ca", "mountPath": REDIS_CA_DIR, "readOnly": True}
        )
    if spec.service_account_name:
        pod_spec["serviceAccountName"] = spec.service_account_name
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [t.to_api() for t in spec.tolerations]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": naming.pod_name(meta.name, revision, ordinal),
            "namespace": meta.namespace,
            "labels": labels,
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": KIND,
                    "name": meta.name,
                    "uid": meta.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": pod_spec,
    }
