"""`-b ...,drain` listeners: one socket per generation, and a classic-BPF program that picks one for each new connection.

All the sockets of one drain listener are bound to its address with
SO_REUSEPORT and form one reuseport group. The listener's own socket (the one
bound at start, whose fd number workers are told) serves the first version
asked for; any other version gets a socket of its own, bound to the same
address, which its workers receive at that same fd number (`sources`). The
program attached to the group (SO_ATTACH_REUSEPORT_CBPF) returns the index of
the socket a connection goes to: a random number modulo the weights' total,
compared against their running sums.

The kernel numbers a group's sockets in the order they listened; closing one
moves the last into its place (socket(7)). `SteeredListener.group` follows
that order, and after every close the program is attached again with the new
indices. A version's socket is shut down before it is closed, so it leaves
the group even if a straggler still holds a copy.

Everything here survives a re-exec: the extra sockets are hand-off descriptors
(`DRAIN_SOCKET`), the order, the owners and the weights the data under
`HANDOFF_KEY`.
"""

from __future__ import annotations

import array
import os
import socket
import struct
from collections.abc import Iterable, Mapping, Sequence

from einhorn.io.handoff import Descriptor, Handoff
from einhorn.io.logs import Logger

SO_ATTACH_REUSEPORT_CBPF = 51
"""Linux (since 4.5): attach a classic BPF program choosing a reuseport group's socket."""

DRAIN_SOCKET = "drain_socket"
"""The hand-off kind of a generation's own socket on a drain listener."""
HANDOFF_KEY = "steering"

TCP_INFO_SIZE = 104
TCPI_UNACKED = 24
"""struct tcp_info's tcpi_unacked: for a listener, its accept queue's length (sk_ack_backlog)."""
TCPI_SACKED = 28
"""struct tcp_info's tcpi_sacked: for a listener, its backlog (sk_max_ack_backlog)."""

# Classic BPF: ld [SKF_AD_OFF + SKF_AD_RANDOM]; A %= k; jge #k, jt, jf; ret #k.
_LD_RANDOM = (0x20, 0, 0, (-0x1000 + 56) & 0xFFFFFFFF)
_MOD_K = 0x94
_JGE_K = 0x35
_RET_K = 0x06

Weights = tuple[tuple[int, int], ...]


def program(entries: Sequence[tuple[int, int]]) -> list[tuple[int, int, int, int]]:
    """The instructions sending each connection to socket `index` of (index, weight) `entries` in proportion to weight."""
    if len(entries) == 1:
        return [(_RET_K, 0, 0, entries[0][0])]
    code = [_LD_RANDOM, (_MOD_K, 0, 0, sum(weight for _, weight in entries))]
    cumulative = 0
    for index, weight in entries[:-1]:
        cumulative += weight
        code += [(_JGE_K, 1, 0, cumulative), (_RET_K, 0, 0, index)]
    code.append((_RET_K, 0, 0, entries[-1][0]))
    return code


def attach(sock: socket.socket, entries: Sequence[tuple[int, int]]) -> None:
    """Attach `program(entries)` to the reuseport group `sock` listens in; OSError if refused."""
    code = array.array("B", b"".join(struct.pack("HBBI", *instruction) for instruction in program(entries)))
    address, _ = code.buffer_info()  # `code` stays alive (and in place) until setsockopt returns
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, struct.pack("HP", len(code) // 8, address))


def tcp_info_u32(sock: socket.socket, offset: int) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_SIZE)
    return int(struct.unpack_from("I", info, offset)[0])


def queue_length(sock: socket.socket) -> int:
    """Connections the kernel accepted on a listener that no accept() has taken yet."""
    return tcp_info_u32(sock, TCPI_UNACKED)


class SteeredListener:
    """One drain listener: its original socket, each version's socket, their order in the group, the weights."""

    def __init__(self, original: socket.socket) -> None:
        self.original = original
        self.owner: int | None = None
        """The version the original socket serves; None until a version is first asked for (and once it is released)."""
        self.sockets: dict[int, socket.socket] = {}
        """Each other version's own socket."""
        self.group: list[socket.socket] = [original]
        """The group's sockets by the kernel's index."""
        self.weights: Weights = ()
        """The last steering applied; () : all to the original (as attached at bind)."""

    def socket_of(self, version: int) -> socket.socket:
        """`version`'s socket, opened (or the original taken) if it has none."""
        if self.owner == version:
            return self.original
        sock = self.sockets.get(version)
        if sock is not None:
            return sock
        if self.owner is None:
            self.owner = version
            return self.original
        sock = self.sockets[version] = _bind_like(self.original)
        self.group.append(sock)
        return sock

    def queued(self, version: int) -> int:
        sock = self.original if self.owner == version else self.sockets.get(version)
        return 0 if sock is None else queue_length(sock)

    def steer(self, weights: Weights) -> None:
        """Send new connections to the versions of `weights` (each socket opened if missing)."""
        self._attach(weights)
        self.weights = weights

    def release(self, version: int) -> None:
        """`version` has no worker left: its socket leaves the group (the original only loses its owner)."""
        if self.owner == version:
            self.owner = None
            self.weights = tuple((v, w) for v, w in self.weights if v != version)
            return
        sock = self.sockets.pop(version, None)
        if sock is None:
            return
        position = self.group.index(sock)
        last = self.group.pop()
        if last is not sock:
            self.group[position] = last  # the kernel's move (socket(7))
        try:
            sock.shutdown(socket.SHUT_RDWR)  # leaves the group even if some process still holds a copy
        except OSError:
            pass
        sock.close()
        # The indices moved: the steering again, without the version released (were it still named, after a
        # Steer that failed, it must not come back) and opening nothing.
        self.weights = tuple((v, w) for v, w in self.weights if v != version)
        self._attach(self.weights, open_missing=False)

    def _attach(self, weights: Weights, open_missing: bool = True) -> None:
        if open_missing:
            entries = [(self.group.index(self.socket_of(version)), weight) for version, weight in weights]
        else:
            entries = [(self.group.index(sock), weight) for version, weight in weights if (sock := self._held(version)) is not None]
        attach(self.original, entries or [(self.group.index(self.original), 1)])

    def _held(self, version: int) -> socket.socket | None:
        return self.original if self.owner == version else self.sockets.get(version)

    # --- across a re-exec ---------------------------------------------------------

    def descriptors(self) -> list[Descriptor]:
        return [Descriptor(DRAIN_SOCKET, sock.fileno(), {"listener": self.original.fileno(), "version": v}) for v, sock in self.sockets.items()]

    def handoff_data(self) -> dict[str, object]:
        return {
            "listener": self.original.fileno(),
            "owner": self.owner,
            "group": [sock.fileno() for sock in self.group],
            "weights": [list(pair) for pair in self.weights],
        }

    def restore(self, data: Mapping[str, object], sockets: Mapping[int, tuple[int, socket.socket]]) -> None:
        """Adopt the old image's facts (`handoff_data`) and its sockets (fd -> (version, socket)); ValueError if malformed."""
        owner, group, weights = data["owner"], data["group"], data["weights"]
        if not (owner is None or _is_int(owner)) or not isinstance(group, list) or not isinstance(weights, list):
            raise ValueError(f"malformed steering data {dict(data)!r}")
        if not all(_is_int(fd) for fd in group):
            raise ValueError(f"malformed steering group {group!r}")
        by_fd = {self.original.fileno(): self.original, **{fd: sock for fd, (_, sock) in sockets.items()}}
        if sorted(by_fd) != sorted(group) or len(group) != len(set(group)):
            raise ValueError(f"the steering group {group!r} is not the sockets handed over {sorted(by_fd)!r}")
        pairs: list[tuple[int, int]] = []
        for pair in weights:
            if not isinstance(pair, list) or len(pair) != 2 or not all(_is_int(x) and x >= 0 for x in pair):
                raise ValueError(f"malformed steering weights {weights!r}")
            pairs.append((pair[0], pair[1]))
        self.owner = owner if isinstance(owner, int) else None
        self.group = [by_fd[fd] for fd in group]
        self.sockets = {version: sock for version, sock in sockets.values()}
        self.weights = tuple(pairs)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bind_like(original: socket.socket) -> socket.socket:
    """A new socket in `original`'s reuseport group: its family, address, options, backlog and blocking mode;
    not inheritable (only a worker of its version gets it, at the original's fd number)."""
    sock = socket.socket(original.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if original.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if original.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, original.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))
        sock.bind(original.getsockname())
        sock.listen(tcp_info_u32(original, TCPI_SACKED))
        sock.setblocking(os.get_blocking(original.fileno()))
    except BaseException:
        sock.close()
        raise
    return sock


class Steering:
    """Every drain listener of this master, and what the shell does for the Steer, MeasureQueues and ReleaseListeners effects."""

    def __init__(self, originals: Iterable[socket.socket], handoff: Handoff, log: Logger) -> None:
        """The listeners' sockets, with what the old image handed over about them (nothing at a fresh start);
        registered with `handoff` to cross the next re-exec."""
        self.listeners = {sock.fileno(): SteeredListener(sock) for sock in originals}
        self.log = log
        self._restore(handoff)
        handoff.register(self.descriptors)
        handoff.register_data(HANDOFF_KEY, self.handoff_data)

    def sources(self, version: int, listener_fds: Sequence[int]) -> tuple[int, ...]:
        """For a worker of `version`: the fd of the socket it gets at each of `listener_fds` (opening its sockets)."""
        return tuple(fd if fd not in self.listeners else self.listeners[fd].socket_of(version).fileno() for fd in listener_fds)

    def steer(self, weights: Weights) -> None:
        for listener in self.listeners.values():
            try:
                listener.steer(weights)
            except OSError as error:
                self.log.error(f"Could not steer {_name(listener)} to {_shown(weights)} (the last steering stays): {error}")

    def queued(self, version: int) -> int:
        return sum(listener.queued(version) for listener in self.listeners.values())

    def release(self, version: int) -> None:
        for listener in self.listeners.values():
            try:
                listener.release(version)
            except OSError as error:
                self.log.error(f"Could not steer {_name(listener)} again after closing version {version}'s socket: {error}")

    def descriptors(self) -> list[Descriptor]:
        return [d for listener in self.listeners.values() for d in listener.descriptors()]

    def handoff_data(self) -> list[dict[str, object]]:
        return [listener.handoff_data() for listener in self.listeners.values()]

    def _restore(self, handoff: Handoff) -> None:
        restored: dict[int, dict[int, tuple[int, socket.socket]]] = {}
        for descriptor in handoff.claim(DRAIN_SOCKET):
            try:
                sock = socket.socket(fileno=descriptor.fd)
            except OSError as error:
                self.log.error(f"Could not adopt the drain socket {descriptor.fd} handed over by the old master: {error}")
                continue
            sock.set_inheritable(False)
            listener, version = descriptor.data.get("listener"), descriptor.data.get("version")
            if not isinstance(listener, int) or not isinstance(version, int) or listener not in self.listeners:
                self.log.error(f"Closing descriptor {descriptor.fd}: a drain socket of no listener here ({dict(descriptor.data)!r})")
                sock.close()
                continue
            restored.setdefault(listener, {})[descriptor.fd] = (version, sock)
        data = handoff.claim_data(HANDOFF_KEY)
        for item in data if isinstance(data, list) else []:
            if not isinstance(item, Mapping) or not _is_int(item.get("listener")) or item.get("listener") not in self.listeners:
                continue
            listener_fd = item["listener"]
            assert isinstance(listener_fd, int)
            sockets = restored.pop(listener_fd, {})
            try:
                self.listeners[listener_fd].restore(item, sockets)
            except (ValueError, KeyError) as error:
                self.log.error(f"Could not adopt the steering of {_name(self.listeners[listener_fd])}, closing its generations' sockets: {error}")
                for _, sock in sockets.values():
                    sock.close()
        for sockets in restored.values():  # sockets without their listener's facts: unusable
            for _, sock in sockets.values():
                sock.close()


def _name(listener: SteeredListener) -> str:
    from einhorn.io.sockets import listener_address

    return f"the drain listener {listener_address(listener.original)}"


def _shown(weights: Weights) -> str:
    return ", ".join(f"version {version}: {weight}" for version, weight in weights)
