"""einhornsh: a shell for the einhorn master's command socket (BEHAVIOR §6)."""

import argparse
import getpass
import os
import shlex
import sys
import tempfile
from collections.abc import Sequence
from typing import TextIO

from einhorn.client import Client
from einhorn.framing import RequestError

HISTORY_FILE = "~/.einhornsh_history"
HISTORY_LENGTH = 1000
CONNECT_HINT = (
    "HINT: are you sure you are running an Einhorn master? If so, you should pass"
    " einhornsh the cmd_name (-c argument) provided to Einhorn, or the path to the"
    " command socket (-d argument)."
)
EXIT_INTERRUPTED = 130


class _Quit(Exception):
    """The user asked to leave."""


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


class _Shell:
    """Runs command lines over one connection and prints the responses."""

    def __init__(self, client: Client, interactive: bool) -> None:
        self._client = client
        self._interactive = interactive

    def run_sequence(self, sequence: str) -> None:
        for command_line in split_command_sequence(sequence):
            self.run_command_line(command_line)

    def run_command_line(self, command_line: str) -> None:
        try:
            words = shlex.split(command_line)
        except ValueError as error:
            print(
                f"einhornsh: could not parse {command_line.strip()!r}: {error}", file=sys.stderr
            )
            return
        if not words:
            return
        command, *args = words
        if command in ("quit", "exit"):
            if self._interactive:
                print("Goodbye!", file=sys.stderr)
            raise _Quit
        # `ehlo` typed by hand (or in -e) introduces the user too, like the greeting.
        extra = {"user": login_name()} if command == "ehlo" else {}
        for response in self._client.command(command, args, on_unparseable=_print_unparseable, **extra):
            _print_message(response.get("message"), sys.stdout)

    def greet(self) -> None:
        for response in self._client.command(
            "ehlo", user=login_name(), on_unparseable=_print_unparseable
        ):
            _print_message(response.get("message"), sys.stderr)
        print("Enter 'help' if you're not sure what to do.", file=sys.stderr)
        print(file=sys.stderr)
        print('Type "quit" or "exit" to quit at any time', file=sys.stderr)


def login_name() -> str | None:
    """Who is asking, for the ``ehlo`` greeting: ``$USER`` as in the original, else the login name."""
    user = os.environ.get("USER")
    if user:
        return user
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name in the environment nor in the passwd database
        return None


def _print_message(message: object, stream: TextIO) -> None:
    # Like Ruby's puts, which the original used: no newline added to a
    # message that already ends with one.
    text = "" if message is None else str(message)
    stream.write(text if text.endswith("\n") else text + "\n")
    stream.flush()


def _print_unparseable(line: bytes) -> None:
    print(line.decode("utf-8", "backslashreplace"), file=sys.stderr)


def _run_interactive(shell: _Shell) -> None:
    import readline  # only here: importing it changes how input() behaves

    history_path = os.path.expanduser(HISTORY_FILE)
    try:
        readline.read_history_file(history_path)
    except OSError:
        pass
    readline.set_history_length(HISTORY_LENGTH)
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
        try:
            readline.write_history_file(history_path)
        except OSError:
            pass


def _argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="einhornsh",
        add_help=False,
        description=(
            "Welcome to Einhornsh: the Einhorn shell. Pass the cmd_name of the Einhorn"
            " master you are connecting to either as a positional argument or using -c."
            " If you're running your Einhorn with a -d, provide the same argument here."
        ),
    )
    parser.add_argument("name", nargs="?", metavar="CMD_NAME", help=argparse.SUPPRESS)
    parser.add_argument("-h", "--help", action="store_true", help="Display this message")
    parser.add_argument(
        "-c", "--command-name", metavar="CMD_NAME",
        help="Connect to the Einhorn master with this cmd_name",
    )
    parser.add_argument(
        "-d", "--socket-path", metavar="PATH", help="Path to the Einhorn command socket"
    )
    parser.add_argument(
        "-e", "--execute", metavar="CMD_LINE_SEQ",
        help="Execute this command outside of interactive mode",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run einhornsh; returns the exit status."""
    parser = _argument_parser()
    options = parser.parse_args(argv)
    if options.help:
        # The original prints its usage to stderr and exits 1.
        parser.print_help(sys.stderr)
        return 1
    command_name: str | None = (
        options.command_name if options.command_name is not None else options.name
    )
    path: str = (
        options.socket_path
        if options.socket_path is not None
        else default_socket_path(command_name)
    )
    try:
        client = Client.connect(path)
    except OSError as error:
        print(
            f"Could not connect to Einhorn master process at {path}"
            f" ({error.strerror or error}). {CONNECT_HINT}",
            file=sys.stderr,
        )
        return 1
    with client:
        return _run(client, options.execute)


def _run(client: Client, execute: str | None) -> int:
    interactive = execute is None and sys.stdin.isatty()
    shell = _Shell(client, interactive)
    try:
        if execute is not None:
            shell.run_sequence(execute)
        elif interactive:
            _run_interactive(shell)
        else:
            for command_line in sys.stdin:
                shell.run_sequence(command_line)
    except _Quit:
        pass
    except EOFError:
        print("Could not read response: connection closed by the master", file=sys.stderr)
        return 1
    except (OSError, RequestError) as error:
        print(f"Could not talk to the master: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
