"""The operator creates its signing key's Secret once, and every start reads the same key back.

A stand-in for the two CoreV1Api calls keeps Secrets in a dict and answers like the API server
(409 on a second create, 404 on a missing read), so the race of two replicas starting at once
and a restart are both played here; tests/integration/test_chart_lifecycle.py runs the real
thing under the chart's RBAC.
"""

from __future__ import annotations

import base64
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

import newfuse.__main__ as entry
from newfuse.adapters.signing_secret import ensure_signing_key
from newfuse.config import OperatorConfig


class FakeSecrets:
    """Secrets by (namespace, name), stored base64-encoded like the API server returns them."""

    def __init__(self) -> None:
        self.stored: dict[tuple[str, str], dict[str, str]] = {}
        self.creates = 0

    def create_namespaced_secret(self, namespace: str, body: Any) -> Any:
        self.creates += 1
        name = body["metadata"]["name"]
        assert body["metadata"]["namespace"] == namespace
        if (namespace, name) in self.stored:
            raise ApiException(status=409, reason="AlreadyExists")
        data = {k: base64.b64encode(v.encode()).decode() for k, v in body["stringData"].items()}
        self.stored[(namespace, name)] = data
        return body

    def read_namespaced_secret(self, name: str, namespace: str) -> Any:
        if (namespace, name) not in self.stored:
            raise ApiException(status=404, reason="NotFound")
        return SimpleNamespace(data=self.stored[(namespace, name)])


def test_the_first_start_creates_a_random_key_and_later_starts_read_it_back() -> None:
    api = FakeSecrets()
    first = ensure_signing_key(api, "newfuse-system", "nf-signing", "key")
    assert len(first) == 48
    assert len(set(first)) > 10, "random, not a constant"
    # A second replica racing the first, and every restart: 409, then the same key.
    assert ensure_signing_key(api, "newfuse-system", "nf-signing", "key") == first
    assert api.creates == 2
    assert len(api.stored) == 1
    # Another install (another Secret) gets another key.
    assert ensure_signing_key(api, "newfuse-system", "other-signing", "key") != first


def test_an_existing_secret_without_the_key_is_not_overwritten() -> None:
    api = FakeSecrets()
    api.stored[("ns", "nf-signing")] = {"other": base64.b64encode(b"x").decode()}
    with pytest.raises(RuntimeError, match="exists but has no key 'key'"):
        ensure_signing_key(api, "ns", "nf-signing", "key")
    assert api.stored[("ns", "nf-signing")] == {"other": base64.b64encode(b"x").decode()}


def test_other_api_errors_are_not_swallowed() -> None:
    class Forbidden(FakeSecrets):
        def create_namespaced_secret(self, namespace: str, body: Any) -> Any:
            raise ApiException(status=403, reason="Forbidden")

    with pytest.raises(ApiException) as caught:
        ensure_signing_key(Forbidden(), "ns", "nf-signing", "key")
    assert caught.value.status == 403


def test_the_operator_uses_the_secret_only_without_a_key_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = FakeSecrets()
    monkeypatch.setattr(entry, "RawSecrets", lambda _client: api)
    monkeypatch.setattr(entry, "load_config", lambda *_a, **_k: _Closing())
    env = {
        "NEWFUSE_SIGNING_SECRET": "nf-signing/key",
        "NEWFUSE_SIGNING_SECRET_NAMESPACE": "newfuse-system",
    }
    config = entry.with_signing_key(OperatorConfig.from_env(env))
    stored = base64.b64decode(api.stored[("newfuse-system", "nf-signing")]["key"]).decode()
    assert config.signing_key_bytes == stored.encode()
    # A key given directly (NEWFUSE_SIGNING_KEY, e.g. from the env the chart mounts) wins.
    given = entry.with_signing_key(
        OperatorConfig.from_env({**env, "NEWFUSE_SIGNING_KEY": "k" * 40})
    )
    assert given.signing_key_bytes == b"k" * 40
    assert api.creates == 1


def test_a_signing_secret_needs_its_namespace() -> None:
    with pytest.raises(ValueError, match="NEWFUSE_SIGNING_SECRET_NAMESPACE"):
        OperatorConfig.from_env({"NEWFUSE_SIGNING_SECRET": "nf-signing/key"})


class _Closing:
    def __enter__(self) -> _Closing:
        return self

    def __exit__(self, *_: object) -> None:
        return None
