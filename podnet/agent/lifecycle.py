"""The node's membership over time: its liveness record, fencing when it is deleted, its kernel report.

- Liveness: the agent renews `/podnet/liveness/nodes/<node>` every LIVENESS_RENEW_SECONDS; it expires
  LIVENESS_TTL_SECONDS after the last renewal (a lease on etcd, a heartbeat record on SQLite). It is
  written before the node registers and ended when the agent stops, so `podnet node delete` can tell a
  running agent from a stopped one.
- Fencing: when the node's record disappears (`podnet node delete --force`), the agent refuses ADD,
  stops programming, removes from its kernel everything podnet made (pods' veth pairs, the VXLAN devices,
  podnet's routes), then releases its addresses and blocks and ends its liveness record: only then may
  IPAM give those addresses to anyone else. The agent stays up but idle; restarting it joins again.
- Kernel report: every KERNEL_REPORT_EVERY renewals it writes what its kernel holds (addresses and
  endpoints whose sandbox is gone) to `/podnet/status/kernel/<node>` when that changed, for `ipam check`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Callable

from podnet.datastore import keys
from podnet.datastore.api import CompactedError, Datastore, DatastoreError
from podnet.datastore.resources import Resources, decode_node
from podnet.dataplane import inventory, rtnl
from podnet.ipam import Ipam, IpamError
from podnet.ipam.maintenance import delete_node
from podnet.model.endpoint import tunnel_handle, tunnel_handle6
from podnet.model.nodestatus import (
    KERNEL_REPORT_EVERY,
    LIVENESS_RENEW_SECONDS,
    LIVENESS_TTL_SECONDS,
    AgentLiveness,
    GoneEndpoint,
    KernelReport,
)
from podnet.netns import is_netns_path

log = logging.getLogger(__name__)


class NodeLifecycle:
    def __init__(self, node: str, store: Datastore, resources: Resources, ipam: Ipam, host: rtnl.RtnlSocket,
                 devices: tuple[str, ...], wake: Callable[[], None], ttl: float = LIVENESS_TTL_SECONDS):
        self.node = node
        self.store = store
        self.resources = resources
        self.ipam = ipam
        self.host = host
        self.devices = devices
        self.wake = wake  # wakes the agent's main loop
        self.ttl = ttl
        self.renew = ttl / 3
        self.fenced: str | None = None  # why this agent serves and programs nothing any more
        self.loop_parked = threading.Event()  # the main loop has seen `fenced` and programs no more
        self.withdrawn = threading.Event()
        self._stop = threading.Event()
        self._wake = threading.Event()  # a kernel report was asked for
        self._thread: threading.Thread | None = None
        self._last_report: KernelReport | None = None
        from podnet import __version__

        self._liveness = AgentLiveness(node, socket.gethostname(), os.getpid(), time.time(), ttl, self.renew,
                                       __version__)

    # Liveness -------------------------------------------------------------------------------------

    def announce(self) -> None:
        """Renew (or first write) the liveness record."""
        self.store.keep_alive(keys.liveness(self.node), self._liveness.to_json(), self.ttl)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="node lifecycle", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """The agent stops: its liveness ends at once (a stopped agent holds nothing a delete must wait for)."""
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=10)
        try:
            self.store.end_liveness(keys.liveness(self.node))
        except DatastoreError as e:
            log.warning("could not end this agent's liveness record (it expires in %.0fs): %s", self.ttl, e)

    def why_fenced(self) -> str | None:
        return self.fenced

    def _watch_requests(self) -> None:
        """Wake the lifecycle loop when `ipam check` asks for fresh kernel reports."""
        start = None
        while not self._stop.is_set():
            try:
                start = start or self.store.revision() + 1
                with self.store.watch(keys.KERNEL_REPORT_REQUEST, start) as watch:
                    while not self._stop.is_set():
                        events = watch.next_events(timeout=1.0)
                        if events:
                            start = events[-1].mod_revision + 1
                            self._wake.set()
            except CompactedError:
                start = None
            except DatastoreError:
                self._stop.wait(1.0)

    def _run(self) -> None:
        passes = 0
        threading.Thread(target=self._watch_requests, name="kernel report requests", daemon=True).start()
        next_renewal = 0.0
        while not self._stop.is_set():
            self._wake.wait(max(0.0, next_renewal - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                break
            if time.monotonic() >= next_renewal:
                next_renewal = time.monotonic() + self.renew
            try:
                if self.fenced is None:
                    self.announce()
                    record, request = self.store.get_many([keys.node(self.node), keys.KERNEL_REPORT_REQUEST])
                    if record is None:
                        self._fence()
                        return
                    asked = request.mod_revision if request else 0
                    answered = self._last_report.request if self._last_report else 0
                    if passes % KERNEL_REPORT_EVERY == 0 or asked > answered:
                        self.keep_tunnel_addresses(decode_node(record.value))
                        self.publish_report(asked)
            except DatastoreError as e:
                log.warning("node lifecycle: %s", e)
            except Exception:
                log.exception("node lifecycle pass failed")
            passes += 1

    # Fencing --------------------------------------------------------------------------------------

    def _fence(self) -> None:
        self.fenced = (f"node {self.node} was deleted from the cluster: this agent has withdrawn its pods' "
                       "network and its tunnel and serves no more ADDs")
        log.warning("this node's record was deleted (podnet node delete --force): withdrawing from the cluster")
        self.wake()
        if not self.loop_parked.wait(30):
            log.warning("the main loop did not stop programming within 30s; withdrawing anyway")
        for attempt in range(3):
            # An ADD that passed the fence check just before it closed may still attach: look again.
            veths = {ep.host_interface for ep in self.resources.endpoints(self.node)}
            held = inventory.held_addresses(self.host, self.devices)
            veths |= {where.split(" ", 1)[1] for where in held.values() if where.startswith("pod ")}
            removed = inventory.withdraw(self.host, self.devices, sorted(veths))
            if removed:
                log.info("withdrew from the kernel: %s", ", ".join(removed))
            if not inventory.held_addresses(self.host, self.devices):
                break
            time.sleep(0.2)
        for _ in range(10):
            try:
                summary = delete_node(self.ipam, self.resources, self.node)
                log.info("released this node's addresses %s and blocks %s", summary["released"],
                         summary["blocks_released"])
                self.store.end_liveness(keys.liveness(self.node))
                break
            except DatastoreError as e:
                log.warning("releasing this node's addresses: %s; retrying", e)
                time.sleep(1)
        self.withdrawn.set()
        log.warning("withdrawn: restart this agent to join the cluster again")

    # Tunnel addresses -----------------------------------------------------------------------------

    def keep_tunnel_addresses(self, node) -> None:
        """The node's tunnel addresses stay allocated to it: one released by hand (`ipam release --force`)
        is taken back before IPAM can give it to a pod, while the device still holds it."""
        for address, handle, kind in ((node.tunnel_address, tunnel_handle(self.node), "vxlanTunnelAddress"),
                                      (node.tunnel_address6, tunnel_handle6(self.node), "vxlanV6TunnelAddress")):
            if not address or address in self.ipam.ips_by_handle(handle):
                continue
            try:
                self.ipam.assign_ip(address, self.node, handle, {"type": kind}, use="Tunnel")
                log.warning("the tunnel address %s had been released by hand: allocated to %s again", address, handle)
            except IpamError as e:
                log.error("this node's tunnel address %s is not allocated to it and cannot be taken back: %s "
                          "(podnet ipam check shows who holds it)", address, e)

    # Kernel report --------------------------------------------------------------------------------

    def publish_report(self, request: int = 0) -> KernelReport:
        """Write what the kernel holds when it changed, or to answer `ipam check`'s request `request`."""
        held = inventory.held_addresses(self.host, self.devices)
        links = set(inventory.links(self.host).values())
        gone = []
        for ep in self.resources.endpoints(self.node):
            pod_routes = [c for c in ep.ips if held.get(c.split("/")[0]) == f"pod {ep.host_interface}"]
            if ep.host_interface in links and pod_routes:
                continue  # attached as recorded
            if not is_netns_path(ep.netns):
                gone.append(GoneEndpoint(ep.key_name, ep.netns, ep.host_interface, tuple(ep.ips)))
        report = KernelReport(self.node, time.time(), held, tuple(gone), request)
        if not report.same_content(self._last_report):
            self.store.put(keys.kernel_report(self.node), report.to_json())
            self._last_report = report
        return report

