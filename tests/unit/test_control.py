"""The command server's pure decisions (`einhorn.io.control`): who may command, what a `config` request carries."""

import pytest

from einhorn.core.commands import ConfigDocumentError
from einhorn.io.control import config_document, may_command


@pytest.mark.parametrize(
    ("peer_uid", "master_uid", "allowed"),
    [
        (1000, 1000, True),  # the master's own user
        (0, 1000, True),  # root
        (1001, 1000, False),
        (1000, 0, False),  # a master running as root: root only
        (0, 0, True),
    ],
)
def test_only_the_masters_user_or_root_may_command(peer_uid: int, master_uid: int, allowed: bool) -> None:
    assert may_command(peer_uid, master_uid) is allowed


def test_a_config_request_carries_its_arguments_as_one_yaml_document() -> None:
    assert config_document({"command": "config", "args": ["{number:", "3,", "seconds: 0.5}"]}) == {"number": 3, "seconds": 0.5}
    assert config_document({"command": "config", "args": ['{"number": 3}']}) == {"number": 3}


def test_a_config_document_that_does_not_parse_is_an_error_for_the_core() -> None:
    document = config_document({"command": "config", "args": ["a: &x 1"]})
    assert isinstance(document, ConfigDocumentError)
    assert "anchors and aliases are not allowed" in document.reason


@pytest.mark.parametrize(
    "request_",
    [
        {"command": "state", "args": ["number: 3"]},
        {"command": "config"},
        {"command": "config", "args": "number: 3"},
        {"command": "config", "args": ["number:", 3]},
    ],
    ids=["another-command", "no-args", "args-not-a-list", "an-arg-not-a-string"],
)
def test_no_config_document_outside_config_requests_with_string_args(request_: dict[str, object]) -> None:
    assert config_document(request_) is None
