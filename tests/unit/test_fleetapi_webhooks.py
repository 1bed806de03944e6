"""What a webhook call carries besides its body: the token, the signature, the credentials."""

from __future__ import annotations

import pytest

from newfuse.fleetapi.a2amap import PushTarget
from newfuse.fleetapi.webhooks import headers, signature

pytestmark = pytest.mark.unit


def test_the_signature_covers_the_id_the_timestamp_the_body_and_the_token() -> None:
    # Standard Webhooks' signed content ("<id>.<timestamp>.<body>"), keyed with the token's bytes.
    secret = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    found = signature(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert found == "v1,ELhqG0Ku1gwOc1f4jyKdp3SFGFLAOdJ9bvpWLciCakI="  # computed apart, once
    assert found != signature(secret, "msg_other", 1614265330, body)
    assert found != signature(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265331, body)
    assert found != signature("another", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)


def test_headers_sign_only_with_a_token_and_pass_credentials() -> None:
    bare = headers(PushTarget(id="a", url="https://x/h"), "m1", 5, b"{}")
    assert bare["webhook-id"] == "m1"
    assert bare["webhook-timestamp"] == "5"
    assert "webhook-signature" not in bare
    assert "Authorization" not in bare
    full = PushTarget(id="a", url="https://x/h", token="t", scheme="Bearer", credentials="c")
    sent = headers(full, "m1", 5, b"{}")
    assert sent["X-A2A-Notification-Token"] == "t"
    assert sent["webhook-signature"] == signature("t", "m1", 5, b"{}")
    assert sent["Authorization"] == "Bearer c"
