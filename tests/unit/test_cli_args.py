"""einhorn.cli.args: the option table, `split_argv` and `parse` (argv -> Settings, or a UsageError that says why)."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from einhorn.cli import args
from einhorn.cli.args import HELP_COLUMN, OPTION_HELP, OPTIONS, UsageError, parse, split_argv
from einhorn.cli.settings import Nice, Settings
from einhorn.core.config import MAX_DURATION, Pacing
from einhorn.io.sockets import BindSpec, SetupError

PROGRAM = sys.executable
"""An absolute path to an executable: `parse` resolves the program."""
ENV = {"PATH": os.defpath}
WHOLE_SECONDS = "(must be an integer number of seconds >= 1 and at most 604800 (one week))"
SECONDS = "(must be a number of seconds > 0 and at most 604800 (one week))"
ACK_SECONDS = "(a timer ACK waits FLOAT seconds, at most 604800 (one week))"


def settings(*argv: str) -> Settings:
    result = parse([*argv, PROGRAM, "worker-arg"], ENV)
    assert isinstance(result, Settings)
    return result


def usage_error(*argv: str) -> str:
    with pytest.raises(UsageError) as raised:
        parse([*argv, PROGRAM], ENV)
    return str(raised.value)


# --- the option table ------------------------------------------------------------------


def parser_options() -> list[argparse.Action]:
    return [action for action in args.parser()._actions if action.option_strings]


def help_entries() -> dict[str, str]:
    """Each option name in OPTION_HELP, with the text of its entry (its line, and the lines continuing it)."""
    entries: dict[str, str] = {}
    names: list[str] = []
    for line in OPTION_HELP.splitlines()[2:]:
        if line.startswith(" " * HELP_COLUMN):
            for name in names:
                entries[name] += "\n" + line
            continue
        names = re.findall(r"(?:^|, )(--?[a-z][a-z-]*)", line.strip())
        assert names, line
        entries.update(dict.fromkeys(names, line))
    return entries


def test_the_parser_and_the_help_list_the_same_options() -> None:
    in_parser = {name for action in parser_options() for name in action.option_strings}
    assert set(help_entries()) == in_parser
    assert in_parser == {name for option in OPTIONS for name in option.names}
    assert len(in_parser) == sum(len(option.names) for option in OPTIONS), "no option name twice"


def test_value_options_are_exactly_those_the_parser_reads_a_value_for() -> None:
    takes_value = {name for action in parser_options() if action.nargs != 0 for name in action.option_strings}
    assert args.VALUE_OPTIONS == takes_value
    for name, entry in help_entries().items():
        shown_with_value = re.search(r"--[a-z-]+[ =][A-Z]", entry.splitlines()[0]) is not None
        assert shown_with_value == (name in args.VALUE_OPTIONS), entry


def test_internal_options_are_marked_in_the_help_and_only_they() -> None:
    assert args.INTERNAL_OPTIONS == {"--with-state-fd", "--upgrade-check"}
    for name, entry in help_entries().items():
        assert ("[Internal option]" in entry) == (name in args.INTERNAL_OPTIONS), entry


def test_every_description_starts_in_the_help_column() -> None:
    lines = OPTION_HELP.splitlines()
    assert lines[:2] == ["### Options", ""]
    for line in lines[2:]:
        assert re.match(rf"    -[a-z], --[a-z]|        --[a-z]| {{{HELP_COLUMN}}}\S", line), line
        assert line[HELP_COLUMN - 1] == " " and line[HELP_COLUMN] != " " or "--nice" in line, line
    nice = [line for line in lines if "--nice" in line][0]
    following = lines[lines.index(nice) + 1 : lines.index(nice) + 3]
    assert nice.strip() == "--nice MASTER[:WORKER][:RENICE_CMD]"  # too long: its description goes below
    assert all(line.startswith(" " * HELP_COLUMN) and line[HELP_COLUMN] != " " for line in following)


def test_the_help_shows_each_value_as_the_original_does() -> None:
    assert "    -b, --bind ADDR                  Bind HOST:PORT[,r][,n]" in OPTION_HELP
    assert "    -t, --signal-timeout=T           If children" in OPTION_HELP
    assert "        --reexec-as=CMDLINE          Substitute" in OPTION_HELP
    assert "        --with-state-fd STATE        [Internal option] With file descriptor containing state\n" in OPTION_HELP
    assert OPTION_HELP.endswith("        --version                    Show version\n")


# --- split_argv ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "head", "program"),
    [
        (["-n", "2", "app", "-n", "3"], ["-n", "2"], ["app", "-n", "3"]),  # the program's own options stay its own
        (["-n", "2", "--", "-app"], ["-n", "2"], ["-app"]),  # `--` ends the options
        (["-n", "-1", "app"], ["-n", "-1"], ["app"]),  # a value option takes the next word, even one with `-`
        (["--nice", "-5:-6", "app"], ["--nice", "-5:-6"], ["app"]),
        (["-k", "-q", "app"], ["-k", "-q"], ["app"]),  # flags take no value
        (["--bind=127.0.0.1:0", "app"], ["--bind=127.0.0.1:0"], ["app"]),
        (["-n3", "app"], ["-n3"], ["app"]),
        (["-", "x"], [], ["-", "x"]),  # `-` is a program name
        (["-n", "2"], ["-n", "2"], []),
        ([], [], []),
    ],
)
def test_split_argv(argv: list[str], head: list[str], program: list[str]) -> None:
    assert split_argv(argv) == (head, program)


# --- parse -----------------------------------------------------------------------------


def test_defaults() -> None:
    tmp = tempfile.gettempdir()
    assert settings() == Settings(
        number=1,
        ack_timer=1.0,
        seconds=1.0,
        pacing=Pacing.ACK,
        max_unacked=os.cpu_count() or 1,
        max_upgrade_additional=None,
        signal_timeout=None,
        graceful_signal="USR2",
        boot_timeout=None,
        ping_timeout=None,
        max_worker_rss_mb=None,
        program=(PROGRAM, "worker-arg"),
        program_path=os.path.abspath(PROGRAM),
        binds=(),
        backlog=100,
        command_socket_as_fd=False,
        kill_children_on_exit=False,
        preload=None,
        nice=Nice(None, None, "/usr/bin/renice"),
        command_name=None,
        socket_path=os.path.join(tmp, "einhorn.sock"),
        pidfile=os.path.join(tmp, "einhorn.pid"),
        lockfile=os.path.join(tmp, "einhorn.lock"),
        verbosity=1,
        flags=(),
        reexec_as=None,
        drop_env=(),
        with_state_fd=None,
        upgrade_check=False,
    )


def test_every_option_reaches_its_setting() -> None:
    given = [
        "-b", "127.0.0.1:0,r", "--bind", "[::1]:8080", "-c", "web", "-d", "rel.sock", "-e", "/p", "-f", "/l",
        "-g", "-k", "-l", "7", "-m", "manual", "-n", "3", "-p", "app.py", "-s", "0.5", "-t", "4",
        "--max-unacked", "2", "--max-upgrade-additional", "0", "--drop-env-var", "A", "--drop-env-var=B",
        "--reexec-as", "env X=1 einhorn", "--nice", "-5:3:/bin/renice", "--graceful-signal", "sigterm",
        "--boot-timeout", "20", "--ping-timeout", "2.5", "--max-worker-rss", "512",
    ]  # fmt: skip
    result = settings(*given)
    assert (result.boot_timeout, result.ping_timeout, result.max_worker_rss_mb) == (20.0, 2.5, 512)
    assert (result.number, result.ack_timer, result.seconds, result.signal_timeout) == (3, None, 0.5, 4)
    assert result.pacing is Pacing.INTERVAL
    assert (result.max_unacked, result.max_upgrade_additional) == (2, 0)
    assert result.graceful_signal == "TERM"
    assert result.binds == (
        BindSpec("127.0.0.1:0,r", "127.0.0.1", 0, reuseaddr=True, nonblock=False),
        BindSpec("[::1]:8080", "::1", 8080, reuseaddr=False, nonblock=False),
    )
    assert (result.command_name, result.pidfile, result.lockfile) == ("web", "/p", "/l")
    assert result.socket_path == os.path.abspath("rel.sock")
    assert result.command_socket_as_fd and result.kill_children_on_exit
    assert (result.backlog, result.preload) == (7, "app.py")
    assert result.drop_env == ("A", "B")
    assert result.reexec_as == ("env", "X=1", "einhorn")
    assert result.nice == Nice(-5, 3, "/bin/renice")
    assert result.flags == tuple(given)
    assert result.owned_paths == ("/p", os.path.abspath("rel.sock"))


def test_the_command_name_names_the_default_files() -> None:
    tmp = tempfile.gettempdir()
    result = settings("-c", "web")
    assert (result.socket_path, result.pidfile, result.lockfile) == tuple(
        os.path.join(tmp, f"einhorn-web.{ext}") for ext in ("sock", "pid", "lock")
    )


@pytest.mark.parametrize(("flags", "verbosity"), [((), 1), (("-q",), 2), (("-qqq",), 2), (("-v",), 0), (("-v", "-v", "-v"), 0), (("-q", "-v"), 1)])
def test_verbosity_counts_and_stays_in_range(flags: tuple[str, ...], verbosity: int) -> None:
    assert settings(*flags).verbosity == verbosity


@pytest.mark.parametrize(
    ("text", "nice"),
    [("5", Nice(5, None)), (":3", Nice(None, 3)), ("-5:-6", Nice(-5, -6)), ("1:2:/r", Nice(1, 2, "/r")), ("::/r", Nice(None, None, "/r"))],
)
def test_nice_levels(text: str, nice: Nice) -> None:
    assert settings("--nice", text).nice == nice


def test_values_that_start_with_a_dash_are_values() -> None:
    assert settings("--nice", "-5").nice == Nice(-5, None)
    assert usage_error("-t", "-1") == f"Invalid value for -t/--signal-timeout: '-1' {WHOLE_SECONDS}"


def test_the_flags_for_a_reexec_leave_out_the_internal_options() -> None:
    result = settings("-n", "2", "--with-state-fd", "5", "--upgrade-check", "-q", "--with-state-fd=6")
    assert result.flags == ("-n", "2", "-q")
    assert result.with_state_fd == 6 and result.upgrade_check


@pytest.mark.parametrize(
    ("argv", "request_"),
    [(["--version", "-h", PROGRAM], "version"), (["-h", PROGRAM], "help"), (["--help"], "help"), (["-n", "2"], "usage"), ([], "usage")],
)
def test_what_to_print_instead_of_running(argv: list[str], request_: str) -> None:
    assert parse(argv, ENV) == request_


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-n", "0"], "Invalid value for -n/--number: '0' (must be an integer in [1, 1000])"),
        (["-n", "1001"], "Invalid value for -n/--number: '1001' (must be an integer in [1, 1000])"),
        (["-n", "two"], "Invalid value for -n/--number: 'two' (must be an integer in [1, 1000])"),
        (["-l", "-1"], "Invalid value for -l/--backlog: '-1' (must be an integer >= 0)"),
        (["-s", "0"], f"Invalid value for -s/--seconds: '0' {SECONDS}"),
        (["-s", "nan"], f"Invalid value for -s/--seconds: 'nan' {SECONDS}"),
        (["-m", "auto"], "Invalid ack-mode 'auto' (valid modes: FLOAT, manual or notify)"),
        (["-m", "-1"], "Invalid ack-mode '-1' (valid modes: FLOAT, manual or notify)"),
        (["-t", "0"], f"Invalid value for -t/--signal-timeout: '0' {WHOLE_SECONDS}"),
        (["--max-unacked", "0"], "Invalid value for --max-unacked: '0' (must be an integer >= 1)"),
        (["--max-upgrade-additional", "-1"], "Invalid value for --max-upgrade-additional: '-1' (must be an integer >= 0)"),
        (["--nice", "x"], "Invalid value for --nice: 'x' (must be MASTER[:WORKER[:RENICE_CMD]] with integer levels)"),
        (["--nice", "20"], "Invalid value for --nice: '20' (nice levels are in [-20, 19])"),
        (["--nice", "0:-21"], "Invalid value for --nice: '0:-21' (nice levels are in [-20, 19])"),
        (["--reexec-as", ""], "--reexec-as needs a command"),
        (["--reexec-as", '"einhorn'], "Invalid value for --reexec-as: '\"einhorn' (No closing quotation)"),
        (["--with-state-fd", "x"], "Invalid value for --with-state-fd: 'x' (must be an integer >= 0)"),
        (["--boot-timeout", "0"], f"Invalid value for --boot-timeout: '0' {SECONDS}"),
        (["--boot-timeout", "soon"], f"Invalid value for --boot-timeout: 'soon' {SECONDS}"),
        (["--boot-timeout", "1"], "Invalid value for --boot-timeout: '1' (must be longer than the -m timer ACK of 1s, or every worker would be stopped before its ACK)"),
        (["-m", "5", "--boot-timeout", "4.5"], "Invalid value for --boot-timeout: '4.5' (must be longer than the -m timer ACK of 5s, or every worker would be stopped before its ACK)"),
        (["--ping-timeout", "-1"], f"Invalid value for --ping-timeout: '-1' {SECONDS}"),
        (["--ping-timeout", "604801"], f"Invalid value for --ping-timeout: '604801' {SECONDS}"),
        (["--max-worker-rss", "0"], "Invalid value for --max-worker-rss: '0' (must be an integer in [1, 1048576])"),
        (["--max-worker-rss", "1.5"], "Invalid value for --max-worker-rss: '1.5' (must be an integer in [1, 1048576])"),
        (["--graceful-signal", "TERN"], "Invalid value for --graceful-signal: 'TERN' (not a signal name)"),
        (["--graceful-signal", "KILL"], "Invalid value for --graceful-signal: 'KILL' (SIGKILL cannot ask a worker to finish and exit)"),
        (["--graceful-signal", "SIGSTOP"], "Invalid value for --graceful-signal: 'SIGSTOP' (SIGSTOP cannot ask a worker to finish and exit)"),
        (["--no-such-option"], "unrecognized arguments: --no-such-option"),
    ],
)
def test_usage_errors_say_what_is_wrong(argv: list[str], message: str) -> None:
    assert usage_error(*argv) == message


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-m", "2147484"], f"Invalid ack-mode '2147484' {ACK_SECONDS}"),
        (["-m", "604800.5"], f"Invalid ack-mode '604800.5' {ACK_SECONDS}"),
        (["-m", "inf"], f"Invalid ack-mode 'inf' {ACK_SECONDS}"),
        (["-s", "604801"], f"Invalid value for -s/--seconds: '604801' {SECONDS}"),
        (["-s", "1e400"], f"Invalid value for -s/--seconds: '1e400' {SECONDS}"),
        (["-t", "3000000"], f"Invalid value for -t/--signal-timeout: '3000000' {WHOLE_SECONDS}"),
        (["-t", "9" * 400], f"Invalid value for -t/--signal-timeout: '{'9' * 400}' {WHOLE_SECONDS}"),
        (["-t", "9" * 5000], f"Invalid value for -t/--signal-timeout: '{'9' * 5000}' {WHOLE_SECONDS}"),
    ],
)
def test_durations_longer_than_a_week_are_refused(argv: list[str], message: str) -> None:
    """Issue 16, finding 1: `-m 2147484` crashed the master at its first wait (select's timeout overflowed)."""
    assert usage_error(*argv) == message


def test_a_week_is_the_longest_duration_accepted() -> None:
    week = str(MAX_DURATION)
    result = settings("-m", week, "-s", week, "-t", week)
    assert (result.ack_timer, result.seconds, result.signal_timeout) == (MAX_DURATION, MAX_DURATION, MAX_DURATION)


def test_an_option_without_its_value() -> None:
    with pytest.raises(UsageError, match="^argument -n/--number: expected one argument$"):
        parse(["-n"], ENV)


@pytest.mark.parametrize(
    ("head", "named"),
    [(["-n", "--"], "-n/--number"), (["--number=--"], "-n/--number"), (["-b", "--"], "-b/--bind"),
     (["-b", "127.0.0.1:1", "--bind=--"], "-b/--bind"), (["--nice", "--"], "--nice"), (["-m", "--"], "-m/--ack-mode")],
)  # fmt: skip
def test_a_value_of_dashes_is_no_value(head: list[str], named: str) -> None:
    """argparse ends the options at `--` and gives the option a list: that crashed the start."""
    assert usage_error(*head) == f"argument {named}: expected one argument"


# --- reading the options without argparse (issue 14) ---------------------------------------


def argparse_reading(head: list[str]) -> tuple[str, object]:
    try:
        return "read", vars(args.parser().parse_args(head))
    except UsageError as error:
        return "refused", str(error)


PLAIN = [
    [],
    ["-d", "/tmp/x/cmd.sock", "-e", "/tmp/x/pid", "-f", "/tmp/x/lock", "-n", "16", "-m", "manual", "-b", "127.0.0.1:0"],
    ["--number=4", "--bind", "a:1", "-b", "b:2", "--bind=unix:/x=y", "-v", "--verbose", "-q", "-k", "-g", "--subreaper"],
    ["--nice=-5:-6", "-c", "", "--command-name=", "--drop-env-var", "X", "--drop-env-var=Y", "-n", "1", "-n", "2"],
    ["--upgrade-check", "--with-state-fd=3", "--version", "-h", "--help"],
]


@pytest.mark.parametrize("head", PLAIN)
def test_plain_options_are_read_without_argparse_as_argparse_reads_them(head: list[str]) -> None:
    plain = args._plain_reading(head)
    assert plain is not None
    assert ("read", vars(plain)) == argparse_reading(head)


NOT_PLAIN = [["--num", "4"], ["-n4"], ["-n=4"], ["-vk"], ["-vv"], ["--verbose=1"], ["--no-such"], ["-x"], ["-n"], ["-n", "-k"], ["-n", "4", "--max", "3"]]


@pytest.mark.parametrize("head", NOT_PLAIN)
def test_other_options_are_read_by_argparse(head: list[str]) -> None:
    """An abbreviation, a short option's attached value, a cluster, an unknown option, a missing value."""
    assert args._plain_reading(head) is None
    try:
        ours: tuple[str, object] = "read", vars(args.read_options(head))
    except UsageError as error:
        ours = "refused", str(error)
    assert ours == argparse_reading(head)


OPTION_NAMES = sorted(args._BY_NAME) + ["--num", "--max", "--s", "--no-such", "-x", "-5", "-", "--"]
VALUES = ["4", "", "-5", "--", "a=b", "-k", "unix:/x"]
SUFFIXES = ["", "", "", "=", "=4", "=-5", "=--", "=a=b", "4", "k"]


@given(st.lists(st.one_of(st.sampled_from(OPTION_NAMES), st.sampled_from(VALUES)), max_size=8), st.lists(st.sampled_from(SUFFIXES), max_size=8))
def test_the_plain_reading_is_argparse_s_whenever_it_reads(tokens: list[str], suffixes: list[str]) -> None:
    head = [token + (suffixes[i] if i < len(suffixes) and token.startswith("-") else "") for i, token in enumerate(tokens)]
    plain = args._plain_reading(head)
    if plain is not None:
        assert ("read", vars(plain)) == argparse_reading(head), head


@st.composite
def plain_option(draw: st.DrawFn) -> list[str]:
    """One option written out in full: a flag, `NAME VALUE`, or `--LONG=VALUE` (any value but `--`)."""
    option = draw(st.sampled_from(OPTIONS))
    name = draw(st.sampled_from(option.names))
    if not option.takes_value:
        return [name]
    if name.startswith("--") and draw(st.booleans()):
        return [f"{name}={draw(st.text(alphabet='-=:a1 ', max_size=6).filter(lambda value: value != '--'))}"]
    return [name, draw(st.text(alphabet="-=:a1 ", max_size=6).filter(lambda value: not value.startswith("-")))]


@given(st.lists(plain_option(), max_size=8))
def test_options_written_out_in_full_are_read_plainly_as_argparse_reads_them(options: list[list[str]]) -> None:
    head = [token for option in options for token in option]
    plain = args._plain_reading(head)
    assert plain is not None, head
    assert ("read", vars(plain)) == argparse_reading(head), head


def test_a_plain_command_line_does_not_import_argparse() -> None:
    """argparse, gettext and locale cost an idle master about half a megabyte (issue 14)."""
    probe = f"""
import sys
from einhorn.cli.args import parse
parse(["-n", "16", "-m", "manual", "-b", "127.0.0.1:0", "--", {sys.executable!r}], {{"PATH": "/bin"}})
print(sorted({{"argparse", "gettext", "locale"}} & set(sys.modules)))
"""
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60).stdout.strip() == "[]"


def test_the_first_bad_option_is_the_one_reported() -> None:
    assert usage_error("-s", "0", "-n", "0").startswith("Invalid value for -n/--number")  # in a fixed order


def test_a_program_that_cannot_be_found() -> None:
    with pytest.raises(UsageError, match=r"^Could not find no-such-program-x in PATH \(or it is not executable\)$"):
        parse(["no-such-program-x"], ENV)
    with pytest.raises(UsageError, match=r"^Could not find /no/such/program \(or it is not executable\)$"):
        parse(["/no/such/program"], ENV)


def test_a_bad_bind_is_a_setup_error_naming_it() -> None:
    with pytest.raises(SetupError, match='"nohost"'):
        parse(["-b", "nohost", PROGRAM], ENV)


def test_subreaper_makes_a_reaper() -> None:
    given = settings("--subreaper")
    assert given.subreaper and given.reaper
    assert not settings().reaper  # not PID 1 here


def test_the_supervisor_and_its_watchdog_come_from_the_environment() -> None:
    given = parse([PROGRAM], {**ENV, "NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "3000000"})
    assert isinstance(given, Settings) and given.supervised and given.watchdog_interval == 3.0
    other = parse([PROGRAM], {**ENV, "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"})
    assert isinstance(other, Settings) and not other.supervised and other.watchdog_interval is None  # another pid's
    assert settings("-m", "notify").ack_notify and settings("-m", "notify").ack_timer is None
    for usec in ("\u00b2", "9" * 5000, "3e6", "-5", "0", ""):  # not a number of microseconds: no watchdog, as sd_watchdog_enabled
        odd = parse([PROGRAM], {**ENV, "NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": usec})
        assert isinstance(odd, Settings) and odd.supervised and odd.watchdog_interval is None, usec


# --- what the master does without shutil and tempfile (issue 14: they would cost its memory) ---------


@pytest.mark.parametrize("program", ["sh", "python3", "no-such-program-here", "/bin/sh", "./missing", "/etc", "/etc/passwd"])
def test_which_finds_what_shutil_which_finds(program: str, tmp_path: Path) -> None:
    import shutil

    path = os.pathsep.join([str(tmp_path), "/usr/bin", "/bin", "/usr/bin", os.environ.get("PATH", os.defpath)])
    assert args._which(program, path) == shutil.which(program, path=path)


@pytest.mark.parametrize("variable", [None, "TMPDIR", "TEMP", "TMP"])
def test_temp_dir_is_what_tempfile_gettempdir_says(variable: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TMPDIR", "TEMP", "TMP"):
        monkeypatch.delenv(name, raising=False)
    if variable is not None:
        monkeypatch.setenv(variable, str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir remembers its answer
    assert args._temp_dir() == tempfile.gettempdir()


def test_temp_dir_skips_a_directory_that_does_not_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path / "gone"))
    monkeypatch.setenv("TEMP", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    assert args._temp_dir() == tempfile.gettempdir() == str(tmp_path)
