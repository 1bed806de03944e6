"""Fleet memory in Redis: records, the quarantine of a canary's writes, and its two outcomes.

A memory is a text, its metadata and its vector, stamped with the embedding model that made it.
Records live in one hash per fleet (under the fleet's hash tag, so its Redis user's key pattern
already confines them: fleets are kept apart by credentials, not by naming alone). A canary
revision's writes are quarantined: their ids sit in `memory:quarantine` with the revision, and
only agents of that revision see them, so a bad canary cannot poison what stable agents recall.
PROMOTE lifts a revision's quarantine (its rollout completed); DISCARD deletes its writes (rolled
back). Records themselves never change, so both are one Lua step over the quarantine hash.
"""

from __future__ import annotations

import base64
from typing import Final

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field

Scalar = str | int | float | bool


class MemoryRecord(BaseModel):
    """One memory: what was said, by which revision, embedded by which model."""

    id: str = Field(min_length=1, max_length=128)
    text: str = Field(max_length=32_768)
    metadata: dict[str, Scalar] = Field(default_factory=dict)
    model: str  # newfuse.adapters.embedder.EmbeddingModel.id
    vector: str  # base64 of little-endian float32
    revision: str
    created_ms: int = Field(ge=0)
    expires_ms: int | None = None

    def array(self) -> npt.NDArray[np.float32]:
        """The vector as numbers."""
        return np.frombuffer(base64.b64decode(self.vector), dtype="<f4").astype(np.float32)

    @staticmethod
    def encode_vector(vector: npt.NDArray[np.float32]) -> str:
        """``vector`` as the record stores it."""
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


# KEYS: memory, quarantine. ARGV: id, record JSON, quarantining revision ('' for none), max items.
# Returns 1 when stored, 0 when the id exists, -1 when the fleet is at its limit.
REMEMBER_LUA: Final = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then return -1 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[2], ARGV[1], ARGV[3]) end
return 1
"""

# KEYS: memory, quarantine. ARGV: revision, 1 to delete its writes (discard), 0 to lift (promote).
# Returns how many memories it touched.
SETTLE_LUA: Final = """
local held = redis.call('HGETALL', KEYS[2])
local n = 0
for i = 1, #held, 2 do
  if held[i + 1] == ARGV[1] then
    redis.call('HDEL', KEYS[2], held[i])
    if ARGV[2] == '1' then redis.call('HDEL', KEYS[1], held[i]) end
    n = n + 1
  end
end
return n
"""

# KEYS: memory, quarantine. ARGV: id. Returns 1 when it existed.
FORGET_LUA: Final = """
redis.call('HDEL', KEYS[2], ARGV[1])
return redis.call('HDEL', KEYS[1], ARGV[1])
"""
