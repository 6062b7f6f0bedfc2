"""The neighbour and FDB manager: each remote VTEP's permanent ARP/NDP entry and FDB entry.

Ownership: permanent neighbour and FDB entries on the VXLAN devices. Neighbours are keyed by
(device, IP) and FDB entries by (device, MAC); both are replaced in place (NLM_F_REPLACE:
the kernel rewrites a VXLAN FDB entry's destination without removing it first).
"""

from __future__ import annotations

import socket
from typing import Callable

from podnet.calc.state import FdbEntry, Neighbour
from podnet.dataplane import ownership, rtnl
from podnet.dataplane.manager import ApplyError, DeltaTracker, KernelEvent, Manager

_SET = rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE
CHUNK = 2000  # entries per netlink request batch
NOT_PERMANENT = "not permanent"  # believed value of a wanted neighbour the kernel holds otherwise


class NeighbourManager(Manager):
    name = "neighbours"

    def __init__(self, sock: rtnl.RtnlSocket, devices: Callable[[], dict[str, int]]):
        """devices(): the VXLAN devices by name -> ifindex (their manager's view)."""
        self.sock = sock
        self.devices = devices
        self.neighbours: DeltaTracker[tuple[str, str], object] = DeltaTracker()
        # An FDB entry's believed value is the FdbEntry, or a tuple of them when the kernel holds
        # several destinations for one MAC (someone appended one): then it is replaced and the
        # extra ones are deleted.
        self.fdb: DeltaTracker[tuple[str, str], object] = DeltaTracker()

    @property
    def pending(self) -> int:
        return self.neighbours.pending + self.fdb.pending

    def _device_of(self, ifindex: int) -> str | None:
        for name, index in self.devices().items():
            if index == ifindex:
                return name
        return None

    def resync(self) -> None:
        neighbours, fdb = {}, {}
        for dev, ifindex in self.devices().items():
            for family in (socket.AF_INET, socket.AF_INET6):
                for _, payload in self.sock.dump(rtnl.neigh_dump_msg(family, ifindex)):
                    self._believe_neighbour(rtnl.parse_neigh(payload), dev, True, neighbours)
            for _, payload in self.sock.dump(rtnl.neigh_dump_msg(rtnl.AF_BRIDGE, ifindex)):
                n = rtnl.parse_neigh(payload)
                if ownership.fdb(n["ifindex"] == ifindex, bool(n["state"] & rtnl.NUD_PERMANENT), n["lladdr"], n["dst"]):
                    key = (dev, n["lladdr"])
                    fdb[key] = _with(fdb.get(key), FdbEntry(n["lladdr"], n["dst"], dev))
        self.neighbours.replace_believed(neighbours)
        self.fdb.replace_believed(fdb)

    def _believe_neighbour(self, n: dict, dev: str, new: bool, into: dict | None = None) -> None:
        if not n["dst"]:
            return
        key = (dev, n["dst"])
        if new and ownership.neighbour(True, bool(n["state"] & rtnl.NUD_PERMANENT), n["lladdr"], n["dst"]):
            value = Neighbour(n["dst"], n["lladdr"], dev)
        elif new and key in self.neighbours.desired:
            value = NOT_PERMANENT  # e.g. resolved by the kernel: make it ours again
        else:
            value = None  # not ours (not permanent, not wanted) or gone
        if into is not None:
            if value is not None:
                into[key] = value
        elif value is None:
            self.neighbours.believed_delete(key)
        else:
            self.neighbours.believed_set(key, value)

    def forget_device(self, name: str, index: int | None = None) -> None:
        """A device was made again: the kernel dropped every entry on it."""
        self.neighbours.forget_believed(lambda k, v: k[0] == name)
        self.fdb.forget_believed(lambda k, v: k[0] == name)

    def on_kernel_event(self, ev: KernelEvent) -> bool:
        if ev.table not in ("neigh", "fdb"):
            return False
        n = ev.entry
        dev = self._device_of(n["ifindex"])
        if dev is None:
            return False
        if n["family"] != rtnl.AF_BRIDGE:
            self._believe_neighbour(n, dev, ev.new)
            return True
        if not n["lladdr"] or not n["dst"]:
            return True
        key = (dev, n["lladdr"])
        entry = FdbEntry(n["lladdr"], n["dst"], dev)
        have = self.fdb.believed_get(key)
        if ev.new and ownership.fdb(True, bool(n["state"] & rtnl.NUD_PERMANENT), n["lladdr"], n["dst"]):
            # A new destination for a MAC we hold: an append or a replace, the event does not say;
            # believe both, so the extra one is deleted if it is there (a no-op if it is not).
            self.fdb.believed_set(key, _with(have if have != entry else None, entry))
        elif not ev.new and have is not None:
            left = tuple(e for e in _entries(have) if e != entry)
            if left:
                self.fdb.believed_set(key, left[0] if len(left) == 1 else left)
            else:
                self.fdb.believed_delete(key)
        return True

    def apply_updates(self) -> int:
        """FDB entries first, then neighbours: a route's next hop must resolve completely. Sent in
        chunks: 20,000 entries' messages never all exist at once."""
        n, failures = 0, []
        fdb, neighbours = self.fdb.pending_updates(), self.neighbours.pending_updates()
        for i in range(0, len(fdb), CHUNK):
            n += self._updates(fdb[i:i + CHUNK], [], failures)
        for i in range(0, len(neighbours), CHUNK):
            n += self._updates([], neighbours[i:i + CHUNK], failures)
        if failures:
            raise ApplyError(self.name, failures)
        return n

    def _updates(self, fdb, neighbours, failures) -> int:
        indexes = self.devices()
        msgs, what, done = [], [], []
        for key, want in fdb:
            ifindex = indexes.get(want.ifname)
            if ifindex is None:
                continue  # its device is not there yet: the devices manager comes first
            msgs.append(rtnl.fdb_msg(rtnl.RTM_NEWNEIGH, ifindex, want.mac, want.dst, _SET))
            what.append(("fdb +", want))
            done.append((self.fdb, key, want, True))
            for extra in _entries(self.fdb.believed_get(key)):
                if extra.dst != want.dst:
                    msgs.append(rtnl.fdb_msg(rtnl.RTM_DELNEIGH, ifindex, extra.mac, extra.dst))
                    what.append(("fdb -", extra))
                    done.append((None, key, extra, False))
        for key, want in neighbours:
            ifindex = indexes.get(want.ifname)
            if ifindex is None:
                continue
            msgs.append(rtnl.neigh_msg(rtnl.RTM_NEWNEIGH, ifindex, want.ip, want.mac, flags=_SET))
            what.append(("neigh +", want))
            done.append((self.neighbours, key, want, True))
        return self._send(msgs, what, done, failures)

    def apply_deletes(self) -> int:
        """Neighbours first, then FDB entries (the routes using them left already)."""
        indexes = self.devices()
        msgs, what, done = [], [], []
        for key, have in self.neighbours.pending_deletes():
            ifindex = indexes.get(key[0])
            if ifindex is None:  # the device is gone, and its entries with it
                self.neighbours.believed_delete(key)
                continue
            msgs.append(rtnl.neigh_msg(rtnl.RTM_DELNEIGH, ifindex, key[1]))
            what.append(("neigh -", f"{key[1]} dev {key[0]}"))
            done.append((self.neighbours, key, None, False))
        for key, have in self.fdb.pending_deletes():
            ifindex = indexes.get(key[0])
            if ifindex is None:
                self.fdb.believed_delete(key)
                continue
            for entry in _entries(have):
                msgs.append(rtnl.fdb_msg(rtnl.RTM_DELNEIGH, ifindex, entry.mac, entry.dst))
                what.append(("fdb -", entry))
                done.append((self.fdb, key, None, False))
        failures = []
        n = self._send(msgs, what, done, failures)
        if failures:
            raise ApplyError(self.name, failures)
        return n

    def _send(self, msgs, what, done, failures) -> int:
        if not msgs:
            return 0
        # (verb, entry) pairs, made text only for a failure.
        sets: dict[int, list] = {}  # by tracker: believed in one go
        trackers = {}
        for (tracker, key, value, is_set), err in zip(done, self.sock.apply(msgs, lambda n: " ".join(map(str, what[n])))):
            if err is not None:
                failures.append((err.what, err))
            elif tracker is not None:
                if is_set:
                    trackers[id(tracker)] = tracker
                    sets.setdefault(id(tracker), []).append((key, value))
                else:
                    tracker.believed_delete(key)
        for ident, entries in sets.items():
            trackers[ident].believed_update(entries)
        return len(msgs)


def _entries(value) -> tuple:
    if value is None or not isinstance(value, (tuple, FdbEntry)):
        return ()
    return value if isinstance(value, tuple) else (value,)


def _with(value, entry: FdbEntry):
    """A believed FDB value with one more destination."""
    have = _entries(value)
    if entry in have:
        return value
    out = have + (entry,)
    return out[0] if len(out) == 1 else out
