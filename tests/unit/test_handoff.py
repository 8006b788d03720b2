"""The hand-off registry: what survives a re-exec is whatever the owners register, in order."""

from __future__ import annotations

import json
import os
import socket

import pytest

from einhorn.io import handoff
from einhorn.io.control import RestoredConnection, restored_server
from einhorn.io.handoff import Descriptor, Handoff


def test_descriptors_come_from_every_provider_as_they_are_now() -> None:
    registry = Handoff()
    live = [Descriptor("listener", 3, {"index": 0})]
    registry.register(lambda: list(live))
    registry.register(lambda: [Descriptor("command_server", 4)])
    live.append(Descriptor("listener", 5, {"index": 1}))  # asked at export time, not at registration
    assert registry.descriptors() == [
        Descriptor("listener", 3, {"index": 0}),
        Descriptor("listener", 5, {"index": 1}),
        Descriptor("command_server", 4),
    ]


def test_restored_descriptors_are_claimed_once_by_kind_in_order() -> None:
    registry = Handoff([Descriptor("listener", 3), Descriptor("notify", 9), Descriptor("listener", 5)])
    assert [d.fd for d in registry.claim("listener")] == [3, 5]
    assert registry.claim("listener") == []
    assert registry.unclaimed() == [Descriptor("notify", 9)]


def test_the_plain_form_round_trips_through_json() -> None:
    descriptors = [Descriptor("listener", 3, {"index": 0}), Descriptor("connection", 7, {"id": 2, "unread": "\xff", "unsent": ""})]
    assert handoff.from_plain(json.loads(json.dumps(handoff.to_plain(descriptors)))) == descriptors


@pytest.mark.parametrize(
    "items",
    [None, {"kind": "listener"}, [1], [{"fd": 3}], [{"kind": "listener", "fd": "3"}], [{"kind": 1, "fd": 3}], [{"kind": "x", "fd": True}], [{"kind": "x", "fd": 3, "data": []}]],
)
def test_malformed_plain_forms_are_refused(items: object) -> None:
    with pytest.raises((TypeError, ValueError, KeyError)):
        handoff.from_plain(items)


def test_make_inheritable_and_its_undo_restore_each_fd_as_it_was() -> None:
    a, b = socket.socketpair()
    try:
        b.set_inheritable(True)
        undo = handoff.make_inheritable([Descriptor("x", a.fileno()), Descriptor("y", b.fileno())])
        assert a.get_inheritable() and b.get_inheritable()
        undo()
        assert not a.get_inheritable() and b.get_inheritable()
    finally:
        a.close()
        b.close()


def test_a_connection_keeps_its_buffers_as_bytes() -> None:
    raw = bytes(range(256))
    conn = RestoredConnection(4, 11, raw, raw[::-1])
    assert RestoredConnection.of(conn.descriptor()) == conn
    with pytest.raises(ValueError):
        RestoredConnection.of(Descriptor("connection", 11, {"id": "4", "unread": "", "unsent": ""}))


def test_the_command_server_is_claimed_with_its_connections() -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    fd = os.dup(server.fileno())
    server.close()
    registry = Handoff([Descriptor("command_server", fd), RestoredConnection(1, 20, b"a", b"b").descriptor()])
    sock, connections = restored_server(registry)
    try:
        assert sock.fileno() == fd and not sock.get_inheritable()
        assert connections == [RestoredConnection(1, 20, b"a", b"b")]
    finally:
        sock.close()
    with pytest.raises(ValueError, match="one command server"):
        restored_server(Handoff())
