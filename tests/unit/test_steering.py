"""einhorn.io.steering on real loopback sockets: where new connections go, the group's order, the queues, a re-exec's hand-off."""

from __future__ import annotations

import ast
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from einhorn.core.config import Config
from einhorn.core.effects import MeasureQueues, ReleaseListeners, SpawnWorker, Steer
from einhorn.core.events import QueuesMeasured
from einhorn.core.state import initial_state
from einhorn.io import preload
from einhorn.io.handoff import Descriptor, Handoff, from_plain, to_plain
from einhorn.io.logs import Logger
from einhorn.io.loop import Master, ShellOptions
from einhorn.io.sockets import SetupError, bind_listener, parse_bind
from einhorn.io.spawn import POSIX_SPAWN, Spawned, WorkerLaunch, spawn_worker, wait_for_report
from einhorn.io.steering import DRAIN_SOCKET, TCPI_SACKED, SteeredListener, Steering, queue_length, tcp_info_u32

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="drain steering is Linux's SO_ATTACH_REUSEPORT_CBPF")

BACKLOG = 100
CONNECTIONS = 90
"""Under the backlog: every connection waits in some queue, none is dropped."""


@pytest.fixture
def drain_listener() -> Iterator[socket.socket]:
    with bind_listener(parse_bind("127.0.0.1:0,drain"), BACKLOG) as sock:
        yield sock


def connect(sock: socket.socket, count: int = CONNECTIONS) -> list[socket.socket]:
    """`count` connections to the listener's address (the kernel completes them into some socket's queue)."""
    return [socket.create_connection(sock.getsockname(), timeout=5) for _ in range(count)]


def empty(*socks: socket.socket) -> None:
    for sock in socks:
        sock.setblocking(False)
        while True:
            try:
                sock.accept()[0].close()
            except BlockingIOError:
                break


def queues_after(listener: SteeredListener, versions: list[int], count: int = CONNECTIONS) -> list[int]:
    """Connect `count` times; each version's queue length then (every socket emptied and the clients closed after)."""
    clients = connect(listener.original, count)
    try:
        return [listener.queued(v) for v in versions]
    finally:
        empty(*listener.group)
        for client in clients:
            client.close()


def close_all(listener: SteeredListener) -> None:
    for sock in listener.sockets.values():
        sock.close()


@pytest.fixture
def listener(drain_listener: socket.socket) -> Iterator[SteeredListener]:
    """A SteeredListener on `drain_listener`; every version socket it opened is closed after the test."""
    steered = SteeredListener(drain_listener)
    try:
        yield steered
    finally:
        close_all(steered)


def test_a_drain_listener_sends_everything_to_its_own_socket_until_steered(drain_listener: socket.socket, listener: SteeredListener) -> None:
    """The program attached at bind: a socket that joins the group gets nothing until steered."""
    assert listener.socket_of(1) is drain_listener  # the first version asked for gets the original
    second = listener.socket_of(2)
    assert second is not drain_listener and second.getsockname() == drain_listener.getsockname()
    assert not second.get_inheritable() and drain_listener.get_inheritable()
    assert queues_after(listener, [1, 2]) == [CONNECTIONS, 0]


def test_steering_sends_all_to_one_version_none_to_others_and_splits_by_weight(listener: SteeredListener) -> None:
    listener.steer(((2, 1),))  # version 2 opens its socket; the original is still nobody's
    assert listener.owner == 2 and listener.sockets == {}
    listener.steer(((3, 1),))
    assert queues_after(listener, [2, 3]) == [0, CONNECTIONS]
    listener.steer(((2, 1),))
    assert queues_after(listener, [2, 3]) == [CONNECTIONS, 0]
    listener.steer(((2, 1), (3, 2)))
    two, three = queues_after(listener, [2, 3])
    assert two + three == CONNECTIONS and 10 <= two <= 50  # expected 30
    listener.steer(((4, 1), (3, 1)))
    two, three, four = queues_after(listener, [2, 3, 4])
    assert two == 0 and three + four == CONNECTIONS and 20 <= four <= 70


def test_closing_a_middle_socket_keeps_each_connection_going_to_its_version(drain_listener: socket.socket, listener: SteeredListener) -> None:
    """socket(7): the last socket of the group takes the closed one's index; the program is attached again at once."""
    listener.steer(((1, 1),))
    two, three, four = (listener.socket_of(v) for v in (2, 3, 4))
    listener.steer(((4, 1),))
    assert queues_after(listener, [1, 2, 3, 4]) == [0, 0, 0, CONNECTIONS]
    listener.release(2)  # index 1 of 0..3: version 4's socket moves there
    assert two.fileno() == -1 and listener.group == [drain_listener, four, three]
    assert queues_after(listener, [1, 3, 4]) == [0, 0, CONNECTIONS]
    listener.steer(((3, 1),))
    assert queues_after(listener, [1, 3, 4]) == [0, CONNECTIONS, 0]
    listener.steer(((4, 1), (1, 1)))
    listener.release(3)  # the last: nothing moves
    one, four_queued = queues_after(listener, [1, 4])
    assert one + four_queued == CONNECTIONS and 20 <= one <= 70
    listener.release(7)  # an unknown version: nothing happens
    assert listener.group == [drain_listener, four]


def test_releasing_the_originals_version_keeps_it_open_for_the_next(drain_listener: socket.socket, listener: SteeredListener) -> None:
    listener.steer(((1, 1),))
    listener.steer(((2, 1),))
    listener.release(1)
    assert drain_listener.fileno() != -1 and listener.owner is None
    assert listener.socket_of(3) is drain_listener  # the next version takes it (and what still waits in it)
    listener.steer(((3, 1),))
    assert queues_after(listener, [2, 3]) == [0, CONNECTIONS]


def test_queue_length_counts_the_connections_not_yet_accepted(drain_listener: socket.socket) -> None:
    clients = connect(drain_listener, 7)
    try:
        assert queue_length(drain_listener) == 7
        drain_listener.accept()[0].close()
        assert queue_length(drain_listener) == 6
    finally:
        empty(drain_listener)
        for client in clients:
            client.close()


def test_a_version_socket_copies_the_originals_address_options_and_backlog() -> None:
    with bind_listener(parse_bind("127.0.0.1:0,drain,r,n,backlog=3"), BACKLOG) as original:
        listener = SteeredListener(original)
        listener.socket_of(1)
        second = listener.socket_of(2)
        try:
            assert second.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) and second.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
            assert not os.get_blocking(second.fileno())
            assert tcp_info_u32(second, TCPI_SACKED) == 3  # a listener's backlog
            listener.steer(((2, 1),))
            assert queues_after(listener, [1, 2], count=4) == [0, 4]
        finally:
            close_all(listener)


def test_a_dual_stack_drain_listener_steers_both_families() -> None:
    try:
        original = bind_listener(parse_bind("[::]:0,drain"), BACKLOG)
        socket.create_connection(("::1", original.getsockname()[1]), timeout=5).close()
    except (SetupError, OSError) as error:
        pytest.skip(f"no IPv6 loopback here: {error}")
    with original:
        empty(original)
        listener = SteeredListener(original)
        try:
            listener.steer(((1, 1),))
            second = listener.socket_of(2)
            assert second.family == socket.AF_INET6 and second.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
            listener.steer(((2, 1),))
            port = original.getsockname()[1]
            clients = [socket.create_connection((host, port), timeout=5) for host in ("::1", "127.0.0.1") * 5]
            try:
                assert (listener.queued(1), listener.queued(2)) == (0, 10)
            finally:
                empty(*listener.group)
                for client in clients:
                    client.close()
        finally:
            close_all(listener)


def test_the_steering_crosses_a_reexec(drain_listener: socket.socket) -> None:
    """Hand-off round trip: the same sockets (same fds), their group order, owners and weights in the new image."""
    log = Logger()
    handoff = Handoff()
    steering = Steering([drain_listener], handoff, log)
    steering.steer(((1, 1),))
    version_fds = [*steering.sources(2, [drain_listener.fileno()]), *steering.sources(3, [drain_listener.fileno()])]
    steering.release(2)  # version 3's socket moves to index 1
    steering.steer(((3, 1),))
    descriptors = from_plain(to_plain(handoff.descriptors()))
    data = handoff.data()
    assert [(d.kind, d.fd, d.data) for d in descriptors] == [(DRAIN_SOCKET, version_fds[1], {"listener": drain_listener.fileno(), "version": 3})]
    original_fd = drain_listener.fileno()
    for sock in (drain_listener, *steering.listeners[original_fd].sockets.values()):
        sock.detach()  # as an exec does: the descriptors stay open, this image's objects go
    with ExitStack() as stack:
        original = stack.enter_context(socket.socket(fileno=original_fd))
        restored = Steering([original], Handoff(descriptors, data), log)
        listener = restored.listeners[original_fd]
        stack.callback(close_all, listener)
        assert listener.owner == 1 and listener.weights == ((3, 1),)
        assert [s.fileno() for s in listener.group] == [original_fd, version_fds[1]]
        assert not listener.sockets[3].get_inheritable()
        assert queues_after(listener, [1, 3]) == [0, CONNECTIONS]
        listener.steer(((1, 1),))  # the restored order is the kernel's: index 0 is still the original
        assert queues_after(listener, [1, 3]) == [CONNECTIONS, 0]
        assert restored.descriptors() == descriptors


def test_the_master_performs_steer_measure_and_release_and_spawns_each_version_on_its_socket(drain_listener: socket.socket, tmp_path: Path) -> None:
    launched: list[WorkerLaunch] = []

    def spawn(launch: WorkerLaunch, index: int, sock_fd: int | None) -> Spawned:
        launched.append(launch)
        return Spawned(100_000 + index, None)  # no process: the test never reaps nor signals one

    fd = drain_listener.fileno()
    launch = WorkerLaunch("/bin/true", ["/bin/true"], {}, [fd], ["AF_INET"], str(tmp_path / "cmd.sock"), os.getpid())
    options = ShellOptions(launch, False, (), ["einhorn"], {}, spawn=spawn)
    handoff = Handoff()
    steering = Steering([drain_listener], handoff, Logger())
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server, ExitStack() as stack:
        server.bind(str(tmp_path / "cmd.sock"))
        server.listen(8)
        master = Master(initial_state(Config(number=1, ack_timer=0.0, drain=True)), options, server, Logger(), handoff, steering=steering)
        stack.callback(master.selector.close)
        stack.callback(master.wake_reader.close)
        stack.callback(master.wake_writer.close)
        stack.callback(close_all, steering.listeners[fd])
        master.perform(SpawnWorker(1, 0, version=1))
        master.perform(SpawnWorker(2, 1, version=2))
        assert launched[0] is launch  # the first version: the listener itself, as without drain
        second = steering.listeners[fd].sockets[2]
        assert launched[1].listener_fds == [fd] and launched[1].listener_sources == (second.fileno(),)
        master.perform(Steer(((2, 1),)))
        clients = connect(drain_listener, 5)
        for client in clients:
            stack.callback(client.close)
        [measured] = master.perform(MeasureQueues(2, ticket=7))
        assert isinstance(measured, QueuesMeasured) and (measured.version, measured.ticket, measured.queued) == (2, 7, 5)
        [first] = master.perform(MeasureQueues(1, ticket=8))
        assert isinstance(first, QueuesMeasured) and first.queued == 0
        [none_there] = master.perform(MeasureQueues(9, ticket=9))
        assert isinstance(none_there, QueuesMeasured) and none_there.queued == 0
        master.perform(Steer(((1, 1),)))
        master.perform(ReleaseListeners(2))
        assert second.fileno() == -1 and steering.listeners[fd].group == [drain_listener]
        master.perform(SpawnWorker(3, 2, version=3))
        assert launched[2].listener_sources == (steering.listeners[fd].sockets[3].fileno(),)


LINKS = """
import os, sys
links = {}
for name in os.listdir("/proc/self/fd"):
    try:
        links[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    except OSError:
        pass
fd = int(os.environ["LISTEN_FDS"] and 3 if "LISTEN_FDS" in os.environ else os.environ["EINHORN_FD_0"])
with open(sys.argv[-1], "w") as out:
    out.write(repr((fd, links)))
"""
"""What a worker holds: the fd it is told for listener 0, and every descriptor's link (`socket:[INODE]`)."""


def links_main(out: Path) -> object:
    def main() -> None:
        sys.argv = [str(out)]
        exec(LINKS, {})

    return main


def link(sock: socket.socket) -> str:
    return f"socket:[{os.fstat(sock.fileno()).st_ino}]"


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("path", ["posix_spawn", "fork", "listen_fds", "preload"])
def test_a_worker_of_a_version_holds_that_versions_socket_at_its_listener_fd(
    drain_listener: socket.socket, listener: SteeredListener, tmp_path: Path, path: str, version: int
) -> None:
    """Version 1 has the listener itself (no `listener_sources`, as without drain); version 2 its own socket."""
    out = tmp_path / "links"
    listener.socket_of(1)
    listener.socket_of(2)  # (a version 1 worker must not get it either)
    second = listener.socket_of(version)
    launch = WorkerLaunch(
        sys.executable, [sys.executable, "-c", LINKS, str(out)], {"PATH": os.defpath}, [drain_listener.fileno()], ["AF_INET"],
        str(tmp_path / "cmd.sock"), os.getpid(), listener_sources=() if version == 1 else (second.fileno(),),
        prepare_child=(lambda: None) if path == "fork" else None, listen_fds=path == "listen_fds",
    )  # fmt: skip
    if path == "preload":
        spawner = preload.Preloader(preload.Preloaded("app.py", links_main(out), frozenset()), ["app"], None, Logger())  # type: ignore[arg-type]
        spawned = spawner.spawn(launch, 0, None)
    else:
        spawned = spawn_worker(launch, 0, None)
    assert (spawned.report_fd is None) == (path == "posix_spawn" and POSIX_SPAWN)
    assert wait_for_report(spawned) is None
    _, status = os.waitpid(spawned.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    fd, links = ast.literal_eval(out.read_text())
    assert fd == (3 if path == "listen_fds" else drain_listener.fileno())
    assert links[fd] == link(second)
    held = [target for target in links.values() if target.startswith("socket:")]
    assert held == [link(second)]  # its version's socket, once: not the original's (nor version 2's twice)


def test_a_steering_document_that_does_not_match_the_sockets_is_logged_and_its_sockets_closed(
    drain_listener: socket.socket, capsys: pytest.CaptureFixture[str]
) -> None:
    stray = socket.socket()
    data = {"steering": [{"listener": drain_listener.fileno(), "owner": 1, "group": [drain_listener.fileno()], "weights": [[1, 1]]}]}
    handoff = Handoff([Descriptor(DRAIN_SOCKET, stray.fileno(), {"listener": drain_listener.fileno(), "version": 2})], data)
    stray.detach()
    steering = Steering([drain_listener], handoff, Logger())
    listener = steering.listeners[drain_listener.fileno()]
    assert listener.sockets == {} and listener.group == [drain_listener] and listener.owner is None
    assert "Could not adopt the steering of the drain listener" in capsys.readouterr().err
    assert handoff.unclaimed() == []


def test_a_release_after_a_failed_steer_does_not_bring_the_released_version_back(listener: SteeredListener) -> None:
    """The last steering applied still names the version (its Steer away failed): the re-attach after the
    close leaves it out, and opens no socket for it."""
    listener.steer(((1, 1),))
    listener.socket_of(2)
    listener.steer(((1, 1), (2, 1)))
    listener.release(2)
    assert 2 not in listener.sockets and listener.weights == ((1, 1),)
    assert queues_after(listener, [1, 2]) == [CONNECTIONS, 0]
    listener.release(1)  # the original's owner: it loses it, and the steering forgets it
    assert listener.owner is None
    assert not listener.weights


@pytest.mark.parametrize(
    "item",
    [
        {"listener": [3], "owner": 1, "group": [], "weights": []},
        {"listener": "LISTENER", "owner": 1, "group": ["LISTENER", "x"], "weights": [[1, 1]]},
    ],
)
def test_a_steering_document_of_the_wrong_types_is_logged_not_fatal(
    drain_listener: socket.socket, capsys: pytest.CaptureFixture[str], item: dict[str, object]
) -> None:
    fd = drain_listener.fileno()
    item = {key: ([fd if x == "LISTENER" else x for x in value] if isinstance(value, list) else fd if value == "LISTENER" else value) for key, value in item.items()}
    steering = Steering([drain_listener], Handoff([], {"steering": [item]}), Logger())
    listener = steering.listeners[fd]
    assert listener.sockets == {} and listener.group == [drain_listener] and listener.owner is None
    capsys.readouterr()
