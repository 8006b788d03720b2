"""The master's start-up: from `Settings` to a running `Master`, fresh or restored after a re-exec.

    start            the steps in order: the upgrade check (and exit), `prepare`, then fresh or restored
    prepare          `-c` title, `--nice`, `-k` notice, `-p` preload: in the original's order (again after a re-exec)
    run_fresh        command socket, `-b` listeners, pidfile, the initial state
    run_restored     the state document and the descriptors the old master handed over
    abandon_workers  the rescue when those cannot be read: stop every child, then exit 1
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Mapping, Sequence

from einhorn import __version__
from einhorn.cli.settings import Settings, Spawner, core_config, shell_options, worker_launch
from einhorn.core.config import ListenerInfo
from einhorn.core.record import dataclass, replace
from einhorn.core.state import State, initial_state
from einhorn.io import proctitle, signals
from einhorn.io.activation import LISTEN_VARIABLES, Activation, passed_sockets, without_listen_variables
from einhorn.io.control import RestoredConnection, restored_server
from einhorn.io.handoff import Descriptor, Handoff
from einhorn.io.logs import Logger
from einhorn.io.loop import Master
from einhorn.io.notify import NotifyServer, supervisor_of
from einhorn.io.sockets import BindSpec, SetupError, bind_listener, bound_port, listener_address, open_command_socket
from einhorn.io.spawn import become_child_subreaper, pdeathsig_available, spawn_worker

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: an idle master need not hold it (issue 14)
if TYPE_CHECKING:
    from typing import NoReturn

    from einhorn.io.steering import Steering

LISTENER = "listener"
"""The hand-off kind of the `-b` listening sockets (in `-b` order)."""


def start(settings: Settings, environ: Mapping[str, str]) -> int:
    """Run the master until it exits; its exit status."""
    log = Logger(verbosity=settings.verbosity, format=settings.log_format)
    if settings.upgrade_check:
        upgrade_check(log)
    prepared = prepare(settings, log)
    if settings.with_state_fd is not None:
        return run_restored(settings, environ, prepared, log)
    return run_fresh(settings, environ, prepared, log)


def upgrade_check(log: Logger) -> NoReturn:
    """`--upgrade-check`: this einhorn starts (and imports what it needs); the old master waits on this exit."""
    # What the master imports only when needed must import too, or the check proves little
    # (argparse: for a command line `read_options` does not read plainly; heapq: old versions stopped together).
    import argparse  # noqa: F401
    import heapq  # noqa: F401

    import einhorn.core.report
    import einhorn.io.nice
    import einhorn.io.preload
    import einhorn.io.reexec
    import einhorn.io.render
    import einhorn.restricted_yaml  # noqa: F401

    log.info(f"Upgrade check passed: einhorn {__version__} on Python {sys.version.split()[0]}")
    sys.stderr.flush()
    os._exit(0)  # skip the interpreter's teardown: the old master is waiting


@dataclass(frozen=True)
class Prepared:
    """What `prepare` set up for the workers."""

    prepare_child: Callable[[], None] | None = None
    """`--nice WORKER`: renices each worker before exec."""
    spawn: Spawner = spawn_worker
    preloaded: bool = False
    """`-p` loaded its code: `spawn` forks it."""


def prepare(settings: Settings, log: Logger) -> Prepared:
    proctitle.set_title(proctitle.master_title(settings.command_name, settings.program), log)
    nice = settings.nice
    if nice.master is not None or nice.worker is not None:
        from einhorn.io import nice as nice_levels  # only with --nice (and shlex with it)
    if nice.master is not None:
        nice_levels.warn_if_unprivileged(nice.master, "master", log)
        nice_levels.renice(nice.master, os.getpid(), nice.renice_cmd, log)
    prepare_child = None
    if nice.worker is not None:
        nice_levels.warn_if_unprivileged(nice.worker, "workers", log)
        prepare_child = nice_levels.worker_hook(nice.worker, nice.renice_cmd, log)
    if settings.subreaper:
        try:
            become_child_subreaper()
        except (OSError, AttributeError) as error:
            log.error(f"--subreaper: could not become a child subreaper (PR_SET_CHILD_SUBREAPER): {error}")
    if settings.kill_children_on_exit and not pdeathsig_available():
        log.info("-k: the parent-death signal (PR_SET_PDEATHSIG) is unavailable on this platform: workers get USR2 when the master exits, but not if it is killed")
    if settings.preload is not None:
        from einhorn.io import preload  # only with -p: importlib machinery and friends

        loaded = preload.load(settings.preload, log)
        if loaded is not None:
            preloader = preload.Preloader(loaded, settings.program, settings.command_name, log)
            return Prepared(prepare_child, preloader.spawn, preloaded=True)
    return Prepared(prepare_child)


def run_fresh(settings: Settings, environ: Mapping[str, str], prepared: Prepared, log: Logger) -> int:
    activation = activation_of(environ)
    environ = without_listen_variables(environ)
    for name in LISTEN_VARIABLES:  # as sd_listen_fds(unset_environment=1): read once, by this process only
        os.environ.pop(name, None)
    listeners: list[Listener] = []
    try:
        server = open_command_socket(settings.socket_path, settings.lockfile, log)
    except SetupError as error:
        log.error(str(error))
        activation.close_untaken(log)
        return 1
    notify: NotifyServer | None = None
    metrics: socket.socket | None = None
    handoff = Handoff()
    try:
        for spec in settings.binds:
            listeners += open_listeners(spec, settings.backlog, activation, log)
        activation.close_untaken(log)
        if settings.notify_path is not None:
            notify = NotifyServer.open(settings.notify_path, log)
        metrics = metrics_listener(settings, handoff, log)
        log.info(f"Writing PID to {settings.pidfile}")
        write_pidfile(settings.pidfile)
    except (SetupError, OSError) as error:
        log.error(str(error))
        server.close()
        if metrics is not None:
            metrics.close()
            if settings.metrics is not None and settings.metrics.path is not None:
                try:
                    os.unlink(settings.metrics.path)
                except OSError:
                    pass
        for listener in listeners:
            if listener.path is not None:  # ours: bound here, never one found live
                try:
                    os.unlink(listener.path)
                except OSError:
                    pass
            listener.sock.close()
        activation.close_untaken(log)
        if notify is not None:
            notify.close()
            os.unlink(notify.path)
        os.unlink(settings.socket_path)
        return 1
    config = core_config(settings, master_pid=os.getpid(), preloaded=prepared.preloaded)
    state = initial_state(config, settings.verbosity)
    steering = _steering(listeners, handoff, log)
    return _run(state, settings, environ, prepared, log, handoff, listeners, server, notify=notify, metrics=metrics, steering=steering)


def metrics_listener(settings: Settings, handoff: Handoff, log: Logger) -> socket.socket | None:
    """`--metrics`: its listening socket (handed over by the old image, or bound now)."""
    if settings.metrics is None:
        return None
    from einhorn.io import metrics

    return metrics.open_listener(settings.metrics, handoff, log)


@dataclass(frozen=True)
class Listener:
    """A listening socket the master hands to its workers."""

    sock: socket.socket
    name: str = ""
    """systemd's name of an adopted socket (LISTEN_FDNAMES); "" for a `-b` address."""
    path: str | None = None
    """The UNIX socket file this master created (it is removed at the master's final exit)."""
    drain: bool = False
    """`-b ...,drain`: each generation accepts on a socket of its own (einhorn/io/steering.py)."""


def activation_of(environ: Mapping[str, str]) -> Activation:
    """The sockets systemd passed to this very process (`-b systemd`)."""
    return passed_sockets(environ, os.getpid())


def open_listeners(spec: BindSpec, backlog: int, activation: Activation, log: Logger) -> list[Listener]:
    """The listeners of one `-b`: a bound address, or the sockets systemd passed (`-b systemd[:NAME]`)."""
    if spec.systemd is not None:
        adopted = [Listener(sock, name) for sock, name in activation.take(spec)]
        for listener in adopted:
            log.info(f"Adopted {listener.name} (fd {listener.sock.fileno()}) from systemd: {_where(listener.sock)}")
        return adopted
    if spec.path is not None:
        log.info(f"Binding to unix:{spec.path} with flags {_flag_names(spec)}")
        sock = bind_listener(spec, backlog, log)
        log.info(f"Bound {spec.text} at {spec.path}")
        return [Listener(sock, path=spec.path)]
    log.info(f"Binding to {spec.host}:{spec.port} with flags {_flag_names(spec)}")
    sock = bind_listener(spec, backlog, log)
    log.info(f"Bound {spec.text} on port {bound_port(sock)}")
    return [Listener(sock, drain=spec.drain)]


def _where(sock: socket.socket) -> str:
    return f"{sock.family.name} {listener_address(sock)}"


def write_pidfile(path: str) -> None:
    """SetupError naming the file if it cannot be written (a full disk fails only on the final flush)."""
    try:
        with open(path, "w") as f:
            f.write(str(os.getpid()))
    except OSError as error:
        if os.path.isfile(path):  # left empty or cut short: a reader would take it for a pid
            try:
                os.unlink(path)
            except OSError:
                pass
        raise SetupError(f"Could not write the pid file {path}: {error.strerror or error} (errno {error.errno})") from None


def run_restored(settings: Settings, environ: Mapping[str, str], prepared: Prepared, log: Logger) -> int:
    from einhorn.io import reexec  # only at a restore: a fresh master need not hold it (issue 14)

    assert settings.with_state_fd is not None
    config = core_config(settings, master_pid=os.getpid(), preloaded=prepared.preloaded)
    try:
        restored = reexec.read_state(settings.with_state_fd, config)
    except reexec.StateUnreadable as error:
        return abandon_workers(settings, log, str(error))
    note = reexec.restore_note(restored.notes)
    if note is not None:
        log.info(note)
    handoff = Handoff(restored.descriptors, restored.data)
    listeners = [_restored_listener(d) for d in handoff.claim(LISTENER)]
    steering = _steering(listeners, handoff, log)
    try:
        server, connections = restored_server(handoff)
        notify = NotifyServer.restored(handoff, log)
        if notify is None and settings.notify_path is not None:  # the old image had no -m notify
            notify = NotifyServer.open(settings.notify_path, log)
    except (ValueError, KeyError, OSError, SetupError) as error:
        return abandon_workers(settings, log, f"could not adopt the command server or the notify socket: {error}")
    try:
        metrics = metrics_listener(settings, handoff, log)
    except (OSError, SetupError) as error:  # the workers go on; only the metrics are missing
        log.error(f"Could not serve metrics at {settings.metrics.text if settings.metrics else ''}: {error}")
        metrics = None
    for leftover in handoff.unclaimed():
        log.info(f"Closing descriptor {leftover.fd} ({leftover.kind}) handed over by the old master: nothing here adopts it")
        try:
            os.close(leftover.fd)
        except OSError:
            pass
    return _run(
        restored.state,
        settings,
        environ,
        prepared,
        log,
        handoff,
        listeners,
        server,
        restored=True,
        connections=connections,
        helpers=restored.helpers,
        notify=notify,
        metrics=metrics,
        steering=steering,
    )


def _restored_listener(descriptor: Descriptor) -> Listener:
    sock = socket.socket(fileno=descriptor.fd)
    sock.set_inheritable(True)
    name = descriptor.data.get("name", "")
    path = descriptor.data.get("path")
    return Listener(sock, name if isinstance(name, str) else "", path if isinstance(path, str) else None, descriptor.data.get("drain") is True)


def _run(
    state: State,
    settings: Settings,
    environ: Mapping[str, str],
    prepared: Prepared,
    log: Logger,
    handoff: Handoff,
    listeners: Sequence[Listener],
    server: socket.socket,
    *,
    restored: bool = False,
    connections: Sequence[RestoredConnection] = (),
    helpers: Sequence[int] = (),
    notify: NotifyServer | None = None,
    metrics: socket.socket | None = None,
    steering: Steering | None = None,
) -> int:
    """Serve with these listeners, registered with the hand-off registry so that they survive the next re-exec."""
    handoff.register(lambda: [_listener_descriptor(n, listener) for n, listener in enumerate(listeners)])
    socks = [listener.sock for listener in listeners]
    shown = replace(
        state.config.display,
        bound_ports=tuple(bound_port(sock) for sock in socks),
        listeners=tuple(ListenerInfo(x.sock.family.name, listener_address(x.sock), x.name, x.drain) for x in listeners),
    )
    state = replace(state, config=replace(state.config, display=shown))
    launch = worker_launch(
        settings,
        environ,
        master_pid=os.getpid(),
        listeners=socks,
        prepare_child=prepared.prepare_child,
        listener_names=[listener.name for listener in listeners],
    )
    options = shell_options(settings, environ, launch, prepared.spawn)
    master = Master(
        state, options, server, log, handoff, connections, helpers,
        notify=notify, supervisor=supervisor_of(environ, log), listeners=socks,
        steering=steering,
    )
    if metrics is not None and settings.metrics is not None:
        from einhorn.io import metrics as metrics_server

        master.metrics = metrics_server.serve(metrics, settings.metrics, master.selector, lambda: master.state, log, handoff)
        log.info(f"Serving metrics at {master.metrics.where}/metrics (and /healthz, /readyz)")
    return master.run(restored=restored)


def _steering(listeners: Sequence[Listener], handoff: Handoff, log: Logger) -> Steering | None:
    """The drain listeners' sockets per generation, as the old image left them (after a re-exec)."""
    drained = [listener.sock for listener in listeners if listener.drain]
    if not drained:
        return None
    from einhorn.io.steering import Steering  # only with drain

    return Steering(drained, handoff, log)


def _listener_descriptor(index: int, listener: Listener) -> Descriptor:
    data: dict[str, object] = {"index": index, "name": listener.name}
    if listener.path is not None:
        data["path"] = listener.path
    if listener.drain:
        data["drain"] = True
    return Descriptor(LISTENER, listener.sock.fileno(), data)


def abandon_workers(settings: Settings, log: Logger, error: str) -> int:
    """The re-exec'd master cannot know its workers, sockets or clients: wind everything down.

    Every child gets USR2 (as on `die`) and the master waits for them all, with
    SIGKILL after `-t` seconds when given, so that whoever restarts einhorn
    finds the ports free. Then the pid and socket files go and it exits 1.
    """
    from einhorn.io import reexec

    signals.wind_down()
    children = reexec.own_children()
    log.error(
        f"{error}. Cannot recover the master's state: sending USR2 to its children {children},"
        " waiting for them to exit, then exiting."
    )
    killed = reexec.stop_children(children, settings.signal_timeout)
    if killed:
        log.error(f"Sent SIGKILL to {killed}: still alive {settings.signal_timeout}s after USR2")
    for path in settings.owned_paths:
        try:
            os.unlink(path)
        except OSError:
            pass
    return 1


def _flag_names(spec: BindSpec) -> list[str]:
    named = [name for name, on in (("so_reuseaddr", spec.reuseaddr), ("o_nonblock", spec.nonblock), ("reuseport", spec.reuseport), ("v6only", spec.v6only), ("drain", spec.drain)) if on]
    if spec.backlog is not None:
        named.append(f"backlog={spec.backlog}")
    if spec.mode is not None:
        named.append(f"mode={spec.mode:04o}")
    return named
