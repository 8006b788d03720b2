"""The wire framing (`einhorn.framing`): escaping, the YAML-safe JSON, surrogates, the line buffer and its limits."""

import json
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from einhorn.framing import (
    DEFAULT_MAX_LINE,
    LineBuffer,
    LineTooLong,
    RequestError,
    encode_message,
    escape,
    has_surrogate,
    join_surrogate_pairs,
    unescape,
    yaml_safe_json,
)

# Characters that steer generated text into YAML syntax and the escapes.
yamlish_text = st.text(alphabet=st.sampled_from("{}[]:,-?&*!|>'\"#%250Aab \n\t"))


# escape / unescape


def test_escape_writes_percent_and_newline_as_hex() -> None:
    assert escape("100%\nsure") == "100%25%0Asure"


def test_unescape_accepts_lowercase_hex() -> None:
    assert unescape("a%0ab%0Ac%25") == "a\nb\nc%"


def test_unescape_leaves_other_percent_sequences_alone() -> None:
    assert unescape("%41 %2 %0B %") == "%41 %2 %0B %"


def test_unescape_decodes_an_escaped_escape_once() -> None:
    assert unescape("%250A") == "%0A"


@given(st.text() | yamlish_text)
def test_escape_round_trips_and_stays_on_one_line(text: str) -> None:
    escaped = escape(text)
    assert "\n" not in escaped
    assert unescape(escaped) == text

@pytest.mark.parametrize("text", ["%0A", "%25", "%250A", "\n%", "%%0A0A", "%0a", "\n\n", "%"])
def test_escape_round_trips_what_looks_like_an_escape(text: str) -> None:
    assert "\n" not in escape(text)
    assert unescape(escape(text)) == text


# encode_message


def test_encode_message_is_one_json_line() -> None:
    # JSON already writes a newline inside a string as the two characters \n.
    assert encode_message({"message": "50%\ndone", "wait": True}) == (
        b'{"message": "50%25\\ndone", "wait": true}\n'
    )


def test_encode_message_writes_utf8_and_escapes_only_what_yaml_refuses_raw() -> None:
    # DEL is no YAML character, NEL and LS are line breaks, a BOM is none either.
    assert encode_message({"user": "jos\u00e9 \U0001f600", "m": "\x7f\x85\u2028\ufeff"}) == (
        '{"user": "jos\u00e9 \U0001f600", "m": "\\u007f\\u0085\\u2028\\ufeff"}\n'.encode()
    )


def test_encode_message_can_leave_out_the_spaces() -> None:
    assert encode_message({"command": "worker:ack", "pid": 7}, compact=True) == (
        b'{"command":"worker:ack","pid":7}\n'
    )

# yaml_safe_json


# What YAML refuses raw or reads as something else: C0 controls (JSON escapes them), DEL, C1
# controls, the line breaks NEL, LS and PS, the byte order mark and the non-characters FFFE/FFFF.
REFUSED_RAW = ["\x00", "\x1f", "\x7f", "\x80", "\x85", "\x9f", "\u2028", "\u2029", "\ufeff", "\ufffe", "\uffff"]


@pytest.mark.parametrize("character", REFUSED_RAW)
def test_yaml_safe_json_writes_what_yaml_refuses_raw_as_a_unicode_escape(character: str) -> None:
    text = yaml_safe_json(character)
    assert text == f'"\\u{ord(character):04x}"'
    assert json.loads(text) == character


@pytest.mark.parametrize("character", ["\t", "\xa0", "\xe9", "\ud7ff", "\ue000", "\ufffd", "\U00010000", "\U0010ffff"])
def test_yaml_safe_json_keeps_yaml_printable_characters_raw(character: str) -> None:
    text = yaml_safe_json(character)
    assert text == json.dumps(character, ensure_ascii=False)
    assert json.loads(text) == character


def test_yaml_safe_json_writes_a_lone_surrogate_as_the_replacement_character() -> None:
    assert yaml_safe_json(["\ud800", "\udfff"]) == '["\\ufffd", "\\ufffd"]'


def test_yaml_safe_json_can_leave_out_the_spaces() -> None:
    assert yaml_safe_json({"a": [1, 2]}, compact=True) == '{"a":[1,2]}'
    assert yaml_safe_json({"a": [1, 2]}) == '{"a": [1, 2]}'


# surrogates


def utf16_halves(text: str) -> str:
    """``text`` with each character outside the BMP as its two surrogates, as YAML decodes JSON's \\u pairs."""
    units = text.encode("utf-16-le")
    return "".join(chr(int.from_bytes(units[i : i + 2], "little")) for i in range(0, len(units), 2))


def test_has_surrogate_finds_either_half() -> None:
    assert has_surrogate("a\ud83e")
    assert has_surrogate("\udd84b")
    assert not has_surrogate("\U0001f984\ud7ff\ue000")


def test_join_surrogate_pairs_makes_one_character_of_a_pair() -> None:
    assert join_surrogate_pairs("a\ud83e\udd84b") == "a\U0001f984b"


@pytest.mark.parametrize("text", ["\ud83e", "\udd84", "\udd84\ud83e", "\ud83e\ud83e", "a\ud800b"])
def test_join_surrogate_pairs_refuses_an_unpaired_surrogate(text: str) -> None:
    with pytest.raises(ValueError):
        join_surrogate_pairs(text)


@given(st.text())  # hypothesis leaves out surrogates, as decoded UTF-8 does
def test_join_surrogate_pairs_undoes_utf16_halves_and_leaves_other_text_alone(text: str) -> None:
    assert join_surrogate_pairs(text) == text
    assert join_surrogate_pairs(utf16_halves(text)) == text


# LineBuffer


def test_line_buffer_reassembles_a_request_split_across_writes() -> None:
    buffer = LineBuffer()
    assert buffer.feed(b'{"command":') == []
    assert buffer.feed(b' "ehlo"') == []
    assert buffer.feed(b"}\n") == [b'{"command": "ehlo"}']


def test_line_buffer_splits_several_requests_in_one_write() -> None:
    buffer = LineBuffer()
    assert buffer.feed(b"one\ntwo\n\nthr") == [b"one", b"two", b""]
    assert buffer.feed(b"ee\n") == [b"three"]


def test_line_buffer_accepts_a_line_of_exactly_max_line() -> None:
    assert LineBuffer(max_line=4).feed(b"abcd\n") == [b"abcd"]


def test_line_buffer_refuses_a_complete_line_over_max_line() -> None:
    with pytest.raises(LineTooLong):
        LineBuffer(max_line=4).feed(b"ok\nabcde\n")


def test_line_buffer_refuses_two_mebibytes_before_the_newline_arrives() -> None:
    buffer = LineBuffer()
    chunk = b"x" * 65536
    with pytest.raises(LineTooLong):
        for _ in range(32):
            buffer.feed(chunk)


def test_line_buffer_is_unusable_after_overflowing() -> None:
    buffer = LineBuffer(max_line=4)
    with pytest.raises(LineTooLong):
        buffer.feed(b"abcdef")
    with pytest.raises(LineTooLong):
        buffer.feed(b"\nok\n")


@given(
    st.lists(st.binary(max_size=20).map(lambda line: line.replace(b"\n", b""))),
    st.binary(max_size=20).map(lambda tail: tail.replace(b"\n", b"")),
    st.data(),
)
def test_line_buffer_yields_exactly_the_lines_however_the_stream_is_cut(
    lines: list[bytes], unfinished_tail: bytes, data: st.DataObject
) -> None:
    stream = b"".join(line + b"\n" for line in lines) + unfinished_tail
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)))))
    chunks = [stream[start:end] for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    buffer = LineBuffer(max_line=20)
    received = [line for chunk in chunks for line in buffer.feed(chunk)]
    assert received == lines

STREAM = b'{"command": "ehlo"}\n\n---%0Acommand: state\nfi\xc3\xa9\n{"unfinished'


@pytest.mark.parametrize("cut", range(len(STREAM) + 1))
def test_line_buffer_yields_the_same_lines_wherever_one_write_ends(cut: int) -> None:
    buffer = LineBuffer()
    assert buffer.feed(STREAM[:cut]) + buffer.feed(STREAM[cut:]) == [
        b'{"command": "ehlo"}',
        b"",
        b"---%0Acommand: state",
        b"fi\xc3\xa9",
    ]
    assert buffer.pending == b'{"unfinished'


def test_line_buffer_fed_one_byte_at_a_time() -> None:
    buffer = LineBuffer(max_line=20)
    received = [line for i in range(len(STREAM)) for line in buffer.feed(STREAM[i : i + 1])]
    assert received == [b'{"command": "ehlo"}', b"", b"---%0Acommand: state", b"fi\xc3\xa9"]
    assert buffer.pending == b'{"unfinished'


def test_line_buffer_holds_an_unfinished_line_of_exactly_max_line() -> None:
    buffer = LineBuffer(max_line=4)
    assert buffer.feed(b"ab") == []
    assert buffer.feed(b"cd") == []
    assert buffer.pending == b"abcd"
    assert buffer.feed(b"\n") == [b"abcd"]


def test_line_buffer_refuses_an_unfinished_line_one_byte_over_max_line() -> None:
    buffer = LineBuffer(max_line=4)
    buffer.feed(b"abcd")
    with pytest.raises(LineTooLong):
        buffer.feed(b"e")
    assert buffer.pending == b""


def test_line_buffer_limits_each_line_not_each_write() -> None:
    assert LineBuffer(max_line=4).feed(b"abcd\n" * 100) == [b"abcd"] * 100


def test_line_buffer_default_limit_is_one_mebibyte() -> None:
    assert LineBuffer().feed(b"x" * DEFAULT_MAX_LINE + b"\n") == [b"x" * DEFAULT_MAX_LINE]
    with pytest.raises(LineTooLong):
        LineBuffer().feed(b"x" * (DEFAULT_MAX_LINE + 1))


def test_a_line_too_long_is_a_request_error() -> None:
    # Clients and the command server catch RequestError for every bad line.
    assert issubclass(LineTooLong, RequestError)


# the import graph


@pytest.mark.parametrize(
    ("module", "loaded"),
    [
        ("einhorn.framing", ["einhorn", "einhorn.framing"]),
        ("einhorn.restricted_yaml", ["einhorn", "einhorn.framing", "einhorn.restricted_yaml"]),
        ("einhorn.protocol", ["einhorn", "einhorn.framing", "einhorn.protocol"]),
    ],
)
def test_the_framing_is_a_leaf_under_the_protocol_and_the_yaml_loader(module: str, loaded: list[str]) -> None:
    probe = f"import sys, {module}; print(*sorted(name for name in sys.modules if name.startswith('einhorn')))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.split() == loaded
