"""Learn at once when someone changes what the agent owns, so drift is repaired in milliseconds.

One notification socket subscribes to links, neighbours (ARP, NDP and FDB), IPv4 and IPv6
routes and IPv4 and IPv6 addresses. Each notification is queued, and decoded into a KernelEvent
when the agent's loop hands the queue to the dataplane managers, each of which updates
the belief of that one entry. Lost notifications (ENOBUFS) mean the agent cannot know what
changed: every manager reads back. Any other failure is logged, the socket is made again
and everything is read back: the watcher never stops.
"""

from __future__ import annotations

import collections
import errno
import logging
import socket
import threading
import time
from typing import Callable

from podnet.dataplane import rtnl
from podnet.dataplane.manager import KernelEvent

log = logging.getLogger(__name__)

GROUPS = (rtnl.RTMGRP_LINK | rtnl.RTMGRP_NEIGH | rtnl.RTMGRP_IPV4_ROUTE | rtnl.RTMGRP_IPV6_ROUTE
          | rtnl.RTMGRP_IPV4_IFADDR | rtnl.RTMGRP_IPV6_IFADDR)


_FOLLOWED = frozenset((rtnl.RTM_NEWROUTE, rtnl.RTM_DELROUTE, rtnl.RTM_NEWNEIGH, rtnl.RTM_DELNEIGH,
                       rtnl.RTM_NEWLINK, rtnl.RTM_DELLINK, rtnl.RTM_NEWADDR, rtnl.RTM_DELADDR))


def decode(kind: int, payload: bytes) -> KernelEvent | None:
    """The KernelEvent of one notification; None for kinds the agent does not follow."""
    if kind in (rtnl.RTM_NEWROUTE, rtnl.RTM_DELROUTE):
        return KernelEvent("route", kind == rtnl.RTM_NEWROUTE, rtnl.parse_route(payload))
    if kind in (rtnl.RTM_NEWNEIGH, rtnl.RTM_DELNEIGH):
        n = rtnl.parse_neigh(payload)
        return KernelEvent("fdb" if n["family"] == rtnl.AF_BRIDGE else "neigh", kind == rtnl.RTM_NEWNEIGH, n)
    if kind in (rtnl.RTM_NEWLINK, rtnl.RTM_DELLINK):
        return KernelEvent("link", kind == rtnl.RTM_NEWLINK, rtnl.parse_link(payload))
    if kind in (rtnl.RTM_NEWADDR, rtnl.RTM_DELADDR):
        return KernelEvent("addr", kind == rtnl.RTM_NEWADDR, rtnl.parse_addr(payload))
    return None


class KernelWatcher:
    """Queues notifications about what the agent owns and wakes the agent."""

    def __init__(self, links: Callable[[], set[str]], wake: Callable[[], None],
                 on_lost: Callable[[], None], own_ports: Callable[[], set] = set):
        """links(): names of the links whose link and neighbour changes matter (the VXLAN
        devices, the parent interface); wake(): events are queued; on_lost(): notifications
        were lost or the watcher failed, so nothing the agent believes can be trusted."""
        self.links = links
        self.wake = wake
        self.on_lost = on_lost
        # Changes the agent itself made (its sockets' port ids) need no repair: it knows them.
        self.own_ports = own_ports
        self.queue: collections.deque[tuple[int, bytes]] = collections.deque()  # (type, payload)
        self.sock: rtnl.RtnlSocket | None = None
        self._filter: tuple[frozenset, frozenset] | None = None  # (ports, link indexes) the kernel filters on
        self._filter_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kernel events", daemon=True)
        self.restarts = 0

    def start(self) -> None:
        self._open()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _open(self) -> None:
        with self._filter_lock:
            if self.sock is not None:
                self.sock.close()
            self.sock = rtnl.RtnlSocket(groups=GROUPS)
            self._filter = None
        self.refresh()

    def take(self, limit: int = 1000) -> list[KernelEvent]:
        """Up to `limit` of the events queued, oldest first, decoded (in chunks, so a burst of
        20,000 is never decoded at once). A notification that cannot be decoded means the agent
        cannot trust its belief: everything is read back."""
        out = []
        while len(out) < limit:
            try:
                kind, payload = self.queue.popleft()
            except IndexError:
                return out
            try:
                ev = decode(kind, payload)
            except Exception:  # noqa: BLE001
                log.exception("could not decode a kernel notification (type %d); reading everything back", kind)
                self.on_lost()
                continue
            if ev is not None:
                out.append(ev)
        return out

    def refresh(self) -> None:
        """Tell the kernel which notifications to keep from this socket: none caused by the agent's
        own sockets, and link and neighbour changes only of the links watched, by their current
        index. Otherwise every veth a CNI ADD or DEL makes would wake this thread, which would take
        the interpreter lock from the very request that caused it. Call again when a watched
        device was (re)created: its new index must pass. Cheap when nothing changed."""
        ports = frozenset(self.own_ports())
        links = frozenset(self._indexes(self.links()))
        with self._filter_lock:
            if self.sock is not None and (ports, links) != self._filter:
                self.sock.filter_notifications(set(ports), set(links))
                self._filter = (ports, links)

    @staticmethod
    def _indexes(names) -> set[int]:
        found = set()
        for name in names:
            if not name:
                continue
            try:
                found.add(socket.if_nametoindex(name))
            except OSError:
                pass
        return found

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._receive()
            except OSError as e:
                if e.errno == errno.ENOBUFS:  # the socket's buffer overflowed: events were dropped
                    log.warning("kernel notifications were lost (ENOBUFS); reading everything back")
                    self.on_lost()
                    continue
                if self._stop.is_set():
                    return
                self._restart(e)
            except Exception as e:  # noqa: BLE001 - never a silent stop
                self._restart(e)

    def _restart(self, e: Exception) -> None:
        log.error("kernel event watcher failed (%s: %s); restarting it and reading everything back",
                  type(e).__name__, e)
        self.restarts += 1
        time.sleep(min(0.05 * self.restarts, 1.0))
        try:
            self._open()
        except Exception as again:  # noqa: BLE001
            log.error("cannot reopen the kernel event socket: %s", again)
            return
        self.on_lost()

    def _receive(self) -> None:
        events = self.sock.recv_events_from()
        ours = self.own_ports()
        queued = 0
        for kind, payload, port in events:
            if port and port in ours or kind not in _FOLLOWED:
                continue
            # Queued raw and decoded by the agent's loop: a burst (the kernel announces each FDB entry
            # the agent adds, 10,000 at start) costs a fifth of the memory this way.
            self.queue.append((kind, payload))
            queued += 1
        if queued:
            self.wake()
