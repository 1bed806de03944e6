"""Audit records for rollout control actions: who asked for a promote, abort, pause, ... and when.

Platform teams must be able to answer "who promoted this canary?" from the operator's logs alone.
The CLI stamps the Kubernetes identity it authenticated as into an annotation next to the action;
the operator turns each control transition it carries out into one structured audit line. Kept
pure so the attribution rules are table-tested.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from newfuse.api.rollout import RolloutAction, RolloutReason
from newfuse.core.naming import PAUSED_BY_ANNOTATION, ROLLOUT_ACTION_BY_ANNOTATION

# The rollout transitions that only a person (or their GitOps commit) causes, by action name.
CONTROL_ACTIONS: Final = {
    RolloutReason.PROMOTED: RolloutAction.PROMOTE,
    RolloutReason.PROMOTED_FULL: RolloutAction.PROMOTE_FULL,
    RolloutReason.ABORTED: RolloutAction.ABORT,
    RolloutReason.RETRIED: RolloutAction.RETRY,
    RolloutReason.PAUSED: RolloutAction.PAUSE,
    RolloutReason.RESUMED: RolloutAction.RESUME,
}
UNRECORDED: Final = "unrecorded (not requested through the newfuse CLI; see the API audit log)"


@dataclass(frozen=True)
class AuditRecord:
    """One control action the operator carried out, attributed."""

    action: str
    by: str
    requested_at: str | None
    namespace: str
    fleet: str


def audit_record(
    reason: RolloutReason, annotations: Mapping[str, str], namespace: str, fleet: str
) -> AuditRecord | None:
    """The audit record for a rollout transition, or None if it was not a control action."""
    action = CONTROL_ACTIONS.get(reason)
    if action is None:
        return None
    pausing = reason in (RolloutReason.PAUSED, RolloutReason.RESUMED)
    stamp = annotations.get(PAUSED_BY_ANNOTATION if pausing else ROLLOUT_ACTION_BY_ANNOTATION)
    by, requested_at = UNRECORDED, None
    if stamp:
        # "<user>@<timestamp>": user names may contain "@" (e-mail identities), timestamps never.
        user, sep, when = stamp.rpartition("@")
        by, requested_at = (user, when) if sep and user else (stamp, None)
    return AuditRecord(action, by, requested_at, namespace, fleet)
