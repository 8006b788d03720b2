import json
import shutil
import subprocess
import sys

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

import einhorn
from einhorn import restricted_yaml
from einhorn.framing import MAX_DEPTH, MAX_NODES, RequestError, encode_message, escape, unescape
from einhorn.protocol import parse_document, parse_message, request
from tests.unit.test_framing import yamlish_text

BILLION_LAUGHS = (
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
    "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
    "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
    "e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
    "f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"
    "g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n"
    "h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n"
    "i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n"
)

# YAML allows at most 1024 characters for an implicit mapping key, and the
# protocol writes a character in up to 6 (\u0085): keep keys well below that.
json_keys = st.text(max_size=80)
json_scalars = st.none() | st.booleans() | st.integers() | st.text()
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(json_keys, children, max_size=4),
    max_leaves=20,
)
# Characters a YAML loader refuses raw or reads as something else (C0 and C1 controls,
# DEL, the line breaks NEL, LS and PS, the BOM, non-characters), the edges of the planes,
# the framing's escapes, quotes, backslashes and what spells a \\u escape.
YAML_HARD = (
    "\x00\x01\x08\t\n\r\x1b\x1f\x7f\x80\x84\x85\x86\x9f\xa0\xe9\u2028\u2029\ud7ff\ue000"
    "\ufeff\ufffd\ufffe\uffff\U00010000\U0001f600\U0010ffff%250A\"'\\ud8Ux:#{}[], -?&*!|>"
)
yaml_hard_text = st.text(alphabet=st.sampled_from(YAML_HARD)) | st.text()


def wire(text: str) -> bytes:
    return escape(text).encode("utf-8") + b"\n"


def nested_lists(depth: int) -> str:
    return "[" * depth + "]" * depth


# encode_message read back / request


def test_a_lone_surrogate_is_sent_as_the_replacement_character() -> None:
    # How Python hands over bytes that are not UTF-8 (an argv, say): they have no UTF-8 form.
    argument = b"caf\xe9".decode("utf-8", "surrogateescape")
    line = encode_message({"message": argument})
    assert line == b'{"message": "caf\\ufffd"}\n'
    assert parse_message(line) == {"message": "caf\ufffd"}


def yaml_document(line: bytes) -> str:
    """A protocol line as a YAML loader sees it once the framing is undone."""
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    return unescape(line.decode("utf-8").removesuffix("\n"))


@given(yaml_hard_text)
def test_yaml_loaders_read_back_exactly_what_encode_message_wrote(text: str) -> None:
    # The "k" keeps a key from replacing "message"; 100 characters stay under YAML's key limit.
    message = {"message": text, "args": [text, "%0A"], "k" + text[:100]: None}
    for line in (encode_message(message), encode_message(message, compact=True)):
        assert yaml.safe_load(yaml_document(line)) == message
        assert restricted_yaml.load(yaml_document(line)) == message
        assert parse_message(line) == message


RUBY = shutil.which("ruby")
# The original's Transport.deserialize_message, for each line of its input; out comes JSON.
# -E UTF-8 is the client's locale: in a US-ASCII one, Ruby's regexp gsub refuses any line
# that is not ASCII, the original master's own replies with an "é" too.
RUBY_CLIENT_READS = r"""
require "yaml"; require "json"
puts JSON.generate(STDIN.each_line.map { |line|
  begin
    {"value" => YAML.safe_load(line.gsub(/%(25|0A)/, "%25" => "%", "%0A" => "\n"))}
  rescue Psych::SyntaxError => error
    {"error" => error.message}
  end
})
"""


@pytest.mark.skipif(RUBY is None, reason="ruby is not installed (Debian: apt-get install -y ruby)")
@settings(max_examples=40, deadline=None)  # one Ruby process (~0.1 s) reads all lines of an example
@example(list(YAML_HARD) + [YAML_HARD])
@given(st.lists(yaml_hard_text, min_size=1, max_size=40))
def test_ruby_reads_back_exactly_what_encode_message_wrote(texts: list[str]) -> None:
    messages = [{"message": text, "k" + text[:100]: [text]} for text in texts]
    assert RUBY is not None
    result = subprocess.run(
        [RUBY, "-E", "UTF-8", "-e", RUBY_CLIENT_READS],
        input=b"".join(encode_message(message) for message in messages),
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert json.loads(result.stdout) == [{"value": message} for message in messages]


def test_request_builds_the_mapping_clients_send() -> None:
    assert request("signal", ["TERM"], "7", user="alice") == {
        "command": "signal",
        "args": ["TERM"],
        "id": "7",
        "user": "alice",
    }


def test_request_leaves_out_a_missing_id() -> None:
    assert request("ehlo") == {"command": "ehlo", "args": []}


# parse_message: the shapes clients send


@pytest.mark.parametrize(
    "line",
    [
        wire("---\ncommand: worker:ack\npid: 12\n"),
        b'{"command":"worker:ack","pid":12}\n',
        b'{"command": "worker:ack", "pid": 12}\n',
        b'{ "command" : "worker:ack" , "pid" : 12 }',
        b"{command: 'worker:ack', pid: 12}\n",
    ],
    ids=["ruby-and-go-block-yaml", "compact-json", "spaced-json", "loose-json", "flow-yaml"],
)
def test_parse_message_accepts_client_shapes(line: bytes) -> None:
    assert parse_message(line) == {"command": "worker:ack", "pid": 12}


def test_parse_message_reads_a_ruby_block_literal_response() -> None:
    line = wire("---\nmessage: |\n  Welcome alice! 100%\nrequest_id: 3\n")
    assert parse_message(line) == {"message": "Welcome alice! 100%\n", "request_id": 3}


def test_parse_message_keeps_date_like_scalars_as_strings() -> None:
    assert parse_message(b"request_id: 2024-01-31") == {"request_id": "2024-01-31"}


def test_parse_message_joins_json_surrogate_pairs() -> None:
    assert parse_message(b'{"user": "\\ud83e\\udd84"}') == {"user": "\U0001f984"}


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"just a string",
        b"[1, 2]",
        b"{1: one}",
        b"{a: {null: 1}}",
        b"\xff\xfe",
        b"{unclosed: [",
        b"a: 1%0A---%0Ab: 2",
        b"a: !!python/object/apply:os.system [true]",
        b"a: !!binary aGk=",
        b"a: !local x",
        b"a: &anchor 1",
        b"a: *alias",
        b"pid: 0b_",
        b'{"user": "\\ud83e"}',
    ],
)
def test_parse_message_rejects_with_request_error(line: bytes) -> None:
    with pytest.raises(RequestError):
        parse_message(line)


def test_long_keys_parse_on_the_json_path() -> None:
    assert parse_message(encode_message({"k" * 1030: 1})) == {"k" * 1030: 1}


def test_json_fast_path_keeps_the_limits() -> None:
    deep = "{" + '"a":[' * 70 + "1" + "]" * 70 + "}"
    with pytest.raises(RequestError, match="deeper"):
        parse_message(deep.encode())
    with pytest.raises(RequestError, match="surrogate"):
        parse_message(b'{"command": "\\ud800"}')
    with pytest.raises(RequestError, match="nodes"):
        parse_message(encode_message({"args": ["x"] * 20_000}))


@pytest.mark.timeout(5)
def test_parse_message_rejects_an_alias_bomb() -> None:
    with pytest.raises(RequestError, match="aliases"):
        parse_message(wire(BILLION_LAUGHS))


def test_parse_message_accepts_the_maximum_depth() -> None:
    # The top-level mapping is one level.
    message = parse_message(f"a: {nested_lists(MAX_DEPTH - 1)}".encode())
    assert list(message) == ["a"]


def test_parse_message_rejects_one_level_more() -> None:
    with pytest.raises(RequestError, match="nested deeper"):
        parse_message(f"a: {nested_lists(MAX_DEPTH)}".encode())


@pytest.mark.timeout(5)
def test_parse_message_rejects_very_deep_nesting_quickly() -> None:
    with pytest.raises(RequestError, match="nested deeper"):
        parse_message(f"a: {nested_lists(100_000)}".encode())


def test_parse_message_caps_the_number_of_nodes() -> None:
    # The mapping, its key and the list are three nodes.
    parse_message(json.dumps({"a": [0] * (MAX_NODES - 3)}).encode())
    with pytest.raises(RequestError, match="nodes"):
        parse_message(json.dumps({"a": [0] * (MAX_NODES - 2)}).encode())


@given(st.dictionaries(json_keys, json_values))
def test_encode_then_parse_round_trips(message: dict[str, object]) -> None:
    assert parse_message(encode_message(message)) == message


@given(st.binary() | yamlish_text.map(str.encode))
def test_parse_message_raises_nothing_but_request_error(line: bytes) -> None:
    try:
        message = parse_message(line)
    except RequestError:
        return
    assert all(isinstance(key, str) for key in message)


# parse_document (the `config` command's argument)


def test_parse_document_returns_any_json_like_value() -> None:
    assert parse_document("[1, two, {three: 3}]") == [1, "two", {"three": 3}]


def test_parse_document_applies_the_same_restrictions() -> None:
    with pytest.raises(RequestError, match="aliases"):
        parse_document("a: &x 1\nb: *x")


def test_a_yaml_parser_that_cannot_be_loaded_is_a_request_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # The installation changed under a running master: JSON still works, YAML gets an error reply.
    monkeypatch.setitem(sys.modules, "einhorn.restricted_yaml", None)
    monkeypatch.delattr(einhorn, "restricted_yaml", raising=False)  # set by an earlier import
    with pytest.raises(RequestError, match="cannot load the YAML parser"):
        parse_document("command: ehlo")
    assert parse_document('{"command": "ehlo"}') == {"command": "ehlo"}


# integers: no conversion of more digits than Python allows (4,300), either way


@pytest.mark.parametrize(
    "line",
    [
        b'{"command": "ehlo", "id": ' + b"1" * 5000 + b"}",
        b'{"command": "worker:ack", "pid": -' + b"1" * 101 + b"}",
        b"command: ehlo\nid: " + b"1" * 5000,
        b"command: ehlo\nid: 0x" + b"f" * 5000,  # 6,000 decimal digits from 5,000 characters
        b"command: ehlo\nid: 1" + b":59" * 3000,  # sexagesimal: 5,300 digits
        b"command: ehlo\nid: 0b" + b"1_" * 200,
    ],
    ids=["json", "json-negative", "yaml", "yaml-hex", "yaml-sexagesimal", "yaml-binary"],
)
@pytest.mark.timeout(5)
def test_an_integer_of_more_than_100_digits_is_a_request_error(line: bytes) -> None:
    with pytest.raises(RequestError, match="more than 100 digits"):
        parse_message(line.replace(b"\n", b"%0A"))


def test_an_integer_of_100_digits_is_read() -> None:
    assert parse_message(b'{"id": -' + b"9" * 100 + b"}") == {"id": -int("9" * 100)}
    assert parse_message(b"id: 0x" + b"f" * 100) == {"id": int("f" * 100, 16)}
    assert parse_message(b"id: 1_000") == {"id": 1000}


# the master's cap on YAML (a client reading a Ruby master's replies has none)


def test_a_yaml_request_over_max_yaml_is_refused_before_parsing() -> None:
    from einhorn.framing import MAX_YAML, YamlTooLong

    long_yaml = "command: ehlo\nuser: " + "a" * MAX_YAML
    with pytest.raises(YamlTooLong, match=f"at most {MAX_YAML} characters"):
        parse_message(wire(long_yaml), max_yaml=MAX_YAML)
    with pytest.raises(YamlTooLong):
        parse_document("{number: 3, user: " + "a" * MAX_YAML + "}", max_yaml=MAX_YAML)
    assert parse_message(wire(long_yaml))["user"] == "a" * MAX_YAML  # no cap unless asked
    assert parse_message(wire(long_yaml[: MAX_YAML - 1]), max_yaml=MAX_YAML)["command"] == "ehlo"


def test_json_may_be_as_long_as_the_line_under_the_yaml_cap() -> None:
    from einhorn.framing import MAX_YAML

    line = encode_message({"command": "ehlo", "user": "a" * 60_000})
    assert parse_message(line, max_yaml=MAX_YAML)["user"] == "a" * 60_000
