"""The WSGI application of tests/integration/servers.rs, run by gunicorn.

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


def application(environ, start_response):
    start_response(
        "200 OK",
        [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))],
    )
    return [BODY]
