"""`podnet agent --node NAME`: one per node."""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import json
import logging
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from pyroute2 import IPRoute

from podnet.agent.kernel_events import KernelWatcher
from podnet.agent.lifecycle import NodeLifecycle
from podnet.agent.metrics import (DEFAULT_HEALTH_LISTEN, DEFAULT_METRICS_LISTEN, AgentMetrics, HealthServer,
                                  Heartbeat)
from podnet.agent.reconciler import Reconciler
from podnet.agent.registration import find_underlay, find_underlay6, may_move_underlay, register
from podnet.agent.syncer import DatastoreView
from podnet.calc import VxlanConfig
from podnet.cni.handler import NodeContext
from podnet.cni.server import CniServer
from podnet.cni.wire import DEFAULT_ADDRESS
from podnet.dataplane import rtnl, sysctl
from podnet.datastore import default_url, open_datastore
from podnet.datastore.api import DatastoreError
from podnet.datastore.resources import Resources
from podnet.errors import PodnetError
from podnet import heap
from podnet.heap import QuietTrim
from podnet.ipam import Ipam
from podnet.model import IPPool
from podnet.model.nodestatus import LIVENESS_TTL_SECONDS

log = logging.getLogger("podnet.agent")

STORE_CHECK_SECONDS = 1.0
HEAP_QUIET_SECONDS = 1.0  # after the last change, before freed heap memory is returned


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--node", required=True, help="this node's name")
    p.add_argument("--datastore", default=None, help=f"datastore URL (default $PODNET_DATASTORE or {default_url()})")
    p.add_argument("--interface", help="underlay interface (default: the one holding --address, else the default route's)")
    p.add_argument("--address", help="underlay address of this node (default: the interface's first IPv4 address)")
    p.add_argument("--label", action="append", default=[], metavar="K=V", help="node label (repeatable)")
    p.add_argument("--vni", type=int, default=4096)
    p.add_argument("--vxlan-port", type=int, default=4789)
    p.add_argument("--vxlan-mtu", type=int, default=None, help="default: underlay MTU - 50")
    p.add_argument("--default-ipv4-pool", default="10.244.0.0/16",
                   help="pool created when the datastore has none ('' to never create one)")
    p.add_argument("--resync-interval", type=float, default=30.0, help="seconds between full kernel resyncs")
    p.add_argument("--cni-socket", default=DEFAULT_ADDRESS, help="where the CNI plugin reaches the agent")
    p.add_argument("--status-file", help="write readiness and programming status here as JSON")
    p.add_argument("--ipam-gc-grace", type=float, default=900.0,
                   help="seconds before a pod address without a workload endpoint is released (0: no GC)")
    p.add_argument("--liveness-ttl", type=float, default=LIVENESS_TTL_SECONDS,
                   help="seconds the agent's liveness record outlives its last renewal (renewed every ttl/3)")
    p.add_argument("--health-listen", default=DEFAULT_HEALTH_LISTEN, metavar="HOST:PORT",
                   help="serve /healthz, /readyz (and /metrics) here ('' to turn off)")
    p.add_argument("--metrics-listen", default=DEFAULT_METRICS_LISTEN, metavar="[HOST]:PORT",
                   help="serve Prometheus /metrics here; no host: every address (default %(default)s, Felix's "
                        "port; '' to turn off)")
    p.add_argument("--default-endpoint-to-host-action", choices=("Accept", "Drop", "Return"), default="Accept",
                   help="workload-to-host traffic after the workload's egress policy (Calico's setting)")
    p.add_argument("--node-protection", choices=("on", "off"), default="on",
                   help="on: pods may not reach etcd or the agent's metrics and health ports (off allows them)")
    p.add_argument("--log-format", choices=("text", "json"), default="text")
    p.add_argument("--log-level", default="info")
    p.add_argument("--etcd-cert-file", dest="etcd_cert_file")
    p.add_argument("--etcd-key-file", dest="etcd_key_file")
    p.add_argument("--etcd-ca-cert-file", dest="etcd_ca_cert_file")


class _JsonFormatter(logging.Formatter):
    def format(self, record):
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(fmt: str, level: str, node: str) -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {node} %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def _store_options(args) -> dict:
    opts = {}
    for name, key in (("etcd_cert_file", "cert_file"), ("etcd_key_file", "key_file"), ("etcd_ca_cert_file", "ca_file")):
        if getattr(args, name, None):
            opts[key] = getattr(args, name)
    return opts


class Agent:
    def __init__(self, args):
        self.args = args
        self.config = VxlanConfig(vni=args.vni, port=args.vxlan_port, mtu=args.vxlan_mtu)
        self.store = open_datastore(args.datastore, create=True, **_store_options(args))
        self.store_problem: str | None = None  # what store.check() last found wrong (None: usable)
        self._written_ready: tuple[bool, str] | None = None  # readiness as the status file last said it
        self.resources = Resources(self.store)
        self.ipam = Ipam(self.store)
        self.ipr = IPRoute()
        self.host = rtnl.RtnlSocket()
        self.dirty = threading.Event()
        # What a run of changes freed (CNI requests, filter and routing passes, libnftables) goes back
        # to the system once the agent is quiet: glibc would keep it in each thread's arena.
        self.heap = QuietTrim(HEAP_QUIET_SECONDS)
        self.stop = threading.Event()
        self.view = DatastoreView(self.store, self.dirty.set)
        self.reconciler: Reconciler | None = None
        self.metrics = AgentMetrics()
        self.heartbeat = Heartbeat(3 * args.resync_interval + 10)
        self.started = time.time()
        self.underlay_changed = threading.Event()
        self.events_lost = threading.Event()  # the kernel watcher lost notifications: resync all
        self._last_failed = False
        self.gc = None
        self.kernel_watcher: KernelWatcher | None = None
        self.lifecycle = NodeLifecycle(args.node, self.store, self.resources, self.ipam, self.host,
                                       (self.config.device, self.config.device6), self.dirty.set, args.liveness_ttl)

    def _retry(self, what: str, fn):
        delay = 0.2
        while not self.stop.is_set():
            try:
                return fn()
            except DatastoreError as e:
                log.warning("%s: %s; retrying in %.1fs", what, e, delay)
                self.stop.wait(delay)
                delay = min(delay * 2, 5)
        raise SystemExit(0)

    def _ensure_default_pool(self) -> None:
        cidr = self.args.default_ipv4_pool
        if cidr and not any(p.version == 4 for p in self.resources.pools()):
            self.resources.apply_pool(IPPool("default-ipv4-ippool", cidr))
            log.info("created the default IPv4 pool %s", cidr)

    def run(self) -> int:
        args = self.args
        labels = dict(kv.split("=", 1) for kv in args.label)
        address, interface = find_underlay(self.ipr, args.interface, args.address)
        address6 = find_underlay6(self.ipr, interface)
        sysctl.write("/proc/sys/net/ipv4/ip_forward", 1)
        if address6:
            sysctl.write("/proc/sys/net/ipv6/conf/all/forwarding", 1)
        self._retry("creating the default pool", self._ensure_default_pool)
        self._retry("announcing this agent's liveness", self.lifecycle.announce)  # before the node record
        node = self._retry("registering the node", lambda: register(self.resources, self.ipam, args.node, address,
                                                                     interface, labels or None, address6))
        self.reconciler = Reconciler(node, self.view, self.config, self.host, self.ipr, args.resync_interval)
        self.lifecycle.start()
        self.reconciler.offloads.publish = lambda status: self.resources.put_node_status(node.name, status)
        if args.ipam_gc_grace > 0:
            from podnet.ipam.maintenance import NodeGc

            self.gc = NodeGc(node.name, args.ipam_gc_grace)
        self.view.start()
        self._start_filter(node.name)
        own_ports = {self.host.port_id}
        self.kernel_watcher = KernelWatcher(
            lambda: {self.config.device, self.config.device6, self.reconciler.local.interface},
            self.dirty.set, self._on_events_lost, lambda: own_ports)
        # A device made again has a new index: the kernel's filter must let its events through.
        self.reconciler.devices.on_index_change.append(self.kernel_watcher.refresh)
        self.kernel_watcher.start()
        ctx = NodeContext(
            node=node.name,
            resources=self.resources,
            ipam=self.ipam,
            host=self.host,
            pod_mtu=self._pod_mtu,
            ready=self.view.in_sync.is_set,
            ipam_lock=threading.Lock(),
            metrics=self.metrics,
            workers=ThreadPoolExecutor(max_workers=8, thread_name_prefix="cni-worker"),
            fenced=self.lifecycle.why_fenced,
        )
        threading.Thread(target=self._watch_store, name="datastore check", daemon=True).start()
        if args.health_listen:
            HealthServer(args.health_listen, self.metrics, self.heartbeat.alive, self._ready).start()
            log.info("serving /healthz, /readyz and /metrics on %s", args.health_listen)
        if args.metrics_listen:
            HealthServer(args.metrics_listen, self.metrics, self.heartbeat.alive, self._ready,
                         metrics_only=True).start()
            log.info("serving Prometheus /metrics on %s", args.metrics_listen)
        server = CniServer(args.cni_socket, ctx)
        threading.Thread(target=server.serve_forever, name="cni server", daemon=True).start()
        log.info("serving CNI requests on %s", args.cni_socket)
        self._loop()
        server.shutdown()
        self.lifecycle.stop()
        return 0

    def _watch_store(self) -> None:
        """Every STORE_CHECK_SECONDS: is the datastore still usable (its file not removed, replaced,
        damaged or read-only)? When it is not, readiness fails with the reason and the log says it once;
        the kernel state is kept as it is."""
        while not self.stop.wait(STORE_CHECK_SECONDS):
            try:
                self.store.check()
                problem = None
            except DatastoreError as e:
                problem = str(e)
            except Exception as e:  # noqa: BLE001 - a check that cannot run is a problem to report
                problem = f"cannot check the datastore: {type(e).__name__}: {e}"
            if problem == self.store_problem:
                continue
            if problem:
                log.error("datastore problem: %s; the kernel state is kept as it is, and CNI requests fail "
                          "until it is fixed", problem)
            else:
                log.info("the datastore is usable again")
            self.store_problem = problem
            self.metrics.datastore_ok.set(0 if problem else 1)
            self.dirty.set()  # the status file follows

    def _start_filter(self, node: str) -> None:
        from podnet.agent.filter_loop import FilterLoop, protected_destinations, status_path_for
        from podnet.calc.policy import FilterConfig

        args = self.args
        protected = (protected_destinations(args.datastore, args.health_listen, args.metrics_listen)
                     if args.node_protection == "on" else ())
        config = FilterConfig(vxlan_port=args.vxlan_port, endpoint_to_host_action=args.default_endpoint_to_host_action,
                              protected=protected)
        self.filter = FilterLoop(node, self.store, config, status_path_for(args.status_file), args.resync_interval)
        self.filter.start()

    def _ready(self) -> tuple[bool, str]:
        if self.lifecycle.fenced:
            return False, self.lifecycle.fenced
        if self.store_problem:
            return False, f"datastore: {self.store_problem}"
        if not self.view.in_sync.is_set():
            return False, "the datastore view is not in sync yet"
        last = self.reconciler.last if self.reconciler else None
        if last is None:
            return False, "no reconcile has run yet"
        if last.failures:
            return False, f"the last reconcile left {len(last.failures)} changes unapplied: {last.failures[0][0]}"
        return True, f"ok: {len(last.remote_nodes)} remote nodes programmed"

    def _on_events_lost(self) -> None:
        self.events_lost.set()
        self.underlay_changed.set()  # an address event may have been among them
        self.dirty.set()

    def _take_kernel_events(self) -> None:
        """Hand the queued kernel events to the managers; note the ones that change the inputs
        of the desired state (the underlay's addresses, the parent interface's MTU)."""
        if self.events_lost.is_set():
            self.events_lost.clear()
            self.reconciler.dataplane.request_resync()
        while True:
            events = self.kernel_watcher.take()
            if not events:
                return
            self.reconciler.on_kernel_events(events)
            devices = set(self.reconciler.devices.indexes.values())
            parent = self.reconciler.local.interface
            for ev in events:
                if ev.table == "addr" and may_move_underlay(ev.entry, devices):
                    self.underlay_changed.set()
                elif ev.table == "link" and parent and ev.entry.get("ifname") == parent:
                    self.reconciler.request_full()  # its MTU sets the tunnel's

    def _follow_underlay(self) -> None:
        """If the node's underlay address moved, follow it: the VXLAN device first (its local
        address changed in place, so no route, neighbour or FDB entry is dropped), then the new
        address published, so every other node's FDB follows a device that already answers.

        The flag is cleared before the address is read, so an address event that arrives while
        we look sets it again and is not lost; a failed attempt sets it again for the next pass."""
        self.underlay_changed.clear()
        args = self.args
        try:
            address, interface = find_underlay(self.ipr, args.interface, None if args.interface else args.address)
        except Exception as e:
            # E.g. between an address's removal and its replacement: the next event brings us back,
            # and every periodic resync looks again.
            log.warning("cannot determine the underlay address now: %s", e)
            return
        address6 = find_underlay6(self.ipr, interface)
        local = self.reconciler.local
        if (address, interface, address6) == (local.address, local.interface, local.address6):
            return
        log.info("underlay address changed from %s %s on %s to %s %s on %s", local.address, local.address6 or "",
                 local.interface, address, address6 or "", interface)
        self.reconciler.local = dataclasses.replace(local, address=address, interface=interface, address6=address6)
        self.reconciler.request_full()
        self.kernel_watcher.refresh()  # the parent interface may be another one now
        self.reconciler.reconcile()  # the device follows before anyone is told
        self.store.reconnect()  # connections from the old address are dead without knowing it
        try:
            self.reconciler.local = register(self.resources, self.ipam, args.node, address, interface,
                                             dict(local.labels), address6)
            self.reconciler.request_full()
        except BaseException:
            self.underlay_changed.set()
            raise

    def _pod_mtu(self) -> int:
        last = self.reconciler.last if self.reconciler else None
        if last and last.device_mtu:
            return last.device_mtu
        from podnet.dataplane import vxlan

        return self.config.device_mtu(vxlan.interface_mtu(self.ipr, self.reconciler.local.interface))

    def _loop(self) -> None:
        """Apply whenever the datastore or the kernel changed something, when a manager's periodic
        resync is due, and every resync interval look at the underlay and collect IPAM garbage."""
        backoff = 0.05
        interval = self.args.resync_interval
        next_tick = time.monotonic() + interval
        status_written = 0.0
        while not self.stop.is_set():
            due = self.reconciler.next_due() if self.reconciler else interval
            trim_in = self.heap.seconds_left()
            woke = self.dirty.wait(max(0.0, min(due, next_tick - time.monotonic(),
                                                trim_in if trim_in is not None else interval)))
            if self.stop.is_set():
                break
            if woke:  # a change (datastore, kernel, a CNI request's records): the heap is trimmed after the run
                self.heap.worked()
            self.dirty.clear()
            self.heartbeat.beat()
            tick = time.monotonic() >= next_tick
            if tick:
                next_tick = time.monotonic() + interval
            self.metrics.in_sync.set(1 if self.view.in_sync.is_set() else 0)
            self._take_kernel_events()  # beliefs only: nothing is programmed here
            if self.lifecycle.fenced:  # deleted from the cluster: program nothing, ever (see lifecycle.py)
                self.lifecycle.loop_parked.set()
                self._write_status()
                self.stop.wait(interval)
                continue
            if not self.view.in_sync.is_set():
                continue  # program nothing until the view is complete
            result = None
            try:
                if self.underlay_changed.is_set() or tick:
                    self._follow_underlay()
                result = self.reconciler.reconcile()
                self._record(result)
                if result.changes:
                    log.info("applied %d changes in %.1f ms (%s), %d remote nodes", result.changes,
                             result.seconds * 1e3, ", ".join(result.resynced) + " read back" if result.resynced
                             else "no read-back", len(result.remote_nodes))
                if result.failures:
                    self.stop.wait(backoff)
                    backoff = min(backoff * 2, 5)
                    self.dirty.set()
                else:
                    backoff = 0.05
            except Exception:
                self.metrics.reconcile_errors.inc()
                log.exception("reconcile failed; retrying")
                self.reconciler.dataplane.request_resync()
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 5)
                self.dirty.set()
            if tick and self.gc is not None:
                self._collect_garbage()
            # The status file names every remote node: written when the datastore's view or readiness
            # changed, not for each repair of a kernel entry.
            if tick or not status_written or result is None or result.desired_changes or result.failures \
                    or bool(result.failures) != self._last_failed or self._ready() != self._written_ready:
                self._write_status()
                status_written = time.monotonic()
            self._last_failed = bool(result and result.failures)
            if result is not None:  # after the status: no one waits for the heap housekeeping
                if not self.reconciler.release_memory():
                    self.heap.maybe()

    def _record(self, result) -> None:
        m = self.metrics
        m.reconcile_seconds.observe(result.seconds)
        m.reconcile_changes.inc(result.changes)
        m.drift_repairs.inc(result.drift)
        m.remote_nodes.set(len(result.remote_nodes))
        if result.failures:
            m.reconcile_errors.inc()
        if result.drift:
            log.info("repaired %d kernel entries changed outside podnet", result.drift)

    def _collect_garbage(self) -> None:
        try:
            done = self.gc.run(self.ipam, self.resources)
        except DatastoreError as e:
            log.warning("IPAM garbage collection skipped: %s", e)
            return
        if done["released"] or done["blocks_released"]:
            log.info("IPAM garbage collection released addresses %s and empty blocks %s",
                     done["released"], done["blocks_released"])

    def _write_status(self) -> None:
        if not self.args.status_file:
            return
        last = self.reconciler.last
        self._written_ready = self._ready()
        status = {
            "node": self.args.node,
            "ready": self._written_ready[0],
            "reason": self._written_ready[1],
            "fenced": self.lifecycle.fenced,
            "pid": os.getpid(),
            "tunnel_address": self.reconciler.local.tunnel_address,
            "remote_nodes": list(last.remote_nodes) if last else [],
            "device_mtu": last.device_mtu if last else None,
            "last_reconcile": time.time(),
            "last_reconcile_ms": round(last.seconds * 1e3, 2) if last else None,
        }
        tmp = self.args.status_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(status, f)
        os.replace(tmp, self.args.status_file)


def run(args) -> int:
    heap.single_arena()  # before any thread starts (see heap.py)
    setup_logging(args.log_format, args.log_level, args.node)
    agent = Agent(args)

    def _stop(signum, frame):
        agent.stop.set()
        agent.dirty.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    # `kill -USR1 <agent pid>` writes every thread's stack to the log: for an agent that seems stuck.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    return agent.run()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="podnet agent")
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run(args)
    except PodnetError as e:  # e.g. a damaged or read-only store at start: the cause, no traceback
        logging.getLogger("podnet.agent").error("the agent cannot run: %s", e)
        return 1
