"""The desired kernel entries kept per remote node, so one node's change recomputes one node.

compute_desired answers "what should this node hold" for the whole cluster; the agent needs
the same answer as deltas: when one node joins, moves or gets a block, the entries that
node brings change and nothing else. DesiredIndex remembers, per remote node, the entries it
brought (by the keys the dataplane's trackers use) and hands back the keys to set and to
delete. The judgement of which entries a node brings stays in desired.remote_node_entries.
Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from podnet.calc.config import VxlanConfig
from podnet.calc.desired import FamilyContext, family_context, local_node_entries, remote_node_entries
from podnet.calc.state import FdbEntry, Neighbour, Route, VxlanDevice
from podnet.model import IPPool, Node

def route_key(r: Route) -> str:
    return r.dst


def neighbour_key(n: Neighbour) -> tuple[str, str]:
    return n.ifname, n.ip


def fdb_key(f: FdbEntry) -> tuple[str, str]:
    return f.ifname, f.mac


@dataclass
class Entries:
    """Entries by tracker key: routes by destination, neighbours by (device, IP), FDB entries
    by (device, MAC)."""

    routes: dict = field(default_factory=dict)
    neighbours: dict = field(default_factory=dict)
    fdb: dict = field(default_factory=dict)

    def add(self, routes: Iterable[Route] = (), neighbours: Iterable[Neighbour] = (),
            fdb: Iterable[FdbEntry] = ()) -> None:
        self.routes.update((route_key(r), r) for r in routes)
        self.neighbours.update((neighbour_key(n), n) for n in neighbours)
        self.fdb.update((fdb_key(f), f) for f in fdb)

    def __len__(self) -> int:
        return len(self.routes) + len(self.neighbours) + len(self.fdb)


@dataclass
class Delta:
    """Changes to the desired tables: keys to set (with their entry) and keys to delete."""

    set: Entries = field(default_factory=Entries)
    delete: Entries = field(default_factory=Entries)  # values: the entry no longer wanted

    @property
    def empty(self) -> bool:
        return not len(self.set) and not len(self.delete)


class DesiredIndex:
    def __init__(self):
        self.contexts: tuple[FamilyContext, ...] = ()
        self.by_node: dict[str, tuple[tuple, tuple, tuple]] = {}  # node -> (routes, neighbours, FDB entries)

    @property
    def devices(self) -> tuple[VxlanDevice, ...]:
        return tuple(c.device for c in self.contexts if c.device)

    @property
    def ready_nodes(self) -> tuple[str, ...]:
        """Remote nodes that bring at least a tunnel entry (what status calls programmed)."""
        local = self.contexts[0].local.name if self.contexts else None
        return tuple(sorted(n for n, (_, _, fdb) in self.by_node.items() if n != local and fdb))

    def set_context(self, local: Node, config: VxlanConfig, underlay_mtu: int | None,
                    pools: Iterable[IPPool]) -> bool:
        """The local node, config and pools every entry depends on; True if they changed
        (then every node must be recomputed)."""
        pools = list(pools)
        new = tuple(family_context(v, local, config, underlay_mtu, pools) for v in (4, 6))
        changed = new != self.contexts
        self.contexts = new
        return changed

    def entries_of(self, node: Node | None, blocks: Iterable[str], borrowed: Iterable[str]) -> Entries:
        out = Entries()
        if node is None:
            return out
        routes, neighbours, fdb = out.routes, out.neighbours, out.fdb
        for ctx in self.contexts:
            if node.name == ctx.local.name:
                for r in local_node_entries(ctx, blocks):
                    routes[r.dst] = r
                continue
            rs, ns, fs = remote_node_entries(ctx, node, blocks, borrowed)
            for r in rs:
                routes[r.dst] = r
            for n in ns:
                neighbours[(n.ifname, n.ip)] = n
            for f in fs:
                fdb[(f.ifname, f.mac)] = f
        return out

    def update(self, name: str, node: Node | None, blocks: Iterable[str] = (), borrowed: Iterable[str] = (),
               delta: Delta | None = None) -> Delta:
        """Recompute one node's entries (node None: it is gone); add the changes to `delta`.
        Keys are the node's own (its blocks, its tunnel address, its VTEP MAC): IPAM gives a block
        to one node only, so two nodes never bring the same key."""
        delta = delta if delta is not None else Delta()
        stored = self.by_node.get(name)
        new = self.entries_of(node, blocks, borrowed)
        if stored is None:  # a node seen for the first time (all of them at start): everything is new
            delta.set.routes.update(new.routes)
            delta.set.neighbours.update(new.neighbours)
            delta.set.fdb.update(new.fdb)
        else:
            old = Entries()
            old.add(*stored)
            for was, now, into_set, into_delete in (
                    (old.routes, new.routes, delta.set.routes, delta.delete.routes),
                    (old.neighbours, new.neighbours, delta.set.neighbours, delta.delete.neighbours),
                    (old.fdb, new.fdb, delta.set.fdb, delta.delete.fdb)):
                for key, entry in now.items():
                    before = was.get(key)
                    if before == entry:
                        # Keep the object the trackers already hold: after a pass over every node
                        # the index would otherwise hold a second, equal copy of every entry.
                        now[key] = before
                    else:
                        into_set[key] = entry
                        into_delete.pop(key, None)
                for key, entry in was.items():
                    if key not in now:
                        into_delete[key] = entry
        if new.routes or new.neighbours or new.fdb:
            # Kept as tuples: a third of the memory of three dicts, for 10,000 nodes.
            self.by_node[name] = (tuple(new.routes.values()), tuple(new.neighbours.values()),
                                  tuple(new.fdb.values()))
        else:
            self.by_node.pop(name, None)
        return delta

    def desired(self) -> Entries:
        """Every desired entry (for a tracker's replace_desired)."""
        out = Entries()
        for stored in self.by_node.values():
            out.add(*stored)
        return out
