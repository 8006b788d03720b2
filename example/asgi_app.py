"""A minimal ASGI application (for uvicorn, hypercorn, ...): says which process and version answered.

    einhorn -n 4 -b 127.0.0.1:8000,r --listen-fds --graceful-signal TERM -- uvicorn --fd 3 --app-dir example asgi_app:app

docs/servers.md has the command line for each server. `version` is $APP_VERSION (default "1").
"""

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


async def app(scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = f"pid={os.getpid()} version={os.environ.get('APP_VERSION') or '1'}\n".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
