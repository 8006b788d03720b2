"""The command line: one option table, and `parse` (argv -> `Settings`).

`OPTIONS` is what `read_options` reads (and generates the argparse parser),
`VALUE_OPTIONS` (the options that take a value, for `split_argv` and
`_attach_values`), `INTERNAL_OPTIONS` (left out of the flags a re-exec'd master
gets) and `OPTION_HELP` (the `### Options` part of the usage text).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from types import SimpleNamespace

from einhorn.cli.settings import Nice, Settings
from einhorn.core.config import DURATION_RANGE, MAX_DURATION, MAX_WORKER_RSS_MB, MAX_WORKERS, RSS_SAMPLE_INTERVAL, Pacing
from einhorn.core.record import dataclass
from einhorn.core.signals import graceful_signal_problem, normalize_signal
from einhorn.io.sockets import BindSpec, SetupError, parse_bind


class UsageError(Exception):
    """A command line einhorn cannot run; the message says why."""


@dataclass(frozen=True, slots=True)
class Option:
    """One option: how the parser reads it and the entry `-h` shows for it."""

    long: str
    short: str | None
    metavar: str | None
    """The value's name in the help; None for an option that takes no value."""
    help: str
    """One line, or several separated by newlines."""
    repeat: bool = False
    """A value option may be given again (each value is appended); a flag is counted (`-vv`)."""
    default: str | None = None
    """The value when not given, as text (validated as a given value would be)."""
    internal: bool = False
    """Not for operators: what a master passes to its re-exec'd self or its upgrade check."""
    equals: bool = False
    """Shown as `--long=VALUE` rather than `--long VALUE`, as the original's help does."""

    @property
    def names(self) -> tuple[str, ...]:
        return (self.short, self.long) if self.short else (self.long,)

    @property
    def takes_value(self) -> bool:
        return self.metavar is not None


OPTIONS = (
    Option(
        "--bind",
        "-b",
        "ADDR",
        "Bind HOST:PORT[,r][,n], [V6]:PORT, unix:PATH or adopt systemd[:NAME]'s sockets;\n"
        "pass the FD to workers (repeatable; port 0 = any; flags: reuseport, v6only,\n"
        "backlog=N, mode=0660 for UNIX; drain: each version its own socket, emptied\n"
        "before its workers stop, Linux)",
        repeat=True,
    ),
    Option("--command-name", "-c", "CMD_NAME", "Set the command name in ps; also names the default socket/pid/lock files"),
    Option("--socket-path", "-d", "PATH", "Where to open the Einhorn command socket"),
    Option("--pidfile", "-e", "PIDFILE", "Where to write out the Einhorn pidfile"),
    Option("--lockfile", "-f", "LOCKFILE", "Where to store the Einhorn lockfile"),
    Option("--command-socket-as-fd", "-g", None, "Give each worker a connected command socket in EINHORN_SOCK_FD"),
    Option("--help", "-h", None, "Display this message"),
    Option("--kill-children-on-exit", "-k", None, "If Einhorn exits unexpectedly, gracefully kill all its children"),
    Option("--backlog", "-l", "N", "Connection backlog (default 100)", default="100"),
    Option(
        "--ack-mode",
        "-m",
        "MODE",
        "FLOAT (seconds until assumed alive, default 1), manual, or notify\n(READY=1 on the NOTIFY_SOCKET each worker gets, as systemd's sd_notify)",
        default="1",
    ),
    Option("--number", "-n", "N", "Number of copies to spin up (default 1)", default="1"),
    Option("--preload", "-p", "PATH", "Load this Python file or module once, fork (no exec) per worker, call einhorn_main()"),
    Option("--quiet", "-q", None, "Make output quiet (can be reconfigured on the fly)", repeat=True),
    Option(
        "--seconds",
        "-s",
        "N",
        "Spin up one worker per N seconds, as the original (default: as soon as\n"
        "workers ACK; after a death before ACK, every 1 s x 1.5^deaths)",
    ),
    Option("--verbose", "-v", None, "Make output verbose (can be reconfigured on the fly)", repeat=True),
    Option("--signal-timeout", "-t", "T", "If children do not react to signals after T seconds, escalate to SIGKILL", equals=True),
    Option(
        "--graceful-signal",
        None,
        "SIG",
        "The signal that asks a worker to finish and exit (default USR2):\n"
        "upgrades, dec, die, master SIGINT/SIGUSR2 (TERM, INT, QUIT for most servers)",
        default="USR2",
    ),
    Option("--boot-timeout", None, "T", "Stop a worker not ACKed T seconds after its spawn (counts as a death before ACK)"),
    Option(
        "--ping-timeout",
        None,
        "T",
        "Replace a worker that pinged (worker:ping, WATCHDOG=1) and then stays silent for\n"
        "T seconds: its successor first when the pool would drop below N ACKed",
    ),
    Option("--max-worker-rss", None, "MB", f"Replace a worker whose resident memory exceeds MB MiB (checked every {RSS_SAMPLE_INTERVAL:g}s), successor first"),
    Option("--max-unacked", None, "N", "At most N un-ACKed new workers at once during spin-up (default: CPU count)"),
    Option("--max-upgrade-additional", None, "N", "During an upgrade, never run more than number + N workers"),
    Option("--drop-env-var", None, "VAR_NAME", "Delete VAR_NAME from the environment that is restored on upgrade", repeat=True),
    Option("--reexec-as", None, "CMDLINE", 'Substitute CMDLINE for "einhorn" when upgrading', equals=True),
    Option(
        "--nice",
        None,
        "MASTER[:WORKER][:RENICE_CMD]",
        "Unix nice levels of the master and the workers; without WORKER,\n"
        "workers keep the master's level (RENICE_CMD: default /usr/bin/renice)",
    ),
    Option("--listen-fds", None, None, "Also hand workers systemd's convention: listeners at fds 3, 4, ... with LISTEN_FDS,\nLISTEN_PID and LISTEN_FDNAMES (for servers that support socket activation)"),
    Option("--subreaper", None, None, "Adopt orphaned descendants and reap them quietly (PR_SET_CHILD_SUBREAPER), and treat\nSIGTERM as a graceful shutdown: as when einhorn is PID 1 (a container's init)"),
    Option(
        "--metrics",
        None,
        "ADDR",
        "Serve Prometheus /metrics, /healthz and /readyz at HOST:PORT, [V6]:PORT or\nunix:PATH (from the master's own loop)",
    ),
    Option("--log-format", None, "FORMAT", "text (the original's lines, default) or json (one object per line)", default="text"),
    Option("--with-state-fd", None, "STATE", "With file descriptor containing state", internal=True),
    Option("--upgrade-check", None, None, "Check if Einhorn can exec itself and exit with status 0", internal=True),
    Option("--version", None, None, "Show version"),
)

VALUE_OPTIONS = frozenset(name for option in OPTIONS if option.takes_value for name in option.names)
INTERNAL_OPTIONS = frozenset(name for option in OPTIONS if option.internal for name in option.names)

HELP_INDENT = 4
HELP_COLUMN = 37
"""Where each description starts (the original's OptionParser summary layout); a longer option
name puts its description on the next lines."""


def _help_entry(option: Option) -> str:
    name = f"{option.short}, {option.long}" if option.short else f"    {option.long}"
    if option.metavar is not None:
        name += ("=" if option.equals else " ") + option.metavar
    lines = option.help.split("\n")
    if option.internal:
        lines[0] = f"[Internal option] {lines[0]}"
    head = " " * HELP_INDENT + name
    if len(head) < HELP_COLUMN:
        head, lines = head.ljust(HELP_COLUMN) + lines[0], lines[1:]
    return "\n".join([head, *(" " * HELP_COLUMN + line for line in lines)])


OPTION_HELP = "### Options\n\n" + "".join(_help_entry(option) + "\n" for option in OPTIONS)


TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: an idle master need not hold it (issue 14)
if TYPE_CHECKING:
    import argparse
    from typing import Literal, NoReturn

    Request = Literal["version", "help", "usage"]
    """What to print instead of running: the version, the detailed help, or the usage (no program given)."""


def read_options(head: Sequence[str]) -> SimpleNamespace:
    """The options before the program (`split_argv`), as argparse reads them; errors raise UsageError.

    argparse itself reads only a command line that `_plain_reading` does not: with gettext and
    locale it would cost the master half a megabyte for its whole life (issue 14)."""
    plain = _plain_reading(head)
    if plain is not None:
        return plain
    args = SimpleNamespace(**vars(parser().parse_args(head)))
    for option in OPTIONS:  # argparse takes a value of `--` as the end of the options: a list where text belongs
        value = getattr(args, _dest(option))
        if option.takes_value and any(isinstance(v, list) for v in (value if option.repeat else [value])):
            raise UsageError(f"argument {'/'.join(option.names)}: expected one argument")
    return args


def _plain_reading(head: Sequence[str]) -> SimpleNamespace | None:
    """argparse's reading of options written out in full, each on its own: `-n 4`, `--number 4`,
    `--number=4`, `-v`, `--verbose`; None for anything else (an abbreviation, `-n4`, `-vk`, an unknown
    option, a value missing or `--`), which argparse reads, or refuses with its own error."""
    values = {_dest(option): _default(option) for option in OPTIONS}
    i = 0
    while i < len(head):
        name, equals, value = head[i].partition("=") if head[i].startswith("--") else (head[i], "", "")
        option = _BY_NAME.get(name)
        if option is None or (equals and not option.takes_value):
            return None
        if option.takes_value and not equals:
            if i + 1 == len(head) or head[i + 1].startswith("-"):
                return None
            i, value = i + 1, head[i + 1]
        i += 1
        dest = _dest(option)
        if not option.takes_value:
            values[dest] = values[dest] + 1 if option.repeat else True  # type: ignore[operator]
        elif value == "--":  # (argparse drops it, and is left without a value)
            return None
        elif option.repeat:
            values[dest] = [*values[dest], value]  # type: ignore[misc]
        else:
            values[dest] = value
    return SimpleNamespace(**values)


_BY_NAME = {name: option for option in OPTIONS for name in option.names}


def _dest(option: Option) -> str:
    """argparse's name for the option's value: `--max-unacked` -> `max_unacked`."""
    return option.long[2:].replace("-", "_")


def _default(option: Option) -> list[str] | str | int | bool | None:
    if option.takes_value:
        return [] if option.repeat else option.default
    return 0 if option.repeat else False


def parser() -> argparse.ArgumentParser:
    """argparse's parser of the options before the program; errors raise UsageError."""
    import argparse  # only for a command line `_plain_reading` does not read

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            raise UsageError(message)

    # A fixed width: argparse would ask shutil for the terminal's (and with shutil come bz2, lzma
    # and zlib); einhorn prints its own usage text anyway.
    p = Parser(prog="einhorn", add_help=False, formatter_class=lambda prog: argparse.HelpFormatter(prog, width=80))
    for option in OPTIONS:
        action = ("append" if option.repeat else "store") if option.takes_value else ("count" if option.repeat else "store_true")
        p.add_argument(*option.names, action=action, default=_default(option))
    return p


def parse(argv: Sequence[str], environ: Mapping[str, str]) -> Settings | Request:
    """The settings, or a text to print (usage / version) with its exit code decided by the caller."""
    head, program = split_argv(argv)
    args = read_options(_attach_values(head))
    if args.version:
        return "version"
    if args.help:
        return "help"
    if not program:
        return "usage"

    number = _integer(args.number, "-n/--number", low=1, high=MAX_WORKERS)
    backlog = _integer(args.backlog, "-l/--backlog", low=0)
    seconds = 1.0 if args.seconds is None else _number(args.seconds, "-s/--seconds")
    ack_timer, ack_notify = _ack_mode(args.ack_mode)
    signal_timeout = None
    if args.signal_timeout is not None:
        signal_timeout = _whole_seconds(args.signal_timeout, "-t/--signal-timeout")
    max_unacked = os.cpu_count() or 1
    if args.max_unacked is not None:
        max_unacked = _integer(args.max_unacked, "--max-unacked", low=1)
    max_upgrade_additional = None
    if args.max_upgrade_additional is not None:
        max_upgrade_additional = _integer(args.max_upgrade_additional, "--max-upgrade-additional", low=0)
    boot_timeout = None if args.boot_timeout is None else _number(args.boot_timeout, "--boot-timeout")
    if boot_timeout is not None and ack_timer is not None and boot_timeout <= ack_timer:
        raise UsageError(
            f"Invalid value for --boot-timeout: {args.boot_timeout!r} (must be longer than the -m timer ACK of {ack_timer:g}s,"
            " or every worker would be stopped before its ACK)"
        )
    ping_timeout = None if args.ping_timeout is None else _number(args.ping_timeout, "--ping-timeout")
    max_worker_rss = None if args.max_worker_rss is None else _integer(args.max_worker_rss, "--max-worker-rss", low=1, high=MAX_WORKER_RSS_MB)
    binds = tuple(parse_bind(text) for text in args.bind)
    graceful_signal = _graceful_signal(args.graceful_signal)
    if args.listen_fds and args.preload is not None:
        raise UsageError("--listen-fds does not apply to preloaded (-p) workers: they find their sockets in EINHORN_FD_*")
    nice = _nice(args.nice)
    reexec_as = None if args.reexec_as is None else _command_line(args.reexec_as)
    with_state_fd = None if args.with_state_fd is None else _integer(args.with_state_fd, "--with-state-fd", low=0)
    metrics = None if args.metrics is None else _metrics_address(args.metrics)
    if args.log_format not in ("text", "json"):
        raise UsageError(f"Invalid value for --log-format: {args.log_format!r} (must be text or json)")

    name = args.command_name
    tmp = _temp_dir()
    suffix = f"-{name}" if name else ""
    return Settings(
        number=number,
        ack_timer=ack_timer,
        seconds=seconds,
        pacing=Pacing.ACK if args.seconds is None else Pacing.INTERVAL,
        max_unacked=max_unacked,
        max_upgrade_additional=max_upgrade_additional,
        signal_timeout=signal_timeout,
        graceful_signal=graceful_signal,
        boot_timeout=boot_timeout,
        ping_timeout=ping_timeout,
        max_worker_rss_mb=max_worker_rss,
        program=tuple(program),
        program_path=_resolve(program[0], environ),
        binds=binds,
        backlog=backlog,
        command_socket_as_fd=args.command_socket_as_fd,
        kill_children_on_exit=args.kill_children_on_exit,
        preload=args.preload,
        nice=nice,
        command_name=name,
        socket_path=os.path.abspath(args.socket_path or os.path.join(tmp, f"einhorn{suffix}.sock")),
        pidfile=os.path.abspath(args.pidfile or os.path.join(tmp, f"einhorn{suffix}.pid")),
        lockfile=os.path.abspath(args.lockfile or os.path.join(tmp, f"einhorn{suffix}.lock")),
        verbosity=max(0, min(2, 1 + args.quiet - args.verbose)),
        flags=tuple(_original_flags(head)),
        reexec_as=reexec_as,
        drop_env=tuple(args.drop_env_var),
        with_state_fd=with_state_fd,
        upgrade_check=args.upgrade_check,
        listen_fds=args.listen_fds,
        ack_notify=ack_notify,
        subreaper=args.subreaper,
        reaper=args.subreaper or os.getpid() == 1,
        supervised=bool(environ.get("NOTIFY_SOCKET")),
        watchdog_interval=_watchdog_interval(environ),
        metrics=metrics,
        log_format=args.log_format,
    )


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
    """The flags to hand to the re-exec'd master: everything but the internal ones (and their values)."""
    flags: list[str] = []
    skip = False
    for i, token in enumerate(head):
        if skip:
            skip = False
            continue
        option = token.split("=", 1)[0]
        if option in INTERNAL_OPTIONS:
            skip = option in VALUE_OPTIONS and "=" not in token and i + 1 < len(head)
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


def _whole_seconds(text: str, flag: str) -> int:
    try:
        value = int(text)
    except ValueError:  # not an integer, or more digits than Python converts
        value = 0
    if not 1 <= value <= MAX_DURATION:
        raise UsageError(f"Invalid value for {flag}: {text!r} (must be an integer number of seconds >= 1 and {DURATION_RANGE})")
    return value


def _number(text: str, flag: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= MAX_DURATION:
        raise UsageError(f"Invalid value for {flag}: {text!r} (must be a number of seconds > 0 and {DURATION_RANGE})")
    return value


def _ack_mode(text: str) -> tuple[float | None, bool]:
    """The timer-ACK delay (None: ACKs come from the workers), and whether they come as sd_notify READY=1."""
    if text in ("manual", "notify"):
        return None, text == "notify"
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if value > MAX_DURATION:
        raise UsageError(f"Invalid ack-mode {text!r} (a timer ACK waits FLOAT seconds, {DURATION_RANGE})")
    if not 0 <= value < 1e9:
        raise UsageError(f"Invalid ack-mode {text!r} (valid modes: FLOAT, manual or notify)")
    return value, False


def _graceful_signal(text: str) -> str:
    problem = graceful_signal_problem(text)
    if problem is not None:
        raise UsageError(f"Invalid value for --graceful-signal: {text!r} ({problem})")
    bare = normalize_signal(text)
    assert bare is not None
    return bare


def _metrics_address(text: str) -> BindSpec:
    from einhorn.io.metrics import parse_address  # (not prometheus_client: that comes with the server)

    try:
        return parse_address(text)
    except SetupError as error:
        raise UsageError(str(error)) from None


def _watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """systemd's watchdog for this process (sd_watchdog_enabled): WATCHDOG_USEC, unless WATCHDOG_PID names another."""
    usec, pid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID")
    if not (usec.isascii() and usec.isdigit() and len(usec) <= 20) or int(usec) == 0 or (pid is not None and pid != str(os.getpid())):
        return None
    return int(usec) / 1_000_000


def _nice(text: str | None) -> Nice:
    if text is None:
        return Nice()
    parts = text.split(":", 2)
    try:
        master = int(parts[0]) if parts[0] else None
        worker = int(parts[1]) if len(parts) > 1 and parts[1] else None
    except ValueError:
        raise UsageError(f"Invalid value for --nice: {text!r} (must be MASTER[:WORKER[:RENICE_CMD]] with integer levels)") from None
    for level in (master, worker):
        if level is not None and not -20 <= level <= 19:
            raise UsageError(f"Invalid value for --nice: {text!r} (nice levels are in [-20, 19])")
    if len(parts) > 2 and parts[2]:
        return Nice(master, worker, parts[2])
    return Nice(master, worker)


def _command_line(text: str) -> tuple[str, ...]:
    import shlex  # only with --reexec-as

    try:
        words = tuple(shlex.split(text))
    except ValueError as error:  # an unbalanced quote
        raise UsageError(f"Invalid value for --reexec-as: {text!r} ({error})") from None
    if not words:
        raise UsageError("--reexec-as needs a command")
    return words


def _resolve(program: str, environ: Mapping[str, str]) -> str:
    found = _which(program, environ.get("PATH", os.defpath))
    if found is None:
        where = "" if "/" in program else " in PATH"
        raise UsageError(f"Could not find {program}{where} (or it is not executable)")
    return os.path.abspath(found)


# `shutil.which` and `tempfile.gettempdir`, as they are on POSIX, without importing either:
# they bring in shutil, tempfile, random, bz2, lzma and zlib, a megabyte the master would
# keep for the rest of its life (issue 14).


def _which(program: str, path: str) -> str | None:
    def runnable(candidate: str) -> bool:
        return os.path.exists(candidate) and os.access(candidate, os.X_OK) and not os.path.isdir(candidate)

    if os.path.dirname(program):
        return program if runnable(program) else None
    seen = set()
    for directory in path.split(os.pathsep):
        if directory in seen:
            continue
        seen.add(directory)
        candidate = os.path.join(directory, program)
        if runnable(candidate):
            return candidate
    return None


def _temp_dir() -> str:
    """The first of $TMPDIR, $TEMP, $TMP, /tmp, /var/tmp, /usr/tmp and the working directory one can write into."""
    named = [value for value in (os.environ.get(name) for name in ("TMPDIR", "TEMP", "TMP")) if value]
    for directory in [*named, "/tmp", "/var/tmp", "/usr/tmp", os.getcwd()]:
        if directory != os.curdir:
            directory = os.path.abspath(directory)
        if os.path.isdir(directory) and os.access(directory, os.W_OK | os.X_OK):
            return directory
    raise UsageError("No usable temporary directory found (set TMPDIR)")
