"""The event stream: every observation (einhorn/core/observe.py), one JSON object per line, to each subscriber.

A `subscribe` request makes its command connection a subscriber. Each
observation is sent to every subscriber as one protocol line:

    {"event": "exited", "seq": 42, "time": 1764590000.123, "pid": 1234, ..., "message": "...",
     "request_id": "1", "wait": true}

`seq` counts every observation this master (and the images before it) made,
from 1, without gaps; `time` is the wall clock when the step was handled;
`message` is the same in words (for clients that print messages). With a
request id, each line carries it and `wait`, so a client reading "up to the
first reply without wait" reads the stream until it closes.

The stream crosses a re-exec: the subscribed connections do already (the
command server hands them over), and the sequence number and which of them
are subscribed travel as hand-off data (`HANDOFF_KEY`). The new image's first
observation is the `reexec` itself.

A subscriber that stops reading must never slow the master: once its unsent
output reaches the command server's per-connection limit, it is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from einhorn.core.observe import Observation
from einhorn.core.state import RequestId
from einhorn.io.control import CommandServer
from einhorn.io.logs import Logger

HANDOFF_KEY = "event_stream"


class EventStream:
    def __init__(self, server: CommandServer, log: Logger) -> None:
        self.server = server
        self.log = log
        self.sequence = 0
        """The number of the last observation made (sent or not)."""
        self.subscribers: dict[int, RequestId | None] = {}

    def __bool__(self) -> bool:
        return bool(self.subscribers)

    def subscribe(self, conn: int, request_id: RequestId | None) -> None:
        self.subscribers[conn] = request_id

    def forget(self, conn: int) -> None:
        self.subscribers.pop(conn, None)

    def publish(self, observations: Sequence[Observation], wall: float) -> None:
        """Number the observations and send each to every subscriber (numbered even with none)."""
        for observation in observations:
            self.sequence += 1
            if not self.subscribers:
                continue
            line = line_of(observation, self.sequence, wall)
            for conn, request_id in list(self.subscribers.items()):
                self._send(conn, request_id, line)

    def _send(self, conn: int, request_id: RequestId | None, line: dict[str, object]) -> None:
        unsent = self.server.unsent(conn)
        if unsent is None:
            self.forget(conn)
            return
        if unsent >= self.server.max_output:
            self.log.error(f"[client {conn}] is not reading the event stream ({unsent} bytes unsent); dropping it")
            self.forget(conn)
            self.server.discard(conn)
            return
        message = dict(line)
        if request_id is not None:
            message["request_id"] = request_id
            message["wait"] = True
        self.server.send(conn, message)

    # --- re-exec ------------------------------------------------------------

    def handoff_data(self) -> dict[str, object]:
        return {"sequence": self.sequence, "subscribers": [[conn, request_id] for conn, request_id in self.subscribers.items()]}

    def restore(self, data: object) -> None:
        """Take over the old image's sequence number and subscribers (a malformed document is ignored, logged)."""
        if data is None:
            return
        restored = _restored(data)
        if restored is None:
            self.log.error(f"Could not restore the event stream from {data!r}; its subscribers are no longer subscribed")
            return
        sequence, subscribers = restored
        self.sequence = sequence
        self.subscribers = {conn: rid for conn, rid in subscribers.items() if self.server.unsent(conn) is not None}


def _restored(data: object) -> tuple[int, dict[int, RequestId | None]] | None:
    if not isinstance(data, Mapping):
        return None
    sequence, subscribers = data.get("sequence"), data.get("subscribers")
    if not _is_int(sequence) or not isinstance(subscribers, list):
        return None
    assert isinstance(sequence, int)
    found: dict[int, RequestId | None] = {}
    for item in subscribers:
        if not isinstance(item, list) or len(item) != 2 or not _is_int(item[0]):
            return None
        conn, request_id = item
        if request_id is not None and not isinstance(request_id, (str, int)):
            return None
        found[conn] = request_id
    return sequence, found


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def line_of(observation: Observation, sequence: int, wall: float) -> dict[str, object]:
    line: dict[str, object] = {"event": observation.kind, "seq": sequence, "time": round(wall, 6)}
    for key, value in observation.fields.items():
        if key not in line:
            line[key] = value
    line["message"] = describe(observation, sequence)
    return line


def describe(observation: Observation, sequence: int) -> str:
    shown = " ".join(f"{key}={value}" for key, value in observation.fields.items() if value is not None)
    return f"#{sequence} {observation.kind}" + (f" {shown}" if shown else "")
