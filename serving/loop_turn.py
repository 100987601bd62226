"""What else the event loop runs in its current turn: whether deferring work to the turn's end can
gather anything.

An asyncio loop turn runs the callbacks ready at its start; a callback scheduled with `call_soon`
runs after those, and after it come those that the next select, a timer or another thread
(`call_soon_threadsafe`: gRPC's poller) adds. Two places defer work so that what other callbacks
add meanwhile joins it: the micro-batcher (requests into one model run, `serving/batching.py`) and
the Redis pipe (reads into one write, `serving/redis_pipe.py`). When no other callback is ready,
nothing but the callback running now could join, and deferring only costs a loop turn (scorer_queue
and scorer_resume in BENCHMARKS.md's request path: tens to hundreds of µs on the 2-core machine):
both then act at once. Under load other callbacks are always ready, and both defer as before.
"""

from __future__ import annotations

import asyncio
import collections


def nothing_else_ready(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether no other callback waits to run in `loop`'s current turn. CPython's own loops keep
    them in the deque `_ready` (asyncio/base_events.py, 3.8 to 3.13); a loop without one (uvloop)
    answers False, and its callers defer, as they always did."""
    ready = getattr(loop, "_ready", None)
    return isinstance(ready, collections.deque) and not ready
