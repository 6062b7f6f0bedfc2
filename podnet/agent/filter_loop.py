"""The agent's filter layer: follow what policy reads in the datastore, keep `inet podnet` programmed.

It runs beside the routing loop, on its own thread, so a policy or label change is enforced
without waiting behind route work (and the other way round). It follows workload endpoints of every
node (selectors match remote pods too), pods, namespaces, the three policy kinds and the nodes'
underlay addresses (the VXLAN allow-list); programs nothing until that view is complete (a fresh
agent must not replace a good table with one that lacks policies it has not read yet); then
hands what changed to the calculation (calc/filter_calc.py), whose work is in proportion to the
change, and lets the FilterManager send only the difference.

It writes what it has programmed to a small JSON status file: the datastore revision its table
reflects and the interfaces it programmed, so a lab or a test can wait for a change to be enforced.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

from podnet.calc.filter_calc import EndpointJoin, FilterCalculator
from podnet.calc.policy import FilterConfig
from podnet.dataplane.filter import FilterManager
from podnet.dataplane.manager import Dataplane
from podnet.datastore import keys
from podnet.datastore.api import CompactedError, Datastore, DatastoreError

log = logging.getLogger(__name__)


def _decode(name: str, value: bytes):
    doc = json.loads(value)
    if name == "endpoints":
        from podnet.model.endpoint import WorkloadEndpoint

        return WorkloadEndpoint.from_manifest(doc)
    if name == "pods":
        from podnet.model.kube import Pod

        return Pod.from_manifest(doc)
    if name == "namespaces":
        from podnet.model.kube import Namespace

        return Namespace.from_manifest(doc)
    if name == "nodes":
        from podnet.model.node import Node

        # Only the underlay addresses (the VXLAN allow-list): a whole Node per remote node would be a
        # second copy of what the routing view holds, ~18 MiB at 10,000 nodes.
        node = Node.from_manifest(doc)
        return tuple(a for a in (node.address, node.address6) if a)
    if name == "configs":
        from podnet.model.agentconfig import AgentConfiguration

        return AgentConfiguration.from_manifest(doc)
    from podnet.model.policy import parse_policy

    return parse_policy(doc)


FOLLOWED = {
    "endpoints": (keys.ENDPOINTS,),
    "pods": (keys.PODS,),
    "namespaces": (keys.NAMESPACES,),
    "policies": (keys.NETWORK_POLICIES, keys.K8S_NETWORK_POLICIES, keys.GLOBAL_NETWORK_POLICIES),
    "nodes": (keys.NODES,),
    "configs": (keys.AGENT_CONFIGS,),  # FelixConfiguration's defaultEndpointToHostAction
}


class PolicyView:
    """List, then watch from the next revision, and hand on what changed. It keeps the keys it has
    seen (a new listing must tell which records went away), not the records: the calculation holds
    those already."""

    def __init__(self, store: Datastore, on_change: Callable[[], None]):
        self.store = store
        self.on_change = on_change
        self.lock = threading.Lock()
        self.keys: dict[str, set] = {name: set() for name in FOLLOWED}
        self.pending: dict[str, dict] = {name: {} for name in FOLLOWED}  # key -> record, None when gone
        self.configs: dict = {}  # AgentConfiguration resources (few): every one is read on each pass
        self.in_sync = threading.Event()
        self.revision = 0  # the store revision the view reflects
        self.stop = threading.Event()
        self._relist = threading.Event()

    def take_changes(self) -> tuple[dict[str, dict], list, int]:
        """What changed since the last call ({table: {key: record or None when gone}}), every
        AgentConfiguration, and the revision the view reflects."""
        with self.lock:
            changes = {name: table for name, table in self.pending.items() if table}
            self.pending = {name: {} for name in FOLLOWED}
            return changes, list(self.configs.values()), self.revision

    def relist(self) -> None:
        """Start again from a listing of everything, and count as out of sync until it is done (for a
        reader that starts again from nothing and must not act on half of it)."""
        self.in_sync.clear()
        self._relist.set()

    def _table(self, key: str) -> str | None:
        for name, prefixes in FOLLOWED.items():
            if key.startswith(prefixes):
                return name
        return None

    def _put(self, name: str, key: str, value: bytes | None) -> None:
        record = None
        if value is not None:
            try:
                record = _decode(name, value)
            except Exception as e:  # noqa: BLE001 - one bad record must not stop the others
                log.error("ignoring unreadable record %s: %s", key, e)
        self.pending[name][key] = record
        if record is None:
            self.keys[name].discard(key)
        else:
            self.keys[name].add(key)
        if name == "configs":
            if record is None:
                self.configs.pop(key, None)
            else:
                self.configs[key] = record

    def follow(self) -> None:
        backoff = 0.1
        while not self.stop.is_set():
            try:
                self._relist.clear()
                listed = {}
                for name, prefixes in FOLLOWED.items():
                    fresh = {}
                    for prefix in prefixes:
                        kvs, rev = self.store.list(prefix)
                        listed[prefix] = rev
                        for kv in kvs:
                            fresh[kv.key] = kv.value
                    with self.lock:
                        for key in self.keys[name] - fresh.keys():  # gone while the view was not watching
                            self._put(name, key, None)
                        for key, value in fresh.items():
                            self._put(name, key, value)
                start = min(listed.values())
                with self.lock:
                    self.revision = max(listed.values())
                if not self._relist.is_set():  # else a reader starting from nothing needs another listing
                    self.in_sync.set()
                self.on_change()
                backoff = 0.1
                with self.store.watch(keys.ROOT, start + 1) as watch:
                    while not self.stop.is_set() and not self._relist.is_set():
                        events = watch.next_events(timeout=0.5)
                        if not events:
                            continue
                        with self.lock:
                            for ev in events:
                                name = self._table(ev.key)
                                prefix = next((p for p in FOLLOWED.get(name, ()) if ev.key.startswith(p)), None)
                                if name and ev.mod_revision > listed[prefix]:
                                    self._put(name, ev.key, ev.value if ev.kind == "put" else None)
                                self.revision = max(self.revision, ev.mod_revision)
                        # Also for other records: the status then says how far the view has read.
                        self.on_change()
            except CompactedError as e:
                log.warning("filter view: watch fell behind (%s); listing again", e)
            except DatastoreError as e:
                log.warning("filter view: datastore unavailable: %s; the filter table is kept as is", e)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception:  # noqa: BLE001 - never let the thread die silently
                log.exception("filter view: unexpected error")
                self.stop.wait(1.0)


def endpoint_to_host_action(configs, node: str, default: str) -> str:
    """FelixConfiguration's defaultEndpointToHostAction: the node's own resource, else `default`'s, else
    the agent's flag."""
    from podnet.model.agentconfig import endpoint_to_host_action as of

    by_name = {c.name: c for c in configs}
    for name in (f"node.{node}", "default"):
        c = by_name.get(name)
        if c is not None and of(c) is not None:
            return of(c)
    return default


def protected_destinations(datastore_url: str | None, *listen: str | None) -> tuple:
    """What pods may not reach by default: the agent's health and metrics ports on the node, and etcd
    (client and peer ports)."""
    out = []
    for address in listen:
        port = (address or "").rpartition(":")[2]
        if port.isdigit():
            out.append((None, 6, int(port)))
    url = datastore_url or ""
    if "://" in url and url.split("://")[0] in ("etcd", "etcds", "http", "https"):
        for endpoint in url.split("://", 1)[1].split("/")[0].split(","):
            host, _, port = endpoint.rpartition(":")
            host = host.strip("[]")
            try:
                import ipaddress

                ipaddress.ip_address(host)
            except ValueError:
                continue  # a name: podnet cannot know its address here
            for p in {int(port or 2379), 2380}:
                out.append((host, 6, p))
    return tuple(out)


@dataclass
class FilterStatus:
    revision: int = 0
    ok: bool = False
    interfaces: tuple = ()
    error: str = ""
    seconds: float = 0.0


COALESCE_MAX_SECONDS = 0.05  # the most a change waits for others to join it


class FilterLoop:
    def __init__(self, node: str, store: Datastore, config: FilterConfig, status_path: str | None = None,
                 resync_interval: float = 30.0):
        self.node = node
        self.config = config
        self.status_path = status_path
        self.dirty = threading.Event()
        self.stop = threading.Event()
        self.view = PolicyView(store, self.dirty.set)
        self.manager = FilterManager()
        self.dataplane = Dataplane([self.manager], resync_interval)
        self.status = FilterStatus()
        self._fresh_calculation()
        self.retry = False  # the last apply failed: apply again even if nothing changed

    def _fresh_calculation(self) -> None:
        self.join = EndpointJoin()
        self.calculation = FilterCalculator(self.node, self.config)

    def start(self) -> None:
        threading.Thread(target=self.view.follow, name="filter view", daemon=True).start()
        threading.Thread(target=self.run, name="filter", daemon=True).start()

    def shutdown(self) -> None:
        self.stop.set()
        self.view.stop.set()
        self.dirty.set()

    def run(self) -> None:
        backoff = 0.05
        while not self.stop.is_set():
            self.dirty.wait(max(0.05, min(self.dataplane.next_due(), 5.0)))
            if self.stop.is_set():
                return
            if not self.view.in_sync.is_set():
                continue  # program nothing until the view is complete
            # Let a run of changes (pods added one after another) gather into one pass: wait twice as
            # long as the last pass took (it shares the interpreter with the CNI requests), at most 50 ms.
            self.stop.wait(min(COALESCE_MAX_SECONDS, 2 * self.status.seconds))
            self.dirty.clear()
            changes, configs, revision = self.view.take_changes()
            if not changes and not self.retry and self.dataplane.next_due() > 0:
                if self.status.ok and revision > self.status.revision:
                    self.status.revision = revision  # nothing policy reads changed up to here
                    self._write_status()
                continue
            try:
                self.cycle(changes, configs, revision)
                backoff = 0.05
            except Exception as e:  # noqa: BLE001
                log.exception("filter: cycle failed; calculating the table again from nothing")
                self._fresh_calculation()
                self.view.relist()
                self.status.ok, self.status.error = False, str(e)
                self._write_status()
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                self.dirty.set()

    def cycle(self, changes: dict, configs: list, revision: int) -> None:
        start = time.perf_counter()
        action = endpoint_to_host_action(configs, self.node, self.config.endpoint_to_host_action)
        endpoints = self.join.update(changes.get("endpoints"), changes.get("pods"), changes.get("namespaces"))
        ruleset = self.calculation.update(endpoints=endpoints, policies=changes.get("policies"),
                                          node_addresses=changes.get("nodes"),
                                          config=dataclasses.replace(self.config, endpoint_to_host_action=action))
        self.manager.set_desired(ruleset)
        result = self.dataplane.apply()
        seconds = time.perf_counter() - start
        self.retry = bool(result.failures)
        if result.failures:
            self.status.ok, self.status.error = False, str(result.failures[0][1])
            self.dirty.set()  # try again: the driver reads back first
            self.stop.wait(0.2)
        else:
            self.status = FilterStatus(revision, True, tuple(sorted(ruleset.endpoint_policies)), "", seconds)
            if self.manager.last_commands:
                log.info("filter: %d nft commands in %.1f ms (revision %d, %d local endpoints)",
                         self.manager.last_commands, seconds * 1e3, revision, len(ruleset.endpoint_policies))
        self._write_status()

    def _write_status(self) -> None:
        if not self.status_path:
            return
        s = self.status
        tmp = self.status_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"revision": s.revision, "ok": s.ok, "interfaces": list(s.interfaces), "error": s.error,
                       "last_cycle_ms": round(s.seconds * 1e3, 2), "written": time.time()}, f)
        os.replace(tmp, self.status_path)


def status_path_for(agent_status_file: str | None) -> str | None:
    if not agent_status_file:
        return None
    base = agent_status_file[:-len(".status.json")] if agent_status_file.endswith(".status.json") else agent_status_file
    return base + ".filter.json"
