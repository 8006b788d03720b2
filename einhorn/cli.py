"""`einhorn [options] [--] program [args...]`: options -> Config -> the event loop. No decisions."""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from einhorn import __version__
from einhorn.core.config import MAX_WORKERS, Config
from einhorn.core.state import initial_state
from einhorn.io import nice as nice_levels
from einhorn.io import proctitle, reexec
from einhorn.io.control import restored_server
from einhorn.io.handoff import Descriptor, Handoff
from einhorn.io.logs import Logger
from einhorn.io.loop import Master, ShellOptions
from einhorn.io.signals import BLOCKED_ACROSS_EXEC
from einhorn.io.sockets import BindSpec, SetupError, bind_listener, bound_port, open_command_socket, parse_bind
from einhorn.io.spawn import WorkerLaunch, pdeathsig_available

USAGE_HEAD = """## Usage

Einhorn is the language-independent shared socket manager. Run
`einhorn -h` to see detailed usage. At a high level, usage looks like
the following:
"""

HELP_HEAD = """## Usage

Einhorn is the language-independent shared socket manager. At a high
level, usage looks like the following:
"""

USAGE_BODY = """
    einhorn [options] program

Einhorn will open one or more shared sockets and run multiple copies
of your process. You can seamlessly reload your code, dynamically
reconfigure Einhorn, and more.
"""

LONG_USAGE = """
## Overview

To set Einhorn up as a master process running 3 copies of `sleep 5`:

    $ einhorn -n 3 sleep 5

You can then communicate with your running Einhorn process via `einhornsh`:

    $ einhornsh
    > help

### Server sockets

If your process is a server and listens on one or more sockets, Einhorn can
open these sockets and pass them to the workers. `-b 127.0.0.1:5000,r` binds
with SO_REUSEADDR (flags: r/so_reuseaddr, n/o_nonblock); each worker finds the
file descriptor numbers in EINHORN_FD_0, EINHORN_FD_1, ... (their families in
EINHORN_FD_FAMILY_0, ...: AF_INET, AF_INET6, AF_UNIX), their count in
EINHORN_FD_COUNT, and all of them space-separated in EINHORN_FDS (legacy).

### Command socket

Einhorn opens a UNIX socket (-d, default $TMPDIR/einhorn[-NAME].sock) that
only its own user may use. `einhornsh` talks to it; workers ACK through it.

### Seamless upgrades

`einhornsh upgrade` (or SIGHUP) re-execs the master with its state, spawns
new workers and sends SIGUSR2 to each old worker as a new one ACKs. SIGUSR2
should be interpreted as a request for a graceful shutdown.

### ACKs

With `-m manual` a worker is counted up only once it sends
{"command":"worker:ack","pid":PID} to the command socket (the Python
library: `einhorn.worker.ack()`). The default is a timer ACK of 1 second.
"""

VALUE_OPTIONS = frozenset(
    "-b --bind -c --command-name -d --socket-path -e --pidfile -f --lockfile -l --backlog -m --ack-mode "
    "-n --number -p --preload -s --seconds -t --signal-timeout --max-unacked --max-upgrade-additional "
    "--drop-env-var --reexec-as --nice --with-state-fd".split()
)
INTERNAL_OPTIONS = frozenset(["--with-state-fd", "--upgrade-check"])


class UsageError(Exception):
    pass


@dataclass
class Options:
    config: Config
    binds: list[BindSpec]
    program: list[str]
    program_path: str
    socket_path: str
    pidfile: str
    lockfile: str
    verbosity: int
    flags: list[str]
    reexec_as: list[str] | None
    drop_env: list[str] = field(default_factory=list)
    preload: str | None = None
    nice: tuple[int | None, int | None, str] = (None, None, "/usr/bin/renice")
    with_state_fd: int | None = None
    upgrade_check: bool = False
    command_socket_as_fd: bool = False


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _parser() -> _Parser:
    p = _Parser(prog="einhorn", add_help=False)
    p.add_argument("-b", "--bind", action="append", default=[])
    p.add_argument("-c", "--command-name")
    p.add_argument("-d", "--socket-path")
    p.add_argument("-e", "--pidfile")
    p.add_argument("-f", "--lockfile")
    p.add_argument("-g", "--command-socket-as-fd", action="store_true")
    p.add_argument("-h", "--help", action="store_true")
    p.add_argument("-k", "--kill-children-on-exit", action="store_true")
    p.add_argument("-l", "--backlog", default="100")
    p.add_argument("-m", "--ack-mode", default="1")
    p.add_argument("-n", "--number", default="1")
    p.add_argument("-p", "--preload")
    p.add_argument("-q", "--quiet", action="count", default=0)
    p.add_argument("-s", "--seconds", default="1")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.add_argument("-t", "--signal-timeout")
    p.add_argument("--max-unacked")
    p.add_argument("--max-upgrade-additional")
    p.add_argument("--drop-env-var", action="append", default=[])
    p.add_argument("--reexec-as")
    p.add_argument("--nice")
    p.add_argument("--with-state-fd")
    p.add_argument("--upgrade-check", action="store_true")
    p.add_argument("--version", action="store_true")
    return p


OPTION_HELP = """### Options

    -b, --bind ADDR                  Bind HOST:PORT[,r][,n] and pass the FD to workers (repeatable; port 0 = any)
    -c, --command-name CMD_NAME      Set the command name in ps; also names the default socket/pid/lock files
    -d, --socket-path PATH           Where to open the Einhorn command socket
    -e, --pidfile PIDFILE            Where to write out the Einhorn pidfile
    -f, --lockfile LOCKFILE          Where to store the Einhorn lockfile
    -g, --command-socket-as-fd       Give each worker a connected command socket in EINHORN_SOCK_FD
    -h, --help                       Display this message
    -k, --kill-children-on-exit      If Einhorn exits unexpectedly, gracefully kill all its children
    -l, --backlog N                  Connection backlog (default 100)
    -m, --ack-mode MODE              FLOAT (seconds until assumed alive, default 1) or manual
    -n, --number N                   Number of copies to spin up (default 1)
    -p, --preload PATH               Load this Python file or module once, fork (no exec) per worker, call einhorn_main()
    -q, --quiet                      Make output quiet (can be reconfigured on the fly)
    -s, --seconds N                  Base number of seconds between gradual spin-ups (default 1)
    -v, --verbose                    Make output verbose (can be reconfigured on the fly)
    -t, --signal-timeout=T           If children do not react to signals after T seconds, escalate to SIGKILL
        --max-unacked N              At most N un-ACKed new workers at once during spin-up (default: CPU count)
        --max-upgrade-additional N   During an upgrade, never run more than number + N workers
        --drop-env-var VAR_NAME      Delete VAR_NAME from the environment that is restored on upgrade
        --reexec-as=CMDLINE          Substitute CMDLINE for "einhorn" when upgrading
        --nice MASTER[:WORKER][:RENICE_CMD]
                                     Unix nice levels of the master and the workers; without WORKER,
                                     workers keep the master's level (RENICE_CMD: default /usr/bin/renice)
        --with-state-fd STATE        [Internal option] With file descriptor containing state
        --upgrade-check              [Internal option] Check if Einhorn can exec itself and exit with status 0
        --version                    Show version
"""


def usage_text(detailed: bool) -> str:
    """`-h` (detailed) or the usage printed when no program is given, which points at `-h`."""
    if detailed:
        return HELP_HEAD + USAGE_BODY + LONG_USAGE + "\n" + OPTION_HELP
    return USAGE_HEAD + USAGE_BODY + "\n" + OPTION_HELP


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Options stop at the first non-option word or at `--`."""
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            return list(argv[:i]), list(argv[i + 1 :])
        if not token.startswith("-") or token == "-":
            break
        i += 2 if token in VALUE_OPTIONS else 1
    return list(argv[:i]), list(argv[i:])


def parse(argv: Sequence[str], environ: dict[str, str]) -> Options | str:
    """Options, or a text to print (usage / version) with its exit code decided by the caller."""
    head, program = split_argv(argv)
    args = _parser().parse_args(_attach_values(head))
    if args.version:
        return "version"
    if args.help:
        return "help"
    if not program:
        return "usage"

    number = _integer(args.number, "-n/--number", low=1, high=MAX_WORKERS)
    backlog = _integer(args.backlog, "-l/--backlog", low=0)
    seconds = _number(args.seconds, "-s/--seconds")
    ack_timer = _ack_mode(args.ack_mode)
    signal_timeout = None if args.signal_timeout is None else _integer(args.signal_timeout, "-t/--signal-timeout", low=1)
    max_unacked = os.cpu_count() or 1
    if args.max_unacked is not None:
        max_unacked = _integer(args.max_unacked, "--max-unacked", low=1)
    max_upgrade_additional = None
    if args.max_upgrade_additional is not None:
        max_upgrade_additional = _integer(args.max_upgrade_additional, "--max-upgrade-additional", low=0)
    binds = [parse_bind(text) for text in args.bind]
    nice = _nice(args.nice)
    reexec_as = shlex.split(args.reexec_as) if args.reexec_as is not None else None
    if reexec_as == []:
        raise UsageError("--reexec-as needs a command")
    with_state_fd = None if args.with_state_fd is None else _integer(args.with_state_fd, "--with-state-fd", low=0)

    name = args.command_name
    tmp = tempfile.gettempdir()
    suffix = f"-{name}" if name else ""
    socket_path = os.path.abspath(args.socket_path or os.path.join(tmp, f"einhorn{suffix}.sock"))
    pidfile = os.path.abspath(args.pidfile or os.path.join(tmp, f"einhorn{suffix}.pid"))
    lockfile = os.path.abspath(args.lockfile or os.path.join(tmp, f"einhorn{suffix}.lock"))
    program_path = _resolve(program[0], environ)
    flags = _original_flags(head)
    config = Config(
        number=number,
        ack_timer=ack_timer,
        seconds=seconds,
        max_unacked=max_unacked,
        max_upgrade_additional=max_upgrade_additional,
        signal_timeout=signal_timeout,
        command_name=name,
        master_pid=os.getpid(),
        einhorn_version=__version__,
        socket_path=socket_path,
        program=tuple(program),
        binds=tuple(b.text for b in binds),
        backlog=backlog,
        command_socket_as_fd=args.command_socket_as_fd,
        kill_children_on_exit=args.kill_children_on_exit,
        pidfile=pidfile,
        lockfile=lockfile,
    )
    return Options(
        config=config,
        binds=binds,
        program=program,
        program_path=program_path,
        socket_path=socket_path,
        pidfile=pidfile,
        lockfile=lockfile,
        verbosity=max(0, min(2, 1 + args.quiet - args.verbose)),
        flags=flags,
        reexec_as=reexec_as,
        drop_env=list(args.drop_env_var),
        preload=args.preload,
        nice=nice,
        with_state_fd=with_state_fd,
        upgrade_check=args.upgrade_check,
        command_socket_as_fd=args.command_socket_as_fd,
    )


def _attach_values(head: Sequence[str]) -> list[str]:
    """`--nice -5:-6` as `--nice=-5:-6`: an option's value may start with `-` (as with the original's OptionParser)."""
    joined: list[str] = []
    i = 0
    while i < len(head):
        token = head[i]
        if token in VALUE_OPTIONS and i + 1 < len(head) and head[i + 1].startswith("-"):
            joined.append(f"{token}={head[i + 1]}" if token.startswith("--") else token + head[i + 1])
            i += 2
            continue
        joined.append(token)
        i += 1
    return joined


def _original_flags(head: Sequence[str]) -> list[str]:
    """The flags to hand to the re-exec'd master: everything but the internal ones."""
    flags: list[str] = []
    skip = False
    for i, token in enumerate(head):
        if skip:
            skip = False
            continue
        option = token.split("=", 1)[0]
        if option in INTERNAL_OPTIONS:
            skip = option == "--with-state-fd" and "=" not in token and i + 1 < len(head)
            continue
        flags.append(token)
    return flags


def _integer(text: str, flag: str, low: int, high: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise UsageError(f"Invalid value for {flag}: {text!r} (must be an integer {bounds})")
    return value


def _number(text: str, flag: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 1e9:
        raise UsageError(f"Invalid value for {flag}: {text!r} (must be a number of seconds > 0)")
    return value


def _ack_mode(text: str) -> float | None:
    if text == "manual":
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value < 1e9:
        raise UsageError(f"Invalid ack-mode {text!r} (valid modes: FLOAT or manual)")
    return value


def _nice(text: str | None) -> tuple[int | None, int | None, str]:
    if text is None:
        return None, None, "/usr/bin/renice"
    parts = text.split(":", 2)
    try:
        master = int(parts[0]) if parts[0] else None
        worker = int(parts[1]) if len(parts) > 1 and parts[1] else None
    except ValueError:
        raise UsageError(f"Invalid value for --nice: {text!r} (must be MASTER[:WORKER[:RENICE_CMD]] with integer levels)") from None
    for level in (master, worker):
        if level is not None and not -20 <= level <= 19:
            raise UsageError(f"Invalid value for --nice: {text!r} (nice levels are in [-20, 19])")
    return master, worker, parts[2] if len(parts) > 2 and parts[2] else "/usr/bin/renice"


def _resolve(program: str, environ: dict[str, str]) -> str:
    found = shutil.which(program, path=environ.get("PATH", os.defpath))
    if found is None:
        where = "" if "/" in program else " in PATH"
        raise UsageError(f"Could not find {program}{where} (or it is not executable)")
    return os.path.abspath(found)


def self_command() -> list[str]:
    """How to run this einhorn again: its console script if that is how it was started."""
    argv0 = sys.argv[0]
    if os.path.basename(argv0) == "einhorn" and os.access(argv0, os.X_OK):
        return [os.path.abspath(argv0)]
    return [sys.executable, "-m", "einhorn"]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    environ = dict(os.environ)
    try:
        options = parse(argv, environ)
    except (UsageError, SetupError) as error:
        print(f"einhorn: {error}", file=sys.stderr)
        return 1
    if options == "version":
        print(__version__)
        return 0
    if isinstance(options, str):
        print(usage_text(detailed=options == "help"))
        return 1
    log = Logger(verbosity=options.verbosity)
    if options.upgrade_check:
        # What the master imports only when needed must import too, or the check proves little.
        import einhorn.io.preload
        import einhorn.restricted_yaml  # noqa: F401

        log.info(f"Upgrade check passed: einhorn {__version__} on Python {sys.version.split()[0]}")
        sys.stderr.flush()
        os._exit(0)  # the master waits on this exit to re-exec: skip the interpreter's teardown
    shell = _shell_options(options, environ)
    options, shell = _production_setup(options, shell, log)
    if options.with_state_fd is not None:
        return _run_restored(options, shell, log)
    return _run_fresh(options, shell, log)


def _shell_options(options: Options, environ: dict[str, str]) -> ShellOptions:
    reexec_environ = {k: v for k, v in environ.items() if k not in set(options.drop_env)}
    return ShellOptions(
        launch=WorkerLaunch(
            path=options.program_path,
            argv=options.program,
            environ=environ,
            listener_fds=(),
            listener_families=(),
            socket_path=options.socket_path,
            master_pid=os.getpid(),
            pdeathsig=options.config.kill_children_on_exit and pdeathsig_available(),
        ),
        command_socket_as_fd=options.command_socket_as_fd,
        pidfile=options.pidfile,
        socket_path=options.socket_path,
        reexec_command=[*(options.reexec_as or self_command()), *options.flags],
        program_argv=options.program,
        reexec_environ=reexec_environ,
        kill_children_on_exit=options.config.kill_children_on_exit,
    )


def _production_setup(options: Options, shell: ShellOptions, log: Logger) -> tuple[Options, ShellOptions]:
    """`-c` title, `--nice`, `-k` notice, `-p` preload: in the original's order, before the loop (again after a re-exec)."""
    config = options.config
    proctitle.set_title(proctitle.master_title(config.command_name, options.program), log)
    master_level, worker_level, renice_cmd = options.nice
    if master_level is not None:
        nice_levels.warn_if_unprivileged(master_level, "master", log)
        nice_levels.renice(master_level, os.getpid(), renice_cmd, log)
    if worker_level is not None:
        nice_levels.warn_if_unprivileged(worker_level, "workers", log)
        hook = nice_levels.worker_hook(worker_level, renice_cmd, log)
        shell = replace(shell, launch=replace(shell.launch, prepare_child=hook))
    if config.kill_children_on_exit and not pdeathsig_available():
        log.info("-k: the parent-death signal (PR_SET_PDEATHSIG) is unavailable on this platform: workers get USR2 when the master exits, but not if it is killed")
    if options.preload is not None:
        from einhorn.io import preload  # only with -p: importlib machinery and friends

        loaded = preload.load(options.preload, log)
        if loaded is not None:
            options = replace(options, config=replace(config, preloaded=True))
            shell = replace(shell, spawn=preload.Preloader(loaded, options.program, config.command_name, log).spawn)
    return options, shell


LISTENER = "listener"
"""The hand-off kind of the `-b` listening sockets (in `-b` order)."""


def _with_listeners(shell: ShellOptions, listeners: Sequence[socket.socket], handoff: Handoff) -> ShellOptions:
    """The workers' listeners, each with its family as the socket itself says (after a re-exec too);
    registered with the hand-off registry so that they survive the next re-exec."""
    handoff.register(lambda: [Descriptor(LISTENER, sock.fileno(), {"index": n}) for n, sock in enumerate(listeners)])
    fds = tuple(s.fileno() for s in listeners)
    families = tuple(s.family.name for s in listeners)
    return replace(shell, launch=replace(shell.launch, listener_fds=fds, listener_families=families))


def _run_fresh(options: Options, shell: ShellOptions, log: Logger) -> int:
    listeners: list[socket.socket] = []
    try:
        server = open_command_socket(options.socket_path, options.lockfile, log)
    except SetupError as error:
        log.error(str(error))
        return 1
    try:
        for spec in options.binds:
            log.info(f"Binding to {spec.host}:{spec.port} with flags {_flag_names(spec)}")
            listeners.append(bind_listener(spec, options.config.backlog))
            log.info(f"Bound {spec.text} on port {bound_port(listeners[-1])}")
        log.info(f"Writing PID to {options.pidfile}")
        with open(options.pidfile, "w") as f:
            f.write(str(os.getpid()))
    except (SetupError, OSError) as error:
        log.error(str(error))
        server.close()
        for sock in listeners:
            sock.close()
        os.unlink(options.socket_path)
        return 1
    config = replace(options.config, bound_ports=tuple(bound_port(s) for s in listeners))
    handoff = Handoff()
    master = Master(initial_state(config, options.verbosity), _with_listeners(shell, listeners, handoff), server, log, handoff)
    return master.run()


def _run_restored(options: Options, shell: ShellOptions, log: Logger) -> int:
    assert options.with_state_fd is not None
    try:
        restored = reexec.read_state(options.with_state_fd, options.config)
    except reexec.StateUnreadable as error:
        return _abandon_workers(options, log, str(error))
    note = reexec.restore_note(restored.notes)
    if note is not None:
        log.info(note)
    handoff = Handoff(restored.descriptors)
    listeners = [socket.socket(fileno=d.fd) for d in handoff.claim(LISTENER)]
    for sock in listeners:
        sock.set_inheritable(True)
    try:
        server, connections = restored_server(handoff)
    except (ValueError, KeyError, OSError) as error:
        return _abandon_workers(options, log, f"could not adopt the command server: {error}")
    for leftover in handoff.unclaimed():
        log.info(f"Closing descriptor {leftover.fd} ({leftover.kind}) handed over by the old master: nothing here adopts it")
        with contextlib.suppress(OSError):
            os.close(leftover.fd)
    state = restored.state
    state = replace(state, config=replace(state.config, bound_ports=tuple(bound_port(s) for s in listeners)))
    shell = _with_listeners(shell, listeners, handoff)
    master = Master(state, shell, server, log, handoff, connections, restored.helpers)
    return master.run(restored=True)


def _abandon_workers(options: Options, log: Logger, error: str) -> int:
    """The re-exec'd master cannot know its workers, sockets or clients: wind everything down.

    Every child gets USR2 (as on `die`) and the master waits for them all, with
    SIGKILL after `-t` seconds when given, so that whoever restarts einhorn
    finds the ports free. Then the pid and socket files go and it exits 1.
    """
    for signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM, signal.SIGWINCH):
        signal.signal(signum, signal.SIG_IGN)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_DFL)  # ignored across the exec: an operator may still stop this
    signal.pthread_sigmask(signal.SIG_UNBLOCK, BLOCKED_ACROSS_EXEC)  # blocked by the old image
    children = reexec.own_children()
    log.error(
        f"{error}. Cannot recover the master's state: sending USR2 to its children {children},"
        " waiting for them to exit, then exiting."
    )
    killed = reexec.stop_children(children, options.config.signal_timeout)
    if killed:
        log.error(f"Sent SIGKILL to {killed}: still alive {options.config.signal_timeout}s after USR2")
    for path in (options.pidfile, options.socket_path):
        with contextlib.suppress(OSError):
            os.unlink(path)
    return 1


def _flag_names(spec: BindSpec) -> list[str]:
    return [name for name, on in (("so_reuseaddr", spec.reuseaddr), ("o_nonblock", spec.nonblock)) if on]


if __name__ == "__main__":
    raise SystemExit(main())
