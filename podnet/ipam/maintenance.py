"""Find and repair what IPAM lost track of; guard what is in use; remove and fence nodes.

An address is leaked when nothing can ever release it through the normal
path: a pod's address whose workload endpoint is gone (its DEL never came), an
endpoint whose sandbox is gone, or any podnet address of a node that no longer
exists (no Node record and no live agent). Addresses under other handles are
the user's own and never reported.

A node exists for IPAM while it has a Node record or a live agent (its liveness
record): a node deleted by force whose agent still runs keeps its addresses
until the agent has withdrawn them from its kernel, so the same address never
lives on two nodes.
"""

from __future__ import annotations

import calendar
import dataclasses
import ipaddress
import json
import time
from dataclasses import asdict, dataclass, field

from podnet.datastore import keys
from podnet.datastore.api import Liveness
from podnet.datastore.resources import Resources
from podnet.errors import PodnetError
from podnet.ipam.allocator import Ipam
from podnet.model.block import Block
from podnet.model.endpoint import WorkloadEndpoint, explained_handles, tunnel_handle, tunnel_handle6
from podnet.model.nodestatus import AgentLiveness, KernelReport

POD_HANDLE_PREFIX = "k8s-pod-network."
TUNNEL_HANDLE_PREFIXES = ("vxlan-tunnel-addr-", "vxlan-v6-tunnel-addr-")
DEFAULT_GRACE_SECONDS = 15 * 60


class NodeIsLive(PodnetError):
    """The node's agent is running: deleting the node now would hand out addresses it still uses."""


class AddressInUse(PodnetError):
    """Releasing this address would take it from something that uses it now."""


# Liveness and kernel reports ------------------------------------------------------------------------


def live_agents(store) -> dict[str, Liveness]:
    """Node name -> its agent's liveness record, for every agent alive now."""
    return {key[len(keys.LIVENESS):]: rec for key, rec in store.live(keys.LIVENESS).items()}


def describe_liveness(rec: Liveness) -> str:
    try:
        info = AgentLiveness.from_json(rec.value)
        who = f"pid {info.pid} on {info.host}" if info.host else f"pid {info.pid}"
    except (ValueError, KeyError, TypeError):
        who = "an agent"
    return f"{who}; its liveness record expires in {rec.expires_in:.0f}s unless renewed"


def kernel_reports(store, live: dict[str, Liveness]) -> dict[str, KernelReport]:
    """The kernel reports of nodes whose agent runs now (a stopped agent's last report is stale)."""
    out = {}
    for kv in store.list(keys.KERNEL_REPORTS)[0]:
        name = kv.key[len(keys.KERNEL_REPORTS):]
        if name in live:
            try:
                out[name] = KernelReport.from_json(kv.value)
            except (ValueError, KeyError, TypeError):
                continue
    return out


def fresh_kernel_reports(store, live: dict[str, Liveness], wait: float | None = None) -> dict[str, KernelReport]:
    """Ask every live agent to report its kernel now, and wait (by default up to the longest renewal
    period of the live agents, plus 2 s) for the answers; agents that do not answer in time are left
    out (reported as unreported: a stale report would show addresses that moved meanwhile)."""
    if not live:
        return {}
    if wait is None:
        renewals = []
        for rec in live.values():
            try:
                renewals.append(AgentLiveness.from_json(rec.value).renew)
            except (ValueError, KeyError, TypeError):
                renewals.append(5.0)
        wait = max(renewals) + 2
    asked = store.put(keys.KERNEL_REPORT_REQUEST, b'{"by":"podnet ipam check"}')
    deadline = time.monotonic() + wait
    while True:
        reports = {n: r for n, r in kernel_reports(store, live).items() if r.request >= asked}
        if len(reports) == len(live) or time.monotonic() >= deadline:
            return reports
        time.sleep(0.2)


def _allocations(ipam: Ipam) -> dict[str, tuple[str, str | None]]:
    """ip -> (handle, node using it) of every allocation."""
    return {ip: (a.handle, b.user_of(a)) for b in ipam.blocks() for ip, a in b.in_use().items()}


# Check ----------------------------------------------------------------------------------------------


@dataclass
class IpamReport:
    leaked: list[dict] = field(default_factory=list)  # ip, handle, block, node, reason, allocated
    endpoints_without_ips: list[dict] = field(default_factory=list)  # node, endpoint, ips, reason
    orphan_blocks: list[dict] = field(default_factory=list)  # cidr, node, in_use
    endpoints_gone: list[dict] = field(default_factory=list)  # node, endpoint, ips, netns, reason
    kernel_conflicts: list[dict] = field(default_factory=list)  # ip, node, holder, ipam_node, handle, reason
    unreported_nodes: list[str] = field(default_factory=list)  # live agents that have not reported their kernel
    held_in_kernel: dict = field(default_factory=dict)  # ip -> node whose kernel holds it (fresh reports)

    @property
    def clean(self) -> bool:
        return not (self.leaked or self.endpoints_without_ips or self.orphan_blocks or self.endpoints_gone
                    or self.kernel_conflicts)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> IpamReport:
        return cls(*(list(d.get(name, [])) for name in (
            "leaked", "endpoints_without_ips", "orphan_blocks", "endpoints_gone", "kernel_conflicts",
            "unreported_nodes")), dict(d.get("held_in_kernel", {})))


def check(ipam: Ipam, resources: Resources, report_wait: float | None = None) -> IpamReport:
    """`report_wait`: how long to wait for the live agents' fresh kernel reports (None: their renewal
    period and 2 s; 0: use none). IPAM is read before and after the reports: an address counts as live
    against IPAM only if it is so against both reads, so an ADD or DEL in flight is not taken for one."""
    live = live_agents(ipam.store)
    before = _allocations(ipam) if report_wait != 0 else {}
    reports = fresh_kernel_reports(ipam.store, live, report_wait) if report_wait != 0 else {}
    records = {n.name for n in resources.nodes()}
    nodes = records | set(live)  # a deleted node whose agent still runs holds its addresses until it withdraws
    endpoints = resources.endpoints()
    report = IpamReport(unreported_nodes=sorted(set(live) - set(reports)),
                        held_in_kernel={ip: n for n, r in sorted(reports.items()) for ip in r.addresses})
    for ep in endpoints:
        reason = None
        if ep.node not in nodes:
            reason = "its node no longer exists"
        else:
            gone = next((g for g in (reports[ep.node].netns_gone if ep.node in reports else ())
                         if g.endpoint == ep.key_name), None)
            if gone is not None:
                reason = f"its network namespace {ep.netns or '(unknown)'} is gone"
        if reason:
            report.endpoints_gone.append({"node": ep.node, "endpoint": ep.key_name, "ips": list(ep.ips),
                                          "netns": ep.netns, "container": ep.container_id, "reason": reason})
    explained = explained_handles(endpoints)  # a gone endpoint's addresses are released with it
    allocated: dict[str, tuple[str, str | None]] = {}
    for block in ipam.blocks():
        if block.node and block.node not in nodes:
            report.orphan_blocks.append({"cidr": block.cidr, "node": block.node, "in_use": len(block.allocations)})
        for ip, alloc in block.in_use().items():
            user = block.user_of(alloc)
            allocated[ip] = (alloc.handle, user)
            reason = _leak_reason(alloc.handle, explained, nodes, user)
            if reason:
                report.leaked.append({"ip": ip, "handle": alloc.handle, "block": block.cidr,
                                      "node": user, "reason": reason,
                                      "allocated": alloc.attrs.get("timestamp", "")})
    for ep in endpoints:
        missing = [c for c in ep.ips if allocated.get(c.split("/")[0], (None,))[0] != ep.handle]
        if missing:
            report.endpoints_without_ips.append({"node": ep.node, "endpoint": ep.key_name, "ips": missing,
                                                 "reason": "not allocated to the endpoint's handle"})
    earlier = {(c["ip"], c["node"]) for c in kernel_conflicts(reports, before)}
    report.kernel_conflicts = [c for c in kernel_conflicts(reports, allocated) if (c["ip"], c["node"]) in earlier]
    return report


def kernel_conflicts(reports: dict[str, KernelReport], allocated: dict[str, tuple[str, str | None]]) -> list[dict]:
    """Addresses live in a node's kernel that IPAM gives to another node or to nobody, and addresses
    live in two kernels at once. `allocated`: ip -> (handle, node using it)."""
    out = []
    seen: dict[str, str] = {}
    for node in sorted(reports):
        for ip, holder in sorted(reports[node].addresses.items()):
            handle, user = allocated.get(ip, (None, None))
            reason = None
            if ip in seen:
                reason = f"also live on node {seen[ip]}: one address on two nodes"
            elif handle is None:
                reason = "free in IPAM: it can be handed to another pod or node"
            elif user != node:
                reason = f"IPAM gives it to node {user}"
            seen.setdefault(ip, node)
            if reason:
                out.append({"ip": ip, "node": node, "holder": holder, "ipam_node": user, "handle": handle,
                            "reason": reason})
    return out


def _leak_reason(handle: str, explained: set[str], nodes: set[str], user: str | None = None) -> str | None:
    """Why an address under this handle is leaked; explained: the pod handles endpoints account for;
    nodes: those with a record or a live agent; user: the node the address was allocated for."""
    podnet_handle = handle.startswith(POD_HANDLE_PREFIX) or handle.startswith(TUNNEL_HANDLE_PREFIXES)
    if podnet_handle and user and user not in nodes:
        return "its node no longer exists"
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


def gc(ipam: Ipam, resources: Resources, apply: bool, report_wait: float | None = None) -> tuple[IpamReport, dict]:
    """Release what a check finds leaked: endpoints whose sandbox or node is gone (record and
    addresses), leaked addresses, then the blocks of departed nodes that are empty. Each step is
    taken only if the record is still as the check saw it, and never for an address a node's kernel
    holds (an ADD that died halfway may have left its veth and route: releasing the address would let
    IPAM give it to a second pod). With apply=False nothing changes: the returned plan says what would
    be done. Kernel conflicts are reported, never "fixed": which node is right is the operator's call."""
    report = check(ipam, resources, report_wait)
    done = {"endpoints_removed": [], "released": [], "blocks_released": []}
    if not apply:
        return report, done
    for item in report.endpoints_gone:
        ep = resources.endpoint(item["node"], item["endpoint"])
        if ep is None or list(ep.ips) != item["ips"]:
            continue
        others = [e for e in resources.endpoints(ep.node) if e.container_id == ep.container_id and e != ep]
        if others:  # another interface of the container stays: only this one's addresses
            for cidr in ep.ips:
                if _held_by(ipam, cidr.split("/")[0], ep.handle) and ipam.release_ip(cidr.split("/")[0]):
                    done["released"].append(cidr.split("/")[0])
        else:
            done["released"] += ipam.release_handle(ep.handle)
        resources.delete_endpoint(ep.node, ep.key_name)
        done["endpoints_removed"].append(f"{ep.node}/{ep.key_name}")
    held = report.held_in_kernel
    done["kept_held"] = sorted(x["ip"] for x in report.leaked if x["ip"] in held)
    releasable = dataclasses.replace(report, leaked=[x for x in report.leaked if x["ip"] not in held])
    done["released"] += [ip for ip in release_reported(ipam, releasable) if ip not in done["released"]]
    nodes = {n.name for n in resources.nodes()} | set(live_agents(ipam.store))
    for item in report.orphan_blocks:
        if item["node"] not in nodes and ipam.release_block(item["cidr"], node=item["node"]):
            done["blocks_released"].append(item["cidr"])
    return report, done


def _held_by(ipam: Ipam, ip: str, handle: str) -> bool:
    rec = ipam.block_of(ip)
    alloc = rec.block.allocations.get(rec.block.ordinal(ip)) if rec else None
    return alloc is not None and alloc.handle == handle


# What an address or a block is used for ----------------------------------------------------------------


def address_users(ipam: Ipam, resources: Resources, ip: str) -> list[str]:
    """What breaks if `ip` is released now: the live endpoint or node tunnel that uses it (empty: nothing)."""
    rec = ipam.block_of(ip)
    alloc = rec.block.allocations.get(rec.block.ordinal(ip)) if rec else None
    users = []
    for node in resources.nodes():
        if ip in (node.tunnel_address, node.tunnel_address6):
            users.append(f"it is node {node.name}'s VXLAN tunnel address: every node's route to {node.name}'s "
                         f"blocks leads to it, so pods on {node.name} become unreachable from other nodes if "
                         "IPAM hands it to a pod before its agent takes it back (within 15 s)")
    if alloc is not None:
        for prefix in TUNNEL_HANDLE_PREFIXES:
            name = alloc.handle[len(prefix):] if alloc.handle.startswith(prefix) else None
            if name and not users and (resources.node(name) or name in live_agents(ipam.store)):
                users.append(f"it is node {name}'s VXLAN tunnel address (handle {alloc.handle})")
    for ep in resources.endpoints():
        if any(c.split("/")[0] == ip for c in ep.ips):
            pod = f"{ep.pod_namespace}/{ep.pod_name}" if ep.pod_name else ep.container_id[:12]
            users.append(f"pod {pod} on node {ep.node} ({ep.host_interface}) holds it: its traffic stops being "
                         "routed to it once its block goes, and IPAM may hand the address to another pod "
                         "while this one still uses it")
    return users


def release_address(ipam: Ipam, resources: Resources, ip: str, force: bool = False) -> tuple[str | None, list[str]]:
    """Release one address. Refused (AddressInUse) while a live endpoint or node tunnel uses it, unless
    `force`; returns (the handle it was released from or None if it was free, what that breaks)."""
    users = address_users(ipam, resources, ip)
    if users and not force:
        raise AddressInUse(f"{ip} is in use: " + "; ".join(users),
                           f"delete the pod (or the node) that holds it; `podnet ipam release --ip {ip} --force` "
                           "releases it anyway")
    return ipam.release_ip(ip), users


def block_users(block: Block, endpoints: list[WorkloadEndpoint], tunnel_ips: set[str]) -> list[str]:
    """Why the block must stay even if its allocations say it is empty: live endpoints and tunnel
    addresses inside it (an address released by force is still used)."""
    net = block.network
    users = [f"tunnel address {ip}" for ip in sorted(tunnel_ips) if ipaddress.ip_address(ip) in net]
    for ep in endpoints:
        for cidr in ep.ips:
            if ipaddress.ip_address(cidr.split("/")[0]) in net:
                users.append(f"endpoint {ep.node}/{ep.key_name} ({cidr})")
    return users


def _tunnel_ips(resources: Resources) -> set[str]:
    return {ip for n in resources.nodes() for ip in (n.tunnel_address, n.tunnel_address6) if ip}


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
                if block.user_of(alloc) != self.node:
                    continue
                if _leak_reason(alloc.handle, explained, {self.node}):
                    age = _age_seconds(alloc.attrs.get("timestamp", ""), now)
                    if age is not None and age >= self.grace_seconds and ipam.release_ip(ip):
                        released.append(ip)
            if block.node == self.node and block.empty:
                empty_now.add(block.cidr)
        candidates = empty_now & self._empty_seen
        if candidates:  # never free a block a live endpoint or tunnel still uses
            endpoints, tunnels = resources.endpoints(), _tunnel_ips(resources)
            by_cidr = {b.cidr: b for b in ipam.blocks() if b.cidr in candidates}
            candidates = {c for c in candidates if c in by_cidr and not block_users(by_cidr[c], endpoints, tunnels)}
        for cidr in candidates:
            if ipam.release_block(cidr, node=self.node):
                freed.append(cidr)
        self._empty_seen = empty_now - set(freed)
        return {"released": released, "blocks_released": freed}


def delete_node(ipam: Ipam, resources: Resources, name: str) -> dict:
    """Remove a node from the cluster: its record, endpoints, addresses (its own and borrowed) and blocks.
    Every other agent then removes its route, neighbour and FDB entries. Only for a node whose agent
    is not running (see remove_node) or by that agent itself, once it has withdrawn from its kernel."""
    existed = resources.delete_node(name)
    endpoints = resources.endpoints(name)
    released = ipam.release_handle(tunnel_handle(name)) + ipam.release_handle(tunnel_handle6(name))
    for ep in endpoints:
        released += ipam.release_handle(ep.handle)
        resources.delete_endpoint(name, ep.key_name)
    for block in ipam.blocks():
        for ip, alloc in block.in_use().items():
            if block.user_of(alloc) == name and ipam.release_ip(ip):
                released.append(ip)
    blocks, kept = [], []
    for cidr in ipam.node_block_cidrs(name, 4) + ipam.node_block_cidrs(name, 6):
        (blocks if ipam.release_block(cidr, node=name) else kept).append(cidr)
    if not kept:
        for version in (4, 6):
            ipam.store.delete(keys.block_claims(name, version))
    ipam.store.delete(keys.kernel_report(name))
    return {"node_existed": existed, "released": sorted(set(released)), "blocks_released": blocks,
            "blocks_kept": kept, "endpoints_removed": len(endpoints)}


def remove_node(ipam: Ipam, resources: Resources, name: str, force: bool = False, wait: float = 60.0,
                progress=lambda msg: None) -> dict:
    """`podnet node delete`: refuse a node whose agent is alive unless `force`; forced, fence it.

    Fencing deletes only the Node record. The agent notices within a renewal period, withdraws its
    kernel state (pods' interfaces, tunnel device, routes), releases its addresses and blocks and ends
    its liveness record; until then its addresses stay reserved, so no other node can get them. We wait
    up to `wait` seconds for that, then remove whatever is left. Returns delete_node's summary plus
    "fenced" and "withdrawn" (False: the agent has not withdrawn yet; its addresses stay reserved until
    its liveness record expires, and `podnet ipam gc` then releases them)."""
    live = live_agents(ipam.store).get(name)
    if live is None:
        return dict(delete_node(ipam, resources, name), fenced=False, withdrawn=True)
    if not force:
        raise NodeIsLive(
            f"node {name}'s agent is running ({describe_liveness(live)}); deleting the node now would give its "
            "tunnel and pod addresses to other nodes while it still uses them",
            f"stop its agent first (it leaves at once), or `podnet node delete {name} --force` to fence it: "
            "its agent removes its pods' network and its tunnel, releases its addresses and serves no more ADDs",
        )
    existed = resources.delete_node(name)
    progress(f"node {name} fenced: waiting up to {wait:.0f}s for its agent to withdraw")
    deadline = time.monotonic() + wait
    while name in live_agents(ipam.store):
        if time.monotonic() >= deadline:
            return {"node_existed": existed, "released": [], "blocks_released": [], "blocks_kept": [],
                    "endpoints_removed": 0, "fenced": True, "withdrawn": False}
        time.sleep(0.5)
    summary = delete_node(ipam, resources, name)
    return dict(summary, node_existed=existed or summary["node_existed"], fenced=True, withdrawn=True)
