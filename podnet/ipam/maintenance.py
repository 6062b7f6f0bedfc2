"""Find and repair what IPAM lost track of: leaked addresses, orphaned blocks, departed nodes.

An address is leaked when nothing can ever release it through the normal
path: a pod's address whose workload endpoint is gone (its DEL never came),
or a tunnel address of a node that no longer exists. Addresses under other
handles are the user's own and never reported.
"""

from __future__ import annotations

import calendar
import time
from dataclasses import asdict, dataclass, field

from podnet.datastore import keys
from podnet.datastore.resources import Resources
from podnet.ipam.allocator import Ipam
from podnet.model.endpoint import explained_handles, tunnel_handle, tunnel_handle6

POD_HANDLE_PREFIX = "k8s-pod-network."
TUNNEL_HANDLE_PREFIXES = ("vxlan-tunnel-addr-", "vxlan-v6-tunnel-addr-")
DEFAULT_GRACE_SECONDS = 15 * 60


@dataclass
class IpamReport:
    leaked: list[dict] = field(default_factory=list)  # ip, handle, block, node, reason, allocated
    endpoints_without_ips: list[dict] = field(default_factory=list)  # node, endpoint, ips, reason
    orphan_blocks: list[dict] = field(default_factory=list)  # cidr, node, in_use

    @property
    def clean(self) -> bool:
        return not (self.leaked or self.endpoints_without_ips or self.orphan_blocks)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> IpamReport:
        return cls(list(d.get("leaked", [])), list(d.get("endpoints_without_ips", [])),
                   list(d.get("orphan_blocks", [])))


def check(ipam: Ipam, resources: Resources) -> IpamReport:
    nodes = {n.name for n in resources.nodes()}
    endpoints = resources.endpoints()
    explained = explained_handles(endpoints)
    report = IpamReport()
    allocated: dict[str, str] = {}
    for block in ipam.blocks():
        if block.node and block.node not in nodes:
            report.orphan_blocks.append({"cidr": block.cidr, "node": block.node, "in_use": len(block.allocations)})
        for ip, alloc in block.in_use().items():
            allocated[ip] = alloc.handle
            reason = _leak_reason(alloc.handle, explained, nodes)
            if reason:
                report.leaked.append({"ip": ip, "handle": alloc.handle, "block": block.cidr,
                                      "node": alloc.attrs.get("node", block.node), "reason": reason,
                                      "allocated": alloc.attrs.get("timestamp", "")})
    for ep in endpoints:
        missing = [c for c in ep.ips if allocated.get(c.split("/")[0]) != ep.handle]
        if missing:
            report.endpoints_without_ips.append({"node": ep.node, "endpoint": ep.key_name, "ips": missing,
                                                 "reason": "not allocated to the endpoint's handle"})
    return report


def _leak_reason(handle: str, explained: set[str], nodes: set[str]) -> str | None:
    """Why an address under this handle is leaked; explained: the pod handles endpoints account for."""
    if handle.startswith(POD_HANDLE_PREFIX) and handle not in explained:
        return "no workload endpoint holds it"
    for prefix in TUNNEL_HANDLE_PREFIXES:
        if handle.startswith(prefix) and handle[len(prefix):] not in nodes:
            return "its node no longer exists"
    return None


def release_reported(ipam: Ipam, report: IpamReport) -> list[str]:
    """Release the report's leaked addresses, each only if it is still held by the same handle."""
    released = []
    for item in report.leaked:
        rec = ipam.block_of(item["ip"])
        alloc = rec.block.allocations.get(rec.block.ordinal(item["ip"])) if rec else None
        if alloc and alloc.handle == item["handle"] and ipam.release_ip(item["ip"]):
            released.append(item["ip"])
    return released


def _age_seconds(timestamp: str, now: float) -> float | None:
    try:
        return now - calendar.timegm(time.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ"))
    except (ValueError, TypeError):
        return None


@dataclass
class NodeGc:
    """The garbage collection one agent does for its own node, pass after pass."""

    node: str
    grace_seconds: float = DEFAULT_GRACE_SECONDS
    _empty_seen: set = field(default_factory=set)

    def run(self, ipam: Ipam, resources: Resources, now: float | None = None) -> dict:
        """Release leaked pod addresses used by this node once older than the grace period, and
        this node's blocks found empty on two passes in a row."""
        now = time.time() if now is None else now
        explained = explained_handles(resources.endpoints(self.node))
        released, freed = [], []
        empty_now = set()
        for block in ipam.blocks():
            for ip, alloc in block.in_use().items():
                if alloc.attrs.get("node", block.node) != self.node:
                    continue
                if _leak_reason(alloc.handle, explained, {self.node}):
                    age = _age_seconds(alloc.attrs.get("timestamp", ""), now)
                    if age is not None and age >= self.grace_seconds and ipam.release_ip(ip):
                        released.append(ip)
            if block.node == self.node and block.empty:
                empty_now.add(block.cidr)
        for cidr in empty_now & self._empty_seen:
            if ipam.release_block(cidr):
                freed.append(cidr)
        self._empty_seen = empty_now - set(freed)
        return {"released": released, "blocks_released": freed}


def delete_node(ipam: Ipam, resources: Resources, name: str) -> dict:
    """Remove a node from the cluster: its record, endpoints, addresses (its own and borrowed) and blocks.
    Every other agent then removes its route, neighbour and FDB entries."""
    existed = resources.delete_node(name)
    endpoints = resources.endpoints(name)
    released = ipam.release_handle(tunnel_handle(name)) + ipam.release_handle(tunnel_handle6(name))
    for ep in endpoints:
        released += ipam.release_handle(ep.handle)
        resources.delete_endpoint(name, ep.key_name)
    for block in ipam.blocks():
        for ip, alloc in block.in_use().items():
            if alloc.attrs.get("node") == name and ipam.release_ip(ip):
                released.append(ip)
    blocks, kept = [], []
    for cidr in ipam.node_block_cidrs(name, 4) + ipam.node_block_cidrs(name, 6):
        (blocks if ipam.release_block(cidr) else kept).append(cidr)
    if not kept:
        for version in (4, 6):
            ipam.store.delete(keys.block_claims(name, version))
    return {"node_existed": existed, "released": sorted(set(released)), "blocks_released": blocks,
            "blocks_kept": kept, "endpoints_removed": len(endpoints)}
