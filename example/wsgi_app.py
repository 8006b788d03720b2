"""A minimal WSGI application (for gunicorn, ...): says which process and version answered.

    einhorn -n 4 -b 127.0.0.1:8000,r --listen-fds -m notify --graceful-signal TERM -- gunicorn -w 1 --chdir example wsgi_app:app

docs/servers.md has the command line for each server. `version` is $APP_VERSION (default "1").
"""

import os
from collections.abc import Callable, Iterable
from typing import Any


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = f"pid={os.getpid()} version={os.environ.get('APP_VERSION') or '1'}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
