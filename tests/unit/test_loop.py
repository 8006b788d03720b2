"""einhorn.io.loop's own arithmetic: how long a wait may be, and when the listeners are checked."""

from __future__ import annotations

import selectors
import socket
from collections.abc import Iterator

import pytest

from einhorn.core.events import ListenerHealthChanged
from einhorn.io.loop import LISTENER_CHECK_INTERVAL, MAX_WAIT, ListenerWatch, select_timeout


def test_the_wait_is_until_the_earliest_wake_up() -> None:
    assert select_timeout([None, None], now=5.0) is None
    assert select_timeout([12.0, None, 7.5], now=5.0) == 2.5
    assert select_timeout([3.0], now=5.0) == 0.0  # already due: do not wait


def test_a_deadline_far_away_is_waited_for_in_steps_select_accepts() -> None:
    """Issue 16, finding 1: a deadline 2147484 s away crashed the master in select (OverflowError)."""
    far = select_timeout([5.0 + 2147484.0], now=5.0)
    assert far == MAX_WAIT
    reader, writer = socket.socketpair()
    with reader, writer, selectors.DefaultSelector() as selector:
        selector.register(reader, selectors.EVENT_READ)
        writer.send(b"x")  # ready at once: select returns without waiting, if it takes the timeout at all
        assert len(selector.select(far)) == 1
        with pytest.raises(OverflowError):
            selector.select(2147484.0)  # what the loop passed before the clamp


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock


def test_listener_watch_reports_a_shut_down_listener_once(listener: socket.socket) -> None:
    watch = ListenerWatch([listener], now=10.0)
    assert watch.next_check == 10.0  # the first check comes at once
    assert watch.check(10.0) == []
    with listener.dup() as worker_copy:  # what a worker holds: the same socket under another fd
        worker_copy.shutdown(socket.SHUT_RDWR)
    assert watch.check(10.0 + LISTENER_CHECK_INTERVAL / 2) == []  # not due yet: nothing is asked
    due = 10.0 + LISTENER_CHECK_INTERVAL
    assert watch.check(due) == [ListenerHealthChanged(0, False, due)]
    assert watch.check(due + LISTENER_CHECK_INTERVAL) == []  # no change, no event


def test_listener_watch_without_listeners_never_wakes_the_loop() -> None:
    watch = ListenerWatch([], now=0.0)
    assert watch.next_check is None and watch.check(1e6) == []
