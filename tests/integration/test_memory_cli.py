"""`newfuse memory` as a user runs it (the installed console script) against the real Redis.

Add, search by meaning and by metadata, forget; an export imported into another fleet holds every
record again, and importing it twice stores nothing new; a file with bad lines imports the good
ones, names each bad line with its field, and exits non-zero.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from clitool import cli, mirrored_fleet
from harness import RedisHandle
from newfuse.adapters.embedder import MINILM
from newfuse.cli import memory as memory_cli
from newfuse.wire.keys import FleetKeys


@pytest.fixture
def fleet(redis_server: RedisHandle, redis_client: redis.Redis) -> Iterator[FleetKeys]:
    yield from mirrored_fleet(redis_server, redis_client, "mem")


@pytest.fixture
def other(redis_server: RedisHandle, redis_client: redis.Redis) -> Iterator[FleetKeys]:
    yield from mirrored_fleet(redis_server, redis_client, "mem")


def _run(keys: FleetKeys, url: str, *args: str) -> tuple[int, str, str]:
    done = cli("memory", args[0], keys.fleet, "-n", keys.namespace, *args[1:], redis_url=url)
    return done.returncode, done.stdout, done.stderr


def _search(keys: FleetKeys, url: str, *args: str) -> list[dict[str, object]]:
    code, out, err = _run(keys, url, "search", *args, "--json")
    assert code == 0, err
    results: list[dict[str, object]] = json.loads(out)["results"]
    return results


def test_add_search_forget(redis_server: RedisHandle, fleet: FleetKeys) -> None:
    url = redis_server.url
    deploy = "The production deploy failed because the container image tag was missing"
    code, out, err = _run(fleet, url, "add", deploy, "--meta", "topic=deploy", "--id", "m-deploy")
    assert (code, out.strip()) == (0, "m-deploy"), err
    code, out, err = _run(
        fleet, url, "add", "Cats like to sleep in warm sunlight", "--meta", "topic=pets",
        "--meta", "legs=4",
    )  # fmt: skip
    assert code == 0, err
    cat_id = out.strip()

    [best] = _search(fleet, url, "why did the container deployment break", "-k", "1")
    assert best["id"] == "m-deploy"
    assert best["revision"] == memory_cli.REVISION
    pets = _search(fleet, url, "deploy", "--where", "topic=pets", "--where", "legs=4")
    assert [p["id"] for p in pets] == [cat_id]
    assert pets[0]["metadata"] == {"topic": "pets", "legs": 4}

    code, table, err = _run(fleet, url, "search", "deploy failure")
    assert code == 0, err
    assert "rank" in table
    assert "m-deploy" in table
    assert "score" in table

    code, out, err = _run(fleet, url, "forget", "m-deploy", "never-was")
    assert code == 0, err
    assert "forgot 1" in out
    assert "1 not found" in out
    assert [r["id"] for r in _search(fleet, url, "deploy failure")] == [cat_id]

    code, out, err = _run(fleet, url, "status", "--json")
    status = json.loads(out)
    assert status["size"] == 1
    assert status["activeModel"] == MINILM.id

    code, _, err = _run(fleet, url, "add", "")
    assert code == 1
    assert "text" in err
    assert "Traceback" not in err


def _records(n: int) -> list[dict[str, object]]:
    return [
        {
            "id": f"r{i}",
            "text": f"note {i}: the {['queue', 'cache', 'gateway'][i % 3]} was slow at {i} ms",
            "metadata": {
                "component": ["queue", "cache", "gateway"][i % 3],
                "n": i,
                "hot": i % 2 == 0,
            },
            "revision": "rev-a",
            "created_ms": 1_700_000_000_000 + i,
            "expires_ms": 4_000_000_000_000 if i == 7 else None,
        }
        for i in range(n)
    ]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_export_then_import_round_trips_every_record(
    redis_server: RedisHandle, fleet: FleetKeys, other: FleetKeys, tmp_path: Path
) -> None:
    url, source = redis_server.url, _records(150)  # three batches of 64
    seed = _write(tmp_path / "seed.jsonl", [json.dumps(r) for r in source])
    code, out, err = _run(fleet, url, "import", str(seed))
    assert code == 0, err
    assert "imported 150 new" in out

    code, out, err = _run(fleet, url, "export", str(tmp_path / "a.jsonl"))
    assert code == 0, err
    code, out, err = _run(other, url, "import", str(tmp_path / "a.jsonl"))
    assert code == 0, err
    assert "imported 150 new" in out
    code, again, err = _run(other, url, "import", str(tmp_path / "a.jsonl"))
    assert code == 0, err
    assert "imported 0 new memory(ies) of 150 valid" in again

    code, out, err = _run(other, url, "export", "-")  # stdout this time
    assert code == 0, err
    got = {r["id"]: r for r in map(json.loads, out.splitlines())}
    assert set(got) == {r["id"] for r in source}
    for r in source:  # the record as it was: who wrote it and when, its expiry instant
        assert got[r["id"]] == r
    assert [r["id"] for r in _search(other, url, "gateway slow", "-k", "1", "--where", "n=5")] == [
        "r5"
    ]


def test_a_bad_line_is_named_and_the_good_ones_are_imported(
    redis_server: RedisHandle, redis_client: redis.Redis, fleet: FleetKeys, tmp_path: Path
) -> None:
    good = [json.dumps(r) for r in _records(3)]
    empty = json.dumps({"id": "e", "text": "", "revision": "x", "created_ms": 1})
    nested = json.dumps({"id": "n", "text": "t", "revision": "x", "created_ms": 1,
                         "metadata": {"tags": ["a"]}})  # fmt: skip
    lines = [good[0], empty, good[1], "{not json", "", nested, good[2]]
    code, out, err = _run(
        fleet, redis_server.url, "import", str(_write(tmp_path / "b.jsonl", lines))
    )
    assert code == 1
    assert "bad line 2: text" in err
    assert "bad line 4:" in err
    assert "JSON" in err
    assert "bad line 6: metadata.tags" in err
    assert "imported 3 new" in out
    assert "3 bad line(s)" in out
    assert redis_client.hlen(fleet.memory) == 3
