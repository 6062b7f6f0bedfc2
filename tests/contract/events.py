"""Reading a datastore watch in tests (contract and fault tests share it)."""

from __future__ import annotations

import time

from podnet.datastore.api import Event


def collect(watch, count: int, timeout: float = 10.0) -> list[Event]:
    """Exactly `count` events (fails on fewer within the timeout)."""
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    while len(events) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"got {len(events)} of {count} events: {events[-5:]}"
        events.extend(watch.next_events(timeout=left))
    return events
