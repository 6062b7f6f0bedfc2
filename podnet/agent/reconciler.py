"""Make the kernel match the datastore, one change at a time.

The datastore view says which nodes' facts changed; the desired index recomputes those nodes'
entries (calc.index) and feeds the difference to the dataplane managers' trackers; an apply
cycle then sends only what is pending. A kernel event about one entry updates that entry's
belief in its manager. Full read-backs happen only when the managers' driver decides
(start, lost notifications, a failed apply, the periodic resync). Entries that differ are
replaced in place, so an agent restart deletes and re-adds nothing.
"""

from __future__ import annotations

import dataclasses
import errno
import gc
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Iterable

from pyroute2 import IPRoute

from podnet import heap
from podnet.agent.offloads import OffloadKeeper
from podnet.agent.syncer import DatastoreView
from podnet.calc import VxlanConfig
from podnet.calc.config import effective_config
from podnet.calc.index import Delta, DesiredIndex
from podnet.calc.nat import nat_ruleset
from podnet.dataplane import rtnl, vxlan
from podnet.dataplane.devices import DeviceManager, Links
from podnet.dataplane.manager import Dataplane, KernelEvent, Manager
from podnet.dataplane.nat import NatManager
from podnet.dataplane.neighbours import NeighbourManager
from podnet.dataplane.routes import RouteManager
from podnet.model import Node

log = logging.getLogger(__name__)


@dataclass
class ReconcileResult:
    changes: int = 0
    failures: list = field(default_factory=list)
    seconds: float = 0.0
    remote_nodes: tuple = ()
    device_mtu: int | None = None
    drift: int = 0  # changes made although the desired state had not changed: someone else touched the kernel
    resynced: tuple = ()  # managers that read the kernel back in this pass
    desired_changes: int = 0  # desired entries set or deleted in this pass


DEVICE_MADE_RECHECK_SECONDS = 1.0


class Reconciler:
    def __init__(self, local: Node, view: DatastoreView, config: VxlanConfig, host: rtnl.RtnlSocket, ipr: IPRoute,
                 resync_interval: float = 30.0, managers: Iterable[Manager] = ()):
        """`managers`: further managers (e.g. the filter layer), applied after the built-in ones."""
        self.local = local
        self.view = view
        self.config = config
        self.ipr = ipr
        self.links = Links()
        self.devices = DeviceManager(ipr, host, self.links, (config.device, config.device6))
        self.neighbours = NeighbourManager(host, lambda: self.devices.indexes)
        self.routes = RouteManager(host, self.links)
        self.nat = NatManager()
        self.devices.on_made.append(self._device_made)
        self.dataplane = Dataplane([self.devices, self.neighbours, self.routes, self.nat, *managers],
                                   resync_interval)
        self.index = DesiredIndex()
        self.last: ReconcileResult | None = None
        self._full = True  # recompute every node's entries at the next pass
        self._ready_nodes: tuple[str, ...] | None = None
        self._trim_after = False  # a pass over every node made big transient tables
        self.offloads = OffloadKeeper()
        self.effective = config

    def _device_made(self, name: str, index: int) -> None:
        # The kernel dropped every entry on the old device (IPv4 routes without a notification).
        self.neighbours.forget_device(name)
        self.routes.forget_device(name)
        # Changes to the new device made before the event filter learned its index reach no one:
        # read its entries back once, shortly after (a device made again is rare; this is cheap).
        for manager in (self.neighbours, self.routes):
            self.dataplane.resync_soon(manager.name, DEVICE_MADE_RECHECK_SECONDS)

    def request_full(self) -> None:
        """Recompute every node's entries (the local node, its parent's MTU or the config changed)."""
        self._full = True

    def on_kernel_events(self, events: list[KernelEvent]) -> int:
        return self.dataplane.on_kernel_events(events)

    def _host_mtu(self, config: VxlanConfig, local: Node) -> int | None:
        """The smallest MTU of the interfaces matching the pattern, else the parent's (Calico's rule)."""
        if config.mtu_iface_pattern:
            pattern = re.compile(config.mtu_iface_pattern)
            mtus = [l.get_attr("IFLA_MTU") for l in self.ipr.get_links()
                    if pattern.match(l.get_attr("IFLA_IFNAME") or "") and l.get_attr("IFLA_IFNAME") != config.device]
            if mtus:
                return min(mtus)
        return vxlan.interface_mtu(self.ipr, local.interface) if local.interface else None

    def update_desired(self) -> int:
        """Feed the datastore's changes since the last pass to the managers; the number of
        desired entries set or deleted. Work in proportion to the nodes that changed, except
        when everything did (start, pools, agent configurations, the local node)."""
        everything, names = self.view.take_changes()
        # The local node's record or blocks changed (its first pod's block, say): every node's entries
        # depend on its record only through the context, so only a different context recomputes them.
        if everything or self._full:
            return self._update_all()
        if self.local.name in names and self._set_context():
            return self._update_all(context_set=True)
        delta = Delta()
        for name in names:
            node, blocks, borrowed = self.view.node_facts(name)
            if node is not None and node.name == self.local.name:
                node = self.local
            self.index.update(name, node, blocks, borrowed, delta)
        return self._feed(delta)

    def _set_context(self) -> bool:
        """What every node's entries depend on (the local node, the effective configuration, the
        underlay MTU, the pools) into the index; True if it changed."""
        pools, configs = self.view.cluster_facts()
        # This agent registered its own node and knows its addresses first; only the labels
        # (an administrator may change them) come from the datastore's record.
        recorded = self.view.node_facts(self.local.name)[0]
        local = dataclasses.replace(self.local, labels=recorded.labels) if recorded else self.local
        config = effective_config(self.config, configs, local.name)
        self.effective, self._pools, self._local_recorded = config, pools, local
        return self.index.set_context(local, config, self._host_mtu(config, local), pools)

    def _update_all(self, context_set: bool = False) -> int:
        self._full = False
        self._trim_after = True
        if not context_set:
            self._set_context()
        local = self._local_recorded
        self.devices.set_desired(self.index.devices)
        self.nat.set_desired(nat_ruleset(self._pools, self.effective.device))
        delta = Delta()
        names = self.view.node_names() | set(self.index.by_node)
        for name in names:
            node, blocks, borrowed = self.view.node_facts(name)
            if name == local.name:
                node = local
            self.index.update(name, node, blocks, borrowed, delta)
        return self._feed(delta)

    def _feed(self, delta: Delta) -> int:
        for key in delta.delete.routes:
            self.routes.tracker.desired_delete(key)
        for key in delta.delete.neighbours:
            self.neighbours.neighbours.desired_delete(key)
        for key in delta.delete.fdb:
            self.neighbours.fdb.desired_delete(key)
        self.routes.tracker.desired_update(delta.set.routes.items())
        self.neighbours.neighbours.desired_update(delta.set.neighbours.items())
        self.neighbours.fdb.desired_update(delta.set.fdb.items())
        return len(delta.set) + len(delta.delete)

    def reconcile(self, full: bool = False) -> ReconcileResult:
        """One pass: the datastore's changes into the managers, then one apply cycle.
        `full`: every manager reads the kernel back first (a resync)."""
        start = time.perf_counter()
        if full:
            self.dataplane.request_resync()
        desired_changes = self.update_desired()
        if desired_changes > 3000:
            self._trim_after = True  # e.g. thousands of nodes joined at once
        if desired_changes or self._ready_nodes is None:
            self._ready_nodes = self.index.ready_nodes  # sorted names: not recomputed for each repair
        cycle = self.dataplane.apply()
        if _device_vanished(cycle.failures):
            # Entries were sent to a device deleted under us before its own notification came:
            # look at the devices again and go on at once instead of after a back-off.
            self.dataplane.request_resync(self.devices.name)
            again = self.dataplane.apply()
            cycle.changes += again.changes
            cycle.resynced += again.resynced
            cycle.failures = again.failures
        try:
            self.offloads.ensure(self.devices.indexes, self.effective)
        except Exception as e:  # noqa: BLE001 - offload trouble must not stop routing
            log.error("could not keep the VXLAN devices' offloads: %s", e)
            cycle.failures.append(("offloads", e))
        # Changes made with no desired change behind them repaired something changed outside podnet.
        drift = cycle.changes if not desired_changes and not cycle.failures else 0
        devices = self.index.devices
        self.last = ReconcileResult(
            changes=cycle.changes,
            failures=[(name, e) for name, e in cycle.failures],
            seconds=time.perf_counter() - start,
            remote_nodes=self._ready_nodes,
            # Pods get the smallest budget of the tunnels they may use (Calico's rule): in dual stack
            # that is vxlan-v6.calico's, whose outer IPv6 header is 20 bytes longer.
            device_mtu=min((d.mtu for d in devices), default=None),
            drift=drift,
            resynced=cycle.resynced,
            desired_changes=desired_changes,
        )
        return self.last

    def release_memory(self) -> bool:
        """After a pass over every node (the start's too), or one of thousands of changes: give the
        big transient tables it left free back to the system. Not part of the pass: the agent
        calls it once the kernel is programmed and nothing is pending, so no entry waits for it."""
        if not self._trim_after or (self.last is not None and self.last.failures):
            return False
        self._trim_after = False
        _release_memory()
        return True

    @property
    def pending(self) -> int:
        return self.dataplane.pending

    def next_due(self) -> float:
        return self.dataplane.next_due()



def _device_vanished(failures) -> bool:
    """Whether a failed apply was refused because a device it used no longer exists."""
    for _, e in failures:
        for _, err in getattr(e, "failures", ()):
            if isinstance(err, rtnl.NotFound) and err.errno == errno.ENODEV:
                return True
    return False


def _release_memory() -> None:
    """Give the heap the transient tables of a pass over every node left free back to the system
    (the start's read-back and index of 10,000 nodes would otherwise stay in the agent's RSS)."""
    # What is alive now (the view, the index, the trackers) lives long: frozen out of the cyclic
    # collector's reach, so a collection during a repair does not walk 10,000 nodes' objects.
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    heap.trim()
