"""The difference between desired and actual kernel state, as the changes to make."""

from __future__ import annotations

from dataclasses import dataclass

from podnet.calc.state import FdbEntry, Neighbour, Route


@dataclass(frozen=True)
class ChangeSet:
    routes_set: tuple[Route, ...] = ()  # add or replace (keyed by dst)
    routes_del: tuple[Route, ...] = ()
    neigh_set: tuple[Neighbour, ...] = ()  # add or replace (keyed by device and IP)
    neigh_del: tuple[Neighbour, ...] = ()
    fdb_add: tuple[FdbEntry, ...] = ()
    fdb_del: tuple[FdbEntry, ...] = ()

    @property
    def empty(self) -> bool:
        return not any(
            (self.routes_set, self.routes_del, self.neigh_set, self.neigh_del, self.fdb_add, self.fdb_del)
        )

    @property
    def size(self) -> int:
        return sum(
            len(x)
            for x in (self.routes_set, self.routes_del, self.neigh_set, self.neigh_del, self.fdb_add, self.fdb_del)
        )

    def describe(self) -> list[str]:
        return (
            [f"route + {r}" for r in self.routes_set]
            + [f"route - {r}" for r in self.routes_del]
            + [f"neigh + {n}" for n in self.neigh_set]
            + [f"neigh - {n}" for n in self.neigh_del]
            + [f"fdb + {f}" for f in self.fdb_add]
            + [f"fdb - {f}" for f in self.fdb_del]
        )


def diff_state(
    desired_routes,
    actual_routes,
    desired_neigh,
    actual_neigh,
    desired_fdb,
    actual_fdb,
) -> ChangeSet:
    """Entries are compared whole; an entry that differs under the same key is
    replaced in place (never deleted first), so traffic never sees a gap."""
    want_routes = {r.dst: r for r in desired_routes}
    have_routes = {r.dst: r for r in actual_routes}
    routes_set = [r for d, r in want_routes.items() if have_routes.get(d) != r]
    routes_del = [r for d, r in have_routes.items() if d not in want_routes]

    want_neigh = {(n.ifname, n.ip): n for n in desired_neigh}
    have_neigh = {(n.ifname, n.ip): n for n in actual_neigh}
    neigh_set = [n for k, n in want_neigh.items() if have_neigh.get(k) != n]
    neigh_del = [n for k, n in have_neigh.items() if k not in want_neigh]

    want_fdb, have_fdb = set(desired_fdb), set(actual_fdb)
    return ChangeSet(
        routes_set=tuple(sorted(routes_set)),
        routes_del=tuple(sorted(routes_del)),
        neigh_set=tuple(sorted(neigh_set)),
        neigh_del=tuple(sorted(neigh_del)),
        fdb_add=tuple(sorted(want_fdb - have_fdb)),
        fdb_del=tuple(sorted(have_fdb - want_fdb)),
    )
