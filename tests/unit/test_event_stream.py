"""einhorn.io.events: numbering, fan-out, backpressure and the re-exec hand-off, on a real command server."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from einhorn.core.observe import Observation
from einhorn.io.events import EventStream, line_of
from tests.unit.test_control_server import Driver, bind_client, line, replies


@pytest.fixture
def driver() -> Iterator[Driver]:
    d = Driver(max_output=4096)
    yield d
    d.close()


def subscribed(driver: Driver) -> tuple[EventStream, int, object]:
    client = bind_client(driver.connect())
    client.sendall(line("subscribe"))
    driver.settle(3)
    stream = EventStream(driver.server, driver.log)
    conn = driver.conn_of(client)
    replies(client)  # the fake core's answer to `subscribe`
    stream.subscribe(conn, "s1")
    return stream, conn, client


def test_a_line_carries_kind_sequence_time_fields_and_a_message() -> None:
    observation = Observation("exited", {"pid": 7, "signal": 9, "exit_code": None})
    assert line_of(observation, 12, 1700000000.1234567) == {
        "event": "exited",
        "seq": 12,
        "time": 1700000000.123457,
        "pid": 7,
        "signal": 9,
        "exit_code": None,
        "message": "#12 exited pid=7 signal=9",
    }


def test_fields_never_override_the_envelope() -> None:
    assert line_of(Observation("x", {"seq": 99, "event": "y"}), 1, 0.0)["seq"] == 1


def test_each_subscriber_gets_every_observation_numbered_in_order(driver: Driver) -> None:
    stream, _, client = subscribed(driver)
    stream.publish([Observation("spawned", {"pid": 1}), Observation("acked", {"pid": 1})], 5.0)
    got = replies(client)  # type: ignore[arg-type]
    assert [(r["event"], r["seq"], r["request_id"], r["wait"]) for r in got] == [("spawned", 1, "s1", True), ("acked", 2, "s1", True)]


def test_observations_are_numbered_even_with_no_subscriber(driver: Driver) -> None:
    stream = EventStream(driver.server, driver.log)
    stream.publish([Observation("spawned")] * 3, 0.0)
    assert stream.sequence == 3


def test_a_subscriber_that_stops_reading_is_dropped_at_the_output_limit(driver: Driver) -> None:
    stream, conn, client = subscribed(driver)
    big = Observation("command", {"command": "x" * 1000})
    for _ in range(2000):
        stream.publish([big], 0.0)
        if conn not in stream.subscribers:
            break
    assert conn not in stream.subscribers and conn not in driver.server.connections
    assert driver.log.matching(f"[client {conn}] is not reading the event stream")
    assert driver.server.total_output == 0


def test_the_stream_crosses_a_reexec_with_its_sequence_and_subscribers(driver: Driver) -> None:
    stream, conn, _ = subscribed(driver)
    stream.publish([Observation("spawned")] * 4, 0.0)
    data = json.loads(json.dumps(stream.handoff_data()))
    again = EventStream(driver.server, driver.log)
    again.restore(data)
    assert (again.sequence, again.subscribers) == (4, {conn: "s1"})


@pytest.mark.parametrize(
    "data",
    [[], {"sequence": -1, "subscribers": []}, {"sequence": 1, "subscribers": [[1]]}, {"sequence": True, "subscribers": []}],
)
def test_a_malformed_hand_off_is_logged_and_ignored(driver: Driver, data: object) -> None:
    stream = EventStream(driver.server, driver.log)
    stream.restore(data)
    assert (stream.sequence, stream.subscribers) == (0, {})
    assert driver.log.matching("Could not restore the event stream")


def test_a_restored_subscriber_whose_connection_is_gone_is_forgotten(driver: Driver) -> None:
    stream = EventStream(driver.server, driver.log)
    stream.restore({"sequence": 9, "subscribers": [[12345, None]]})
    assert (stream.sequence, stream.subscribers) == (9, {})
