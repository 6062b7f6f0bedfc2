"""Learn at once when someone changes what the agent owns, so drift is repaired in milliseconds."""

from __future__ import annotations

import errno
import logging
import socket
import threading
from typing import Callable

from podnet.dataplane import rtnl

log = logging.getLogger(__name__)

_GROUPS = rtnl.RTMGRP_LINK | rtnl.RTMGRP_NEIGH | rtnl.RTMGRP_IPV4_ROUTE | rtnl.RTMGRP_IPV4_IFADDR


class KernelWatcher:
    """Calls on_change() when a route of ours, or the VXLAN device, its neighbours, FDB or address change."""

    def __init__(self, device: str | tuple[str, ...], on_change: Callable[[], None],
                 on_address_change: Callable[[], None] | None = None, also_links: Callable[[], set] = set,
                 own_ports: Callable[[], set] = set, own_fdb: Callable[[], frozenset] = frozenset):
        """on_address_change: an address was added or removed on any interface (the node's
        underlay address may have moved). also_links(): names of further links whose changes
        matter (the parent interface: its MTU sets the tunnel's; the IPv6 device)."""
        self.devices = (device,) if isinstance(device, str) else tuple(device)
        self.also_links = also_links
        # Changes the agent itself made (its sockets' port ids) need no reconcile: it knows them.
        self.own_ports = own_ports
        self.own_fdb = own_fdb  # (mac, dst) of FDB entries the agent is adding
        self.on_change = on_change
        self.on_address_change = on_address_change
        self.sock = rtnl.RtnlSocket(groups=_GROUPS)
        self._filter: tuple[frozenset, frozenset] | None = None  # (ports, link indexes) the kernel filters on
        self._filter_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="kernel events", daemon=True)

    def start(self) -> None:
        self.refresh()
        self._thread.start()

    def refresh(self) -> None:
        """Tell the kernel which notifications to keep from this socket: none caused by the agent's
        own sockets, and link and neighbour changes only of the devices and links watched, by their
        current index. Otherwise every veth a CNI ADD or DEL makes would wake this thread, which
        would take the interpreter lock from the very request that caused it. Call again when a
        watched device was (re)created: its new index must pass. Cheap when nothing changed."""
        ports = frozenset(self.own_ports())
        links = frozenset(self._device_indexes() | self._indexes(self.also_links()))
        with self._filter_lock:
            if (ports, links) != self._filter:
                self.sock.filter_notifications(set(ports), set(links))
                self._filter = (ports, links)

    def _device_indexes(self) -> set[int]:
        return self._indexes(self.devices)

    @staticmethod
    def _indexes(names) -> set[int]:
        found = set()
        for name in names:
            try:
                found.add(socket.if_nametoindex(name))
            except OSError:
                pass
        return found

    def _relevant(self, kind: int, payload: bytes, dev_indexes: set[int]) -> bool:
        if kind in (rtnl.RTM_NEWROUTE, rtnl.RTM_DELROUTE):
            return rtnl.parse_route(payload)["proto"] == rtnl.RTPROT_PODNET
        if kind in (rtnl.RTM_NEWNEIGH, rtnl.RTM_DELNEIGH):
            n = rtnl.parse_neigh(payload)
            if (kind == rtnl.RTM_NEWNEIGH and n["family"] == rtnl.AF_BRIDGE
                    and (n["lladdr"], n["dst"]) in self.own_fdb()):
                return False
            return n["ifindex"] in dev_indexes
        if kind in (rtnl.RTM_NEWLINK, rtnl.RTM_DELLINK):
            link = rtnl.parse_link(payload)
            return (link["ifname"] in self.devices or link["index"] in dev_indexes
                    or link["ifname"] in self.also_links())
        if kind in (rtnl.RTM_NEWADDR, rtnl.RTM_DELADDR):
            return rtnl.parse_addr(payload)["index"] in dev_indexes
        return False

    def _run(self) -> None:
        while True:
            try:
                events = self.sock.recv_events_from()
            except OSError as e:
                if e.errno == errno.ENOBUFS:  # we missed events: assume something changed
                    self.on_change()
                    continue
                log.error("kernel event socket failed: %s", e)
                return
            self.refresh()  # e.g. the device was just deleted: its new index must pass once it is back
            dev_indexes = self._device_indexes()
            ours = self.own_ports()
            events = [(kind, payload) for kind, payload, port in events if not (port and port in ours)]
            if self.on_address_change and any(k in (rtnl.RTM_NEWADDR, rtnl.RTM_DELADDR) for k, _ in events):
                self.on_address_change()
            try:
                if any(self._relevant(kind, payload, dev_indexes) for kind, payload in events):
                    self.on_change()
            except Exception:  # a message we cannot parse must not stop drift repair
                log.exception("could not parse a kernel event")
                self.on_change()
