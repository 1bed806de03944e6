"""hiredis' packer must send exactly what redis-py's own would, and raise what it would."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import AbstractConnection, Connection
from redis.exceptions import DataError

from newfuse.adapters.fastpack import packing

pytestmark = pytest.mark.unit

ARGS = st.one_of(
    st.text(),
    st.binary(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.binary().map(lambda data: memoryview(data)),
)


def _packed(cls: type[AbstractConnection], *args: Any) -> bytes:
    return b"".join(bytes(chunk) for chunk in cls(decode_responses=True).pack_command(*args))


@given(st.sampled_from(["SET", "EVALSHA", b"XADD", "CONFIG GET", b"CLIENT SETNAME"]),
       st.lists(ARGS, max_size=25))  # fmt: skip
def test_commands_are_packed_byte_for_byte_like_redis_py(name: Any, args: list[Any]) -> None:
    fast = packing(Connection)
    assert fast is not Connection
    assert packing(Connection) is fast
    assert _packed(fast, name, *args) == _packed(Connection, name, *args)


@pytest.mark.parametrize("bad", [True, None, object(), {"a": 1}])
def test_what_redis_py_refuses_is_refused_the_same_way(bad: Any) -> None:
    with pytest.raises(DataError):
        packing(Connection)(decode_responses=True).pack_command("SET", "k", bad)


def test_text_that_cannot_be_encoded_fails_like_redis_py() -> None:
    fast = packing(Connection)(decode_responses=True)
    with pytest.raises(UnicodeEncodeError):
        fast.pack_command("SET", "k", "\udcff")
