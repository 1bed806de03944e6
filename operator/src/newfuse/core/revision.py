"""The revision of a fleet: a short, stable hash of everything that needs new pods when changed.

Replica count, pause and rollout policy are left out: changing them must not replace pods.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final

from newfuse.api.v1alpha1 import NewFuseAgentSpec

# Fields whose change is a new revision. Everything else in the spec steers the rollout.
TEMPLATE_FIELDS: Final = frozenset(
    {
        "capabilities",
        "image",
        "image_pull_policy",
        "command",
        "args",
        "env",
        "resources",
        "node_selector",
        "tolerations",
        "service_account_name",
        "concurrency",
        "gateway",
        "redis",
        "signing",
        "encryption",
        "protocol_version",
        "tasks",
    }
)
# Like Kubernetes' pod-template-hash alphabet: no vowels, so no accidental words, and DNS-safe.
_ALPHABET: Final = "bcdfghjklmnpqrstvwxz2456789"
REVISION_LENGTH: Final = 10


def template_hash(spec: NewFuseAgentSpec) -> str:
    """A 10-character revision id, stable across processes and Python versions."""
    template = spec.model_dump(
        mode="json", by_alias=True, include=set(TEMPLATE_FIELDS), exclude_none=True
    )
    digest = int.from_bytes(
        hashlib.sha256(
            json.dumps(template, sort_keys=True, separators=(",", ":")).encode()
        ).digest()
    )
    chars = []
    for _ in range(REVISION_LENGTH):
        digest, index = divmod(digest, len(_ALPHABET))
        chars.append(_ALPHABET[index])
    return "".join(chars)


def template_of(spec: NewFuseAgentSpec) -> dict[str, Any]:
    """The fields of ``spec`` that make up its revision (what a ControllerRevision stores)."""
    return spec.model_dump(
        mode="json", by_alias=True, include=set(TEMPLATE_FIELDS), exclude_none=True
    )


def spec_with_template(spec: NewFuseAgentSpec, template: Mapping[str, Any]) -> NewFuseAgentSpec:
    """``spec`` with its template fields replaced by a stored revision's (to build its pods)."""
    merged = {
        **spec.model_dump(mode="json", by_alias=True, exclude=set(TEMPLATE_FIELDS)),
        **template,
    }
    return NewFuseAgentSpec.model_validate(merged)
