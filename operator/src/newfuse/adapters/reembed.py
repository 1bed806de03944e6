"""Re-embedding a fleet's memory under a new model, in the background, while recall answers.

Vectors of two models are never compared, so the new model's vectors are written beside the
active ones (`missing`, `put_vectors`) and recalls keep using the active model until a single
step (`cutover`) finds every memory covered and swaps them. Memories written meanwhile carry the
active model's vector only; the next pass picks them up, so the loop ends when a cutover succeeds.
It is resumable: whoever runs it next starts from the vectors already stored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from newfuse.adapters.fleetmemory import FleetMemory

log = logging.getLogger(__name__)

PASS: Final = 512  # memories per Redis read; the embedder batches within it
MAX_EMPTY_PASSES: Final = 20


@dataclass(frozen=True)
class Progress:
    """How far a re-embedding has come."""

    model: str
    done: int  # memories re-embedded by this run
    total: int  # memories the fleet holds now
    finished: bool = False

    def __str__(self) -> str:
        state = "active" if self.finished else "re-embedding"
        return f"{self.model}: {state}, {self.done} re-embedded of {self.total}"


async def reembed(
    memory: FleetMemory, model: str, on_progress: Callable[[Progress], None] | None = None
) -> Progress:
    """Re-embed every memory under ``model`` and make it the active one; the final Progress."""
    backend, done, empty = memory.backend, 0, 0
    if await backend.active_model() in (None, model):
        return Progress(model, 0, await backend.size(), finished=True)
    while True:
        records = await backend.missing(model, PASS)
        if records:
            vectors = await memory.embed(model, [r.text for r in records])
            done += await backend.put_vectors(model, [r.id for r in records], vectors)
        elif await backend.cutover(model):
            final = Progress(model, done, await backend.size(), finished=True)
            log.info("memory re-embedded: %s", final)
            if on_progress is not None:
                on_progress(final)
            return final
        else:
            # Covered, yet the cutover refused: memories came and went between the two reads.
            empty += 1
            if empty > MAX_EMPTY_PASSES:
                raise RuntimeError(f"re-embedding to {model} cannot reach a cutover")
        if on_progress is not None:
            on_progress(Progress(model, done, await backend.size()))
