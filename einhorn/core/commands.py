"""Command-socket requests: validation and one pure handler per command.

Reply texts that scripts match on are the original Einhorn's, word for word.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from einhorn.core import pool, rollout
from einhorn.core.actions import register_ack, signal_children, signal_gracefully
from einhorn.core.config import DURATION_RANGE, MAX_DURATION, MAX_WORKERS, RUNTIME_SETTINGS, apply_setting
from einhorn.core.effects import (
    Cause,
    CloseConnection,
    Effect,
    Log,
    LogLevel,
    Reply,
    ReplyData,
    StreamEvents,
)
from einhorn.core.events import WORKER_COMMANDS, CommandReceived, command_name
from einhorn.core.record import dataclass, replace
from einhorn.core.signals import bare_signal
from einhorn.core.signals import normalize_signal as normalize_signal  # re-exported: the invariants import it from here
from einhorn.core.state import ReexecPurpose, RequestId, State, Subscriber, UpgradeOptions
from einhorn.core.upgrade import end_failed, start_reexec, withdrawal

Outcome = tuple[State, list[Effect]]


@dataclass(frozen=True, slots=True)
class Request:
    """A validated request: what every handler gets."""

    conn: int
    command: str
    args: tuple[str, ...] | None
    request_id: RequestId | None
    raw: Mapping[str, object]
    document: object
    now: float
    wall: float
    peer_pid: int | None = None
    peer_ancestors: tuple[int, ...] | None = None


Handler = Callable[[State, Request], Outcome]


def handle_command(state: State, event: CommandReceived) -> Outcome:
    raw = event.request
    request_id = _request_id(raw)
    command = raw.get("command")
    if command is None or command is False:
        return state, [Reply(event.conn, 'No "command" parameter provided; not sure what you want me to do.', request_id, failed=True)]
    if not isinstance(command, str) or command not in COMMANDS:
        text = f"Unrecognized command: {_inspect(command)}\n\n{_command_descriptions()}\n"
        return state, [Reply(event.conn, text, request_id, failed=True)]
    args = raw.get("args")
    if args is not None:
        problem = _args_problem(args)
        if problem is not None:
            return state, [Reply(event.conn, problem, request_id, failed=True)]
    request = Request(
        conn=event.conn,
        command=command,
        args=tuple(args) if isinstance(args, list) else None,
        request_id=request_id,
        raw=raw,
        document=event.document,
        now=event.now,
        wall=event.wall,
        peer_pid=event.peer_pid,
        peer_ancestors=event.peer_ancestors,
    )
    return COMMANDS[command].handler(state, request)


_RUBY_CLASS = {bool: "TrueClass", int: "Integer", float: "Float", dict: "Hash", list: "Array", type(None): "NilClass"}


def _inspect(value: object) -> str:
    """Ruby's `inspect` of a decoded YAML value, as the original's messages show it."""
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    return _show(value)


def _show(value: object) -> str:
    """``repr(value)``, or a description when Python refuses to write it (an int of over 4,300 digits)."""
    try:
        return repr(value)
    except ValueError:
        return f"<{type(value).__name__} too large to show>"


def _args_problem(args: object) -> str | None:
    if not isinstance(args, list):
        return "Args must be an array"
    for arg in args:
        if not isinstance(arg, str):
            ruby_class = "FalseClass" if arg is False else _RUBY_CLASS.get(type(arg), type(arg).__name__)
            return f"Argument is a {ruby_class}, not a string: {_inspect(arg)}"
    return None


def _request_id(raw: Mapping[str, object]) -> RequestId | None:
    if command_name(raw) in WORKER_COMMANDS:
        return None
    for key in ("id", "request_id"):
        value = raw.get(key)
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return value
    return None


def _reply(state: State, request: Request, text: str) -> Outcome:
    return state, [Reply(request.conn, text, request.request_id)]


def _refuse(state: State, request: Request, text: str) -> Outcome:
    """A final reply saying the request failed (invalid arguments, a refusal)."""
    return state, [Reply(request.conn, text, request.request_id, failed=True)]


def _signal_summary(signal: str, pids: Sequence[int]) -> str:
    return f"Successfully sent {signal}s to {len(pids)} processes: [{', '.join(str(p) for p in pids)}]"


def _worker_pids(state: State) -> list[int]:
    return [c.pid for c in pool.workers(state)]


# --- handlers ------------------------------------------------------------


def _ehlo(state: State, request: Request) -> Outcome:
    user = request.raw.get("user")
    shown = state.config.display
    name = f" ({shown.command_name})" if shown.command_name else ""
    text = (
        f"Welcome, {user if isinstance(user, str) else ''}! You are speaking to Einhorn Master Process "
        f"{shown.master_pid}{name}.\nThis is Einhorn {state.config.einhorn_version}.\n"
    )
    return _reply(state, request, text)


def _help(state: State, request: Request) -> Outcome:
    return _reply(state, request, help_text())


def help_text() -> str:
    return f"You are speaking to the Einhorn command socket. You can run the following commands:\n\n{_command_descriptions()}\n"


def _command_descriptions() -> str:
    listed = sorted(name for name, command in COMMANDS.items() if command.description)
    return "\n".join(f"{name}: {COMMANDS[name].description}" for name in listed)


def _state(state: State, request: Request) -> Outcome:
    import einhorn.core.report  # at the first `state`: an idle master need not hold it (issue 14)

    as_json = request.args is not None and "--json" in request.args
    data = einhorn.core.report.snapshot(state, wall_offset=request.wall - request.now)
    return state, [ReplyData(request.conn, data, as_json, request.request_id)]


def _status(state: State, request: Request) -> Outcome:
    import einhorn.core.report  # at the first `status`: an idle master need not hold it (issue 14)

    return _reply(state, request, einhorn.core.report.status(state))


def _subscribe(state: State, request: Request) -> Outcome:
    text = "Subscribed to the event stream: one JSON object per line follows, until the connection closes"
    more = request.request_id is not None  # `wait` only where the client can tell the lines apart (an id)
    return state, [Reply(request.conn, text, request.request_id, wait=more), StreamEvents(request.conn, request.request_id)]


def _reload(state: State, request: Request) -> Outcome:
    state, effects = start_reexec(state, ReexecPurpose.RELOAD, _subscriber(request))
    more = request.request_id is not None  # `wait` only where progress can follow (a subscriber)
    return state, [Reply(request.conn, "Reloading, as commanded", request.request_id, wait=more), *effects]


def _upgrade(purpose: ReexecPurpose, announcement: str) -> Handler:
    def handler(state: State, request: Request) -> Outcome:
        options = upgrade_options(request.args or (), state.config.max_upgrade_additional)
        if isinstance(options, str):
            return _refuse(state, request, f"Invalid upgrade arguments: {options}")
        state, effects = start_reexec(state, purpose, _subscriber(request), options)
        more = request.request_id is not None  # `wait` only where progress can follow (a subscriber)
        return state, [Reply(request.conn, announcement, request.request_id, wait=more), *effects]

    return handler


UPGRADE_USAGE = "upgrade [--canary K] [--bake SECONDS] [--timeout SECONDS] [--env K=V]..."
MAX_UPGRADE_ENV = 64
"""`--env` settings one upgrade may carry (each crosses the re-exec in the state document)."""
EINHORNS_OWN = frozenset(["EINHORN_MASTER_PID", "EINHORN_SOCK_PATH", "EINHORN_SOCK_FD", "EINHORN_CHILD_INDEX", "EINHORN_FD_COUNT", "EINHORN_FDS"])
"""What einhorn sets for each worker (as io/spawn.py's EINHORN_VARIABLES, with EINHORN_FD_<n> and
EINHORN_FD_FAMILY_<n>, `_einhorns_own`): an `--env` of one would be lost."""


def _env_name(key: str) -> bool:
    """A portable environment variable name: letters, digits and _, not starting with a digit."""
    return 0 < len(key) <= 128 and not key[0].isdigit() and all(c == "_" or (c.isascii() and c.isalnum()) for c in key)


def _einhorns_own(key: str) -> bool:
    for prefix in ("EINHORN_FD_FAMILY_", "EINHORN_FD_"):
        if key.startswith(prefix) and key[len(prefix) :].isdigit() and key[len(prefix) :].isascii():
            return True
    return key in EINHORNS_OWN


def upgrade_options(args: Sequence[str], max_upgrade_additional: int | None) -> UpgradeOptions | None | str:
    """`--canary K --bake SECONDS --timeout SECONDS --env K=V...` (or `--name=value`); None without any; else what is wrong."""
    values: dict[str, str] = {}
    env: list[tuple[str, str]] = []
    items = list(args)
    while items:
        arg = items.pop(0)
        name, equals, value = arg.partition("=")
        if name not in ("--canary", "--bake", "--timeout", "--env"):
            return f"unknown argument {arg!r} (usage: {UPGRADE_USAGE})"
        if not equals:
            if not items:
                return f"{name} needs a value"
            value = items.pop(0)
        if name == "--env":
            setting = _env_setting(value)
            if isinstance(setting, str):
                return setting
            env.append(setting)
        else:
            values[name] = value
    if len(env) > MAX_UPGRADE_ENV:
        return f"at most {MAX_UPGRADE_ENV} --env settings, not {len(env)}"
    if not values and not env:
        return None
    canary = _parse_int(values.get("--canary", "0"))
    if canary is None or not 0 <= canary <= MAX_WORKERS:
        return f"--canary must be an integer in [0, {MAX_WORKERS}], not {values['--canary']!r}"
    if max_upgrade_additional is not None and canary > max_upgrade_additional:
        return f"--canary {canary} is more than max_upgrade_additional {max_upgrade_additional} allows beside the pool"
    bake = _parse_seconds(values.get("--bake", "0"))
    if bake is None:
        return f"--bake must be a number of seconds >= 0 and {DURATION_RANGE}, not {values['--bake']!r}"
    if bake and not canary:
        return "--bake needs --canary"
    timeout = None
    if "--timeout" in values:
        timeout = _parse_seconds(values["--timeout"])
        if timeout is None or timeout == 0:
            return f"--timeout must be a number of seconds > 0 and {DURATION_RANGE}, not {values['--timeout']!r}"
        if timeout <= bake:
            return f"--timeout {timeout:g} must be longer than --bake {bake:g}"
    return UpgradeOptions(canary=canary, bake=bake, timeout=timeout, env=tuple(env))


def _env_setting(text: str) -> tuple[str, str] | str:
    """`K=V` for `--env`, or what is wrong with it."""
    key, equals, value = text.partition("=")
    if not equals or not _env_name(key):
        return f"--env needs NAME=VALUE with a NAME of letters, digits and _ (not starting with a digit), not {text[:64]!r}"
    if _einhorns_own(key) or key in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET"):
        return f"--env cannot set {key}: einhorn sets it for each worker"
    if "\0" in value or len(value) > 4096:
        return f"--env {key}: the value must have no NUL byte and at most 4096 characters"
    return key, value


def _parse_seconds(text: str) -> float | None:
    try:
        value = float(text) if len(text) <= 32 else None
    except ValueError:
        return None
    if value is None or not 0 <= value <= MAX_DURATION:  # (NaN fails both comparisons)
        return None
    return value


def _abort_upgrade(state: State, request: Request) -> Outcome:
    """Roll back the upgrade in progress by hand; an upgrade still in its re-exec is abandoned."""
    why = "aborted by abort_upgrade"
    reexec = state.reexec
    if reexec is not None and reexec.purpose is not ReexecPurpose.RELOAD:
        withdraw = withdrawal(reexec)
        state, effects = end_failed(state, why)
        return state, [*withdraw, *effects, Reply(request.conn, "Upgrade aborted before its re-exec", request.request_id)]
    current = state.rollout
    if current is None:
        return _refuse(state, request, "No upgrade in progress to abort")
    state, effects = rollout.rollback(state, why)
    text = f"Rolling back the upgrade to version {current.version}: version {current.previous} is current again"
    return state, [*effects, Reply(request.conn, text, request.request_id)]


def _subscriber(request: Request) -> Subscriber | None:
    """Progress goes only to clients that tagged their request with an id, as in the original."""
    return Subscriber(request.conn, request.request_id) if request.request_id is not None else None


def _set_number(state: State, number: int) -> State:
    return replace(state, config=replace(state.config, number=number))


def _inc(state: State, request: Request) -> Outcome:
    old = state.config.number
    if old >= MAX_WORKERS:
        return _refuse(state, request, f"Can't increase number of workers (already at {old}).")
    text = f"Incrementing number of workers from {old} -> {old + 1}"
    return _set_number(state, old + 1), [Log(LogLevel.INFO, text), Reply(request.conn, text, request.request_id)]


def _dec(state: State, request: Request) -> Outcome:
    old = state.config.number
    if old <= 1:
        text = (
            f"Can't decrease number of workers (already at {old}).  "
            f"Run kill {state.config.display.master_pid} if you really want to kill einhorn."
        )
        return _refuse(state, request, text)
    text = f"Decrementing number of workers from {old} -> {old - 1}"
    return _set_number(state, old - 1), [Log(LogLevel.INFO, text), Reply(request.conn, text, request.request_id)]


def _set_workers(state: State, request: Request) -> Outcome:
    if not request.args:
        return _refuse(state, request, "No args provided")
    arg = request.args[0]
    count = _parse_int(arg)
    if count is None or not 1 <= count <= MAX_WORKERS:
        return _refuse(state, request, f"Invalid count: '{arg}'. Must be an integer in [1,{MAX_WORKERS}).")
    old = state.config.number
    if count == old:
        return _reply(state, request, f"Number of workers is already {old}")
    action = "spin up additional workers." if old < count else "gracefully terminate workers."
    text = f"Altering worker count, {old} -> {count}. Will {action}"
    return _set_number(state, count), [Log(LogLevel.INFO, text), Reply(request.conn, text, request.request_id)]


MAX_INT_DIGITS = 18
"""Digits of an integer a request may spell as a string (a count, a pid). None needs more, and
checking first keeps a 5,000-digit argument out of `int()`, which refuses over 4,300."""


def _parse_int(text: str) -> int | None:
    stripped = text.strip()
    digits = stripped[1:] if stripped[:1] in "+-" else stripped
    if not (digits.isdigit() and digits.isascii()) or len(digits) > MAX_INT_DIGITS:
        return None
    return int(stripped)


def _quieter(state: State, request: Request) -> Outcome:
    state = replace(state, verbosity=min(state.verbosity + 1, 2))
    text = f"Verbosity set to {state.verbosity}"
    return state, [Log(LogLevel.INFO, text), Reply(request.conn, text, request.request_id)]


def _louder(state: State, request: Request) -> Outcome:
    state = replace(state, verbosity=max(state.verbosity - 1, 0))
    text = f"Verbosity set to {state.verbosity}"
    return state, [Log(LogLevel.INFO, text), Reply(request.conn, text, request.request_id)]


def _signal(state: State, request: Request) -> Outcome:
    if not request.args:
        return _refuse(state, request, "No args provided")
    signals: list[str] = []
    for name in request.args:
        signal = normalize_signal(name)
        if signal is None:
            return _refuse(state, request, f"Invalid signal: {_inspect(bare_signal(name))}")
        signals.append(signal)
    pids = _worker_pids(state)
    effects: list[Effect] = []
    for signal in signals:
        state, more = signal_children(state, signal, pids, Cause.OPERATOR, record=False)
        effects += more
    text = "\n".join(_signal_summary(signal, pids) for signal in signals)
    return state, [*effects, Reply(request.conn, text, request.request_id)]


def _die(state: State, request: Request) -> Outcome:
    name = request.args[0] if request.args else state.config.graceful_signal
    signal = normalize_signal(name)
    if signal is None:
        return _refuse(state, request, f"Invalid signal: {_inspect(bare_signal(name))}")
    pids = _worker_pids(state)
    state = replace(state, respawn=False, shutdown_signal=signal)
    if request.args:
        state, effects = signal_children(state, signal, pids, Cause.OPERATOR)
    else:  # "finish and exit": each worker its own generation's graceful signal
        state, effects = signal_gracefully(state, pids, Cause.OPERATOR)
    text = f"Einhorn is going down! {_signal_summary(signal, pids)}"
    return state, [Log(LogLevel.INFO, text), *effects, Reply(request.conn, text, request.request_id)]


def _config(state: State, request: Request) -> Outcome:
    document = request.document
    if not request.args:
        return _refuse(state, request, "Must pass in a YAML-encoded hash")
    if isinstance(document, ConfigDocumentError):
        return _refuse(state, request, f"Could not parse argument. Must be a YAML-encoded hash ({document.reason})")
    if not isinstance(document, Mapping):
        return _refuse(state, request, f"Parsed argument is a {type(document).__name__}, not a hash")
    config = state.config
    for key, value in document.items():
        if key not in RUNTIME_SETTINGS:
            known = ", ".join(RUNTIME_SETTINGS)
            return _refuse(state, request, f"Unknown config setting: {_show(key)}. Known settings: {known}")
        updated = apply_setting(config, str(key), value)
        if isinstance(updated, str):
            return _refuse(state, request, f"Invalid value for {key}: {_show(value)} ({updated})")
        config = updated
    merged = ", ".join(f"{k}: {_show(v)}" for k, v in document.items())
    text = f"Successfully merged in config: {{{merged}}}"
    return replace(state, config=config), [Log(LogLevel.INFO, text), Reply(request.conn, text, request.request_id)]


@dataclass(frozen=True, slots=True)
class ConfigDocumentError:
    """What the shell puts in `CommandReceived.document` when the YAML did not parse."""

    reason: str


def _worker_ack(state: State, request: Request) -> Outcome:
    effects: list[Effect] = [CloseConnection(request.conn)]
    pid = _pid_of(request.raw)
    if pid is None:
        return state, [Log(LogLevel.ERROR, f"Invalid worker:ack (no pid): {_show(dict(request.raw))}"), *effects]
    child = state.children.get(pid)
    if state.config.ack_timer is not None:
        # Expected, not an error: a worker written for -m manual ACKs whatever the mode.
        return state, [Log(LogLevel.DEBUG, f"Received a manual ACK from {pid} in timer ACK mode; ignoring"), *effects]
    if child is None:
        return state, [Log(LogLevel.ERROR, f"Could not find state for PID {pid}; ignoring ACK."), *effects]
    if child.acked:
        return state, [Log(LogLevel.ERROR, f"Pid {pid} already ACKed; ignoring new ACK."), *effects]
    state, more = register_ack(state, pid)
    return state, [*_foreign_sender(request, pid, "ACK"), *more, *effects]


def _worker_ping(state: State, request: Request) -> Outcome:
    effects: list[Effect] = [CloseConnection(request.conn)]
    pid = _pid_of(request.raw)
    child = state.children.get(pid) if pid is not None else None
    if child is None:
        return state, [Log(LogLevel.ERROR, f"Ping from unknown pid {_show(request.raw.get('pid'))}; ignoring"), *effects]
    ping_id = request.raw.get("request_id")
    updated = replace(
        child,
        pinged_at=request.now,
        pinged_request_id=None if ping_id is None else str(ping_id),
    )
    state = replace(state, children=state.indexed_children.set(updated))
    note = Log(LogLevel.DEBUG, f"Ping from {child.pid} (request id {_show(ping_id)})")
    return state, [*_foreign_sender(request, child.pid, "Ping"), note, *effects]


def _pid_of(raw: Mapping[str, object]) -> int | None:
    value = raw.get("pid")
    if isinstance(value, int) and not isinstance(value, bool):
        return value if abs(value) < 10**MAX_INT_DIGITS else None
    if isinstance(value, str):
        return _parse_int(value)
    return None


def _foreign_sender(request: Request, pid: int, what: str) -> list[Effect]:
    """A WARN when the connection's peer is known to be neither worker `pid` nor one of its descendants.

    The request is still taken, as the original takes it: a worker may ACK
    through a helper process, and a peer whose ancestry is unknown (it has
    already exited) is given the benefit of the doubt.
    """
    peer, ancestors = request.peer_pid, request.peer_ancestors
    if peer is None or ancestors is None or peer == pid or pid in ancestors:
        return []
    text = f"{what} for worker {pid} was sent by process {peer}, which is neither that worker nor one of its descendants"
    return [Log(LogLevel.WARN, text)]


@dataclass(frozen=True, slots=True)
class Command:
    """One command of the command socket: its handler and its `help` line."""

    handler: Handler
    description: str


COMMANDS: Mapping[str, Command] = {
    "ehlo": Command(_ehlo, ""),
    "help": Command(_help, "Print out available commands"),
    "state": Command(_state, "Get a dump of Einhorn's current state (--json for JSON)"),
    "status": Command(_status, "A short summary for people: versions, ACKs, upgrade progress, workers, listeners"),
    "reload": Command(_reload, "Reload Einhorn"),
    "subscribe": Command(_subscribe, "Keep the connection open and stream every event (spawned, acked, exited, ...) as one JSON object per line"),
    "inc": Command(_inc, "Increment the number of Einhorn child processes"),
    "dec": Command(_dec, "Decrement the number of Einhorn child processes"),
    "set_workers": Command(_set_workers, "Set the number of Einhorn child processes"),
    "quieter": Command(_quieter, "Decrease verbosity"),
    "louder": Command(_louder, "Increase verbosity"),
    "upgrade": Command(
        _upgrade(ReexecPurpose.SMOOTH_UPGRADE, "Upgrading smoothly, as commanded"),
        "Upgrade all Einhorn workers smoothly. This causes Einhorn to reload its own code as well.",
    ),
    "upgrade_fleet": Command(
        _upgrade(ReexecPurpose.FLEET_UPGRADE, "Upgrading fleet, as commanded"),
        "Upgrade all Einhorn workers a fleet at a time. This causes Einhorn to reload its own code as well.",
    ),
    "abort_upgrade": Command(
        _abort_upgrade,
        "Roll back the upgrade in progress: its new workers are stopped and the previous version is current again",
    ),
    "signal": Command(_signal, "Send one or more signals to all workers (args: SIG1 [SIG2 ...])"),
    "die": Command(
        _die,
        "Send SIGNAL (default: SIGUSR2) to all workers, stop spawning new ones, and exit once all workers die "
        "(args: [SIGNAL])",
    ),
    "config": Command(
        _config,
        "Merge in a new set of config options. (Known settings: number, seconds, max_unacked, "
        "max_upgrade_additional, signal_timeout.)",
    ),
    "worker:ack": Command(_worker_ack, ""),
    "worker:ping": Command(_worker_ping, ""),
}
