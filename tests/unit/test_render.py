"""The `state` document as Ruby clients and scripts see it."""

from __future__ import annotations

import datetime
import json
import math
import shutil
import subprocess
from collections.abc import Callable, Mapping

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from einhorn.core.config import Config, Display
from einhorn.core.effects import ReplyData
from einhorn.core.events import ChildExited, CommandReceived, MasterStarted, WorkerSpawned
from einhorn.core.report import Symbol, Timestamp, snapshot
from einhorn.core.state import State, initial_state
from einhorn.core.step import step
from einhorn.framing import encode_message
from einhorn.io import render


def _report() -> dict[str, object]:
    state = initial_state(Config(number=2, display=Display(command_name="web", bound_ports=(8080,))))
    state, _ = step(state, MasterStarted(10.0))
    state, _ = step(state, WorkerSpawned(0, 101, 10.0))
    state, _ = step(state, WorkerSpawned(1, 102, 11.5))
    return snapshot(state, wall_offset=1_700_000_000.0)


def test_yaml_uses_ruby_symbol_keys_and_values() -> None:
    text = render.to_ruby_yaml(_report())
    assert text.startswith("---\n:state:\n  :children:\n    101:\n      :type: :worker\n")
    assert "\n      :signaled: []\n" in text
    assert "  :bound_ports:\n  - 8080\n" in text
    assert "  :cmd_name: web\n" in text
    assert ":spinup_time: 2023-11-14 22:13:30+00:00" in text


def as_ruby_reads_it(value: object) -> object:
    """What a YAML load of the document must give: `:name` for keys and Symbols, datetimes for times."""
    if isinstance(value, Mapping):
        return {(f":{k}" if isinstance(k, str) else k): as_ruby_reads_it(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_ruby_reads_it(v) for v in value]
    if isinstance(value, Symbol):
        return f":{value.name}"
    if isinstance(value, Timestamp):
        return datetime.datetime.fromtimestamp(value.epoch, tz=datetime.UTC)
    return value


def test_pyyaml_reads_back_the_real_report() -> None:
    report = _report()
    assert yaml.safe_load(render.to_ruby_yaml(report)) == as_ruby_reads_it(report)


def test_strings_that_yaml_would_read_as_something_else_are_quoted() -> None:
    tricky = ["yes", "No", "ON", "off", "y", "null", "~", "", "12", "1.5", "0x1f", "1_000", "2001-12-14", ".inf", "-.nan",
              ":symbolish", "a: b", "a #b", "- x", "[x]", "{x}", "*alias", "&anchor", "!tag", "%x", "@x", "`x", "'q'", '"q"',
              " lead", "trail ", "line\nbreak", "tab\tx", "nel\x85x", "ls\u2028x", "bom\ufeffx", "del\x7fx", "127.0.0.1:0", "é"]
    text = render.to_ruby_yaml({"cmd": tricky})
    assert yaml.safe_load(text) == {":cmd": tricky}
    assert "\n- /usr/bin/env\n" in render.to_ruby_yaml({"cmd": ["/usr/bin/env"]})  # plain where it is safe


def test_floats_stay_floats() -> None:
    values = [0.0, -1.5, 1e-05, 1e300, math.inf, -math.inf, 2.5e-320]
    loaded = yaml.safe_load(render.to_ruby_yaml({"x": values}))[":x"]
    assert loaded == values and all(isinstance(v, float) for v in loaded)
    assert math.isnan(yaml.safe_load(render.to_ruby_yaml({"x": math.nan}))[":x"])


scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.builds(Symbol, st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True))
    | st.builds(Timestamp, st.floats(min_value=0, max_value=4e9))
)
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True) | st.integers(min_value=1, max_value=99999), inner, max_size=4),
    max_leaves=25,
)


@given(st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True), documents, max_size=5))
def test_any_document_reads_back_as_written(data: dict[str, object]) -> None:
    assert yaml.safe_load(render.to_ruby_yaml(data)) == as_ruby_reads_it(data)


def test_json_has_plain_keys_and_iso_times() -> None:
    document = json.loads(render.to_json(_report()))
    child = document["state"]["children"]["101"]
    assert child["type"] == "worker"
    assert child["spinup_time"] == "2023-11-14T22:13:30+00:00"
    assert document["state"]["ack_mode"] == {"type": "timer", "timeout": 1.0}


RUBY_READS = r"""
require "yaml"; require "json"; require "set"
d = YAML.safe_load(STDIN.read, permitted_classes: [Symbol, Set, Time])
puts JSON.generate({"cmd" => d[:cmd], "sym" => d[:sym].inspect, "time" => d[:time].class.name,
                    "floats" => d[:floats].map { |x| x.class.name }, "pids" => d[:children].keys.map { |x| x.class.name }})
"""


def test_ruby_reads_the_same_strings_symbols_times_and_numbers() -> None:
    ruby = shutil.which("ruby")
    if ruby is None:
        pytest.skip("ruby is not installed (Debian: apt-get install -y ruby)")
    tricky = ["yes", "No", "n", "null", "~", "", "12", "1:20", "0x1f", "2001-12-14", ".inf", ":symbolish", "a: b", "a #b",
              "- x", "*alias", "!tag", "'q'", " lead", "line\nbreak", "nel\x85x", "ls\u2028x", "del\x7fx", "é😀", "\x00\x1b"]
    data = {"cmd": tricky, "sym": Symbol("worker"), "time": Timestamp(1.7e9), "floats": [1e-05, 2.0], "children": {101: {}}}
    result = subprocess.run([ruby, "-e", RUBY_READS], input=render.to_ruby_yaml(data), capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"cmd": tricky, "sym": ":worker", "time": "Time", "floats": ["Float", "Float"], "pids": ["Integer"]}


def test_bytes_that_were_not_utf8_become_replacement_characters() -> None:
    argument = b"caf\xe9".decode("utf-8", "surrogateescape")  # how Python hands over such an argv
    assert yaml.safe_load(render.to_ruby_yaml({"cmd": [argument]})) == {":cmd": ["caf\ufffd"]}


def test_json_is_utf8_with_bytes_that_were_not_utf8_as_replacement_characters() -> None:
    argument = b"caf\xe9 \xf0\x9f\x98\x80".decode("utf-8", "surrogateescape")
    text = render.to_json({"cmd": [argument]})
    assert "\U0001f600" in text
    assert json.loads(text) == {"cmd": ["caf\ufffd \U0001f600"]}


# --- state_reply: each worker rendered once, reused while it stays the same -------------


def _envelope(request_id: str | int | None) -> Callable[[str], dict[str, object]]:
    from einhorn.io.loop import _envelope

    return lambda text: _envelope(text, request_id, False)


def _state_request(state: State, now: float, wall: float, as_json: bool) -> ReplyData:
    request: dict[str, object] = {"command": "state", "args": ["--json"]} if as_json else {"command": "state"}
    _, effects = step(state, CommandReceived(7, request, now, wall))
    (reply,) = [e for e in effects if isinstance(e, ReplyData)]
    return reply


def _pool_event(state: State, choice: int, now: float) -> State:
    """One change to the pool, picked by `choice`: ACK, ping, signal, exit, or the next spawn."""
    pids = sorted(state.children)
    pid = pids[choice % len(pids)] if pids else 0
    kind = choice % 5
    if kind == 0 and state.pending:
        return step(state, WorkerSpawned(min(state.pending), 5000 + choice, now))[0]
    if kind == 1:
        return step(state, ChildExited(pid, 0, None, now))[0]
    if kind == 2:
        return step(state, CommandReceived(1, {"command": "signal", "args": ["USR2"]}, now))[0]
    command = "worker:ping" if kind == 3 else "worker:ack"
    return step(state, CommandReceived(1, {"command": command, "pid": pid, "request_id": f"r{choice}"}, now))[0]


@given(
    st.lists(st.tuples(st.integers(0, 10**6), st.floats(0.0, 3.0), st.floats(-0.002, 0.002)), max_size=12),
    st.sampled_from([None, "id-1", 5]),
)
def test_the_reply_with_reused_workers_is_the_reply_rendered_afresh(changes: list[tuple[int, float, float]], request_id: str | int | None) -> None:
    state = initial_state(Config(number=6, ack_timer=None, display=Display(command_name="wëb\u2028")))
    state, _ = step(state, MasterStarted(10.0))
    now = 10.0
    for spawn_id in sorted(state.pending):
        state, _ = step(state, WorkerSpawned(spawn_id, 100 + spawn_id, now))
    for choice, elapsed, jitter in [(0, 0.0, 0.0), *changes]:
        now += elapsed
        state = _pool_event(state, choice, now)
        for as_json, later in ((False, 0.0), (True, 0.0), (False, 0.25), (True, 0.25)):  # later: the same pool, a later clock
            data = _state_request(state, now + later, 1_700_000_000.0 + now + later + jitter, as_json).data
            fresh = render.to_json(data) if as_json else render.to_ruby_yaml(data)
            assert render.state_reply(data, as_json, _envelope(request_id)) == encode_message(_envelope(request_id)(fresh))


def test_a_repeated_state_renders_only_the_workers_that_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    state = initial_state(Config(number=4, ack_timer=None))
    state, _ = step(state, MasterStarted(10.0))
    for spawn_id in sorted(state.pending):
        state, _ = step(state, WorkerSpawned(spawn_id, 100 + spawn_id, 10.0))
    rendered: list[int] = []

    def counted(pid: int, entry: Mapping[str, object], indent: int) -> str:
        rendered.append(pid)
        return render._yaml_worker(pid, entry, indent)

    def reply(state: State, now: float) -> bytes:
        return render.state_reply(_state_request(state, now, 1e9 + now, False).data, False, _envelope(None))

    monkeypatch.setattr(render._YAML_WORKERS, "render", counted)
    first = reply(state, 11.0)
    assert sorted(rendered) == [100, 101, 102, 103]
    rendered.clear()
    assert reply(state, 12.0) == first
    assert rendered == []
    state, _ = step(state, CommandReceived(1, {"command": "worker:ack", "pid": 102}, 13.0))
    assert reply(state, 13.0) != first
    assert rendered == [102]
    state, _ = step(state, CommandReceived(1, {"command": "worker:ping", "pid": 101}, 14.0))
    rendered.clear()
    pinged = reply(state, 14.0)
    assert rendered == [101]
    rendered.clear()
    later = reply(state, 15.5)  # only the ping's age differs
    assert rendered == []
    assert later == pinged.replace(b":ping_age: 0.0", b":ping_age: 1.5")
