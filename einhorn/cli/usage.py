"""The usage texts: `-h` (detailed) and the short one printed when no program is given."""

from __future__ import annotations

from einhorn.cli.args import OPTION_HELP

USAGE_HEAD = """## Usage

Einhorn is the language-independent shared socket manager. Run
`einhorn -h` to see detailed usage. At a high level, usage looks like
the following:
"""

HELP_HEAD = """## Usage

Einhorn is the language-independent shared socket manager. At a high
level, usage looks like the following:
"""

USAGE_BODY = """
    einhorn [options] program

Einhorn will open one or more shared sockets and run multiple copies
of your process. You can seamlessly reload your code, dynamically
reconfigure Einhorn, and more.
"""

LONG_USAGE = """
## Overview

To set Einhorn up as a master process running 3 copies of `sleep 5`:

    $ einhorn -n 3 sleep 5

You can then communicate with your running Einhorn process via `einhornsh`:

    $ einhornsh
    > help

### Server sockets

If your process is a server and listens on one or more sockets, Einhorn can
open these sockets and pass them to the workers. `-b 127.0.0.1:5000,r` binds
with SO_REUSEADDR (flags: r/so_reuseaddr, n/o_nonblock); each worker finds the
file descriptor numbers in EINHORN_FD_0, EINHORN_FD_1, ... (their families in
EINHORN_FD_FAMILY_0, ...: AF_INET, AF_INET6, AF_UNIX), their count in
EINHORN_FD_COUNT, and all of them space-separated in EINHORN_FDS (legacy).
`-b [::1]:0`, `-b unix:/run/app.sock,mode=0660` and `-b systemd[:NAME]` (the
sockets of a systemd socket unit) work the same; `--listen-fds` also hands
workers systemd's convention (fds 3, 4, ...; LISTEN_FDS, LISTEN_PID), so that
servers such as uvicorn, hypercorn and gunicorn run unmodified.

### Command socket

Einhorn opens a UNIX socket (-d, default $TMPDIR/einhorn[-NAME].sock) that
only its own user may use. `einhornsh` talks to it; workers ACK through it.

### Seamless upgrades

`einhornsh upgrade` (or SIGHUP) re-execs the master with its state, spawns
new workers and sends SIGUSR2 (or the --graceful-signal) to each old worker as
a new one ACKs. It should be interpreted as a request for a graceful shutdown.

### ACKs

With `-m manual` a worker is counted up only once it sends
{"command":"worker:ack","pid":PID} to the command socket (the Python
library: `einhorn.worker.ack()`). With `-m notify` a worker is counted up once
it sends sd_notify's READY=1 to the NOTIFY_SOCKET einhorn gives it. The default
is a timer ACK of 1 second.

### systemd and containers

With NOTIFY_SOCKET set (a `Type=notify` service), einhorn tells systemd when it
is ready, reloading and stopping; its pid never changes, so
`ExecReload=kill -HUP $MAINPID` is a smooth upgrade. As PID 1 (or with
`--subreaper`) it reaps orphans and treats SIGTERM as a graceful shutdown.
"""


def usage_text(detailed: bool) -> str:
    """`-h` (detailed) or the usage printed when no program is given, which points at `-h`."""
    if detailed:
        return HELP_HEAD + USAGE_BODY + LONG_USAGE + "\n" + OPTION_HELP
    return USAGE_HEAD + USAGE_BODY + "\n" + OPTION_HELP
