"""einhornsh: a shell for the einhorn master's command socket (BEHAVIOR §6, EXTENSIONS §6).

Exit status, for scripts: 0 when every command succeeded; 1 when one failed
(the master's final reply carries ``"failed": true``, the connection broke,
or ``--timeout`` passed while a command was still running); 2 when einhornsh
could not connect or was misused (bad options, a command line it cannot
split); 130 after ^C. An interactive session ends with 0.
"""

import argparse
import datetime
import getpass
import json
import os
import re
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import ModuleType
from typing import NoReturn, TextIO

from einhorn import __version__
from einhorn.client import Client, is_failed
from einhorn.framing import RequestError

HISTORY_FILE = "~/.einhornsh_history"
HISTORY_LENGTH = 1000
CONNECT_HINT = (
    "HINT: are you sure you are running an Einhorn master? If so, you should pass"
    " einhornsh the cmd_name (-c argument) provided to Einhorn, or the path to the"
    " command socket (-d argument)."
)

EXIT_OK = 0
EXIT_FAILED = 1
"""A command failed: the master said so, the connection broke, or --timeout passed."""
EXIT_UNUSABLE = 2
"""einhornsh could not connect, or was misused."""
EXIT_INTERRUPTED = 130
EXIT_HELP = 1
"""`-h` prints the usage and exits 1, as the original does."""

SUBCOMMANDS = ("status", "events")
"""What `einhornsh [NAME] COMMAND` runs; a master named so is reached with `-c`."""

CLIENT_HELP = {
    "ehlo": "Say hello; the master answers with its pid, cmd name and version",
    "events": "Print each event of the master (spawned, acked, exited, ...) as it happens, one line each,"
    " until ^C or the master closes the connection (events --json: the raw JSON objects) [einhornsh]",
    "quit": "Leave einhornsh [einhornsh]",
    "exit": "Leave einhornsh [einhornsh]",
}
"""Help lines for the commands einhornsh adds to a `help` reply that does not list them."""

KNOWN_COMMANDS = (
    "config", "dec", "die", "ehlo", "help", "inc", "louder", "quieter", "reload",
    "set_workers", "signal", "state", "status", "upgrade", "upgrade_fleet",
)  # fmt: skip
"""Completed when the master's `help` cannot be had."""

COMPLETION_TIMEOUT = 5.0
"""Seconds the first Tab waits for the master's `help` list."""
UPGRADE_COMMANDS = ("upgrade", "upgrade_fleet")
HELP_LINE = re.compile(r"^([A-Za-z_][\w-]*): ", re.MULTILINE)
EVENT_HEADER = ("seq", "time", "kind", "event", "message")
"""Keys a readable event line shows in its head (or, for `message`, only when nothing else is left)."""
ENVELOPE = ("request_id", "wait")
"""Keys of the transport, not of the event."""


class _Quit(Exception):
    """The user asked to leave."""


class _UsageError(Exception):
    """einhornsh was called with options it cannot run."""


def default_socket_path(command_name: str | None) -> str:
    """The master's default command socket path for ``command_name`` (BEHAVIOR §1)."""
    filename = "einhorn.sock" if command_name is None else f"einhorn-{command_name}.sock"
    return os.path.join(tempfile.gettempdir(), filename)


def split_command_sequence(sequence: str) -> list[str]:
    """Split at each ``;`` that is not quoted or backslash-escaped."""
    commands: list[str] = []
    current: list[str] = []
    quote: str | None = None
    escaped = False
    for char in sequence:
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote is not None:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == ";":
            commands.append("".join(current))
            current = []
            continue
        current.append(char)
    commands.append("".join(current))
    return commands


def listed_commands(help_text: str) -> list[str]:
    """The command names a `help` reply lists, one `name: description` line each."""
    return HELP_LINE.findall(help_text)


def client_help(help_text: str) -> str:
    """The lines einhornsh adds to the master's `help` reply: the commands it does not list."""
    listed = set(listed_commands(help_text))
    return "".join(f"{name}: {text}\n" for name, text in CLIENT_HELP.items() if name not in listed)


def completions(names: Iterable[str], line_before_word: str, word: str) -> list[str]:
    """Tab completions of ``word``: command names, only where a command begins (a line's or a `;` part's first word)."""
    if line_before_word.rsplit(";", 1)[-1].strip():
        return []
    return [f"{name} " for name in sorted(set(names)) if name.startswith(word)]


def format_event(event: Mapping[str, object]) -> str:
    """One readable line for an event: time, sequence number, kind, then every other field as key=value."""
    kind_key = "kind" if "kind" in event else "event"
    header = {"seq", "time", kind_key, "message", *ENVELOPE}
    fields = {key: value for key, value in event.items() if key not in header and value is not None}
    if not fields and event.get("message") is not None:
        fields = {"message": event["message"]}
    parts = [_format_time(event.get("time")), f"#{event.get('seq')}", str(event.get(kind_key))]
    parts += [f"{key}={_format_value(value)}" for key, value in fields.items()]
    return " ".join(parts)


def event_json(event: Mapping[str, object]) -> str:
    """The event as the master sent it, without the transport's keys, as one JSON line."""
    return json.dumps({k: v for k, v in event.items() if k not in ENVELOPE}, ensure_ascii=False, default=str)


def is_event(message: Mapping[str, object]) -> bool:
    return "seq" in message


def _format_time(value: object) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        moment = datetime.datetime.fromtimestamp(value, datetime.UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return "-" if value is None else str(value)


def _format_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value and not re.search(r"[\s\"'=]", value):
        return value
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, ensure_ascii=False, default=str)


def _goes_on(command: str) -> str:
    what = "the upgrade" if command in UPGRADE_COMMANDS else repr(command)
    return f"{what} goes on in the master (watch it with `einhornsh events` or `einhornsh status`)"


class _Shell:
    """Runs command lines over one connection, prints the responses and keeps the exit status."""

    def __init__(
        self,
        client: Client,
        interactive: bool,
        connect: Callable[[float | None], Client],
        timeout: float | None = None,
    ) -> None:
        self._client = client
        self._interactive = interactive
        self._connect = connect
        self._timeout = timeout
        self.status = EXIT_OK
        self.in_flight: str | None = None
        """The command whose responses einhornsh is waiting for."""

    def _fail(self, status: int) -> None:
        self.status = max(self.status, status)

    def run_sequence(self, sequence: str) -> None:
        for command_line in split_command_sequence(sequence):
            self.run_command_line(command_line)

    def run_command_line(self, command_line: str) -> None:
        try:
            words = shlex.split(command_line)
        except ValueError as error:
            print(f"einhornsh: could not parse {command_line.strip()!r}: {error}", file=sys.stderr)
            self._fail(EXIT_UNUSABLE)
            return
        if words:
            self.run_words(words)

    def run_words(self, words: Sequence[str]) -> None:
        command, *args = words
        if command in ("quit", "exit"):
            if self._interactive:
                print("Goodbye!", file=sys.stderr)
            raise _Quit
        if self._interactive and self._timeout is not None:
            # In a session each command has --timeout of its own; a script's run has one in all.
            self._client.deadline = time.monotonic() + self._timeout
        if command == "events":
            self._events(args)
            return
        # `ehlo` typed by hand (or in -e) introduces the user too, like the greeting.
        extra = {"user": login_name()} if command == "ehlo" else {}
        messages: list[str] = []
        final: Mapping[str, object] = {}
        self.in_flight = command
        for response in self._client.command(command, args, on_unparseable=_print_unparseable, **extra):
            messages.append(_print_message(response.get("message"), sys.stdout))
            final = response
        self.in_flight = None
        if is_failed(final):
            self._fail(EXIT_FAILED)
        elif command == "help":
            sys.stdout.write(client_help("".join(messages)))
            sys.stdout.flush()

    def _events(self, args: Sequence[str]) -> None:
        """Subscribe on a connection of its own, so that ^C ends the stream and the session goes on."""
        if list(args) not in ([], ["--json"]):
            print(f"einhornsh: events takes only --json, not {shlex.join(args)!r}", file=sys.stderr)
            self._fail(EXIT_UNUSABLE)
            return
        as_json = bool(args)
        try:
            client = self._connect(self._client.deadline)
        except OSError as error:
            print(f"einhornsh: could not connect for the event stream: {error}", file=sys.stderr)
            self._fail(EXIT_FAILED)
            return
        with client:
            try:
                for message in client.stream("subscribe", on_unparseable=_print_unparseable):
                    if is_event(message):
                        print(event_json(message) if as_json else format_event(message), flush=True)
                        continue
                    _print_message(message.get("message"), sys.stderr)
                    if not message.get("wait"):  # an answer instead of a stream: the master refused
                        self._fail(EXIT_FAILED)
                        return
            except (KeyboardInterrupt, TimeoutError):
                print(file=sys.stderr)  # the ordinary ends of the stream, like the master closing it

    def greet(self) -> None:
        if self._timeout is not None:
            self._client.deadline = time.monotonic() + self._timeout
        self.in_flight = "ehlo"
        for response in self._client.command("ehlo", user=login_name(), on_unparseable=_print_unparseable):
            _print_message(response.get("message"), sys.stderr)
        self.in_flight = None
        print("Enter 'help' if you're not sure what to do.", file=sys.stderr)
        print(file=sys.stderr)
        print('Type "quit" or "exit" to quit at any time', file=sys.stderr)

    def command_names(self) -> list[str]:
        """What Tab completes: the master's `help` list and einhornsh's own commands.

        Asked on a connection of its own: a `help` reply that came late on the
        session's connection would be taken for the next command's.
        """
        names: Sequence[str] = KNOWN_COMMANDS
        seconds = COMPLETION_TIMEOUT if self._timeout is None else min(self._timeout, COMPLETION_TIMEOUT)
        try:
            with self._connect(time.monotonic() + seconds) as client:
                reply = "".join(
                    str(response.get("message", "")) for response in client.command("help", on_unparseable=lambda line: None)
                )
            names = listed_commands(reply) or names
        except (OSError, EOFError, RequestError):
            pass  # the known names, then
        return [*names, *CLIENT_HELP]


def login_name() -> str | None:
    """Who is asking, for the ``ehlo`` greeting: ``$USER`` as in the original, else the login name."""
    user = os.environ.get("USER")
    if user:
        return user
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name in the environment nor in the passwd database
        return None


def _print_message(message: object, stream: TextIO) -> str:
    # Like Ruby's puts, which the original used: no newline added to a
    # message that already ends with one.
    text = "" if message is None else str(message)
    text = text if text.endswith("\n") else text + "\n"
    stream.write(text)
    stream.flush()
    return text


def _print_unparseable(line: bytes) -> None:
    print(line.decode("utf-8", "backslashreplace"), file=sys.stderr)


def _readline() -> ModuleType | None:
    try:
        import readline  # only when asked for: importing it changes how input() behaves
    except ImportError:  # a Python built without it: a plain prompt
        return None
    return readline


def _install_completion(readline: ModuleType, shell: _Shell) -> None:
    """Tab completes command names, asking the master's `help` for them at the first Tab."""
    names: list[str] = []

    def complete(word: str, index: int) -> str | None:
        if not names:
            names.extend(shell.command_names())
        line = readline.get_line_buffer()
        matches = completions(names, line[: readline.get_begidx()], word)
        return matches[index] if index < len(matches) else None

    readline.set_completer(complete)
    readline.set_completer_delims(" \t\n;")
    if "libedit" in (readline.__doc__ or ""):  # macOS's readline module
        readline.parse_and_bind("bind ^I rl_complete")
    else:
        readline.parse_and_bind("tab: complete")


def _run_interactive(shell: _Shell) -> None:
    readline = _readline()
    history_path = os.path.expanduser(HISTORY_FILE)
    if readline is not None:
        try:
            readline.read_history_file(history_path)
        except OSError:
            pass
        readline.set_history_length(HISTORY_LENGTH)
        _install_completion(readline, shell)
    shell.greet()
    try:
        while True:
            try:
                command_line = input("> ")
            except KeyboardInterrupt:
                print()  # ^C discards the line being typed
                continue
            except EOFError:
                print()
                return
            shell.run_sequence(command_line)
    finally:
        if readline is not None:
            try:
                readline.write_history_file(history_path)
            except OSError:
                pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _argument_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="einhornsh",
        usage="%(prog)s [options] [NAME] [status | events [--json]]",
        add_help=False,
        description=(
            "Welcome to Einhornsh: the Einhorn shell. Pass the cmd_name of the Einhorn"
            " master you are connecting to either as a positional argument or using -c."
            " If you're running your Einhorn with a -d, provide the same argument here."
        ),
        epilog=(
            "Exit status: 0 when every command succeeded; 1 when the master answered with"
            " an error, an upgrade failed or --timeout passed; 2 when einhornsh could not"
            " connect or was misused; 130 after ^C."
        ),
    )
    parser.add_argument(
        "words", nargs="*", metavar="NAME",
        help="The cmd_name of the Einhorn master (as -c), then optionally `status` (print the"
        " master's summary) or `events` (print its events until ^C)",
    )  # fmt: skip
    parser.add_argument("-h", "--help", action="store_true", help="Display this message")
    parser.add_argument("--version", action="store_true", help="Show version")
    parser.add_argument(
        "-c", "--command-name", metavar="CMD_NAME",
        help="Connect to the Einhorn master with this cmd_name",
    )  # fmt: skip
    parser.add_argument("-d", "--socket-path", metavar="PATH", help="Path to the Einhorn command socket")
    parser.add_argument(
        "-e", "--execute", metavar="CMD_LINE_SEQ",
        help="Execute this command outside of interactive mode",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", metavar="SECONDS", type=_positive_seconds,
        help="Give up after SECONDS (for -e and piped commands: in all; interactively: per"
        " command); a command still running then goes on in the master; exit 1",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="With `events`: print the raw JSON objects")
    return parser


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return seconds


def _name_and_subcommand(words: Sequence[str]) -> tuple[str | None, str | None]:
    match list(words):
        case []:
            return None, None
        case [word] if word in SUBCOMMANDS:
            return None, word
        case [name]:
            return name, None
        case [name, word] if word in SUBCOMMANDS:
            return name, word
        case _:
            raise _UsageError(f"unexpected arguments: {shlex.join(words)}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run einhornsh; returns the exit status."""
    parser = _argument_parser()
    try:
        options = parser.parse_intermixed_args(argv)
        name, subcommand = _name_and_subcommand(options.words)
        if subcommand is not None and options.execute is not None:
            raise _UsageError(f"{subcommand} and -e cannot be combined (use -e {subcommand!r})")
        if options.json and subcommand != "events":
            raise _UsageError("--json goes with events")
    except _UsageError as error:
        parser.print_usage(sys.stderr)
        print(f"einhornsh: error: {error}", file=sys.stderr)
        return EXIT_UNUSABLE
    if options.help:
        # The original prints its usage to stderr and exits 1.
        parser.print_help(sys.stderr)
        return EXIT_HELP
    if options.version:
        print(__version__)
        return EXIT_OK
    command_name: str | None = options.command_name if options.command_name is not None else name
    path: str = options.socket_path if options.socket_path is not None else default_socket_path(command_name)
    timeout: float | None = options.timeout
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        client = Client.connect(path, deadline)
    except OSError as error:
        reason = f"no answer within {timeout:g}s" if isinstance(error, TimeoutError) else error.strerror or error
        print(
            f"Could not connect to Einhorn master process at {path} ({reason}). {CONNECT_HINT}",
            file=sys.stderr,
        )
        return EXIT_UNUSABLE
    if subcommand is not None:
        words = ["events", "--json"] if options.json else [subcommand]
        execute: Sequence[str] | str | None = words
    else:
        execute = options.execute
    with client:
        return _run(client, execute, lambda deadline: Client.connect(path, deadline), timeout)


def _run(
    client: Client,
    execute: Sequence[str] | str | None,
    connect: Callable[[float | None], Client],
    timeout: float | None,
) -> int:
    interactive = execute is None and sys.stdin.isatty()
    shell = _Shell(client, interactive, connect, timeout)
    try:
        if isinstance(execute, str):
            shell.run_sequence(execute)
        elif execute is not None:
            shell.run_words(execute)
        elif interactive:
            _run_interactive(shell)
        else:
            for command_line in sys.stdin:
                shell.run_sequence(command_line)
    except _Quit:
        pass
    except EOFError:
        print("Could not read response: connection closed by the master", file=sys.stderr)
        return EXIT_FAILED
    except TimeoutError:
        waited = f" for {shell.in_flight!r}: {_goes_on(shell.in_flight)}" if shell.in_flight else ""
        print(f"einhornsh: timed out after {timeout or 0:g}s (--timeout) waiting{waited}", file=sys.stderr)
        return EXIT_FAILED
    except (OSError, RequestError) as error:
        print(f"Could not talk to the master: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(file=sys.stderr)
        if shell.in_flight:
            print(f"einhornsh: interrupted; {_goes_on(shell.in_flight)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK if interactive else shell.status


if __name__ == "__main__":
    raise SystemExit(main())
