"""Which pods to create and delete, from the spec and the pods that exist: the heart of reconcile.

Level-based: the plan depends only on what is desired and what is observed now, never on what
happened before, so running it twice (or after a crash half-way) converges to the same pods.

Replace strategy: pods of the update revision fill ordinals 0..replicas-1; pods of older
revisions are removed one for one as update-revision pods become Ready, highest ordinals first, so
capacity never drops below what is already Ready during a template change.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from newfuse.core.pods import ObservedPod, PodHealth


class DeleteReason(StrEnum):
    """Why the planner removes a pod (shown in Events)."""

    SCALE_DOWN = "ScaleDown"
    REPLACED = "ReplacedByNewRevision"
    FAILED = "Failed"


@dataclass(frozen=True)
class PodToCreate:
    """A pod the plan wants: its revision and ordinal fix its name."""

    revision: str
    ordinal: int


@dataclass(frozen=True)
class PodToDelete:
    """A pod the plan removes, and why."""

    name: str
    reason: DeleteReason


@dataclass(frozen=True)
class Plan:
    """The difference between desired and observed pods."""

    create: tuple[PodToCreate, ...] = ()
    delete: tuple[PodToDelete, ...] = ()
    blocked: tuple[str, ...] = field(default=())  # pod names still terminating, holding an ordinal

    @property
    def empty(self) -> bool:
        """Nothing to do."""
        return not self.create and not self.delete


def plan(
    replicas: int, update_revision: str, pods: Iterable[ObservedPod], *, paused: bool = False
) -> Plan:
    """Compute the pods to create and delete for one fleet."""
    if paused:
        return Plan()
    pods = list(pods)
    live = [p for p in pods if not p.terminating]
    terminating = {(p.revision, p.ordinal): p.name for p in pods if p.terminating}

    delete: list[PodToDelete] = []
    # A failed pod never recovers on its own (restartPolicy only restarts containers): replace it.
    failed = [p for p in live if p.health is PodHealth.FAILED]
    delete += [PodToDelete(p.name, DeleteReason.FAILED) for p in failed]
    live = [p for p in live if p.health is not PodHealth.FAILED]

    current = [p for p in live if p.revision == update_revision]
    old = [p for p in live if p.revision != update_revision]

    surplus = [p for p in current if p.ordinal >= replicas]
    delete += [PodToDelete(p.name, DeleteReason.SCALE_DOWN) for p in surplus]
    # Two pods claiming one ordinal cannot come from this planner, but if they exist keep one.
    kept: dict[int, ObservedPod] = {}
    for pod in sorted((p for p in current if p.ordinal < replicas), key=lambda p: p.name):
        if pod.ordinal in kept:
            delete.append(PodToDelete(pod.name, DeleteReason.SCALE_DOWN))
        else:
            kept[pod.ordinal] = pod

    create: list[PodToCreate] = []
    blocked: list[str] = []
    for ordinal in range(replicas):
        if ordinal in kept:
            continue
        holder = terminating.get((update_revision, ordinal))
        if holder is not None:
            blocked.append(holder)
        else:
            create.append(PodToCreate(update_revision, ordinal))

    # Old pods may stay only while the new revision has not yet made up the Ready capacity.
    ready_current = sum(1 for p in kept.values() if p.ready)
    old_allowed = max(0, replicas - ready_current)
    # Keep the Ready old pods first (they carry the load), lowest ordinals first.
    old_by_value = sorted(old, key=lambda p: (not p.ready, p.ordinal, p.name))
    for pod in old_by_value[old_allowed:]:
        reason = DeleteReason.REPLACED if ready_current else DeleteReason.SCALE_DOWN
        delete.append(PodToDelete(pod.name, reason))
    return Plan(create=tuple(create), delete=tuple(_ordered(delete, pods)), blocked=tuple(blocked))


def _ordered(delete: list[PodToDelete], pods: list[ObservedPod]) -> list[PodToDelete]:
    """Highest ordinals first, whatever rule chose them, so scale-down order is predictable."""
    ordinal = {p.name: p.ordinal for p in pods}
    return sorted(delete, key=lambda d: (ordinal[d.name], d.name), reverse=True)


def plan_revisions(
    desired: Mapping[str, int], pods: Iterable[ObservedPod], *, paused: bool = False
) -> Plan:
    """Pods to create and delete so that each revision has exactly its desired agents.

    Used by phased rollouts, where the rollout state machine decides the count per revision.
    Within a revision, Ready pods are kept before others and low ordinals before high ones; new
    pods take the lowest free ordinals. Revisions not in ``desired`` lose every pod.
    """
    if paused:
        return Plan()
    pods = list(pods)
    delete: list[PodToDelete] = []
    live = [p for p in pods if not p.terminating]
    failed = [p for p in live if p.health is PodHealth.FAILED]
    delete += [PodToDelete(p.name, DeleteReason.FAILED) for p in failed]
    live = [p for p in live if p.health is not PodHealth.FAILED]
    create: list[PodToCreate] = []
    blocked: list[str] = []
    for revision, count in sorted(desired.items()):
        mine = sorted(
            (p for p in live if p.revision == revision),
            key=lambda p: (not p.ready, p.ordinal, p.name),
        )
        kept, surplus = mine[:count], mine[count:]
        delete += [PodToDelete(p.name, DeleteReason.SCALE_DOWN) for p in surplus]
        taken = {p.ordinal for p in kept}
        holding = {p.ordinal: p.name for p in pods if p.terminating and p.revision == revision}
        ordinal = 0
        missing = count - len(kept)
        while missing > 0:
            if ordinal not in taken:
                if ordinal in holding:
                    blocked.append(holding[ordinal])
                else:
                    create.append(PodToCreate(revision, ordinal))
                missing -= 1
            ordinal += 1
    delete += [
        PodToDelete(p.name, DeleteReason.REPLACED) for p in live if p.revision not in desired
    ]
    return Plan(create=tuple(create), delete=tuple(_ordered(delete, pods)), blocked=tuple(blocked))
