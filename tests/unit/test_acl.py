"""The per-fleet Redis user's name, rules and URL (pure; a real Redis checks them in e2e)."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import pytest

from localcluster.podrunner import local_redis_url
from newfuse.core.acl import rules, secret_name, url_for, user_name
from newfuse.wire.keys import FleetKeys

KEYS = FleetKeys("team-a", "summarizer")


def test_the_rules_confine_the_user_to_its_fleet_s_keys_and_channels() -> None:
    got = rules(KEYS, "pw")
    assert got[:3] == ["reset", "on", ">pw"], "from nothing: no rule of an earlier run survives"
    assert "~newfuse:{team-a/summarizer}:*" in got
    assert "&newfuse:{team-a/summarizer}:*" in got
    assert all(key.startswith("newfuse:{team-a/summarizer}:") for key in KEYS.all_keys())
    assert KEYS.coordination_channel.startswith("newfuse:{team-a/summarizer}:")
    assert not any(rule.startswith(("~*", "&*", "allkeys", "allchannels")) for rule in got)


@pytest.mark.parametrize(
    ("base", "expected_host"),
    [
        ("redis://127.0.0.1:6379/0", "127.0.0.1:6379"),
        ("rediss://redis.example:6380/2", "redis.example:6380"),
        ("redis://default:old@10.0.0.1:6379/0", "10.0.0.1:6379"),
        ("redis://[::1]:6379/0", "[::1]:6379"),
    ],
)
def test_the_url_logs_in_as_the_fleet_s_user_on_the_same_server(
    base: str, expected_host: str
) -> None:
    url = url_for(base, user_name(KEYS), "p@ss:/word")
    parts = urlsplit(url)
    assert parts.scheme == urlsplit(base).scheme
    assert parts.path == urlsplit(base).path
    assert url.split("@")[-1].split("/")[0] == expected_host
    assert unquote(parts.username or "") == "newfuse:team-a/summarizer"
    assert unquote(parts.password or "") == "p@ss:/word"


def test_names() -> None:
    assert secret_name("summarizer") == "summarizer-newfuse-redis"
    assert user_name(KEYS) == "newfuse:team-a/summarizer"


@pytest.mark.parametrize(
    ("pod_url", "expected"),
    [
        ("redis://10.88.0.1:6379/0", "redis://127.0.0.1:5555/0"),
        (
            "redis://newfuse%3Ateam-a%2Fs:pw%40x@10.88.0.1:6379/0",
            "redis://newfuse%3Ateam-a%2Fs:pw%40x@127.0.0.1:5555/0",
        ),
    ],
    ids=["no credentials", "the fleet's user"],
)
def test_the_pod_runner_keeps_the_pod_s_login_on_its_own_redis(pod_url: str, expected: str) -> None:
    assert local_redis_url("redis://127.0.0.1:5555/0", pod_url) == expected


def test_only_a_fleet_s_own_server_on_this_host_is_kept() -> None:
    own = "redis://127.0.0.1:7777/0"
    assert local_redis_url("redis://127.0.0.1:5555/0", own, from_secret=True) == own
    assert local_redis_url("redis://127.0.0.1:5555/0", own) == "redis://127.0.0.1:5555/0"
