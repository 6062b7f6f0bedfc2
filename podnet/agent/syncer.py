"""A live, in-memory view of the datastore facts the agent programs from.

The followed prefixes are listed, then watched from the next revision, so no
change slips between the two. When a watch falls too far behind (compaction)
or the store goes away, the view keeps its last known content, so the kernel
state is left as it is, and lists again once the store answers.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Callable

from podnet.datastore import keys
from podnet.datastore.api import CompactedError, Datastore, DatastoreError
from podnet.datastore.resources import decode_agent_config, decode_node, decode_pool
from podnet.model import Block, IPPool, Node

log = logging.getLogger(__name__)


def _decode_affinity(key: str, value: bytes):
    return keys.parse_affinity(key)


def _decode_borrowed(key: str, value: bytes):
    """Addresses of a block in use by a node other than the block's owner."""
    return tuple(Block.from_json(value).borrowed().items())


_ABSENT = object()


def _toggle_small(index: dict[str, tuple], key: str, item: str, add: bool) -> None:
    """_toggle for the few items a key has (a node's blocks: IPAM bounds them), kept as a tuple: a
    set costs 216 bytes, a tuple of two 56, and 10,000 nodes each have one."""
    items = index.get(key, ())
    if add:
        if item not in items:
            index[key] = items + (item,)
    elif item in items:
        left = tuple(i for i in items if i != item)
        if left:
            index[key] = left
        else:
            del index[key]


def _toggle(index: dict[str, set], key: str, item: str, add: bool) -> None:
    if add:
        index.setdefault(key, set()).add(item)
    else:
        items = index.get(key)
        if items is not None:
            items.discard(item)
            if not items:
                del index[key]


FOLLOWED = {
    "nodes": (keys.NODES, lambda k, v: decode_node(v)),
    "pools": (keys.POOLS, lambda k, v: decode_pool(v)),
    "affinities": (keys.AFFINITY, _decode_affinity),
    "blocks": (keys.IPAM + "assignment/", _decode_borrowed),
    "configs": (keys.AGENT_CONFIGS, lambda k, v: decode_agent_config(v)),
}


@dataclass
class Snapshot:
    nodes: list[Node] = field(default_factory=list)
    pools: list[IPPool] = field(default_factory=list)
    affinities: list[tuple[str, str]] = field(default_factory=list)
    borrowed: list[tuple[str, str]] = field(default_factory=list)  # (ip, node using it)
    configs: list = field(default_factory=list)  # AgentConfiguration resources


class DatastoreView:
    def __init__(self, store: Datastore, on_change: Callable[[], None]):
        self.store = store
        self.on_change = on_change
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, object]] = {name: {} for name in FOLLOWED}
        self.in_sync = threading.Event()
        self._stop = threading.Event()
        # Indexes by node, kept as records come and go, so the agent can recompute one node.
        self._node: dict[str, Node] = {}
        self._blocks: dict[str, tuple[str, ...]] = {}  # node -> CIDRs of the blocks it has affinity to
        self._borrowed: dict[str, set[str]] = {}  # node -> addresses it uses in others' blocks
        # What changed since the agent last asked: every node (True), or these node names.
        self._changed_all = True
        self._changed: set[str] = set()

    def take_changes(self) -> tuple[bool, set[str]]:
        """(everything changed, names of the nodes whose facts changed) since the last call:
        pools, agent configurations and a new listing change everything."""
        with self._lock:
            out = (self._changed_all, self._changed)
            self._changed_all, self._changed = False, set()
            return out

    def node_facts(self, name: str) -> tuple[Node | None, tuple[str, ...], tuple[str, ...]]:
        """(the node's record, its blocks, the addresses it uses in other nodes' blocks)."""
        with self._lock:
            return (self._node.get(name), tuple(sorted(self._blocks.get(name, ()))),
                    tuple(sorted(self._borrowed.get(name, ()))))

    def cluster_facts(self) -> tuple[list[IPPool], list]:
        """(pools, agent configurations): what every node's entries depend on."""
        with self._lock:
            return list(self._data["pools"].values()), list(self._data["configs"].values())

    def node_names(self) -> set[str]:
        with self._lock:
            return set(self._node) | set(self._blocks) | set(self._borrowed)

    def _index(self, name: str, old, new) -> None:
        """Keep the by-node indexes and the change record right for one record's change."""
        if name in ("pools", "configs"):
            self._changed_all = True
            return
        for value, add in ((old, False), (new, True)):
            if value is _ABSENT or value is None:
                continue
            if name == "nodes":
                if add:
                    self._node[value.name] = value
                elif self._node.get(value.name) is value:
                    del self._node[value.name]
                self._changed.add(value.name)
            elif name == "affinities":
                node, cidr = value
                _toggle_small(self._blocks, node, cidr, add)
                self._changed.add(node)
            elif name == "blocks":
                for ip, user in value:
                    _toggle(self._borrowed, user, ip, add)
                    self._changed.add(user)

    def snapshot(self) -> Snapshot:
        with self._lock:
            d = self._data
            return Snapshot(
                nodes=list(d["nodes"].values()),
                pools=list(d["pools"].values()),
                affinities=sorted(a for a in d["affinities"].values() if a),
                borrowed=sorted(b for group in d["blocks"].values() for b in group),
                configs=list(d["configs"].values()),
            )

    def start(self) -> None:
        threading.Thread(target=self._follow, name="datastore watch", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _put(self, name: str, key: str, value: bytes | None) -> bool:
        """Apply one record to its table; True if what the agent programs from changed.
        Most block writes (every pod ADD anywhere) change no borrowed address: no reconcile."""
        _, decode = FOLLOWED[name]
        table = self._data[name]
        old = table.get(key, _ABSENT)
        if value is None:
            table.pop(key, None)
            self._index(name, old, _ABSENT)
            return old is not _ABSENT
        try:
            new = decode(key, value)
        except Exception as e:  # one bad record must not stop the others being programmed
            log.error("ignoring unreadable record %s: %s", key, e)
            table.pop(key, None)
            self._index(name, old, _ABSENT)
            return old is not _ABSENT
        table[key] = new
        if new != old:
            self._index(name, old, new)
        return new != old

    def _clear_index(self, name: str) -> None:
        index = {"nodes": self._node, "affinities": self._blocks, "blocks": self._borrowed}.get(name)
        if index is not None:
            index.clear()
        self._changed_all = True

    @staticmethod
    def _table_of(key: str) -> str | None:
        for name, (prefix, _) in FOLLOWED.items():
            if key.startswith(prefix):
                return name
        return None

    def _follow(self) -> None:
        """List every followed prefix, then watch them all through one watch on the common root.

        One watch per agent, not one per prefix: an idle agent then polls (SQLite) or
        streams (etcd) once. An event no newer than the listing of its prefix is already
        in the table and is skipped, so listing prefixes one after another is safe."""
        backoff = 0.1
        while not self._stop.is_set():
            try:
                listed: dict[str, int] = {}
                for name, (prefix, _) in FOLLOWED.items():
                    kvs, rev = self.store.list(prefix)
                    with self._lock:
                        self._data[name] = {}
                        self._clear_index(name)
                        for kv in kvs:
                            self._put(name, kv.key, kv.value)
                    listed[name] = rev
                self.in_sync.set()
                self.on_change()
                backoff = 0.1
                with self.store.watch(keys.ROOT, min(listed.values()) + 1) as watch:
                    while not self._stop.is_set():
                        events = watch.next_events(timeout=0.5)
                        changed = False
                        with self._lock:
                            for ev in events:
                                name = self._table_of(ev.key)
                                if name and ev.mod_revision > listed[name]:
                                    changed |= self._put(name, ev.key, ev.value if ev.kind == "put" else None)
                        if changed:
                            self.on_change()
            except CompactedError as e:
                log.warning("datastore watch fell behind (%s); listing again", e)
            except DatastoreError as e:
                log.warning("datastore unavailable: %s; kernel state kept as is", e)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception:  # never let the watcher thread die silently
                log.exception("unexpected error following the datastore")
                self._stop.wait(1.0)
