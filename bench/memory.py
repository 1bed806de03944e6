"""Benchmark: fleet memory's speed and size, on WordNet definitions embedded by MiniLM (issue 17).

Corpus: the first ``--vectors`` distinct WordNet 3.0 definitions (hack/wordnet.py; 100,000 of the
116,697), embedded once by `Embedder()` and cached as
`$NEWFUSE_CACHE/bench/memory-<model id>-<n>.npy` (default cache ~/.cache/newfuse): embedding 100k
definitions costs minutes. Queries: ``--queries`` WordNet usage examples (a fixed random sample,
cached the same way), whose relevant document is their synset's definition.

1. Recall latency: the corpus is stored in one fleet's Redis memory through `RedisMemory.remember`
   (1,000 a step), then each query is recalled alone (k=10) through `RedisMemory.recall`, the
   product path: the reader's HNSW graph (built on the first recall, whose time is printed apart),
   the visibility filter and its Redis round trips; a row apart times the reader's graph alone
   (`HnswIndex.search`, same queries). Baseline: exact brute-force search (`ExactIndex`: a matrix
   product and a full sort) over the same vectors in the same process; ratio = HNSW / exact.
   recall@10 is that of the product path's ids against the exact top 10. Each of the three runs
   its queries as a block (see `time_recalls`).
2. Ingest: ``--ingest`` definitions from the end of the distinct definitions (never in the
   corpus) written to a fresh fleet through `FleetMemory.remember_many` in batches of 64
   (embedding + Redis write). Baseline: `Embedder.encode` of the same batches; ratio = memory/s
   through FleetMemory / texts/s of the bare embedder (1 - ratio is the storage overhead).
3. Footprint, per memory: Redis `used_memory` growth over storing the corpus (records, vectors,
   change log) and the vectors hash alone (`MEMORY USAGE`, exact); the reader's HNSW graph
   serialised (`faiss.serialize_index`) and the reader process's RSS growth over its first recall
   (graph + records). Baseline: the raw float32 vector, 384 x 4 = 1,536 bytes.

Latency and ingest are measured ``--repeats`` times (default 3) in one process, each repeat
timing the baseline just before the product; each figure is the median with its spread (min-max)
over the repeats, and a ratio is taken per repeat. The footprint and the graph's build time are
measured once (the build costs a minute at 100k). Tiny mode: 2,000 vectors, 100 queries, 200
ingested, 1 repeat. Not a test: `make bench` runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import faiss
import numpy as np
import redis.asyncio as aioredis
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

import wordnet
from environment import bench_redis, report_figures, size
from newfuse.adapters.embedder import Embedder
from newfuse.adapters.fleetmemory import FleetMemory, Memo
from newfuse.adapters.redismemory import RedisMemory
from newfuse.adapters.vectorindex import ExactIndex, HnswIndex, Vectors, recall_at
from newfuse.wire.keys import FleetKeys
from newfuse.wire.memory import MemoryRecord

console = Console()
NAMESPACE, REVISION, K, BATCH, STORE_STEP, WARM = "bench", "r1", 10, 64, 1_000, 10


def cache_dir() -> Path:
    """Where embedded corpora are kept between runs (NEWFUSE_CACHE, as the Makefile sets it)."""
    root = os.environ.get("NEWFUSE_CACHE") or str(Path.home() / ".cache" / "newfuse")
    return Path(root) / "bench"


def corpus() -> tuple[list[str], list[str]]:
    """Every distinct WordNet definition in file order, and a fixed sample of usage examples."""
    definitions: dict[str, None] = {}
    examples: list[str] = []
    for synset in wordnet.synsets():
        if synset.definition:
            definitions.setdefault(synset.definition, None)
        examples.extend(synset.examples)
    shuffled = random.Random(17).sample(examples, len(examples))  # noqa: S311 - not a secret
    return list(definitions), shuffled


def embedded(embedder: Embedder, texts: Sequence[str], name: str) -> Vectors:
    """``texts`` embedded, from the cache when it has them (the file is keyed by model and size)."""
    path = cache_dir() / f"memory-{embedder.model.id}-{name}{len(texts)}.npy"
    if path.exists():
        cached: Vectors = np.load(path)
        if cached.shape == (len(texts), embedder.model.dim):
            return cached
    # Shortest first: a batch pads to its longest text, so sorting roughly doubles the rate.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), embedder.model.dim), np.float32)
    step = BATCH * 16
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"embedding {len(texts):,} texts (once)", total=len(texts))
        for start in range(0, len(order), step):
            chunk = order[start : start + step]
            out[chunk] = embedder.encode([texts[i] for i in chunk])
            progress.advance(task, len(chunk))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp.npy")
    np.save(partial, out)
    partial.replace(path)
    return out


def spread(values: Sequence[float], fmt: str = "{:.3f}") -> str:
    """Median and (min-max) of the repeats."""
    median = fmt.format(statistics.median(values))
    if len(values) < 2:
        return median
    return f"{median} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def rss_bytes() -> int:
    """This process's resident set size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def reader_graph(memory: RedisMemory) -> HnswIndex:
    """The reader's HNSW graph (a benchmark may look inside: the product exposes no such figure)."""
    graph = memory._graph
    if graph is None or graph.index is None:
        raise RuntimeError("the reader built no HNSW graph")
    return graph.index


def graph_bytes(memory: RedisMemory) -> int:
    """The reader's HNSW graph (with its id map), serialised by faiss."""
    return int(faiss.serialize_index(reader_graph(memory)._index).nbytes)


async def used_memory(client: aioredis.Redis) -> int:
    """Redis's INFO used_memory."""
    return int((await client.info("memory"))["used_memory"])


async def store(memory: RedisMemory, texts: Sequence[str], vectors: Vectors, model: str) -> None:
    """The corpus into the fleet's memory, ``STORE_STEP`` records a step."""
    now_ms = int(time.time() * 1000)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"storing {len(texts):,} memories in Redis", total=len(texts))
        for start in range(0, len(texts), STORE_STEP):
            stop = min(start + STORE_STEP, len(texts))
            records = [
                MemoryRecord(id=f"d{i}", text=texts[i], revision=REVISION, created_ms=now_ms)
                for i in range(start, stop)
            ]
            await memory.remember(records, vectors[start:stop], model)
            progress.advance(task, stop - start)


async def time_recalls(
    memory: RedisMemory, exact: ExactIndex, queries: Vectors, model: str
) -> tuple[list[float], list[float], list[float], float]:
    """Per-query seconds of the product path, the bare graph and exact search; recall@10.

    Each runs through every query in a block of its own, after ``WARM`` untimed queries:
    interleaving numpy's BLAS threads with faiss's OpenMP ones query by query slowed both 20-70
    times on this 2-core machine (each library's idle threads spin on the cores the other needs).
    """
    graph, truth, found = reader_graph(memory), [], []
    baseline, bare, product = [], [], []
    for query in [*queries[:WARM], *queries]:
        started = time.perf_counter()
        ids, _ = exact.search(query[None, :], K)
        baseline.append(time.perf_counter() - started)
        truth.append(ids[0])
    for query in [*queries[:WARM], *queries]:
        started = time.perf_counter()
        graph.search(query[None, :], K)
        bare.append(time.perf_counter() - started)
    for query in [*queries[:WARM], *queries]:
        started = time.perf_counter()
        recalled = await memory.recall(query, model, K, REVISION)
        product.append(time.perf_counter() - started)
        found.append(np.array([int(r.record.id[1:]) for r in recalled] + [-1] * K)[:K])
    recall = recall_at(np.stack(found[WARM:]), np.stack(truth[WARM:]))
    return product[WARM:], bare[WARM:], baseline[WARM:], recall


async def time_ingest(
    client: aioredis.Redis, embedder: Embedder, texts: Sequence[str]
) -> tuple[float, float]:
    """Texts/s of the bare embedder and memories/s through FleetMemory, batches of ``BATCH``."""
    batches = [texts[i : i + BATCH] for i in range(0, len(texts), BATCH)]
    started = time.perf_counter()
    for batch in batches:
        embedder.encode(batch)
    encode_rate = len(texts) / (time.perf_counter() - started)
    keys = FleetKeys(NAMESPACE, f"mem-ingest-{uuid.uuid4().hex[:6]}")
    memory = FleetMemory(RedisMemory(client, keys), REVISION, embedders=lambda _id: embedder)
    try:
        started = time.perf_counter()
        for batch in batches:
            await memory.remember_many([Memo(text) for text in batch])
        ingest_rate = len(texts) / (time.perf_counter() - started)
        if await memory.backend.size() != len(texts):
            raise RuntimeError(f"ingest stored {await memory.backend.size()} of {len(texts)}")
    finally:
        await _clear(client, keys)
    return encode_rate, ingest_rate


async def _clear(client: aioredis.Redis, keys: FleetKeys) -> None:
    """Delete one fleet's keys (on a shared Redis, only ours)."""
    found = [key async for key in client.scan_iter(match=keys.pattern, count=1000)]
    for start in range(0, len(found), 500):
        await client.unlink(*found[start : start + 500])


Rows = list[tuple[str, str, str, str]]
Figures = dict[str, float | int]


async def measure(url: str, args: argparse.Namespace, log: Callable[[str], None]) -> Figures:
    """Every figure of the module docstring, and the table's rows as a side effect of ``log``."""
    embedder = Embedder()
    model = embedder.model.id
    definitions, examples = corpus()
    if args.vectors + args.ingest > len(definitions):
        raise SystemExit(f"WordNet has {len(definitions)} distinct definitions")
    texts, ingest_texts = definitions[: args.vectors], definitions[-args.ingest :]
    vectors = embedded(embedder, texts, "")
    queries = embedded(embedder, examples[: args.queries], "queries-")
    exact = ExactIndex(embedder.model.dim)
    exact.add(np.arange(len(texts), dtype=np.int64), vectors)
    client = aioredis.Redis.from_url(url, decode_responses=True)
    keys = FleetKeys(NAMESPACE, f"mem-recall-{uuid.uuid4().hex[:6]}")
    memory = RedisMemory(client, keys, max_items=len(texts))
    fig: Figures = {"vectors": len(texts), "queries": len(queries), "repeats": args.repeats}
    try:
        before = await used_memory(client)
        await store(memory, texts, vectors, model)
        fig["redis_bytes_per_memory"] = (await used_memory(client) - before) / len(texts)
        usage = await client.memory_usage(keys.memory_vectors, samples=0)
        fig["redis_vector_bytes_per_memory"] = int(usage or 0) / len(texts)
        rss = rss_bytes()
        started = time.perf_counter()
        await memory.recall(queries[0], model, K, REVISION)  # builds the reader's graph
        fig["graph_build_s"] = time.perf_counter() - started
        fig["reader_rss_bytes_per_memory"] = (rss_bytes() - rss) / len(texts)
        fig["hnsw_bytes_per_memory"] = graph_bytes(memory) / len(texts)
        runs: dict[str, list[float]] = {f"{w}{q}": [] for w in "hge" for q in ("p50", "p99")}
        runs["rec"] = []
        rates: dict[str, list[float]] = {"encode": [], "ingest": []}
        for repeat in range(args.repeats):
            log(f"repeat {repeat + 1}/{args.repeats}: {len(queries)} recalls, then ingest")
            product, bare, baseline, recall = await time_recalls(memory, exact, queries, model)
            for name, values in (("h", product), ("g", bare), ("e", baseline)):
                runs[f"{name}p50"].append(float(np.percentile(values, 50)) * 1000)
                runs[f"{name}p99"].append(float(np.percentile(values, 99)) * 1000)
            runs["rec"].append(recall)
            encode_rate, ingest_rate = await time_ingest(client, embedder, ingest_texts)
            rates["encode"].append(encode_rate)
            rates["ingest"].append(ingest_rate)
    finally:
        await _clear(client, keys)
        await client.aclose()
    for q in ("p50", "p99"):
        ratios = [h / e for h, e in zip(runs[f"h{q}"], runs[f"e{q}"], strict=True)]
        runs[f"gr{q}"] = [g / e for g, e in zip(runs[f"g{q}"], runs[f"e{q}"], strict=True)]
        fig[f"graph_{q}_ms"] = statistics.median(runs[f"g{q}"])
        fig[f"graph_{q}_ratio"] = statistics.median(runs[f"gr{q}"])
        hnsw = runs[f"h{q}"]
        fig[f"recall_{q}_ms"] = statistics.median(hnsw)
        fig[f"recall_{q}_ms_min"], fig[f"recall_{q}_ms_max"] = min(hnsw), max(hnsw)
        fig[f"exact_{q}_ms"] = statistics.median(runs[f"e{q}"])
        fig[f"recall_{q}_ratio"] = statistics.median(ratios)
        runs[f"r{q}"] = ratios
    fig["recall_at_10"] = statistics.median(runs["rec"])
    ingest_ratios = [i / e for i, e in zip(rates["ingest"], rates["encode"], strict=True)]
    fig["ingest_per_s"] = statistics.median(rates["ingest"])
    fig["ingest_per_s_min"], fig["ingest_per_s_max"] = min(rates["ingest"]), max(rates["ingest"])
    fig["encode_per_s"] = statistics.median(rates["encode"])
    fig["ingest_ratio"] = statistics.median(ingest_ratios)
    print_tables(fig, runs, rates, ingest_ratios, len(ingest_texts))
    return fig


def print_tables(
    fig: Figures,
    runs: dict[str, list[float]],
    rates: dict[str, list[float]],
    ingest_ratios: list[float],
    ingested: int,
) -> None:
    """The three tables: latency, ingest, footprint (median (min-max) over the repeats)."""
    n, repeats = int(fig["vectors"]), int(fig["repeats"])
    latency = Table(
        title=f"recall k={K} at {n:,} vectors, {int(fig['queries'])} single queries, "
        f"median (min-max) of {repeats} runs"
    )
    for column in ("what", "p50 ms", "p99 ms", "ratio p50 / p99", "recall@10"):
        latency.add_column(column, justify="left" if column == "what" else "right")
    latency.add_row(
        "exact brute force (ExactIndex, baseline)",
        spread(runs["ep50"]), spread(runs["ep99"]), "1.00 / 1.00", "1.000",
    )  # fmt: skip
    latency.add_row(
        "RedisMemory.recall (HNSW + visibility filter)",
        spread(runs["hp50"]), spread(runs["hp99"]),
        f"{spread(runs['rp50'])} / {spread(runs['rp99'])}", spread(runs["rec"]),
    )  # fmt: skip
    latency.add_row(
        "  of which the graph alone (HnswIndex.search)",
        spread(runs["gp50"]), spread(runs["gp99"]),
        f"{spread(runs['grp50'])} / {spread(runs['grp99'])}", "",
    )  # fmt: skip
    console.print(latency)
    build = fig["graph_build_s"]
    console.print(f"[dim]the reader's first recall built its HNSW graph in {build:.1f} s")
    ingest = Table(title=f"ingest of {ingested:,} memories in batches of {BATCH}")
    for column in ("what", "per s", "ratio"):
        ingest.add_column(column, justify="left" if column == "what" else "right")
    ingest.add_row("Embedder.encode alone (baseline)", spread(rates["encode"], "{:.1f}"), "1.00")
    ingest.add_row(
        "FleetMemory.remember_many (embed + Redis)",
        spread(rates["ingest"], "{:.1f}"), spread(ingest_ratios),
    )  # fmt: skip
    console.print(ingest)
    raw = 4 * 384
    footprint = Table(title=f"footprint per memory at {n:,} memories (measured once)")
    for column in ("what", "bytes / memory", "ratio"):
        footprint.add_column(column, justify="left" if column == "what" else "right")
    for label, key in (
        ("raw float32 vector, 384 x 4 (baseline)", None),
        ("Redis used_memory growth (records, vectors, log)", "redis_bytes_per_memory"),
        ("Redis vectors hash alone (MEMORY USAGE)", "redis_vector_bytes_per_memory"),
        ("reader's HNSW graph, serialised", "hnsw_bytes_per_memory"),
        ("reader's RSS growth at first recall (graph + records)", "reader_rss_bytes_per_memory"),
    ):
        value = raw if key is None else float(fig[key])
        footprint.add_row(label, f"{value:,.0f}", f"{value / raw:.2f}")
    console.print(footprint)


def main(argv: list[str] | None = None) -> int:
    """Measure and print; the figures line last."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=size(100_000, 2_000))
    parser.add_argument("--queries", type=int, default=size(1_000, 100))
    parser.add_argument("--ingest", type=int, default=size(2_000, 200))
    parser.add_argument("--repeats", type=int, default=size(3, 1))
    args = parser.parse_args(argv)
    with bench_redis("memory") as server:
        figures = asyncio.run(measure(server.url, args, lambda m: console.print(f"[dim]{m}")))
    report_figures("memory", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
