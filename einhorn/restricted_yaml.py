"""The restricted YAML loader behind `einhorn.protocol.parse_document` (see its module doc).

A module of its own so that PyYAML is imported only when a request is not JSON.
It builds on the leaf `einhorn.framing` only, never on `einhorn.protocol`.
"""

import re
from collections.abc import Hashable
from typing import NoReturn

import yaml
import yaml.composer
import yaml.constructor
import yaml.nodes

from einhorn.framing import MAX_DEPTH, MAX_INT_DIGITS, MAX_NODES, RequestError, join_surrogate_pairs

_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"


def load(text: str) -> object:
    try:
        return yaml.load(text, Loader=_RestrictedLoader)
    except yaml.YAMLError as error:
        raise RequestError(f"not valid YAML: {error}") from error
    except ValueError as error:
        # PyYAML's int constructor raises ValueError on some scalars its own
        # resolver accepts, such as "0b_" or "0x_".
        raise RequestError(f"malformed value: {error}") from error


def _without_timestamps(
    resolvers: dict[str, list[tuple[str, re.Pattern[str]]]],
) -> dict[str, list[tuple[str, re.Pattern[str]]]]:
    return {
        first: [(tag, regexp) for tag, regexp in candidates if tag != _TIMESTAMP_TAG]
        for first, candidates in resolvers.items()
    }


class _RestrictedLoader(yaml.SafeLoader):
    """A SafeLoader for untrusted single-line requests (see the module doc)."""

    # Plain scalars that look like dates stay strings: values must be JSON-like.
    yaml_implicit_resolvers = _without_timestamps(yaml.SafeLoader.yaml_implicit_resolvers)

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._node_count = 0

    def compose_node(self, parent: yaml.nodes.Node | None, index: int) -> yaml.nodes.Node | None:
        # peek_event is untyped in types-PyYAML.
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            self._refuse("anchors and aliases are not allowed")
        if getattr(event, "tag", None) is not None:
            self._refuse("tags are not allowed")
        self._node_count += 1
        if self._node_count > MAX_NODES:
            self._refuse(f"more than {MAX_NODES} nodes")
        if self._depth >= MAX_DEPTH:
            self._refuse(f"nested deeper than {MAX_DEPTH} levels")
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def _refuse(self, problem: str) -> NoReturn:
        raise yaml.composer.ComposerError(None, None, problem, self.get_mark())

    def construct_scalar(self, node: yaml.nodes.ScalarNode | yaml.nodes.MappingNode) -> str:
        value = super().construct_scalar(node)
        try:
            return join_surrogate_pairs(value)
        except UnicodeDecodeError:
            raise yaml.constructor.ConstructorError(
                None, None, "unpaired surrogate in string", node.start_mark
            ) from None

    def construct_yaml_int(self, node: yaml.nodes.ScalarNode) -> int:
        # Before PyYAML converts: int() refuses more than 4,300 digits, and a sexagesimal
        # ("1:59:59:...") or hexadecimal literal yields a number longer than its text.
        text = str(node.value).replace("_", "").lstrip("+-")
        if len(text) > MAX_INT_DIGITS + 2:  # "0x", "0b", "0o"
            raise yaml.constructor.ConstructorError(
                None, None, f"an integer with more than {MAX_INT_DIGITS} digits", node.start_mark
            )
        value: int = super().construct_yaml_int(node)
        return value

    def construct_mapping(
        self, node: yaml.nodes.MappingNode, deep: bool = False
    ) -> dict[Hashable, object]:
        mapping = super().construct_mapping(node, deep=deep)
        for key in mapping:
            if not isinstance(key, str):
                raise yaml.constructor.ConstructorError(
                    None, None, f"mapping key {key!r} is not a string", node.start_mark
                )
        return mapping


_RestrictedLoader.add_constructor("tag:yaml.org,2002:int", _RestrictedLoader.construct_yaml_int)
