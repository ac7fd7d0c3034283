"""OpenAI's Responses API (``/v1/responses``) over the same ensembles and the same request path as chat completions.

schema.py   the request: fields honoured, ignored, refused; its translation into the chat request (``ParsedChat``)
items.py    input items, as checked and stored, and their chat messages
objects.py  the response object (``resp_...``): in progress, completed, incomplete, failed; usage
events.py   the streamed semantic events, numbered
routes.py   the handlers: create, retrieve, delete, input items; the tenant of a request
store/      stored responses: SQLite (the default) or Redis
"""
