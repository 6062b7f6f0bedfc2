"""The routes manager: every route podnet owns, IPv4 and IPv6, by destination.

Ownership: routes of the main table carrying podnet's protocol number (80, Calico's); the
rest of the kernel's routes are left alone. Routes are replaced in place (NLM_F_REPLACE).
"""

from __future__ import annotations

import socket

from podnet.calc.state import Route
from podnet.dataplane import ownership, rtnl
from podnet.dataplane.devices import Links
from podnet.dataplane.manager import ApplyError, DeltaTracker, KernelEvent, Manager

_SET = rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE
CHUNK = 2000  # entries per netlink request batch


def owned(r: dict) -> bool:
    """Whether a decoded route (rtnl.parse_route) is one of podnet's."""
    return ownership.route(r["proto"], r["table"])


def route_of(r: dict, links: Links) -> Route:
    if r["type"] == rtnl.RTN_BLACKHOLE:
        return Route(r["dst"], blackhole=True)
    return Route(r["dst"], r["gateway"], links.name(r["oif"]), r["onlink"])


def route_msg(kind: int, r: Route, oif: int | None, flags: int = 0) -> bytes:
    if r.blackhole:
        return rtnl.route_msg(kind, r.dst, rtype=rtnl.RTN_BLACKHOLE, flags=flags)
    return rtnl.route_msg(kind, r.dst, gateway=r.gateway, oif=oif, onlink=r.onlink, flags=flags)


class RouteManager(Manager):
    name = "routes"

    def __init__(self, sock: rtnl.RtnlSocket, links: Links):
        self.sock = sock
        self.links = links
        self.tracker: DeltaTracker[str, Route] = DeltaTracker()

    def resync(self) -> None:
        found = {}
        for family in (socket.AF_INET, socket.AF_INET6):
            for _, payload in self.sock.dump(rtnl.route_dump_msg(family, proto=rtnl.RTPROT_PODNET)):
                r = rtnl.parse_route(payload)
                if owned(r):
                    found[r["dst"]] = route_of(r, self.links)
        self.tracker.replace_believed(found)

    def forget_device(self, name: str, index: int | None = None) -> None:
        """A device was made again: the kernel dropped the routes through it."""
        self.tracker.forget_believed(lambda k, r: r.ifname == name)

    def on_kernel_event(self, ev: KernelEvent) -> bool:
        if ev.table != "route" or not owned(ev.entry):
            return False
        dst = ev.entry["dst"]
        if ev.new:
            self.tracker.believed_set(dst, route_of(ev.entry, self.links))
        else:
            self.tracker.believed_delete(dst)
        return True

    def apply_updates(self) -> int:
        pending = self.tracker.pending_updates()
        return self._send(pending, rtnl.RTM_NEWROUTE, _SET, "route +", self.tracker.believed_update)

    def apply_deletes(self) -> int:
        pending = self.tracker.pending_deletes()
        return self._send(pending, rtnl.RTM_DELROUTE, 0, "route -",
                          lambda done: [self.tracker.believed_delete(key) for key, _ in done])

    def _send(self, pending, kind: int, flags: int, verb: str, record) -> int:
        """Send in chunks: 20,000 routes' messages never all exist at once."""
        failures = []
        for i in range(0, len(pending), CHUNK):
            failures += self._send_chunk(pending[i:i + CHUNK], kind, flags, verb, record)
        if failures:
            raise ApplyError(self.name, failures)
        return len(pending)

    def _send_chunk(self, pending, kind: int, flags: int, verb: str, record) -> list:
        """`record(done)`: believe the (key, route) pairs the kernel took (or that left with their device)."""
        msgs, entries, failures, done = [], [], [], []
        oifs: dict[str, int | None] = {}  # by device name: thousands of routes share one or two
        for key, r in pending:
            oif = None
            if r.ifname:
                oif = oifs[r.ifname] if r.ifname in oifs else oifs.setdefault(r.ifname, self.links.index(r.ifname))
            if r.ifname and oif is None:
                if kind == rtnl.RTM_DELROUTE:  # its device is gone, and the route with it
                    done.append((key, r))
                else:
                    failures.append((f"{verb} {r}", rtnl.NetlinkError(19, f"{verb} {r}: no device {r.ifname}")))
                continue
            msgs.append(route_msg(kind, r, oif, flags))
            entries.append((key, r))
        results = self.sock.apply(msgs, lambda n: f"{verb} {entries[n][1]}") if msgs else []
        for entry, err in zip(entries, results):
            if err is None:
                done.append(entry)
            else:
                failures.append((err.what, err))
        record(done)
        return failures
