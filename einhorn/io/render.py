"""Render the core's `state` document as YAML a Ruby client loads with symbols, or as JSON."""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping

import yaml

from einhorn.core.report import Symbol, Timestamp

# libyaml's emitter is ~7x faster than the pure-Python one on a big `state`; same output.
_SafeDumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def to_ruby_yaml(data: Mapping[str, object]) -> str:
    """Keys and `Symbol`s become `:name` plain scalars, which Ruby's YAML loads as Symbols."""
    return yaml.dump(
        _rubyish(data), Dumper=_SafeDumper, default_flow_style=False, sort_keys=False, explicit_start=True
    )


def to_json(data: Mapping[str, object]) -> str:
    return json.dumps(_plain(data), sort_keys=False)


def _rubyish(value: object) -> object:
    if isinstance(value, Mapping):
        return {(f":{k}" if isinstance(k, str) else k): _rubyish(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rubyish(v) for v in value]
    if isinstance(value, Symbol):
        return f":{value.name}"
    if isinstance(value, Timestamp):
        return datetime.datetime.fromtimestamp(value.epoch, tz=datetime.UTC)
    return value


def _plain(value: object) -> object:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Symbol):
        return value.name
    if isinstance(value, Timestamp):
        return datetime.datetime.fromtimestamp(value.epoch, tz=datetime.UTC).isoformat()
    return value
