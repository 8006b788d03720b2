"""`einhorn [options] [--] program [args...]`: the command line -> `Settings` -> the master's start-up. No decisions.

    args.py       the option table (parser, value options, help text) and `parse` -> Settings
    settings.py   `Settings`, and the view of it each part gets: the core's Config, WorkerLaunch, ShellOptions
    usage.py      the usage texts
    bootstrap.py  the start-up, fresh or restored after a re-exec; the rescue when the state is unreadable
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from einhorn import __version__
from einhorn.cli import bootstrap
from einhorn.cli.args import UsageError, parse
from einhorn.io.sockets import SetupError


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    environ = dict(os.environ)
    try:
        settings = parse(argv, environ)
    except (UsageError, SetupError) as error:
        print(f"einhorn: {error}", file=sys.stderr)
        return 1
    if settings == "version":
        print(__version__)
        return 0
    if isinstance(settings, str):
        from einhorn.cli.usage import usage_text  # only to print it: a running master need not hold it

        print(usage_text(detailed=settings == "help"))
        return 1
    return bootstrap.start(settings, environ)
