"""The OpenAI-compatible server over moa ensembles (``moa serve``).

app.py      the aiohttp application and its middlewares
protocol.py aiohttp's connection layer, answering what it refuses itself with OpenAI error bodies
ids.py      request ids (x-request-id) and the log lines that carry them
routes.py   the handlers
schema.py   the chat request: fields honoured, ignored, refused
choices.py  running the n choices of a request
streaming.py  server-sent events
errors.py   the one exception -> status map
metrics.py  /metrics through prometheus_client
auth.py     API keys
run.py      listening, signals, draining
"""

from __future__ import annotations

from moa.server.app import create_app
from moa.server.run import serve
from moa.server.state import ServerSettings

__all__ = ["create_app", "serve", "ServerSettings"]
