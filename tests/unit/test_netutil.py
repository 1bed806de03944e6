"""Ports for test servers: never from the kernel's ephemeral range, where a client can take them."""

from __future__ import annotations

import socket

from localcluster import netutil


def test_free_ports_are_below_the_ephemeral_range_and_bindable() -> None:
    low = netutil._ephemeral_low()
    ports = {netutil.free_port() for _ in range(50)}
    assert all(port in netutil.PORT_RANGE and port < low for port in ports), ports
    assert len(ports) > 40, "chosen at random, so two fixtures rarely race for one port"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports.pop()))


def test_a_port_in_use_is_not_offered() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        assert not netutil._bindable(held.getsockname()[1])
