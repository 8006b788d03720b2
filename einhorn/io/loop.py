"""The master's event loop: the only caller of `step`, and the performer of its effects.

One selector waits on the signal wakeup socket, the command server and its
connections, with a timeout taken from `next_deadline`. After every wake-up the
loop reaps every exited child first (so a signal never targets a recycled pid),
then feeds the other events, then a `Tick` if the deadline passed.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from einhorn.core.effects import (
    CloseConnection,
    Effect,
    Exit,
    Log,
    LogLevel,
    ReexecMaster,
    Reply,
    ReplyData,
    SendSignal,
    SpawnWorker,
)
from einhorn.core.events import (
    ChildExited,
    Event,
    MasterStarted,
    ReexecFailed,
    SignalReceived,
    SpawnFailed,
    Tick,
    WorkerSpawned,
)
from einhorn.core.state import ChildKind, RequestId, State
from einhorn.core.step import next_deadline, step
from einhorn.io import reexec, render
from einhorn.io.control import CommandServer
from einhorn.io.logs import Logger
from einhorn.io.spawn import Spawned, WorkerLaunch, failure_report, spawn_worker

HANDLED_SIGNALS = (
    signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP, signal.SIGALRM,
    signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD, signal.SIGWINCH,
)
BLOCKED_ACROSS_EXEC = frozenset(HANDLED_SIGNALS) - {signal.SIGCHLD}
"""Blocked and ignored from just before a re-exec until the new image has its
handlers, so that a SIGHUP/SIGTERM sent meanwhile does not kill the master with
the default action. Both survive exec: while the mask holds (einhorn exec'd
directly, or a bash wrapper) the signal stays pending and is acted upon late; a
wrapper that clears the mask (dash) inherits the ignored disposition, and a
signal sent while it runs is lost. (SIGCHLD's default keeps zombies.)"""


@dataclass(frozen=True)
class ShellOptions:
    """What the shell needs beyond the core's state: how to start workers and re-exec itself."""

    launch: WorkerLaunch
    command_socket_as_fd: bool
    pidfile: str
    socket_path: str
    reexec_command: Sequence[str]
    """Executable and the original flags: `--with-state-fd FD -- program...` is appended."""
    program_argv: Sequence[str]
    reexec_environ: dict[str, str]
    kill_children_on_exit: bool = False
    spawn: Callable[[WorkerLaunch, int, int | None], Spawned] = field(default=spawn_worker)


def monotonic_and_wall() -> tuple[float, float]:
    return time.monotonic(), time.time()


class Master:
    def __init__(
        self,
        state: State,
        options: ShellOptions,
        listeners: Sequence[socket.socket],
        server: socket.socket,
        log: Logger,
        restored: Sequence[reexec.RestoredConnection] = (),
    ) -> None:
        self.state = state
        self.options = options
        self.listeners = list(listeners)
        self.log = log
        self.log.verbosity = state.verbosity
        self.exit_code: int | None = None
        self.reexec_requested = False
        """Set by `ReexecMaster`: start the upgrade check once every queued event is handled."""
        self.upgrade_check: reexec.UpgradeCheck | None = None
        """The running `--upgrade-check`; the master keeps serving meanwhile."""
        self.exec_ready = False
        """The check passed: exec at the end of this loop iteration, once everything read is handled."""
        self.selector = selectors.DefaultSelector()
        self.wake_reader, self.wake_writer = socket.socketpair()
        for end in (self.wake_reader, self.wake_writer):
            end.setblocking(False)
        self.selector.register(self.wake_reader, selectors.EVENT_READ, self._drain_signals)
        self.server = CommandServer(server, self.selector, log, monotonic_and_wall)
        for conn in restored:
            self.server.adopt(socket.socket(fileno=conn.fd), read=conn.unread, output=conn.unsent, conn_id=conn.id)

    # --- main loop ----------------------------------------------------------

    def run(self, restored: bool = False) -> int:
        self._install_signal_handlers()
        try:
            if restored:
                self.feed(self._check_restored_children())
            self.feed([MasterStarted(time.monotonic(), restored=restored)])
            self.feed(self.server.take_restored_lines())
            while self.exit_code is None:
                self._iterate()
        except BaseException:
            self.log.error(f"Master crashed:\n{traceback.format_exc()}")
            self.exit_code = 1 if self.exit_code is None else self.exit_code
        finally:
            self._clean_up()
        return self.exit_code

    def _iterate(self) -> None:
        self.feed(self._reap())
        if self.exit_code is not None:
            return
        deadline = next_deadline(self.state)
        wake_at = deadline
        check = self.upgrade_check
        if check is not None and not check.timed_out:
            wake_at = check.deadline if wake_at is None else min(wake_at, check.deadline)
        timeout = None if wake_at is None else max(0.0, wake_at - time.monotonic())
        if self.exec_ready:
            timeout = 0.0  # take in what is already there, then exec (below)
        events: list[Event] = []
        for key, _ in self.selector.select(timeout):
            callback: Callable[[], list[Event]] = key.data
            try:
                events += callback()
            except Exception:  # noqa: BLE001 - one bad connection must not stop the master
                self.log.error(f"Error while serving an event source:\n{traceback.format_exc()}")
        self.feed(self._reap())
        self.feed(events)
        self.feed(self.server.take_closed())
        if check is not None and check is self.upgrade_check and not check.timed_out and time.monotonic() >= check.deadline:
            check.timed_out = True  # reaped like any child; its verdict then says it timed out
            with contextlib.suppress(ProcessLookupError):
                os.kill(check.pid, signal.SIGKILL)
        if deadline is not None and time.monotonic() >= deadline:
            self.feed([Tick(time.monotonic())])
        if self.exec_ready and self.exit_code is None:
            # Only here, once everything this wake-up read (signals, requests, ACKs) is
            # handled: the exec would lose what was read but not yet fed to the core.
            self.exec_ready = False
            self.feed(self._reexec_unless_exiting())

    def feed(self, events: Iterable[Event]) -> None:
        queue = deque(events)
        while self.exit_code is None:
            if not queue:
                # The upgrade check starts once nothing is queued; the exec that
                # follows it waits for the end of `_iterate`.
                if self.reexec_requested and self.upgrade_check is None:
                    self.reexec_requested = False
                    queue.extend(self._start_upgrade_check())
                    continue
                break
            event = queue.popleft()
            try:
                self.state, effects = step(self.state, event)
            except Exception:  # noqa: BLE001 - a core bug: keep the previous state, keep running
                self.log.error(f"Bug while handling {event!r}; state unchanged:\n{traceback.format_exc()}")
                continue
            self.log.verbosity = self.state.verbosity
            for effect in effects:
                queue.extend(self.perform(effect))
                if self._finished():
                    break
            queue.extend(self.server.take_closed())

    def _finished(self) -> bool:
        return self.exit_code is not None

    # --- effects ------------------------------------------------------------

    def perform(self, effect: Effect) -> list[Event]:
        match effect:
            case Log(level, message):
                self.log.log(level, message)
            case SpawnWorker():
                return [self._spawn(effect)]
            case SendSignal(pid, name):
                self._send_signal(pid, name)
            case Reply(conn, message, request_id, wait):
                self.server.send(conn, _envelope(message, request_id, wait))
            case ReplyData(conn, data, as_json, request_id):
                text = render.to_json(data) if as_json else render.to_ruby_yaml(data)
                self.server.send(conn, _envelope(text, request_id, False))
            case CloseConnection(conn):
                self.server.close(conn)
            case ReexecMaster():
                # The core asks once per re-exec; one already under way serves it too.
                self.reexec_requested = self.upgrade_check is None and not self.exec_ready
            case Exit(code):
                self.exit_code = code
        return []

    def _spawn(self, order: SpawnWorker) -> Event:
        worker_end: socket.socket | None = None
        try:
            if self.options.command_socket_as_fd:
                master_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                worker_end.set_inheritable(True)
                self.server.adopt(master_end, trusted=True)
            spawned = self.options.spawn(self.options.launch, order.index, worker_end.fileno() if worker_end else None)
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
            os.kill(pid, signal.Signals[f"SIG{name}"])
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
            if self.upgrade_check is not None and pid == self.upgrade_check.pid:
                events += self._upgrade_check_done(status)
                continue
            events.append(_exited(pid, status))
        return events

    def _check_restored_children(self) -> list[Event]:
        """After a re-exec, each restored child that exited meanwhile (STYLE pitfall 12).

        A zombie is reaped here. A pid that is no longer our child at all was
        reaped by whatever ran between the exec and now (a `--reexec-as` shell
        waiting for its own commands does that): it is reported as exited too,
        and never signaled, since its pid may already be reused. A spawn still
        pending in the document (only an older master execs with one in flight)
        will never be answered: it is reported as failed, or it would hold its
        slot for ever.
        """
        events: list[Event] = [
            SpawnFailed(spawn_id, "its outcome was lost across the master's re-exec", time.monotonic())
            for spawn_id in sorted(self.state.pending)
        ]
        for pid in sorted(self.state.children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                passer = self.state.children[pid].kind is ChildKind.STATE_PASSER
                self.log.log(
                    LogLevel.DEBUG if passer else LogLevel.INFO,
                    f"Child {pid} exited while the master was re-exec'ing and was reaped by another process",
                )
                events.append(ChildExited(pid, None, None, time.monotonic()))
                continue
            if done:
                events.append(_exited(pid, status))
        return events

    def _install_signal_handlers(self) -> None:
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, _wake_only)
        signal.set_wakeup_fd(self.wake_writer.fileno(), warn_on_full_buffer=False)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, BLOCKED_ACROSS_EXEC)

    def _drain_signals(self) -> list[Event]:
        events: list[Event] = []
        while True:
            try:
                data = self.wake_reader.recv(4096)
            except (BlockingIOError, InterruptedError):
                break
            if not data:
                break
            for signum in data:
                if signum == signal.SIGCHLD:
                    continue
                with contextlib.suppress(ValueError):
                    events.append(SignalReceived(signal.Signals(signum).name[3:], time.monotonic()))
        return events

    # --- re-exec --------------------------------------------------------------

    def _start_upgrade_check(self) -> list[Event]:
        """Fork `einhorn --upgrade-check`; the exec follows when it exits 0 (`_upgrade_check_done`)."""
        options = self.options
        argv = [*options.reexec_command, "--upgrade-check", "--", *options.program_argv]
        try:
            self.upgrade_check = reexec.start_upgrade_check(argv, options.reexec_environ, time.monotonic())
        except OSError as error:
            why = f"could not fork the upgrade check: {error.strerror}"
            return [ReexecFailed(f"the new einhorn failed its upgrade check: {why}", time.monotonic())]
        return []

    def _upgrade_check_done(self, status: int) -> list[Event]:
        assert self.upgrade_check is not None
        why = self.upgrade_check.verdict(status)
        self.upgrade_check = None
        if why is not None:
            return [ReexecFailed(f"the new einhorn failed its upgrade check: {why}", time.monotonic())]
        self.exec_ready = True
        return []

    def _reexec_unless_exiting(self) -> list[Event]:
        # As the core's start_reexec: no re-exec once shutting down, even if it was asked before.
        if not self.state.respawn:
            return [ReexecFailed("einhorn is shutting down", time.monotonic())]
        return self._reexec()

    def _reexec(self) -> list[Event]:
        options = self.options
        base = list(options.reexec_command)
        read_end, write_end = os.pipe()
        keep = [*self.listeners, self.server.server, *(c.sock for c in self.server.connections.values())]
        shell = reexec.shell_document(
            [s.fileno() for s in self.listeners],
            self.server.server.fileno(),
            [
                reexec.RestoredConnection(c.id, c.sock.fileno(), self.server.pending_input(c.id), bytes(c.output))
                for c in self.server.connections.values()
            ],
        )
        passer = reexec.fork_state_passer(self.state, shell, write_end, time.monotonic())
        os.close(write_end)
        argv = [*base, "--with-state-fd", str(read_end), "--", *options.program_argv]
        self.log.info(f"About to re-exec einhorn master as {argv}")
        try:
            for sock in keep:
                sock.set_inheritable(True)
            os.set_inheritable(read_end, True)
            signal.set_wakeup_fd(-1)
            sys.stdout.flush()
            sys.stderr.flush()
            signal.pthread_sigmask(signal.SIG_BLOCK, BLOCKED_ACROSS_EXEC)
            for signum in BLOCKED_ACROSS_EXEC:
                signal.signal(signum, signal.SIG_IGN)  # a blocked signal stays pending all the same
            os.execvpe(argv[0], argv, options.reexec_environ)
        except OSError as error:
            for signum in BLOCKED_ACROSS_EXEC:
                signal.signal(signum, _wake_only)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, BLOCKED_ACROSS_EXEC)
            signal.set_wakeup_fd(self.wake_writer.fileno(), warn_on_full_buffer=False)
            for sock in keep:
                if sock not in self.listeners:
                    sock.set_inheritable(False)
            os.close(read_end)
            with contextlib.suppress(ProcessLookupError):
                os.kill(passer, signal.SIGKILL)
            os.waitpid(passer, 0)
            return [ReexecFailed(f"could not exec {argv[0]}: {error.strerror}", time.monotonic())]
        raise AssertionError("unreachable: exec returned")

    # --- exit -----------------------------------------------------------------

    def _clean_up(self) -> None:
        if self.upgrade_check is not None:
            with contextlib.suppress(OSError):
                os.kill(self.upgrade_check.pid, signal.SIGKILL)
                os.waitpid(self.upgrade_check.pid, 0)
        if self.options.kill_children_on_exit:
            for pid in self.state.children:
                self._send_signal(pid, "USR2")
        signal.set_wakeup_fd(-1)
        with contextlib.suppress(Exception):
            self.server.shutdown()
        for path in (self.options.pidfile, self.options.socket_path):
            with contextlib.suppress(OSError):
                os.unlink(path)
        self.selector.close()
        self.wake_reader.close()
        self.wake_writer.close()


def _exited(pid: int, status: int) -> ChildExited:
    code = os.waitstatus_to_exitcode(status)
    return ChildExited(pid, code if code >= 0 else None, -code if code < 0 else None, time.monotonic())


def _envelope(message: str, request_id: RequestId | None, wait: bool) -> dict[str, object]:
    response: dict[str, object] = {"message": message}
    if request_id is not None:
        response["request_id"] = request_id
        if wait:
            response["wait"] = True
    return response


def _wake_only(signum: int, frame: object) -> None:
    """Signal handlers only wake the loop (the wakeup fd carries the signal number)."""
