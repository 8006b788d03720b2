"""State <-> plain data (str keys, lists, numbers), for passing state across a re-exec.

The document carries `format`; a newer or older master restores it by filling
missing keys with defaults and dropping unknown ones, and says which in its notes.
Runtime-changeable settings (`inc`, `set_workers`, `config`) travel in the
document and override the command line of the new master.

Format 3 (this one) adds the generations (each with its launch spec), the
rollout in progress, the upgrade options of a re-exec, and each child's
health: `rss_bytes`, `measured_at`, `verdict`, `verdict_at`; a format 2
document has none of them (the new image records the current generation from
its own spec; a format 2 child has no measurement and no verdict). Format 2 has
no child kinds (the state passer is the shell's, not a child), one `reexec`
record with its phase, and monotonic ping times. A format 0 or 1 document is
translated first (`_from_format_1`).
"""

from __future__ import annotations

from collections.abc import Mapping

from einhorn.core.config import RUNTIME_SETTINGS, Config, Pacing, apply_setting
from einhorn.core.record import replace
from einhorn.core.state import (
    Child,
    Generation,
    LaunchSpec,
    PendingSpawn,
    Reexec,
    ReexecPhase,
    ReexecPurpose,
    RequestId,
    Rollout,
    RolloutPhase,
    State,
    Subscriber,
    UpgradeKind,
    UpgradeOptions,
    Verdict,
)

FORMAT = 3

_DEFAULTS: Mapping[str, object] = {
    "format": FORMAT,
    "version": 0,
    "children": [],
    "pending": [],
    "next_spawn_id": 0,
    "respawn": True,
    "upgrading": None,
    "upgrade_subscribers": [],
    "reexec": None,
    "next_check_id": 0,
    "shutdown_signal": None,
    "deaths_before_ack": 0,
    "last_spinup_at": None,
    "clock": 0.0,
    "verbosity": 1,
    "settings": {},
    "generations": [],
    "rollout": None,
}

_CHILD_DEFAULTS: Mapping[str, object] = {
    "pid": 0,
    "version": 0,
    "index": 0,
    "spinup_at": 0.0,
    "acked": False,
    "signaled": [],
    "last_signaled_at": None,
    "killed": False,
    "pinged_at": None,
    "pinged_request_id": None,
    "rss_bytes": None,
    "measured_at": None,
    "verdict": None,
    "verdict_at": None,
}

_HEALTH_KEYS = ("rss_bytes", "measured_at", "verdict", "verdict_at")
"""The child keys format 3 added: a format 2 child is healthy and unmeasured, said nothing about."""


class StateFormatError(ValueError):
    """The document cannot be turned into a state at all."""


def to_plain(state: State) -> dict[str, object]:
    return {
        "format": FORMAT,
        "version": state.version,
        "children": [_child_to_plain(state.children[pid]) for pid in sorted(state.children)],
        "pending": [[p.spawn_id, p.index, p.version, p.requested_at] for _, p in sorted(state.pending.items())],
        "next_spawn_id": state.next_spawn_id,
        "respawn": state.respawn,
        "upgrading": None if state.upgrading is None else state.upgrading.value,
        "upgrade_subscribers": _subscribers_to_plain(state.upgrade_subscribers),
        "reexec": None if state.reexec is None else _reexec_to_plain(state.reexec),
        "next_check_id": state.next_check_id,
        "shutdown_signal": state.shutdown_signal,
        "deaths_before_ack": state.deaths_before_ack,
        "last_spinup_at": state.last_spinup_at,
        "clock": state.clock,
        "verbosity": state.verbosity,
        "settings": {name: _plain_setting(getattr(state.config, name)) for name in RUNTIME_SETTINGS},
        "generations": [_generation_to_plain(g) for g in state.generations],
        "rollout": None if state.rollout is None else _rollout_to_plain(state.rollout),
    }


def _generation_to_plain(generation: Generation) -> dict[str, object]:
    launch = generation.launch
    return {
        "version": generation.version,
        "argv": list(launch.argv),
        "path": launch.path,
        "cwd": launch.cwd,
        "environ": dict(launch.environ),
        "graceful_signal": launch.graceful_signal,
        "rolled_back_because": generation.rolled_back_because,
    }


def _options_to_plain(options: UpgradeOptions) -> dict[str, object]:
    return {"canary": options.canary, "bake": options.bake, "timeout": options.timeout, "env": [list(pair) for pair in options.env]}


def _rollout_to_plain(rollout: Rollout) -> dict[str, object]:
    return {
        "version": rollout.version,
        "previous": rollout.previous,
        "kind": rollout.kind.value,
        "options": _options_to_plain(rollout.options),
        "started_at": rollout.started_at,
        "phase": rollout.phase.value,
        "canaries_started": rollout.canaries_started,
        "canaries_acked": rollout.canaries_acked,
        "bake_until": rollout.bake_until,
        "new_deaths": rollout.new_deaths,
        "last_death": rollout.last_death,
    }


def _plain_setting(value: object) -> object:
    return value.value if isinstance(value, Pacing) else value


def _subscribers_to_plain(subscribers: tuple[Subscriber, ...]) -> list[list[object]]:
    return [[s.conn, s.request_id] for s in subscribers]


def _reexec_to_plain(reexec: Reexec) -> dict[str, object]:
    return {
        "purpose": reexec.purpose.value,
        "subscribers": _subscribers_to_plain(reexec.subscribers),
        "check_id": reexec.check_id,
        "deadline": reexec.deadline,
        "phase": reexec.phase.value,
        "options": None if reexec.options is None else _options_to_plain(reexec.options),
    }


def _child_to_plain(child: Child) -> dict[str, object]:
    return {
        "pid": child.pid,
        "version": child.version,
        "index": child.index,
        "spinup_at": child.spinup_at,
        "acked": child.acked,
        "signaled": sorted(child.signaled),
        "last_signaled_at": child.last_signaled_at,
        "killed": child.killed,
        "pinged_at": child.pinged_at,
        "pinged_request_id": child.pinged_request_id,
        "rss_bytes": child.rss_bytes,
        "measured_at": child.measured_at,
        "verdict": None if child.verdict is None else child.verdict.value,
        "verdict_at": child.verdict_at,
    }


def from_plain(data: object, config: Config) -> tuple[State, list[str]]:
    """Restore a state; the notes list what was defaulted or dropped (empty if nothing)."""
    if not isinstance(data, Mapping):
        raise StateFormatError(f"state document is a {type(data).__name__}, not a mapping")
    given = data.get("format")
    notes: list[str] = []
    if given != FORMAT:
        notes.append(f"format {given!r} restored by format {FORMAT}")
    try:
        number = given if isinstance(given, int) and not isinstance(given, bool) else None
        older = given is None or (number is not None and number < FORMAT)
        if given is None or (number is not None and number < 2):
            data, translated = _from_format_1(data)
            notes += translated
        if older:
            data = _from_format_2(data)
        doc, normalized = _normalize(data, _DEFAULTS, "state")
        notes += normalized
        children: dict[int, Child] = {}
        for raw in _list(doc["children"]):
            child_doc, child_notes = _normalize(_mapping(raw), _CHILD_DEFAULTS, "child")
            notes += [note for note in child_notes if note not in notes]  # once, not once per child
            child = _child_from_plain(child_doc)
            children[child.pid] = child
        pending = {
            int(_num(p[0])): PendingSpawn(int(_num(p[0])), int(_num(p[1])), int(_num(p[2])), float(_num(p[3])))
            for p in (_list(x) for x in _list(doc["pending"]))
        }
        config, setting_notes = _restore_settings(config, _mapping(doc["settings"]))
        notes += setting_notes
        state = State(
            config=config,
            version=int(_num(doc["version"])),
            children=children,
            pending=pending,
            next_spawn_id=int(_num(doc["next_spawn_id"])),
            respawn=_bool(doc["respawn"]),
            upgrading=None if doc["upgrading"] is None else UpgradeKind(doc["upgrading"]),
            upgrade_subscribers=_subscribers(doc["upgrade_subscribers"]),
            reexec=None if doc["reexec"] is None else _reexec_from_plain(_mapping(doc["reexec"])),
            next_check_id=int(_num(doc["next_check_id"])),
            shutdown_signal=None if doc["shutdown_signal"] is None else str(doc["shutdown_signal"]),
            deaths_before_ack=int(_num(doc["deaths_before_ack"])),
            last_spinup_at=_optional_float(doc["last_spinup_at"]),
            clock=float(_num(doc["clock"])),
            verbosity=int(_num(doc["verbosity"])),
            generations=tuple(_generation_from_plain(_mapping(g)) for g in _list(doc["generations"])),
            rollout=None if doc["rollout"] is None else _rollout_from_plain(_mapping(doc["rollout"])),
        )
    except (KeyError, IndexError, TypeError, ValueError) as error:
        raise StateFormatError(f"malformed state document: {error}") from error
    return state, notes


def _restore_settings(config: Config, settings: Mapping[object, object]) -> tuple[Config, list[str]]:
    """The runtime settings of the document over the command line's.

    Restoring `seconds` is not a choice of the interval (`apply_setting` makes
    it one): the pacing is the document's, or the command line's when the
    document has none (a master from before pacing was a setting).
    """
    notes: list[str] = []
    pacing = config.pacing
    for name, value in settings.items():
        updated = apply_setting(config, str(name), value)
        if isinstance(updated, str):
            notes.append(f"ignored setting {name!r}={value!r}: {updated}")
        else:
            config = updated
        if name == "pacing" and not isinstance(updated, str):
            pacing = config.pacing
    return replace(config, pacing=pacing), notes


def _from_format_1(data: Mapping[object, object]) -> tuple[dict[object, object], list[str]]:
    """A format 0/1 document in format 2's terms (a re-exec then was always past its check).

    Its state passer was listed as a child (the shell reaps it now), its ping
    times were wall-clock times (dropped: they cannot be made monotonic).
    """
    doc = dict(data)
    notes: list[str] = []
    children = []
    passers = pings = 0
    for raw in _list(doc.get("children", [])):
        child = dict(_mapping(raw))
        if child.pop("kind", "worker") != "worker":
            passers += 1
            continue
        if child.get("pinged_at") is not None:
            pings += 1
            child["pinged_at"] = None
        children.append(child)
    doc["children"] = children
    if passers:
        notes.append(f"dropped {passers} state passer(s) from the children")
    if pings:
        notes.append(f"dropped {pings} wall-clock ping time(s)")
    purpose = doc.pop("reexec_purpose", None)
    subscribers = doc.pop("reexec_subscribers", [])
    # Past its check, a re-exec's check id and deadline no longer matter: the restore ends it.
    executing = {"purpose": purpose, "subscribers": subscribers, "check_id": 0, "deadline": 0.0, "phase": ReexecPhase.EXECUTING.value}
    doc["reexec"] = None if purpose is None else executing
    doc.setdefault("next_check_id", 0)
    return doc, notes


def _from_format_2(data: Mapping[object, object]) -> dict[object, object]:
    """A format 2 document (or a translated older one) in format 3's terms: no generations yet (the new
    image records the current one), no rollout, no child has a health record."""
    doc = {"generations": [], "rollout": None, **data}
    children = []
    for raw in _list(doc.get("children", [])):
        child = dict(_mapping(raw))
        for key in _HEALTH_KEYS:
            child.setdefault(key, None)
        children.append(child)
    doc["children"] = children
    return doc


def _normalize(data: Mapping[object, object], defaults: Mapping[str, object], what: str) -> tuple[dict[str, object], list[str]]:
    missing = sorted(k for k in defaults if k not in data)
    unknown = sorted(str(k) for k in data if k not in defaults)
    doc = {k: data.get(k, v) for k, v in defaults.items()}
    notes = []
    if missing:
        notes.append(f"{what}: added default values for {missing}")
    if unknown:
        notes.append(f"{what}: deleted unknown values for {unknown}")
    return doc, notes


def _child_from_plain(doc: Mapping[str, object]) -> Child:
    return Child(
        pid=int(_num(doc["pid"])),
        version=int(_num(doc["version"])),
        index=int(_num(doc["index"])),
        spinup_at=float(_num(doc["spinup_at"])),
        acked=_bool(doc["acked"]),
        signaled=frozenset(str(s) for s in _list(doc["signaled"])),
        last_signaled_at=_optional_float(doc["last_signaled_at"]),
        killed=_bool(doc["killed"]),
        pinged_at=_optional_float(doc["pinged_at"]),
        pinged_request_id=None if doc["pinged_request_id"] is None else str(doc["pinged_request_id"]),
        rss_bytes=None if doc["rss_bytes"] is None else int(_num(doc["rss_bytes"])),
        measured_at=_optional_float(doc["measured_at"]),
        verdict=None if doc["verdict"] is None else Verdict(doc["verdict"]),
        verdict_at=_optional_float(doc["verdict_at"]),
    )


def _reexec_from_plain(doc: Mapping[object, object]) -> Reexec:
    options = doc.get("options")  # (absent from format 2)
    return Reexec(
        purpose=ReexecPurpose(doc["purpose"]),
        subscribers=_subscribers(doc["subscribers"]),
        check_id=int(_num(doc["check_id"])),
        deadline=float(_num(doc["deadline"])),
        phase=ReexecPhase(doc["phase"]),
        options=None if options is None else _options_from_plain(_mapping(options)),
    )


def _generation_from_plain(doc: Mapping[object, object]) -> Generation:
    environ = _mapping(doc["environ"])
    launch = LaunchSpec(
        argv=tuple(str(a) for a in _list(doc["argv"])),
        path=str(doc["path"]),
        cwd=str(doc["cwd"]),
        environ=tuple(sorted((str(k), str(v)) for k, v in environ.items())),
        graceful_signal=str(doc["graceful_signal"]),
    )
    because = doc.get("rolled_back_because")
    return Generation(int(_num(doc["version"])), launch, None if because is None else str(because))


def _options_from_plain(doc: Mapping[object, object]) -> UpgradeOptions:
    return UpgradeOptions(
        canary=int(_num(doc["canary"])),
        bake=float(_num(doc["bake"])),
        timeout=_optional_float(doc["timeout"]),
        env=tuple((str(k), str(v)) for k, v in (_list(pair) for pair in _list(doc.get("env", [])))),
    )


def _rollout_from_plain(doc: Mapping[object, object]) -> Rollout:
    return Rollout(
        version=int(_num(doc["version"])),
        previous=int(_num(doc["previous"])),
        kind=UpgradeKind(doc["kind"]),
        options=_options_from_plain(_mapping(doc["options"])),
        started_at=float(_num(doc["started_at"])),
        phase=RolloutPhase(doc["phase"]),
        canaries_started=int(_num(doc["canaries_started"])),
        canaries_acked=int(_num(doc["canaries_acked"])),
        bake_until=_optional_float(doc["bake_until"]),
        new_deaths=int(_num(doc["new_deaths"])),
        last_death=str(doc["last_death"]),
    )


def _subscribers(value: object) -> tuple[Subscriber, ...]:
    result = []
    for item in _list(value):
        conn, request_id = _list(item)
        result.append(Subscriber(int(_num(conn)), _request_id(request_id)))
    return tuple(result)


def _request_id(value: object) -> RequestId | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    return str(value)


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected a boolean, got {value!r}")
    return value


def _num(value: object) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {value!r}")
    return value


def _optional_float(value: object) -> float | None:
    return None if value is None else float(_num(value))


def _list(value: object) -> list[object]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return value


def _mapping(value: object) -> Mapping[object, object]:
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a mapping, got {type(value).__name__}")
    return value
