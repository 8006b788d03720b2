"""The `state` document as Ruby clients and scripts see it."""

from __future__ import annotations

import json

import yaml

from einhorn.core.config import Config
from einhorn.core.events import MasterStarted, WorkerSpawned
from einhorn.core.report import snapshot
from einhorn.core.state import initial_state
from einhorn.core.step import step
from einhorn.io import render


def _report() -> dict[str, object]:
    state = initial_state(Config(number=2, command_name="web", bound_ports=(8080,)))
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


def test_c_and_python_dumpers_agree() -> None:
    data = render._rubyish(_report())
    fast = yaml.dump(data, Dumper=render._SafeDumper, default_flow_style=False, sort_keys=False, explicit_start=True)
    slow = yaml.dump(data, Dumper=yaml.SafeDumper, default_flow_style=False, sort_keys=False, explicit_start=True)
    assert fast == slow


def test_json_has_plain_keys_and_iso_times() -> None:
    document = json.loads(render.to_json(_report()))
    child = document["state"]["children"]["101"]
    assert child["type"] == "worker"
    assert child["spinup_time"] == "2023-11-14T22:13:30+00:00"
    assert document["state"]["ack_mode"] == {"type": "timer", "timeout": 1.0}
