"""Make the kernel match the datastore: compute, diff, apply only the difference.

Safe to run any number of times and after a crash: it never assumes what the
kernel holds, it reads it back each time. Entries that differ are replaced in
place, so an agent restart deletes and re-adds nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from pyroute2 import IPRoute

from podnet.agent.offloads import OffloadKeeper
from podnet.agent.syncer import DatastoreView
import dataclasses
import socket

import re

from podnet.calc import VxlanConfig, compute_desired, diff_state
from podnet.calc.config import effective_config
from podnet.calc.nat import nat_ruleset
from podnet.calc.state import DesiredState
from podnet.dataplane import rtnl, vxlan
from podnet.dataplane.nat import NatTable
from podnet.dataplane.tables import KernelTables
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


class Reconciler:
    def __init__(self, local: Node, view: DatastoreView, config: VxlanConfig, host: rtnl.RtnlSocket, ipr: IPRoute):
        self.local = local
        self.view = view
        self.config = config
        self.tables = KernelTables(host)
        self.ipr = ipr
        self.last: ReconcileResult | None = None
        self.desired: DesiredState | None = None
        self.nat = NatTable()
        self.offloads = OffloadKeeper()
        # FDB entries being added now: the kernel announces VXLAN FDB changes without the port id of
        # the socket that made them, so the kernel watcher recognises ours by content instead.
        self.fdb_being_added: frozenset[tuple[str, str]] = frozenset()

    def _host_mtu(self, config: VxlanConfig, local: Node) -> int | None:
        """The smallest MTU of the interfaces matching the pattern, else the parent's (Calico's rule)."""
        if config.mtu_iface_pattern:
            pattern = re.compile(config.mtu_iface_pattern)
            mtus = [l.get_attr("IFLA_MTU") for l in self.ipr.get_links()
                    if pattern.match(l.get_attr("IFLA_IFNAME") or "") and l.get_attr("IFLA_IFNAME") != config.device]
            if mtus:
                return min(mtus)
        return vxlan.interface_mtu(self.ipr, local.interface) if local.interface else None

    def reconcile(self, full: bool = False) -> ReconcileResult:
        """`full`: also verify state that is cheap to trust but costly to read (the NAT table)."""
        start = time.perf_counter()
        snap = self.view.snapshot()
        nodes = snap.nodes
        # This agent registered its own node and knows its addresses first; only the labels
        # (an administrator may change them) come from the datastore's record.
        recorded = next((n for n in nodes if n.name == self.local.name), None)
        local = dataclasses.replace(self.local, labels=recorded.labels) if recorded else self.local
        config = effective_config(self.config, snap.configs, local.name)
        desired = compute_desired(local, nodes, snap.affinities, config, self._host_mtu(config, local), snap.pools,
                                  snap.borrowed)
        devices = {d.name: vxlan.ensure_device(self.ipr, d) for d in desired.devices}
        for name in {config.device, config.device6} - set(devices):
            if vxlan.delete_device(self.ipr, name):  # e.g. the node lost its IPv6 underlay
                log.info("removed %s: this node no longer needs it", name)
        self.offloads.ensure(devices, config)
        dev = config.device
        ifindexes = dict(devices)
        if local.interface:
            try:  # direct (CrossSubnet) routes leave by the parent interface
                ifindexes[local.interface] = socket.if_nametoindex(local.interface)
            except OSError:
                pass
        routes, neighbours, fdb = self.tables.read(devices, {i: n for n, i in ifindexes.items()})
        changes = diff_state(desired.routes, routes, desired.neighbours, neighbours, desired.fdb, fdb)
        failures = []
        if not changes.empty:
            for line in changes.describe()[:20]:
                log.info("%s", line)
            if changes.size > 20:
                log.info("... and %d more changes", changes.size - 20)
            self.fdb_being_added = frozenset((f.mac, f.dst) for f in changes.fdb_add)
            failures = self.tables.apply(changes, ifindexes)
            for what, err in failures:
                log.error("could not apply %s: %s", what, err)
        try:
            if self.nat.ensure(nat_ruleset(snap.pools, dev), verify=full):
                changes_nat = 1
            else:
                changes_nat = 0
        except Exception as e:  # NAT trouble must not stop routing
            failures.append(("nat table", e))
            log.error("could not apply the masquerade table: %s", e)
            changes_nat = 0
        drift = changes.size if self.desired is not None and desired == self.desired else 0
        self.desired = desired
        self.last = ReconcileResult(
            drift=drift,
            changes=changes.size + changes_nat,
            failures=failures,
            seconds=time.perf_counter() - start,
            remote_nodes=desired.remote_nodes,
            # Pods get the smallest budget of the tunnels they may use (Calico's rule): in dual stack
            # that is vxlan-v6.calico's, whose outer IPv6 header is 20 bytes longer.
            device_mtu=min((d.mtu for d in desired.devices), default=None),
        )
        return self.last
