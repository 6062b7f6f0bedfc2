"""The VXLAN devices manager (vxlan.calico, vxlan-v6.calico) and the link index the others use."""

from __future__ import annotations

import ipaddress
import logging
import socket
from typing import Callable, Iterable

from pyroute2 import IPRoute

from podnet.calc import vxlan_device as judged
from podnet.calc.state import VxlanDevice
from podnet.dataplane import rtnl, vxlan
from podnet.dataplane.manager import ApplyError, DeltaTracker, KernelEvent, Manager

log = logging.getLogger(__name__)

RECHECK = "recheck"  # believed value of a device the kernel told us changed in a way events do not show


class Links:
    """Interface names <-> indexes, for messages (names in, indexes out) and events (back).
    The VXLAN devices' indexes come from their manager; others (the parent interface, for
    direct routes) are looked up once and forgotten when a link event names them."""

    def __init__(self):
        self._index: dict[str, int] = {}
        self._name: dict[int, str] = {}

    def index(self, name: str) -> int | None:
        if name not in self._index:
            try:
                self.learn(name, socket.if_nametoindex(name))
            except OSError:
                return None
        return self._index[name]

    def name(self, index: int | None) -> str | None:
        if index is None:
            return None
        if index not in self._name:
            try:
                self.learn(socket.if_indextoname(index), index)
            except OSError:
                return str(index)
        return self._name[index]

    def learn(self, name: str, index: int) -> None:
        self.forget(name)
        self._index[name] = index
        self._name[index] = name

    def forget(self, name: str | None = None, index: int | None = None) -> None:
        if name in self._index:
            self._name.pop(self._index.pop(name), None)
        if index in self._name:
            self._index.pop(self._name.pop(index), None)


class DeviceManager(Manager):
    """Keeps each VXLAN device as desired (by name); devices of `owned` names that are not desired
    are deleted. Listeners hear of a device made (again): the kernel dropped every entry on it."""

    name = "devices"

    def __init__(self, ipr: IPRoute, sock: rtnl.RtnlSocket, links: Links, owned: Iterable[str]):
        self.ipr = ipr
        self.sock = sock
        self.links = links
        self.owned = tuple(owned)
        self.tracker: DeltaTracker[str, object] = DeltaTracker()
        self.indexes: dict[str, int] = {}
        self.on_made: list[Callable[[str, int], None]] = []  # (name, new index)
        self.on_index_change: list[Callable[[], None]] = []  # e.g. the watcher's filter

    def set_desired(self, devices: Iterable[VxlanDevice]) -> None:
        want = {d.name: d for d in devices}
        self.tracker.replace_desired(want)

    def index(self, name: str) -> int | None:
        return self.indexes.get(name)

    def _observe(self, name: str) -> object | None:
        """The device as the kernel holds it: None when absent, the desired device when it is
        exactly as wanted (nothing to do), else RECHECK (converge() judges it). Read through the
        fast codec: a start with the devices in place costs two link and two address requests."""
        link = self.sock.get_link(ifname=name)
        if link is None:
            return None
        self._set_index(name, link["index"])
        want = self.tracker.desired_get(name)
        if (want is not None and _link_matches(link, want, self.links.index(want.parent))
                and self._addresses(link["index"]) == judged.wanted_addresses(want)):
            return want
        return RECHECK

    def _addresses(self, index: int) -> set[tuple[str, int]]:
        """The device's addresses but IPv6 link-local ones (the kernel's own, left alone)."""
        out = set()
        for _, payload in self.sock.dump(rtnl.addr_dump_msg(ifindex=index)):
            a = rtnl.parse_addr(payload)
            if a["index"] != index or not a["address"]:
                continue
            if a["family"] == socket.AF_INET6 and ipaddress.ip_address(a["address"]).is_link_local:
                continue
            out.add((a["address"], a["prefixlen"]))
        return out

    def resync(self) -> None:
        believed = {}
        for name in self.owned:
            seen = self._observe(name)
            if seen is None:
                self._drop_index(name)
                continue
            believed[name] = seen  # converge() judges it (cheap: two devices at most)
        self.tracker.replace_believed(believed)

    def _set_index(self, name: str, index: int) -> None:
        if self.indexes.get(name) != index:
            self.indexes[name] = index
            self.links.learn(name, index)
            for fn in self.on_index_change:
                fn()

    def _drop_index(self, name: str) -> None:
        if self.indexes.pop(name, None) is not None:
            self.links.forget(name)
            for fn in self.on_index_change:
                fn()

    def apply_updates(self) -> int:
        failures = []
        changed = 0
        for name, want in self.tracker.pending_updates():
            try:
                index, action = vxlan.converge(self.ipr, want, self.sock)
            except Exception as e:  # noqa: BLE001 - reported below, the other device goes on
                failures.append((f"device {name}", e))
                continue
            old = self.indexes.get(name)
            self._set_index(name, index)
            self.tracker.believed_set(name, want)
            if action != "kept":
                changed += 1
                log.info("%s: %s", name, action)
            if action in ("created", "recreated") or (old is not None and old != index):
                for fn in self.on_made:
                    fn(name, index)
        if failures:
            raise ApplyError(self.name, failures)
        return changed

    def apply_deletes(self) -> int:
        n = 0
        for name, _ in self.tracker.pending_deletes():
            if vxlan.delete_device(self.ipr, name):
                log.info("removed %s: this node no longer needs it", name)
                n += 1
            self.tracker.believed_delete(name)
            self._drop_index(name)
        return n

    def on_kernel_event(self, ev: KernelEvent) -> bool:
        if ev.table == "link":
            name = ev.entry.get("ifname")
            if name not in self.owned:
                return False
            if not ev.new:
                self.tracker.believed_delete(name)
                self._drop_index(name)
            else:
                self._set_index(name, ev.entry["index"])
                want = self.tracker.desired_get(name)
                if want is None or not _link_matches(ev.entry, want, self.links.index(want.parent)):
                    self.tracker.believed_set(name, RECHECK)
            return True
        if ev.table == "addr":
            for name, index in self.indexes.items():
                if ev.entry.get("index") == index:
                    self.tracker.believed_set(name, RECHECK)  # its tunnel address changed
                    return True
        return False


def _link_matches(link: dict, want: VxlanDevice, parent_index: int | None) -> bool:
    """Whether a link notification shows the device as wanted (addresses aside: their own
    notifications tell about them)."""
    return not judged.mismatches(seen_from_rtnl(link, ":" in want.local_ip), want, parent_index, read_all=True)


def seen_from_rtnl(link: dict, local6: bool) -> judged.DeviceSeen:
    """A device as the kernel layer's link codec decoded it (rtnl.parse_link)."""
    info = link.get("vxlan") or {}
    return judged.DeviceSeen(link.get("kind"), vni=info.get("vni"), port=info.get("port"),
                      local=info.get("local6") if local6 else info.get("local"), parent=info.get("parent"),
                      learning=bool(info.get("learning")), mac=link.get("address"), mtu=link.get("mtu"),
                      up=bool(link.get("up")))
