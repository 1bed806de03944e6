"""WordNet 3.0 as a retrieval corpus: Debian's wordnet-base, read without any WordNet library.

A public corpus nobody here wrote, shipped inside a package (`make deps` installs it), never
fetched at run time. Each synset gives a document (its definition) and, for about a third of
them, usage examples: an example is a query whose relevant document is its synset's definition.
The definitions never contain the word the example uses, which makes this a hard test of meaning
over word overlap. Format: wndb(5WN); licence lines start with two spaces.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

WORDNET: Final = Path("/usr/share/wordnet")
PARTS: Final = ("noun", "verb", "adj", "adv")
_QUOTED = re.compile(r'"([^"]+)"')


@dataclass(frozen=True)
class Synset:
    """One WordNet meaning: its words, its definition and its usage examples."""

    id: str
    words: tuple[str, ...]
    definition: str
    examples: tuple[str, ...]


def synsets(root: Path = WORDNET) -> Iterator[Synset]:
    """Every synset of every part of speech, in file order."""
    if not (root / "data.noun").exists():
        raise FileNotFoundError(f"{root}/data.noun: install Debian's wordnet-base (make deps)")
    for part in PARTS:
        with (root / f"data.{part}").open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                if line.startswith("  "):
                    continue
                head, _, gloss = line.partition(" | ")
                fields = head.split()
                count = int(fields[3], 16)
                words = tuple(fields[4 + 2 * i].replace("_", " ") for i in range(count))
                gloss = gloss.strip()
                definition = gloss.split('; "')[0].strip().rstrip(";").strip()
                examples = tuple(_QUOTED.findall(gloss))
                yield Synset(f"{part}:{fields[0]}", words, definition, examples)
