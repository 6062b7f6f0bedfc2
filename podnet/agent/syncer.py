"""A live, in-memory view of the datastore facts the agent programs from.

List, then watch from the next revision: no change is missed between the two.
When the watch falls too far behind (compaction) or the store goes away, the
view keeps its last known content, so the kernel state is left as it is, and
lists again once the store answers.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from podnet.datastore import keys
from podnet.datastore.api import CompactedError, Datastore, DatastoreError
from podnet.datastore.resources import decode_node
from podnet.model import Node

log = logging.getLogger(__name__)


class DatastoreView:
    def __init__(self, store: Datastore, on_change: Callable[[], None]):
        self.store = store
        self.on_change = on_change
        self._lock = threading.Lock()
        self.nodes: dict[str, Node] = {}
        self.affinities: set[tuple[str, str]] = set()
        self.in_sync = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def snapshot(self) -> tuple[list[Node], list[tuple[str, str]]]:
        with self._lock:
            return list(self.nodes.values()), sorted(self.affinities)

    def start(self) -> None:
        for prefix, apply in ((keys.NODES, self._apply_node), (keys.AFFINITY, self._apply_affinity)):
            t = threading.Thread(target=self._follow, args=(prefix, apply), name=f"watch {prefix}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()

    # Each followed prefix: list, then watch; on trouble, list again.

    def _follow(self, prefix: str, apply: Callable) -> None:
        backoff = 0.1
        synced_once = False
        while not self._stop.is_set():
            try:
                kvs, rev = self.store.list(prefix)
                with self._lock:
                    apply(None, None, reset=[(kv.key, kv.value) for kv in kvs])
                self._mark_synced(prefix)
                synced_once = True
                self.on_change()
                backoff = 0.1
                with self.store.watch(prefix, rev + 1) as watch:
                    while not self._stop.is_set():
                        events = watch.next_events(timeout=0.5)
                        if events:
                            with self._lock:
                                for ev in events:
                                    apply(ev.key, ev.value if ev.kind == "put" else None)
                            self.on_change()
            except CompactedError as e:
                log.warning("watch of %s fell behind (%s); listing again", prefix, e)
            except DatastoreError as e:
                log.warning("datastore unavailable while following %s: %s; kernel state kept as is%s",
                            prefix, e, "" if synced_once else " (not yet in sync)")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception:  # never let a watcher thread die silently
                log.exception("unexpected error following %s", prefix)
                self._stop.wait(1.0)

    _synced: set

    def _mark_synced(self, prefix: str) -> None:
        with self._lock:
            synced = getattr(self, "_synced", set())
            synced.add(prefix)
            self._synced = synced
            if len(synced) == 2:
                self.in_sync.set()

    def _apply_node(self, key, value, reset=None) -> None:
        if reset is not None:
            self.nodes = {}
            for k, v in reset:
                self._apply_node(k, v)
            return
        name = key[len(keys.NODES):]
        if value is None:
            self.nodes.pop(name, None)
            return
        try:
            self.nodes[name] = decode_node(value)
        except Exception as e:  # one bad record must not stop the others being programmed
            log.error("ignoring unreadable node record %s: %s", key, e)

    def _apply_affinity(self, key, value, reset=None) -> None:
        if reset is not None:
            self.affinities = set()
            for k, v in reset:
                self._apply_affinity(k, v)
            return
        parsed = keys.parse_affinity(key)
        if parsed is None:
            return
        if value is None:
            self.affinities.discard(parsed)
        else:
            self.affinities.add(parsed)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
