"""The path of one backend call: small layers, each wrapping the next, as httpx's client does.

Every call (a whole chat call, a stream, an embeddings call) takes the same path, outermost first:

    hedged      (hedge.py)   a second lane when the first is slow; the first to send something wins
    budgeted    (record.py)  the call's worst case held against the request's budget, settled at its cost
    traced      (span.py)    a traced request's CLIENT span (added only when the request has a span)
    recorded    (record.py)  progress events and the call's one trace record, however it ends
    retrying    (retry.py)   a new attempt after a failure before the first item, as ``retry_delay`` decides
    checked / joined         a whole answer checked (it has choices); a whole call made as a stream joined
    limited     (attempt.py) a slot of the backend's limits, its tokens settled when the attempt ends
    timed       (attempt.py) the per-call timeout on the wait for each item, around the proposer's call

A layer is a ``Send``: the call's ``CallState`` in, its items out (an async generator). A whole call is a
stream of one item (``moa.backend`` reads it to its end); a stream's items are its deltas. ``moa.backend``
builds the path for each call from its ``Call`` (what is sent, where it sits, the request's context).
"""
