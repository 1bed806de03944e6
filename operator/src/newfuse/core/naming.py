"""Names, labels and annotations of the objects the operator owns."""

from __future__ import annotations

from typing import Final

LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_FLEET: Final = "newfuse.io/fleet"
LABEL_REVISION: Final = "newfuse.io/revision"
LABEL_ORDINAL: Final = "newfuse.io/ordinal"
CAPABILITY_LABEL_PREFIX: Final = "capability.newfuse.io/"

APP_NAME: Final = "newfuse-agent"
MANAGED_BY: Final = "newfuse-operator"
COMPONENT_AGENT: Final = "agent"

# One-shot rollout controls, written by `newfuse rollout promote|promote-full|abort|retry`
# as "<action>@<timestamp>"; the controller acts on a value once and records it in status.
ROLLOUT_ACTION_ANNOTATION: Final = "newfuse.io/rollout-action"
# Who asked for the last control action (and pause/resume), as "<user>@<timestamp>"; the CLI
# writes the Kubernetes identity it authenticated as, and the operator's audit line repeats it.
ROLLOUT_ACTION_BY_ANNOTATION: Final = "newfuse.io/rollout-action-by"
PAUSED_BY_ANNOTATION: Final = "newfuse.io/paused-by"

# Blocks deletion of a fleet until its Redis keys are gone (or the cleanup gives up: see
# newfuse.core.cleanup).
FINALIZER: Final = "newfuse.io/redis-cleanup"
# "true" on a fleet: delete it without removing its Redis keys (the way out when Redis is gone
# for good); the finalizer is released at once and the keys left are logged.
SKIP_REDIS_CLEANUP_ANNOTATION: Final = "newfuse.io/skip-redis-cleanup"

AGENT_CONTAINER: Final = "agent"


def pod_name(fleet: str, revision: str, ordinal: int) -> str:
    """Deterministic pod name: recreating "the same" pod can never produce a duplicate."""
    return f"{fleet}-{revision}-{ordinal}"


def fleet_labels(fleet: str) -> dict[str, str]:
    """Labels shared by every pod of a fleet; also the scale subresource's selector."""
    return {
        LABEL_NAME: APP_NAME,
        LABEL_INSTANCE: fleet,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_FLEET: fleet,
    }


def selector(fleet: str) -> str:
    """The fleet's pod selector as a string (status.selector, for HPA and KEDA)."""
    return ",".join(f"{k}={v}" for k, v in sorted(fleet_labels(fleet).items()))


def capability_label(capability: str) -> str:
    """A label key per capability, so `kubectl get pods -l capability.newfuse.io/x` works."""
    return f"{CAPABILITY_LABEL_PREFIX}{capability}"
