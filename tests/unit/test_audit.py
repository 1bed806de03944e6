"""Attribution of rollout control actions in the operator's audit lines."""

from __future__ import annotations

import pytest

from newfuse.api.rollout import RolloutReason
from newfuse.core.audit import UNRECORDED, audit_record
from newfuse.core.naming import PAUSED_BY_ANNOTATION, ROLLOUT_ACTION_BY_ANNOTATION

AT = "2026-11-22T10:00:00+00:00"
ACTION_BY = {ROLLOUT_ACTION_BY_ANNOTATION: f"alice@{AT}"}
PAUSED_BY = {PAUSED_BY_ANNOTATION: "system:serviceaccount:ci:deployer@2026-11-22T09:00:00+00:00"}


@pytest.mark.parametrize(
    ("reason", "annotations", "action", "by", "at"),
    [
        (RolloutReason.PROMOTED, ACTION_BY, "promote", "alice", AT),
        (RolloutReason.PROMOTED_FULL, ACTION_BY, "promote-full", "alice", AT),
        (RolloutReason.ABORTED, ACTION_BY, "abort", "alice", AT),
        (RolloutReason.RETRIED, ACTION_BY, "retry", "alice", AT),
        (RolloutReason.PAUSED, PAUSED_BY, "pause", "system:serviceaccount:ci:deployer",
         "2026-11-22T09:00:00+00:00"),
        (RolloutReason.RESUMED, PAUSED_BY, "resume", "system:serviceaccount:ci:deployer",
         "2026-11-22T09:00:00+00:00"),
        # Pause is attributed from its own annotation, never from the last promote's.
        (RolloutReason.PAUSED, ACTION_BY, "pause", UNRECORDED, None),
        (RolloutReason.ABORTED, {}, "abort", UNRECORDED, None),
        # E-mail identities keep their "@".
        (RolloutReason.PROMOTED, {ROLLOUT_ACTION_BY_ANNOTATION: f"bob@example.com@{AT}"},
         "promote", "bob@example.com", AT),
        (RolloutReason.PROMOTED, {ROLLOUT_ACTION_BY_ANNOTATION: "carol"}, "promote", "carol", None),
    ],
)  # fmt: skip
def test_control_actions_are_attributed(
    reason: RolloutReason, annotations: dict[str, str], action: str, by: str, at: str | None
) -> None:
    record = audit_record(reason, annotations, "ns", "fleet")
    assert record is not None
    assert (record.action, record.by, record.requested_at) == (action, by, at)
    assert (record.namespace, record.fleet) == ("ns", "fleet")


@pytest.mark.parametrize(
    "reason",
    [
        RolloutReason.STARTED,
        RolloutReason.GATE_PASSED,
        RolloutReason.GATE_FAILED,
        RolloutReason.ROLLED_BACK,
        RolloutReason.COMPLETED,
        RolloutReason.DEADLINE_EXCEEDED,
    ],
)
def test_automatic_transitions_are_not_audited_as_user_actions(reason: RolloutReason) -> None:
    assert audit_record(reason, ACTION_BY, "ns", "fleet") is None
