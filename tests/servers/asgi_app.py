"""The ASGI application of tests/integration/servers.rs, run by gunicorn's
uvicorn.workers.UvicornWorker.

It answers every request with the version found in the file `version` next
to it when it was imported. The version `broken` fails at import, as an
application with a bug at start-up does: a reload to it must roll back.
"""

import os

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "version")) as f:
    VERSION = f.read().strip()

if VERSION == "broken":
    raise RuntimeError("this version of the application is broken on purpose")

BODY = ("hello from version %s\n" % VERSION).encode()


async def application(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(BODY)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": BODY})
