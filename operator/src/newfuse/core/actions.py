"""The one-shot rollout actions a user requests through the rollout-action annotation.

`newfuse rollout promote` and the Argo CD actions write "verb@time"; the verbs are
newfuse.api.rollout.RolloutAction. An action is acted on once: the rollout state remembers the
last annotation value it handled.
"""

from __future__ import annotations

from dataclasses import dataclass

from newfuse.api.rollout import RolloutAction


@dataclass(frozen=True)
class Controls:
    """One-shot user requests (from annotations set by `newfuse rollout ...`)."""

    promote: bool = False
    promote_full: bool = False
    abort: bool = False
    retry: bool = False


def parse_action(value: str | None, already_handled: str | None) -> Controls:
    """Controls from the rollout-action annotation ("promote@2026-11-21T12:00:00Z"), once."""
    if not value or value == already_handled:
        return Controls()
    verb = value.split("@", 1)[0].strip().lower()
    return Controls(
        promote=verb == RolloutAction.PROMOTE,
        promote_full=verb == RolloutAction.PROMOTE_FULL,
        abort=verb == RolloutAction.ABORT,
        retry=verb == RolloutAction.RETRY,
    )
