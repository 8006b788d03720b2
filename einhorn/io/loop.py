"""The master's event loop: the only caller of `step`, and the performer of its effects.

One selector waits on the signal wakeup socket, the command server and its
connections, with a timeout taken from `next_deadline` (and the next listener
check), never longer than `MAX_WAIT`. After every wake-up the loop reaps every
exited child first (so a signal never targets a recycled pid), then feeds the
other events, then a `Tick` if the deadline passed. Every
`LISTENER_CHECK_INTERVAL` it asks each `-b` listener whether it still accepts
and reports a change (`ListenerHealthChanged`). With `--max-worker-rss`, every
`RSS_SAMPLE_INTERVAL` it reads each worker's resident set size from
/proc/PID/statm and reports it (`WorkerMeasured`); the core decides.
"""

from __future__ import annotations

import marshal
import os
import select
import selectors
import signal
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence

from einhorn.core import assert_never
from einhorn.core.config import RSS_SAMPLE_INTERVAL
from einhorn.core.effects import (
    AbandonExec,
    CloseConnection,
    CompareImage,
    Effect,
    ExecMaster,
    Exit,
    Log,
    MeasureQueues,
    NotifySupervisor,
    ReleaseListeners,
    Reply,
    ReplyData,
    SendSignal,
    SpawnWorker,
    StartUpgradeCheck,
    Steer,
    StopUpgradeCheck,
    StreamEvents,
)
from einhorn.core.events import (
    ChildExited,
    ConnectionClosed,
    Event,
    ImageCompared,
    ListenerHealthChanged,
    MasterStarted,
    QueuesMeasured,
    ReexecFailed,
    SignalReceived,
    SpawnFailed,
    Tick,
    UpgradeCheckFailed,
    UpgradeCheckPassed,
    WorkerMeasured,
    WorkerSpawned,
)
from einhorn.core.observe import Observation, observe
from einhorn.core.record import dataclass, field, replace
from einhorn.core.state import RequestId, State
from einhorn.core.step import next_deadline, step
from einhorn.io import events as event_stream
from einhorn.io import signals, sockets
from einhorn.io.control import CommandServer, RestoredConnection
from einhorn.io.handoff import Handoff
from einhorn.io.logs import Logger, current_traceback
from einhorn.io.notify import NotifyServer, Supervisor
from einhorn.io.spawn import Spawned, WorkerLaunch, failure_report, generation_launch, launch_spec, spawn_worker

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: an idle master need not hold it (issue 14)
if TYPE_CHECKING:
    from einhorn.io import reexec
    from einhorn.io.metrics import MetricsServer
    from einhorn.io.steering import Steering

MAX_WAIT = 3600.0
"""Seconds: the longest single wait in select; a later deadline is reached in several waits
(select itself refuses timeouts past about 24.8 days)."""

LISTENER_CHECK_INTERVAL = 2.0
"""Seconds between two checks that the `-b` listeners still accept (`sockets.accepting`)."""


@dataclass(frozen=True)
class ShellOptions:
    """What the shell needs beyond the core's state: how to start workers and re-exec itself
    (`einhorn.cli.settings.shell_options` derives it from the command line)."""

    launch: WorkerLaunch
    command_socket_as_fd: bool
    owned_paths: Sequence[str]
    """The files this master created (its pidfile and command socket): removed when it exits."""
    reexec_command: Sequence[str]
    """Executable and the original flags: `--with-state-fd FD -- program...` (`launch.argv`) is appended."""
    reexec_environ: dict[str, str]
    reexec_as: bool = False
    """`--reexec-as`: the re-exec runs the operator's command (`reexec_command` starts with it)."""
    dropped_from_reexec: Sequence[str] = ()
    """The variables of this image's environment `--drop-env-var` leaves out of `reexec_environ`."""
    kill_children_on_exit: bool = False
    spawn: Callable[[WorkerLaunch, int, int | None], Spawned] = field(default=spawn_worker)


class ListenerWatch:
    """Asks each `-b` listener whether it still accepts, every LISTENER_CHECK_INTERVAL; reports changes."""

    def __init__(self, listeners: Sequence[socket.socket], now: float) -> None:
        self.listeners = listeners
        self.accepting = [True] * len(listeners)
        """What was last reported about each (the core starts out believing they all accept)."""
        self.next_check: float | None = now if listeners else None

    def check(self, now: float) -> list[Event]:
        """The changes since the last check, if a check is due."""
        if self.next_check is None or now < self.next_check:
            return []
        self.next_check = now + LISTENER_CHECK_INTERVAL
        events: list[Event] = []
        for index, sock in enumerate(self.listeners):
            accepting = sockets.accepting(sock)
            if accepting != self.accepting[index]:
                self.accepting[index] = accepting
                events.append(ListenerHealthChanged(index, accepting, now))
        return events


class RssWatch:
    """Reads every worker's RSS once per RSS_SAMPLE_INTERVAL, on the loop's own deadline (no thread)."""

    def __init__(self, enabled: bool, now: float) -> None:
        self.next_check: float | None = now if enabled else None

    def check(self, pids: Iterable[int], now: float) -> list[Event]:
        """Each of `pids` measured, in pid order, if a sample is due; `pids` is not walked otherwise
        (the loop passes the children as they are: no O(N) work per wake-up, such as each reaped child's)."""
        if self.next_check is None or now < self.next_check:
            return []
        self.next_check = now + RSS_SAMPLE_INTERVAL
        events: list[Event] = []
        for pid in sorted(pids):
            rss = resident_bytes(pid)
            if rss is not None:
                events.append(WorkerMeasured(pid, rss, now))
        return events


PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes(pid: int) -> int | None:
    """The resident set size of `pid` (/proc/PID/statm's second field, in pages), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            fields = statm.read().split()
        return int(fields[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return None


def monotonic_and_wall() -> tuple[float, float]:
    return time.monotonic(), time.time()


SNAPSHOT_TIMEOUT = 2.0
"""Seconds the snapshot of this image may take (a stat on a hung network mount): then it is not compared."""

Snapshot = tuple[tuple[str, ...], tuple[int, ...]]
"""`einhorn.io.image.Image`'s paths and signatures."""


def snapshot_apart(reexec_command: Sequence[str]) -> Snapshot | str:
    """`Image.take` in a forked child (the same modules, the same mappings), which sends the result back.

    A process's resident set keeps every page of code it ever ran: taking the snapshot here, and
    holding its module, would add ~0.1 MiB to the idle master (issue 14); it loads it at an upgrade."""
    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
    except OSError as error:
        os.close(read_end)
        os.close(write_end)
        return f"could not fork the snapshot: {error.strerror}"
    if pid == 0:
        try:
            os.close(read_end)
            signal.set_wakeup_fd(-1)  # its signals are not the master's
            from einhorn.io.image import Image

            image = Image.take(reexec_command)
            view = memoryview(marshal.dumps(image if isinstance(image, str) else (image.paths, image.signatures)))
            while view:
                view = view[os.write(write_end, view) :]
        finally:
            os._exit(0)
    os.close(write_end)
    received: bytes | None = None
    try:
        received = _read_until_eof(read_end, time.monotonic() + SNAPSHOT_TIMEOUT)
    finally:
        os.close(read_end)
        if received is None:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    if received is None:
        return f"the snapshot took longer than {SNAPSHOT_TIMEOUT:g}s"
    try:
        found = marshal.loads(received)
    except (EOFError, ValueError, TypeError):
        found = None
    if isinstance(found, str) or (isinstance(found, tuple) and len(found) == 2):
        return found
    return "the snapshot process failed"


def _read_until_eof(fd: int, deadline: float) -> bytes | None:
    """Everything until EOF, or None at the deadline."""
    chunks: list[bytes] = []
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    return None


class Master:
    def __init__(
        self,
        state: State,
        options: ShellOptions,
        server: socket.socket,
        log: Logger,
        handoff: Handoff,
        restored: Sequence[RestoredConnection] = (),
        helpers: Iterable[int] = (),
        notify: NotifyServer | None = None,
        supervisor: Supervisor | None = None,
        listeners: Sequence[socket.socket] = (),
        steering: Steering | None = None,
    ) -> None:
        self.state = state
        self.options = options
        self.log = log
        self.log.verbosity = state.verbosity
        self.handoff = handoff
        self.exit_code: int | None = None
        self.upgrade_checks: dict[int, reexec.UpgradeCheck] = {}
        """Running `--upgrade-check` processes by pid; the master keeps serving meanwhile."""
        self.helpers: set[int] = set(helpers)
        """The shell's other processes (state passers, stopped checks): reaped quietly, never events."""
        self.exec_ordered = False
        """`ExecMaster` was ordered: exec at the end of this loop iteration, once everything read is handled."""
        self.listener_watch = ListenerWatch(listeners, time.monotonic())
        self.rss_watch = RssWatch(state.config.max_worker_rss_mb is not None, time.monotonic())
        self.selector = selectors.DefaultSelector()
        self.wake_reader, self.wake_writer = socket.socketpair()
        for end in (self.wake_reader, self.wake_writer):
            end.setblocking(False)
        self.selector.register(self.wake_reader, selectors.EVENT_READ, self._drain_signals)
        self.server = CommandServer(server, self.selector, log, monotonic_and_wall)
        handoff.register(self.server.descriptors)
        for conn in restored:
            self.server.restore(conn)
        self.events = event_stream.EventStream(self.server, log)
        """`subscribe`d connections, and the observations' sequence number (both survive a re-exec)."""
        self.events.restore(handoff.claim_data(event_stream.HANDOFF_KEY))
        handoff.register_data(event_stream.HANDOFF_KEY, self.events.handoff_data)
        self.notify = notify
        """`-m notify`: the workers' sd_notify socket."""
        if notify is not None:
            self.selector.register(notify.sock, selectors.EVENT_READ, notify.read)
            handoff.register(notify.descriptors)
        self.supervisor = supervisor
        """The master's own `NOTIFY_SOCKET` (systemd), if it has one."""
        self.cwd = os.getcwd()
        self.launch_spec = launch_spec(options.launch, self.cwd)
        """This image's launch spec: the core records it as a generation (first start, upgrade)."""
        self.launches: dict[int, WorkerLaunch] = {}
        """One per generation (by version), made at its first spawn in this image."""
        self.metrics: MetricsServer | None = None
        """`--metrics`: set by the start-up once the loop's selector exists (`metrics.serve`)."""
        self.steering = steering
        """`-b ...,drain`: each generation's sockets, and where new connections go."""
        self.steered_launches: dict[int, WorkerLaunch] = {}
        """By version: its launch with its own sockets of the drain listeners (`listener_sources`)."""
        self.image: Snapshot | str = "no snapshot of this image was taken yet"
        """What this image loaded (`snapshot_apart`, once started), or why it cannot be compared."""

    # --- main loop ----------------------------------------------------------

    def run(self, restored: bool = False) -> int:
        signals.install(self.wake_writer)
        try:
            if restored:
                self.feed(self._check_restored_children())
            self.feed([MasterStarted(time.monotonic(), restored=restored, launch=self.launch_spec)])
            # After the first spawns (off an upgrade's path), once everything the start-up imports is loaded.
            self.image = self._snapshot()
            self._serve_requests()  # those buffered when the old image exec'd first
            while self.exit_code is None:
                self._iterate()
        except BaseException:
            self.log.error(f"Master crashed:\n{current_traceback()}")
            self.exit_code = 1 if self.exit_code is None else self.exit_code
        finally:
            self._clean_up()
        return self.exit_code

    def _iterate(self) -> None:
        self.feed(self._reap())
        if self.exit_code is not None:
            return
        deadline = next_deadline(self.state)
        metrics_wakeup = None if self.metrics is None else self.metrics.next_wakeup()
        wake_at = (deadline, self.server.next_wakeup(), self.listener_watch.next_check, self.rss_watch.next_check, metrics_wakeup)
        timeout = select_timeout(wake_at, time.monotonic())
        if self.exec_ordered:
            timeout = 0.0  # take in what is already there, then exec (below)
        events: list[Event] = []
        for key, _ in self.selector.select(timeout):
            callback: Callable[[], list[Event]] = key.data
            try:
                events += callback()
            except Exception:  # noqa: BLE001 - one bad connection must not stop the master
                self.log.error(f"Error while serving an event source:\n{current_traceback()}")
        self.feed(self._reap())
        self.feed(events)
        self._serve_requests()
        self.server.tick()
        if self.metrics is not None:
            self.metrics.tick()
        self.feed(self.server.take_closed())
        self.feed(self.listener_watch.check(time.monotonic()))
        self.feed(self.rss_watch.check(self.state.children, time.monotonic()))
        if deadline is not None and time.monotonic() >= deadline:
            self.feed([Tick(time.monotonic())])
        if self.exec_ordered and self.exit_code is None:
            # The one I/O rule of a re-exec: only here, once everything this wake-up read
            # (signals, requests, ACKs) is handled, or the exec would lose it.
            self.feed(self._exec_master())

    def feed(self, events: Iterable[Event]) -> None:
        """Step each event and perform its effects. The lines logged meanwhile are written at the end,
        together (or before a spawn: what led to it is seen first)."""
        self.log.hold()
        try:
            self._feed(events)
        finally:
            self.log.release()

    def _feed(self, events: Iterable[Event]) -> None:
        queue = deque(events)
        while queue and self.exit_code is None:
            event = queue.popleft()
            before = self.state
            try:
                self.state, effects = step(self.state, event)
            except Exception:  # noqa: BLE001 - a core bug: keep the previous state, keep running
                self.log.error(f"Bug while handling {event!r}; state unchanged:\n{current_traceback()}")
                continue
            self.log.verbosity = self.state.verbosity
            observations = self._observe(before, event, effects)
            for effect in effects:
                queue.extend(self.perform(effect))
                if self._finished():
                    break
            if observations:
                self._publish(observations)
            if isinstance(event, ConnectionClosed):
                self.events.forget(event.conn)
            queue.extend(self.server.take_closed())

    def _observe(self, before: State, event: Event, effects: Sequence[Effect]) -> list[Observation]:
        """What the step did, for those watching (none watching: not even computed)."""
        if not self.events and self.metrics is None:
            return []
        try:
            return observe(before, event, self.state, effects)
        except Exception:  # noqa: BLE001 - a bug in what is only shown must not stop the master
            self.log.error(f"Bug while observing {event!r}:\n{current_traceback()}")
            return []

    def _publish(self, observations: Sequence[Observation]) -> None:
        self.events.publish(observations, time.time())
        if self.metrics is not None:
            self.metrics.record(observations)

    def _serve_requests(self) -> None:
        """This wake-up's share of the command requests, each handled before the next is taken."""
        for event in self.server.requests():
            self.feed([event])

    def _finished(self) -> bool:
        return self.exit_code is not None

    # --- effects ------------------------------------------------------------

    def perform(self, effect: Effect) -> list[Event]:
        match effect:
            case Log(level, message, fields):
                if fields:
                    self.log.log_fields(level, message, fields)
                else:
                    self.log.log(level, message)
            case SpawnWorker():
                return [self._spawn(effect)]
            case SendSignal(pid, name):
                self._send_signal(pid, name)
            case Reply(conn, message, request_id, wait, failed):
                self.server.send(conn, _envelope(message, request_id, wait, failed))
            case ReplyData(conn, data, as_json, request_id):
                from einhorn.io import render  # at the first `state`: an idle master need not hold it (issue 14)

                self.server.send_line(conn, render.state_reply(data, as_json, lambda text: _envelope(text, request_id, False)))
            case StreamEvents(conn, request_id):
                self.events.subscribe(conn, request_id)
            case CloseConnection(conn):
                self.server.close(conn)
            case CompareImage(check_id):
                return [self._compare_image(check_id)]
            case StartUpgradeCheck(check_id):
                return self._start_upgrade_check(check_id)
            case StopUpgradeCheck(check_id):
                self._stop_upgrade_check(check_id)
            case ExecMaster():
                self.exec_ordered = True
            case AbandonExec():
                self.exec_ordered = False
            case NotifySupervisor(fields):
                if self.supervisor is not None:
                    self.supervisor.send(fields)
            case Steer(weights):
                if self.steering is not None:
                    self.steering.steer(weights)
            case MeasureQueues(version, ticket):
                return self._measure_queues(version, ticket)
            case ReleaseListeners(version):
                if self.steering is not None:
                    self.steering.release(version)
                self.steered_launches.pop(version, None)
            case Exit(code):
                self.exit_code = code
            case _:
                assert_never(effect)
        return []

    def _spawn(self, order: SpawnWorker) -> Event:
        self.log.flush()
        worker_end: socket.socket | None = None
        try:
            if self.options.command_socket_as_fd:
                master_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                worker_end.set_inheritable(True)
                self.server.adopt(master_end, trusted=True)
            launch = self._launch_of(order)
            spawned = self.options.spawn(launch, order.index, worker_end.fileno() if worker_end else None)
        except OSError as error:
            return SpawnFailed(order.spawn_id, f"{error.strerror or error} (errno {error.errno})", time.monotonic())
        except ValueError as error:  # posix_spawn refuses an environment it cannot pass on
            return SpawnFailed(order.spawn_id, str(error), time.monotonic())
        finally:
            if worker_end is not None:
                worker_end.close()
        if spawned.report_fd is not None:
            os.set_blocking(spawned.report_fd, False)
            report = bytearray()  # kept across wake-ups: the report may come before its EOF
            self.selector.register(spawned.report_fd, selectors.EVENT_READ, lambda: self._exec_report(spawned, report))
        return WorkerSpawned(order.spawn_id, spawned.pid, time.monotonic())

    def _measure_queues(self, version: int, ticket: int) -> list[Event]:
        """The reading, timed right after it; none if a queue cannot be read (never a guess that it is empty)."""
        try:
            queued = 0 if self.steering is None else self.steering.queued(version)
        except OSError as error:
            self.log.error(f"Could not read the accept queues of version {version}: {error}")
            return []
        return [QueuesMeasured(version, ticket, queued, time.monotonic())]

    def _launch_of(self, order: SpawnWorker) -> WorkerLaunch:
        """The order's generation's launch, each drain listener with the generation's own socket (opened if need be)."""
        launch = self._generation_launch(order)
        if self.steering is None:
            return launch
        sources = self.steering.sources(order.version, launch.listener_fds)
        if sources == tuple(launch.listener_fds):
            return launch
        steered = self.steered_launches.get(order.version)
        if steered is None or tuple(steered.listener_sources) != sources:
            steered = self.steered_launches[order.version] = replace(launch, listener_sources=sources)
        return steered

    def _generation_launch(self, order: SpawnWorker) -> WorkerLaunch:
        """The order's generation's spec, with this image's sockets (this image's own spec: `options.launch`)."""
        spec = order.launch
        if spec is None or spec == self.launch_spec:
            return self.options.launch
        launch = self.launches.get(order.version)
        if launch is None:  # (a generation's spec never changes)
            launch = self.launches[order.version] = generation_launch(self.options.launch, spec, self.cwd)
        return launch

    def _exec_report(self, spawned: Spawned, data: bytearray) -> list[Event]:
        """The child exec'd (EOF) or says why it could not; then it exits 127 and is reaped as a death."""
        assert spawned.report_fd is not None
        try:
            while chunk := os.read(spawned.report_fd, 4096):
                data += chunk
        except BlockingIOError:
            return []  # not at EOF yet: what was read stays in `data`
        self.selector.unregister(spawned.report_fd)
        os.close(spawned.report_fd)
        error = failure_report(bytes(data))
        if error is not None:
            self.log.error(f"Could not start worker {spawned.pid}: {error.strerror} (errno {error.errno})")
        return []

    def _send_signal(self, pid: int, name: str) -> None:
        try:
            os.kill(pid, signals.number(name))
        except ProcessLookupError:
            self.log.debug(f"Attempted to {name} child {pid} but the process does not exist")
        except (KeyError, OSError) as error:
            self.log.error(f"Could not send {name} to {pid}: {error}")

    # --- the world -> events ------------------------------------------------

    def _reap(self) -> list[Event]:
        events: list[Event] = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            check = self.upgrade_checks.pop(pid, None)
            if check is not None:
                events.append(_verdict(check, status))
            elif pid in self.helpers:
                self.helpers.discard(pid)
                self.log.debug(f"===> Exited helper process {pid} ({_describe_status(status)})")
            else:
                events.append(_exited(pid, status))
        return events

    def _check_restored_children(self) -> list[Event]:
        """After a re-exec, each restored child that exited meanwhile (STYLE pitfall 12).

        A zombie is reaped here. A pid that is no longer our child at all was
        reaped by whatever ran between the exec and now (a `--reexec-as` shell
        waiting for its own commands does that): it is reported as exited too,
        and never signaled, since its pid may already be reused.
        """
        events: list[Event] = []
        for pid in sorted(self.state.children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                self.log.info(f"Child {pid} exited while the master was re-exec'ing and was reaped by another process")
                events.append(ChildExited(pid, None, None, time.monotonic()))
                continue
            if done:
                events.append(_exited(pid, status))
        return events

    def _drain_signals(self) -> list[Event]:
        now = time.monotonic()
        return [SignalReceived(name, now) for name in signals.drain(self.wake_reader)]

    # --- re-exec: the core decides, this performs -------------------------------

    def _snapshot(self) -> Snapshot | str:
        """This image, for `CompareImage`: or why a re-exec never runs it again as it is."""
        if self.options.reexec_as:
            return "--reexec-as runs a command of its own"
        if self.options.dropped_from_reexec:
            return f"--drop-env-var leaves {', '.join(self.options.dropped_from_reexec)} out of the re-exec's environment"
        return snapshot_apart(self.options.reexec_command)

    def _compare_image(self, check_id: int) -> Event:
        try:
            # The exec needs it, and an unchanged image has no check to import it first (out of descriptors, it fails here).
            from einhorn.io import reexec  # noqa: F401
            from einhorn.io.image import Image  # at an upgrade: the idle master need not hold it
        except Exception as error:  # noqa: BLE001 - out of descriptors, or a new release's module that cannot load here
            return ImageCompared(check_id, False, f"could not load the re-exec code: {error!r}", time.monotonic())
        if isinstance(self.image, str):
            return ImageCompared(check_id, False, f"this image is not compared: {self.image}", time.monotonic())
        try:
            unchanged, detail = Image(*self.image).compare()
        except Exception as error:  # noqa: BLE001 - a comparison that fails is no proof: the check runs
            unchanged, detail = False, f"the comparison failed: {error!r}"
        return ImageCompared(check_id, unchanged, detail, time.monotonic())

    def _start_upgrade_check(self, check_id: int) -> list[Event]:
        """Fork `einhorn --upgrade-check`; its exit becomes the verdict (`_reap`)."""
        options = self.options
        argv = [*options.reexec_command, "--upgrade-check", "--", *options.launch.argv]
        try:
            # At an upgrade: an idle master need not hold it (issue 14). Out of descriptors, its import fails as the fork would.
            from einhorn.io import reexec
        except Exception as error:  # noqa: BLE001 - out of descriptors, or a new release's module that cannot load here
            return [UpgradeCheckFailed(check_id, f"could not load the re-exec code: {error!r}", time.monotonic())]
        try:
            check = reexec.start_upgrade_check(check_id, argv, options.reexec_environ)
        except OSError as error:
            return [UpgradeCheckFailed(check_id, f"could not fork the upgrade check: {error.strerror}", time.monotonic())]
        self.upgrade_checks[check.pid] = check
        return []

    def _stop_upgrade_check(self, check_id: int) -> None:
        for pid, check in list(self.upgrade_checks.items()):
            if check.check_id == check_id:
                del self.upgrade_checks[pid]
                self.helpers.add(pid)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def _exec_master(self) -> list[Event]:
        """Perform the ordered exec; on failure, the master goes on as it was and the core hears why."""
        from einhorn.io import reexec  # (imported by the image comparison, or the upgrade check: a broken install fails it)

        self.exec_ordered = False
        signals.block_for_exec()
        late = signals.drain(self.wake_reader)
        if late:
            # A signal came in after the last select: the core must see it first (it may
            # abandon the exec), so keep the order and try again at the end of the next wake-up.
            signals.unblock_after_failed_exec(self.wake_writer)
            self.exec_ordered = True
            now = time.monotonic()
            return [SignalReceived(name, now) for name in late]
        options = self.options
        if self.metrics is not None:
            self.metrics.answer_before_exec()
        try:
            reexec.exec_master(
                self.state,
                [*options.reexec_command],
                options.launch.argv,
                options.reexec_environ,
                self.handoff.descriptors(),
                sorted(self.helpers),
                self.log,
                self.handoff.data(),
            )
        except reexec.ExecFailed as failure:
            signals.unblock_after_failed_exec(self.wake_writer)
            return [ReexecFailed(str(failure), time.monotonic())]

    # --- exit -----------------------------------------------------------------

    def _clean_up(self) -> None:
        for pid in self.upgrade_checks:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:
                pass
        if self.options.kill_children_on_exit:
            for pid in self.state.children:
                self._send_signal(pid, self.state.config.graceful_signal)
        signal.set_wakeup_fd(-1)
        try:
            self.server.shutdown()
        except Exception:
            pass
        for closing in (self.notify, self.supervisor, self.metrics):
            if closing is not None:
                closing.close()
        for path in self.options.owned_paths:
            try:
                os.unlink(path)
            except OSError:
                pass
        self.selector.close()
        self.wake_reader.close()
        self.wake_writer.close()


def select_timeout(wake_at: Iterable[float | None], now: float) -> float | None:
    """How long select may wait to wake at the earliest of `wake_at` (None: no wake-up wanted), at most MAX_WAIT."""
    times = [t for t in wake_at if t is not None]
    if not times:
        return None
    return min(MAX_WAIT, max(0.0, min(times) - now))


def _verdict(check: reexec.UpgradeCheck, status: int) -> Event:
    why = check.verdict(status)
    if why is None:
        return UpgradeCheckPassed(check.check_id, time.monotonic())
    return UpgradeCheckFailed(check.check_id, why, time.monotonic())


def _describe_status(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    return f"exit status {code}" if code >= 0 else f"killed by signal {-code}"


def _exited(pid: int, status: int) -> ChildExited:
    code = os.waitstatus_to_exitcode(status)
    return ChildExited(pid, code if code >= 0 else None, -code if code < 0 else None, time.monotonic())


def _envelope(message: str, request_id: RequestId | None, wait: bool, failed: bool = False) -> dict[str, object]:
    """Old clients (no id) get the original's reply, byte for byte; `failed` only goes to new ones."""
    response: dict[str, object] = {"message": message}
    if request_id is not None:
        response["request_id"] = request_id
        if wait:
            response["wait"] = True
        if failed:
            response["failed"] = True
    return response
