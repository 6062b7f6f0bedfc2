"""Routes, neighbours and FDB entries podnet owns: read them back, apply changes.

Ownership: routes carrying podnet's protocol number (80, as Calico's), and
permanent neighbour and FDB entries on the VXLAN device. Everything else in
the kernel is left alone.
"""

from __future__ import annotations

import socket

from podnet.calc.diff import ChangeSet
from podnet.calc.state import FdbEntry, Neighbour, Route
from podnet.dataplane import rtnl

_ROUTE_SET = rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE
_NEIGH_SET = rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE
_FDB_ADD = rtnl.NLM_F_CREATE | rtnl.NLM_F_APPEND
_GONE = (3, 2)  # ESRCH, ENOENT: deleting what is already gone is success


class KernelTables:
    def __init__(self, sock: rtnl.RtnlSocket):
        self.sock = sock

    def read(self, devices: dict[str, int], names: dict[int, str]) -> tuple[set, set, set]:
        """(routes, neighbours, fdb) podnet owns, as calc value objects.

        `devices`: the VXLAN devices (name -> ifindex) whose neighbour and FDB
        entries are ours; `names`: ifindex -> name for reading routes back."""
        routes = set()
        for family in (socket.AF_INET, socket.AF_INET6):
            for _, payload in self.sock.dump(rtnl.route_dump_msg(family, proto=rtnl.RTPROT_PODNET)):
                r = rtnl.parse_route(payload)
                if r["proto"] != rtnl.RTPROT_PODNET or r["table"] != rtnl.RT_TABLE_MAIN:
                    continue
                if r["type"] == rtnl.RTN_BLACKHOLE:
                    routes.add(Route(r["dst"], blackhole=True))
                else:
                    routes.add(Route(r["dst"], r["gateway"], names.get(r["oif"], str(r["oif"])), r["onlink"]))
        neighbours, fdb = set(), set()
        for device, ifindex in devices.items():
            for family in (socket.AF_INET, socket.AF_INET6):
                for _, payload in self.sock.dump(rtnl.neigh_dump_msg(family, ifindex)):
                    n = rtnl.parse_neigh(payload)
                    if n["ifindex"] == ifindex and n["dst"] and n["lladdr"] and n["state"] & rtnl.NUD_PERMANENT:
                        neighbours.add(Neighbour(n["dst"], n["lladdr"], device))
            for _, payload in self.sock.dump(rtnl.neigh_dump_msg(rtnl.AF_BRIDGE, ifindex)):
                n = rtnl.parse_neigh(payload)
                if n["ifindex"] == ifindex and n["dst"] and n["lladdr"] and n["state"] & rtnl.NUD_PERMANENT:
                    fdb.add(FdbEntry(n["lladdr"], n["dst"], device))
        return routes, neighbours, fdb

    def apply(self, changes: ChangeSet, ifindexes: dict[str, int]) -> list[tuple[str, Exception]]:
        """Apply everything that can be applied; return what failed and why.

        Order matters for a packet in flight: FDB and neighbour entries go in
        before the routes that lead to them, and routes leave before them.
        """
        msgs: list[bytes] = []
        what: list[str] = []

        def add(msg: bytes, desc: str):
            msgs.append(msg)
            what.append(desc)

        for f in changes.fdb_add:
            add(rtnl.fdb_msg(rtnl.RTM_NEWNEIGH, ifindexes[f.ifname], f.mac, f.dst, _FDB_ADD), f"fdb + {f}")
        for n in changes.neigh_set:
            add(rtnl.neigh_msg(rtnl.RTM_NEWNEIGH, ifindexes[n.ifname], n.ip, n.mac, flags=_NEIGH_SET), f"neigh + {n}")
        for r in changes.routes_set:
            add(_route(rtnl.RTM_NEWROUTE, r, ifindexes, _ROUTE_SET), f"route + {r}")
        for r in changes.routes_del:
            add(_route(rtnl.RTM_DELROUTE, r, ifindexes, 0), f"route - {r}")
        for n in changes.neigh_del:
            add(rtnl.neigh_msg(rtnl.RTM_DELNEIGH, ifindexes[n.ifname], n.ip), f"neigh - {n}")
        for f in changes.fdb_del:
            add(rtnl.fdb_msg(rtnl.RTM_DELNEIGH, ifindexes[f.ifname], f.mac, f.dst), f"fdb - {f}")

        failures = []
        for i, code in enumerate(self.sock.request(msgs)):
            if code and not (code in _GONE and " - " in what[i]):
                failures.append((what[i], rtnl.NetlinkError(code, what[i], self.sock.last_details.get(i))))
        return failures


def _route(kind: int, r: Route, ifindexes: dict[str, int], flags: int) -> bytes:
    if r.blackhole:
        return rtnl.route_msg(kind, r.dst, rtype=rtnl.RTN_BLACKHOLE, flags=flags)
    return rtnl.route_msg(
        kind, r.dst, gateway=r.gateway, oif=ifindexes.get(r.ifname) if r.ifname else None, onlink=r.onlink,
        flags=flags,
    )
