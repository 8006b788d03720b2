"""einhorn.core.report.status: the `status` summary, exactly."""

from __future__ import annotations

from einhorn.core.commands import handle_command
from einhorn.core.config import ListenerInfo
from einhorn.core.effects import Reply
from einhorn.core.record import replace
from einhorn.core.report import status
from einhorn.core.state import Child, PendingSpawn, Reexec, ReexecPhase, ReexecPurpose, State, UpgradeKind
from tests.unit.fixtures.core_world import command, make_config


def pool_of(count: int, version: int = 0, **config: object) -> State:
    children = {1000 + n: Child(pid=1000 + n, version=version, index=n, spinup_at=10.0 * n, acked=True) for n in range(count)}
    listeners = (ListenerInfo("AF_INET", "127.0.0.1:8080"), ListenerInfo("AF_UNIX", "/run/app.sock"))
    cfg = make_config(number=count, ack_timer=None, command_name="app", listeners=listeners, **config)
    return State(config=cfg, version=version, children=children, clock=4000.0, last_spinup_at=0.0)


def test_a_steady_pool() -> None:
    state = pool_of(2)
    state = replace(state, children={**state.children, 1001: replace(state.children[1001], pinged_at=3990.0)})
    assert status(state) == (
        "Einhorn 1.1.0, master 100 (app): version 0, 2/2 ACKed at this version, 2 serving, 2 workers in all\n"
        "  version 0 (current): 2 ACKed, 0 un-ACKed, 0 signaled\n"
        "upgrade: none\n"
        "settings: ack manual, signal timeout none, graceful USR2, health rules: none\n"
        "listeners: 127.0.0.1:8080, /run/app.sock\n"
        "index      pid  version      age  ack          ping  signals\n"
        "    0     1000        0    1h06m  yes             -  -\n"
        "    1     1001        0    1h06m  yes           10s  -\n"
    )


def test_an_upgrade_in_progress_shows_both_versions_and_its_progress() -> None:
    state = pool_of(2, version=0)
    new = Child(pid=2000, version=1, index=2, spinup_at=3995.0)
    old = replace(state.children[1000], signaled=frozenset({"USR2"}), last_signaled_at=3999.0)
    state = replace(
        state,
        version=1,
        upgrading=UpgradeKind.SMOOTH,
        children={**state.children, 1000: old, 2000: new},
        pending={5: PendingSpawn(5, 3, 1, 3998.5)},
        deaths_before_ack=3,
        config=replace(state.config, signal_timeout=10),
    )
    text = status(state)
    assert text.splitlines() == [
        "Einhorn 1.1.0, master 100 (app): version 1, 0/2 ACKed at this version, 1 serving, 4 workers in all",
        "  version 1 (current): 0 ACKed, 1 un-ACKed, 0 signaled, 1 spawning",
        "  version 0 (old): 1 ACKed, 0 un-ACKed, 1 signaled",
        "upgrade: smooth upgrade to version 1: 0/2 new workers ACKed, 1 old still serving",
        "deaths before ACK in a row: 3 (crash loop)",
        "settings: ack manual, signal timeout 10s, graceful USR2, health rules: none",
        "listeners: 127.0.0.1:8080, /run/app.sock",
        "index      pid  version      age  ack          ping  signals",
        "    0     1000        0    1h06m  yes             -  USR2",
        "    1     1001        0    1h06m  yes             -  -",
        "    2     2000        1       5s  no              -  -",
        "    3        -        1       1s  spawning        -  -",
    ]


def test_a_reexec_and_a_shutdown_are_phases() -> None:
    state = pool_of(1)
    checking = replace(state, reexec=Reexec(ReexecPurpose.RELOAD, (), 0, 4030.0, ReexecPhase.CHECKING))
    assert "upgrade: re-exec (reload) checking\n" in status(checking)
    assert "upgrade: none (shutting down)\n" in status(replace(state, respawn=False))


def test_sixteen_workers_fit_in_under_25_lines_even_mid_upgrade() -> None:
    """14 old and 2 new workers, with every optional line shown."""
    state = pool_of(14)
    new = {3000 + n: Child(pid=3000 + n, version=1, index=16 + n, spinup_at=3990.0) for n in range(2)}
    state = replace(state, version=1, upgrading=UpgradeKind.SMOOTH, children={**state.children, **new}, deaths_before_ack=1)
    assert len(status(state).splitlines()) < 25


def test_ages() -> None:
    state = pool_of(1)
    for spinup, shown in ((3999.5, "0s"), (3941.0, "59s"), (3400.0, "10m00s"), (4000.0 - 86400 * 3 - 7200, "3d02h")):
        child = replace(state.children[1000], spinup_at=spinup)
        assert status(replace(state, children={1000: child})).splitlines()[-1].split()[3] == shown


def test_the_status_command_replies_with_the_summary() -> None:
    state = pool_of(1)
    _, effects = handle_command(state, command(3, "status", now=4000.0, id="9"))
    assert effects == [Reply(3, status(state), "9")]
