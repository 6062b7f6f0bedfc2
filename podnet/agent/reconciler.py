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

from podnet.agent.syncer import DatastoreView
from podnet.calc import VxlanConfig, compute_desired, diff_state
from podnet.calc.state import DesiredState
from podnet.dataplane import rtnl, vxlan
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


class Reconciler:
    def __init__(self, local: Node, view: DatastoreView, config: VxlanConfig, host: rtnl.RtnlSocket, ipr: IPRoute):
        self.local = local
        self.view = view
        self.config = config
        self.tables = KernelTables(host)
        self.ipr = ipr
        self.last: ReconcileResult | None = None
        self.desired: DesiredState | None = None

    def reconcile(self) -> ReconcileResult:
        start = time.perf_counter()
        nodes, affinities = self.view.snapshot()
        # Our own record as the datastore has it (labels may change), else as registered.
        local = next((n for n in nodes if n.name == self.local.name), self.local)
        if not local.tunnel_address:
            local = self.local
        underlay_mtu = vxlan.interface_mtu(self.ipr, local.interface) if local.interface else None
        desired = compute_desired(local, nodes, affinities, self.config, underlay_mtu)
        ifindex = vxlan.ensure_device(self.ipr, desired.device) if desired.device else None
        dev = self.config.device
        routes, neighbours, fdb = self.tables.read(dev, ifindex, {ifindex: dev} if ifindex else {})
        changes = diff_state(desired.routes, routes, desired.neighbours, neighbours, desired.fdb, fdb)
        failures = []
        if not changes.empty:
            for line in changes.describe()[:20]:
                log.info("%s", line)
            if changes.size > 20:
                log.info("... and %d more changes", changes.size - 20)
            failures = self.tables.apply(changes, {dev: ifindex} if ifindex else {})
            for what, err in failures:
                log.error("could not apply %s: %s", what, err)
        self.desired = desired
        self.last = ReconcileResult(
            changes=changes.size,
            failures=failures,
            seconds=time.perf_counter() - start,
            remote_nodes=desired.remote_nodes,
            device_mtu=desired.device.mtu if desired.device else None,
        )
        return self.last
