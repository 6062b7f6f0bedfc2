"""What the cluster looks like, read once: the facts `podnet trace` and `podnet doctor` judge.

Two halves. The model (plain dataclasses, no I/O) holds what the datastore
says (nodes, blocks, pods) and what each kernel holds (links, addresses,
routes, VXLAN neighbours and FDB entries, sysctls, offload features, firewall
rules). The collector fills it in: the datastore through Resources and Ipam,
each node's kernel through podnet.dataplane, inside the node's namespace.

`NodeAccess` says where a node's kernel can be read: in a lab every node is a
namespace on this machine; on a real host only the node this runs on (the
current namespace, None) is readable, and the others are known from the
datastore alone.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import ipaddress
import json
import os
import socket
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from podnet.calc.attachment import AddressSeen, Attachment, AttachmentSeen, LinkSeen, RouteSeen
from podnet.calc.config import VxlanConfig, effective_config
from podnet.calc.vxlan_device import DeviceSeen
from podnet.dataplane import csum_selftest, ethtool, nftables, ownership, rtnl, sysctl
from podnet import netns as _netns
from podnet.errors import PodnetError

# --- the model ----------------------------------------------------------------------


@dataclass(frozen=True)
class VxlanInfo:
    vni: int | None
    port: int | None
    local: str | None  # the IPv4 source of the outer packets
    parent: int | None  # ifindex of the underlay interface
    learning: bool | None
    local6: str | None = None  # the IPv6 source (vxlan-v6.calico)


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str | None
    mtu: int | None
    mac: str | None
    up: bool
    peer: int | None = None  # IFLA_LINK: a veth's peer ifindex (in the peer's namespace)
    vxlan: VxlanInfo | None = None


@dataclass(frozen=True)
class Address:
    ifname: str
    ip: str
    prefixlen: int
    flags: int = 0  # IFA_F_*: an IPv6 address may be tentative (DAD running) or have failed DAD

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.ip).version

    @property
    def tentative(self) -> bool:
        return bool(self.flags & rtnl.IFA_F_TENTATIVE)

    @property
    def dadfailed(self) -> bool:
        return bool(self.flags & rtnl.IFA_F_DADFAILED)

    @property
    def usable(self) -> bool:
        """The kernel answers for it and sends from it: not tentative, DAD not failed."""
        return not (self.tentative or self.dadfailed)

    def __str__(self) -> str:
        text = f"{self.ip}/{self.prefixlen}"
        for flag, name in ((rtnl.IFA_F_NODAD, "nodad"), (rtnl.IFA_F_DADFAILED, "dadfailed"),
                           (rtnl.IFA_F_TENTATIVE, "tentative")):
            if self.flags & flag:
                text += f" {name}"
        return text


ROUTE_TYPES = {1: "unicast", 2: "local", 3: "broadcast", 6: "blackhole", 7: "unreachable", 8: "prohibit"}


@dataclass(frozen=True)
class RouteFact:
    dst: str  # CIDR
    gateway: str | None = None
    dev: str | None = None
    onlink: bool = False
    type: str = "unicast"
    scope: int = 0
    proto: int = 0
    metric: int = 0

    @property
    def podnets(self) -> bool:
        """One of podnet's routes (dataplane/ownership.py; facts hold the main table only)."""
        return ownership.route(self.proto)

    def __str__(self) -> str:
        """As `ip route` prints it."""
        net = ipaddress.ip_network(self.dst)
        dst = "default" if net.prefixlen == 0 else (
            str(net.network_address) if net.prefixlen == net.max_prefixlen else self.dst)
        text = dst if self.type == "unicast" else f"{self.type} {dst}"
        if self.gateway:
            text += f" via {self.gateway}"
        if self.dev:
            text += f" dev {self.dev}"
        if self.proto == rtnl.RTPROT_PODNET:
            text += " proto 80"
        if self.scope == rtnl.RT_SCOPE_LINK:
            text += " scope link"
        if self.onlink:
            text += " onlink"
        return text


NUD_STATES = [(0x80, "PERMANENT"), (0x40, "NOARP"), (0x20, "FAILED"), (0x10, "PROBE"), (0x08, "DELAY"),
              (0x04, "STALE"), (0x02, "REACHABLE"), (0x01, "INCOMPLETE")]


def nud_name(state: int) -> str:
    return next((name for bit, name in NUD_STATES if state & bit), "NONE")


@dataclass(frozen=True)
class NeighFact:
    ip: str
    mac: str | None
    dev: str
    state: str  # PERMANENT, REACHABLE, FAILED, ...

    def podnets(self, devices) -> bool:
        """One of podnet's neighbours when `devices` are podnet's VXLAN devices (dataplane/ownership.py)."""
        return ownership.neighbour(self.dev in devices, self.state == "PERMANENT", self.mac, self.ip)

    def __str__(self) -> str:
        mac = f" lladdr {self.mac}" if self.mac else ""
        return f"{self.ip} dev {self.dev}{mac} {self.state}"


@dataclass(frozen=True)
class FdbFact:
    mac: str
    dst: str | None
    dev: str
    permanent: bool

    def podnets(self, devices) -> bool:
        """One of podnet's FDB entries when `devices` are podnet's VXLAN devices (dataplane/ownership.py)."""
        return ownership.fdb(self.dev in devices, self.permanent, self.mac, self.dst)

    def __str__(self) -> str:
        dst = f" dst {self.dst}" if self.dst else ""
        return f"{self.mac} dev {self.dev}{dst} self" + (" permanent" if self.permanent else "")


@dataclass(frozen=True)
class FirewallRule:
    """A firewall rule that drops or rejects UDP to some destination ports."""

    family: str
    table: str
    chain: str
    hook: str | None  # the base chain's hook; None for a chain reached by jump
    handle: int
    ports: tuple[tuple[int, int], ...]  # inclusive ranges
    verdict: str  # drop | reject

    def matches(self, port: int) -> bool:
        return any(lo <= port <= hi for lo, hi in self.ports)

    def __str__(self) -> str:
        ports = ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in self.ports)
        return f"table {self.family} {self.table} chain {self.chain}: udp dport {{ {ports} }} {self.verdict}"


@dataclass
class KernelFacts:
    """One network namespace as its kernel sees it."""

    links: dict[str, Link] = field(default_factory=dict)
    addresses: list[Address] = field(default_factory=list)  # both families
    routes: list[RouteFact] = field(default_factory=list)  # main table, both families
    neighbours: list[NeighFact] = field(default_factory=list)  # of the VXLAN devices (a pod: all of them)
    fdb: list[FdbFact] = field(default_factory=list)
    sysctls: dict[str, str] = field(default_factory=dict)  # below /proc/sys/net/ipv4: "conf/eth0/rp_filter"
    sysctls6: dict[str, str] = field(default_factory=dict)  # below /proc/sys/net/ipv6: "conf/all/forwarding"
    features: dict[str, dict[str, bool]] = field(default_factory=dict)  # ifname -> ethtool feature -> active
    firewall: list[FirewallRule] | None = None  # None: not read (nft missing or failed)
    filter_table: dict | None = None  # podnet's own filter table, summarised (read_filter_table); None: not read
    release: str = ""  # the kernel's version (uname -r)
    csum_errors: dict[str, int] = field(default_factory=dict)  # /proc/net/snmp InCsumErrors: {"Tcp": n, "Udp": n}
    notes: list[str] = field(default_factory=list)  # what could not be read

    def link_by_index(self, index: int | None) -> Link | None:
        return next((l for l in self.links.values() if l.index == index), None)

    def addresses_of(self, ifname: str, version: int | None = None) -> list[Address]:
        return [a for a in self.addresses if a.ifname == ifname and (version is None or a.version == version)]

    def vxlan_seen(self, ifname: str, version: int) -> DeviceSeen | None:
        """The VXLAN device `ifname` of IP `version` as calc/vxlan_device judges it; None: no such link."""
        link = self.links.get(ifname)
        if link is None:
            return None
        vx = link.vxlan
        if vx is None:
            return DeviceSeen(link.kind or "not vxlan")
        addrs = frozenset((a.ip, a.prefixlen) for a in self.addresses_of(ifname, version)
                          if not ipaddress.ip_address(a.ip).is_link_local)
        return DeviceSeen("vxlan", vni=vx.vni, port=vx.port, local=vx.local6 if version == 6 else vx.local,
                          parent=vx.parent, learning=vx.learning, mac=link.mac, mtu=link.mtu, up=link.up,
                          addresses=addrs)

    def lookup(self, ip: str) -> RouteFact | None:
        """The route the kernel picks for `ip` in the main table: longest prefix, then lowest metric."""
        addr = ipaddress.ip_address(ip)
        best = None
        for r in self.routes:
            net = ipaddress.ip_network(r.dst)
            if net.version == addr.version and addr in net:
                key = (net.prefixlen, -r.metric)
                if best is None or key > best[0]:
                    best = (key, r)
        return best[1] if best else None

    def default_route(self, version: int = 4) -> RouteFact | None:
        dst = "0.0.0.0/0" if version == 4 else "::/0"
        return next((r for r in self.routes if r.dst == dst and r.type == "unicast"), None)


@dataclass(frozen=True)
class AgentHealth:
    """The node's agent as its /readyz answers: `answered` False when nothing listens there."""

    answered: bool
    ready: bool = False
    reason: str = ""
    address: str = ""


@dataclass
class NodeFacts:
    name: str
    netns: str | None  # where its kernel was read; None: this host's own namespace
    address: str | None  # underlay address with prefix, from the node record
    interface: str | None
    tunnel_ip: str | None
    vtep_mac: str
    blocks: list[str] = field(default_factory=list)  # IPv4
    config: VxlanConfig = field(default_factory=VxlanConfig)  # the agent's settings for this node
    kernel: KernelFacts | None = None  # None: not read (see `unreadable`)
    host: dict | None = None  # this host only: {"networkmanager": {...}}
    unreadable: str | None = None  # why the kernel was not read
    address6: str | None = None  # IPv6 underlay address with prefix: the node has vxlan-v6.calico
    tunnel_ip6: str | None = None
    vtep_mac6: str | None = None  # vxlan-v6.calico's MAC
    blocks6: list[str] = field(default_factory=list)
    status: dict | None = None  # what its agent reported (offload decisions and their evidence); None: nothing
    agent: AgentHealth | None = None  # what the node's agent says of itself (None: not asked)

    @property
    def ip(self) -> str | None:
        return str(ipaddress.ip_interface(self.address).ip) if self.address else None

    @property
    def ip6(self) -> str | None:
        return str(ipaddress.ip_interface(self.address6).ip) if self.address6 else None

    def underlay_ip(self, version: int) -> str | None:
        return self.ip if version == 4 else self.ip6

    def underlay_address(self, version: int) -> str | None:
        return self.address if version == 4 else self.address6

    def tunnel(self, version: int) -> str | None:
        return self.tunnel_ip if version == 4 else self.tunnel_ip6

    def mac(self, version: int) -> str | None:
        return self.vtep_mac if version == 4 else self.vtep_mac6

    def device(self, version: int) -> str:
        return self.config.device_name(version)

    @property
    def all_blocks(self) -> list[str]:
        return self.blocks + self.blocks6

    @property
    def readable(self) -> bool:
        return self.kernel is not None


@dataclass
class PodFacts:
    name: str
    namespace: str
    node: str
    ip: str | None  # IPv4; None for an IPv6-only pod
    host_interface: str
    interface: str  # inside the pod
    netns: str  # the namespace path the CNI plugin was given
    container_id: str
    kernel: KernelFacts | None = None
    unreadable: str | None = None
    ip6: str | None = None
    netns_gone: bool = False  # its namespace was looked for and is not there

    @property
    def label(self) -> str:
        return self.name or self.container_id[:12]

    def ip_of(self, version: int) -> str | None:
        return self.ip if version == 4 else self.ip6


def attachment_of(node: KernelFacts, pod: PodFacts, version: int | None = None) -> tuple[Attachment, AttachmentSeen]:
    """The pod's attachment as the calculation judges it (podnet.calc.attachment), from the node's kernel
    facts and the pod's (pod.kernel None: not read, unless its namespace is gone). `version`: judge only
    that family's address."""
    host = pod.host_interface
    want = Attachment(host, pod.interface, pod.ip if version in (None, 4) else None,
                      pod.ip6 if version in (None, 6) else None)
    link = node.links.get(host)
    seen = AttachmentSeen(
        LinkSeen(link.index, link.up, link.mac, link.peer) if link else None,
        {k: node.sysctls.get(f"conf/{host}/{k}") for k in ("proxy_arp", "forwarding")
         if node.sysctls.get(f"conf/{host}/{k}") is not None}
        | ({"proxy_ndp": node.sysctls6[f"conf/{host}/proxy_ndp"]} if f"conf/{host}/proxy_ndp" in node.sysctls6
           else {}),
        node.sysctls.get("ip_forward"),
        [RouteSeen(r.dst, r.dev, r.gateway, r.metric) for r in node.routes if r.type == "unicast"],
        f"the pod's network namespace {pod.netns} is gone" if pod.netns_gone else None,
        pod_namespace=pod.netns)
    k = pod.kernel
    if k is not None:
        inner = k.links.get(pod.interface)
        seen.pod_link = LinkSeen(inner.index, inner.up, inner.mac, inner.peer) if inner else None
        seen.pod_addresses = [AddressSeen(a.ip, a.prefixlen, a.usable) for a in k.addresses_of(pod.interface)]
        seen.pod_routes = [RouteSeen(r.dst, r.dev, r.gateway, r.metric) for r in k.routes if r.type == "unicast"]
    return want, seen


@dataclass
class ClusterFacts:
    nodes: dict[str, NodeFacts]
    pods: list[PodFacts]
    config: VxlanConfig = field(default_factory=VxlanConfig)  # the cluster-wide settings
    access: str = ""  # where the facts were read: "lab obsx", "this host (node-1)"
    pools: list = field(default_factory=list)  # IPPool
    borrowed: list[tuple[str, str]] = field(default_factory=list)  # (address, node using it) outside its block's node

    def block_owner(self, ip: str) -> tuple[str, str] | None:
        """(node, block CIDR) of the block holding `ip` (either family)."""
        addr = ipaddress.ip_address(ip)
        for node in self.nodes.values():
            for cidr in node.all_blocks:
                net = ipaddress.ip_network(cidr)
                if net.version == addr.version and addr in net:
                    return node.name, cidr
        return None

    def find_pod(self, ref: str) -> PodFacts | None:
        """A pod by IP (either family, any spelling), name, namespace/name or container id."""
        try:
            ref_ip = str(ipaddress.ip_address(ref))
        except ValueError:
            ref_ip = None
        for p in self.pods:
            if ref in (p.ip, p.ip6, p.name, f"{p.namespace}/{p.name}", p.container_id) or \
                    (ref_ip is not None and ref_ip in (p.ip, p.ip6)) or \
                    (len(ref) >= 12 and p.container_id.startswith(ref)):
                return p
        return None

    @property
    def affinities(self) -> list[tuple[str, str]]:
        return [(n.name, cidr) for n in self.nodes.values() for cidr in n.all_blocks]


# --- where each node's kernel is --------------------------------------------------------


@dataclass(frozen=True)
class NodeAccess:
    """The nodes whose kernel this process can read, and the namespace each lives in.

    A node maps to a namespace name or path, or to None: the namespace this
    process runs in (a real host reading itself). Nodes not in the map are
    known from the datastore only.
    """

    netns: Mapping[str, str | None]
    label: str = ""

    def readable(self, node: str) -> bool:
        return node in self.netns

    @classmethod
    def for_lab(cls, status: dict) -> NodeAccess:
        """From `Lab.status()`: every node is a namespace on this machine."""
        return cls({n["name"]: n["netns"] for n in status["nodes"]}, f"lab {status['name']}")

    @classmethod
    def this_host(cls, node: str) -> NodeAccess:
        return cls({node: None}, f"this host ({node})")


def local_addresses() -> set[str]:
    """The IPv4 and IPv6 addresses configured in this process's network namespace."""
    out: set[str] = set()
    try:
        with rtnl.RtnlSocket() as sock:
            for family in (socket.AF_INET, socket.AF_INET6):
                try:
                    out |= {rtnl.parse_addr(p)["address"] for _, p in sock.dump(rtnl.addr_dump_msg(family))}
                except (OSError, PodnetError):
                    continue
    except (OSError, PodnetError):
        pass
    return out


def local_node(nodes: Iterable, hostname: str | None = None) -> str | None:
    """Which node record is this host: the one whose underlay IP is configured here, else the hostname."""
    here = local_addresses()
    nodes = list(nodes)
    for n in nodes:
        for address in (n.address, n.address6):
            if address and str(ipaddress.ip_interface(address).ip) in here:
                return n.name
    hostname = hostname or socket.gethostname()
    return next((n.name for n in nodes if n.name in (hostname, hostname.split(".")[0])), None)


# --- the collector -------------------------------------------------------------------------


def collect(store, access: NodeAccess, nodes: Iterable[str] | None = None, pods: Iterable[str] | None = None,
            config: VxlanConfig | None = None) -> ClusterFacts:
    """The datastore's view, then the kernel of each readable node in `nodes` (default: all) and its pods.

    `pods`: container ids whose namespaces to read (default: every pod on a node that is read).
    """
    facts = from_datastore(store, access, config)
    read_kernels(facts, access, nodes, pods)
    return facts


def from_datastore(store, access: NodeAccess, config: VxlanConfig | None = None) -> ClusterFacts:
    """Nodes, their blocks and the pods, as the datastore has them; no kernel read yet."""
    from podnet.datastore.resources import Resources
    from podnet.ipam import Ipam

    res, ipam = Resources(store), Ipam(store)
    config = config or VxlanConfig()
    agent_configs = res.agent_configs()
    statuses = res.node_statuses()
    blocks: dict[tuple[str, int], list[str]] = {}
    borrowed = []
    for version in (4, 6):
        for b in ipam.blocks(version=version):
            if b.node:
                blocks.setdefault((b.node, version), []).append(b.cidr)
            borrowed += list(b.borrowed().items())
    nodes = {
        n.name: NodeFacts(n.name, access.netns.get(n.name), n.address, n.interface, n.tunnel_address,
                          n.effective_vtep_mac, sorted(blocks.get((n.name, 4), [])),
                          effective_config(config, agent_configs, n.name),
                          address6=n.address6, tunnel_ip6=n.tunnel_address6,
                          vtep_mac6=n.vtep_mac6 if n.address6 else None,
                          blocks6=sorted(blocks.get((n.name, 6), [])), status=statuses.get(n.name))
        for n in res.nodes()
    }
    pods = []
    for ep in res.endpoints():
        ips = [ipaddress.ip_interface(c).ip for c in ep.ips]
        ip = next((str(a) for a in ips if a.version == 4), None)
        ip6 = next((str(a) for a in ips if a.version == 6), None)
        if ip or ip6:
            pods.append(PodFacts(ep.pod_name, ep.pod_namespace, ep.node, ip, ep.host_interface, ep.interface,
                                 ep.netns, ep.container_id, ip6=ip6))
    return ClusterFacts(nodes, pods, effective_config(config, agent_configs, ""), access.label, res.pools(),
                        sorted(borrowed))


def read_kernels(facts: ClusterFacts, access: NodeAccess, nodes: Iterable[str] | None = None,
                 pods: Iterable[str] | None = None) -> None:
    """Fill in the kernel facts of the named nodes (default: all readable) and of their pods."""
    wanted = set(facts.nodes) if nodes is None else set(nodes)
    wanted_pods = None if pods is None else set(pods)
    for node in facts.nodes.values():
        if not access.readable(node.name):
            node.unreadable = f"{node.name} is not readable from {access.label or 'here'}"
        elif node.name in wanted and node.kernel is None:
            try:
                node.kernel = read_node(node.netns, node.config.device, node.interface, node.config.device6)
            except _netns.NamespaceNotFound as e:
                node.unreadable = e.message
                continue
            if node.netns is None:
                node.host = {"networkmanager": read_networkmanager()}
            node.agent = read_agent_health(node.netns)
    for pod in facts.pods:
        node = facts.nodes.get(pod.node)
        if node is None or node.kernel is None:
            pod.unreadable = (node.unreadable if node and node.unreadable else f"its node {pod.node} was not read")
        elif pod.kernel is None and (wanted_pods is None or pod.container_id in wanted_pods):
            try:
                pod.kernel = read_pod(pod.netns)
            except _netns.NamespaceNotFound as e:
                pod.unreadable = e.message
                pod.netns_gone = True


def _read(what: str, notes: list[str], fn, default=None):
    """Run one read; a failure becomes a note instead of aborting the whole collection."""
    try:
        return fn()
    except (OSError, PodnetError, ValueError) as e:
        notes.append(f"cannot read {what}: {e}")
        return default


def read_node(netns: str | None, device: str, underlay: str | None, device6: str | None = None) -> KernelFacts:
    """A node's kernel; raises NamespaceNotFound when its namespace is gone.

    `device6`: vxlan-v6.calico's name; its neighbour (NDP) and FDB entries are read too when it exists."""
    facts = KernelFacts(release=os.uname().release)  # namespaces share the kernel of the machine
    devices = [(device, socket.AF_INET)] + ([(device6, socket.AF_INET6)] if device6 else [])
    with rtnl.RtnlSocket(netns) as sock:
        _read_tables(sock, facts)
        for dev, family in devices:
            vx = facts.links.get(dev)
            if vx is None:
                continue
            facts.neighbours += _read(f"neighbours of {dev}", facts.notes, lambda: [
                NeighFact(n["dst"], n["lladdr"], dev, nud_name(n["state"]))
                for n in _dump(sock, rtnl.neigh_dump_msg(family, vx.index), rtnl.parse_neigh)
                if n["ifindex"] == vx.index and n["dst"]], [])
            facts.fdb += _read(f"FDB of {dev}", facts.notes, lambda: [
                FdbFact(n["lladdr"], n["dst"], dev, bool(n["state"] & rtnl.NUD_PERMANENT))
                for n in _dump(sock, rtnl.neigh_dump_msg(rtnl.AF_BRIDGE, vx.index), rtnl.parse_neigh)
                if n["ifindex"] == vx.index and n["lladdr"]], [])
            facts.features[dev] = _read(f"offload features of {dev}", facts.notes,
                                        lambda: ethtool.features(dev, WANTED_FEATURES, netns), {})
    keys = ["ip_forward"] + [f"conf/{n}/rp_filter" for n in ("all", "default", underlay, device) if n]
    keys6 = ["conf/all/forwarding"]
    for link in facts.links.values():
        if link.name.startswith("cali"):
            keys += [f"conf/{link.name}/proxy_arp", f"conf/{link.name}/forwarding"]
            keys6 += [f"conf/{link.name}/proxy_ndp", f"conf/{link.name}/accept_dad"]
    facts.sysctls = _read("sysctls", facts.notes, lambda: read_sysctls(netns, keys), {})
    facts.sysctls6 = _read("IPv6 sysctls", facts.notes, lambda: read_sysctls(netns, keys6, 6), {})
    facts.firewall = _read("the firewall", facts.notes, lambda: read_firewall(netns))
    facts.csum_errors = _read("checksum error counters", facts.notes, lambda: read_csum_errors(netns), {})
    facts.filter_table = _read("the filter table", facts.notes, lambda: read_filter_table(netns))
    return facts


def read_csum_errors(netns: str | None) -> dict[str, int]:
    if netns is None:
        return csum_selftest.checksum_errors()
    with _netns.entered(netns):
        return csum_selftest.checksum_errors()


def read_pod(netns: str) -> KernelFacts:
    """A pod's namespace; raises NamespaceNotFound when it is gone."""
    facts = KernelFacts()
    with rtnl.RtnlSocket(netns) as sock:
        _read_tables(sock, facts)
        names = {l.index: l.name for l in facts.links.values()}
        facts.neighbours = _read("neighbours", facts.notes, lambda: [
            NeighFact(n["dst"], n["lladdr"], names.get(n["ifindex"], str(n["ifindex"])), nud_name(n["state"]))
            for n in _dump(sock, rtnl.neigh_dump_msg(socket.AF_INET), rtnl.parse_neigh) if n["dst"]], [])
        facts.neighbours += _read6("IPv6 neighbours", facts.notes, lambda: [
            NeighFact(n["dst"], n["lladdr"], names.get(n["ifindex"], str(n["ifindex"])), nud_name(n["state"]))
            for n in _dump(sock, rtnl.neigh_dump_msg(socket.AF_INET6), rtnl.parse_neigh) if n["dst"]])
    return facts


def _dump(sock: rtnl.RtnlSocket, message: bytes, parse) -> list[dict]:
    return [parse(payload) for _, payload in sock.dump(message)]


def _read6(what: str, notes: list[str], fn) -> list:
    """Like _read, for IPv6 tables: a kernel without IPv6 has none, which is no problem to note."""
    try:
        return fn()
    except rtnl.NetlinkError as e:
        if e.errno in (errno.EAFNOSUPPORT, errno.EOPNOTSUPP, errno.EPROTONOSUPPORT):
            return []
        notes.append(f"cannot read {what}: {e}")
    except (OSError, PodnetError, ValueError) as e:
        notes.append(f"cannot read {what}: {e}")
    return []


def _address(a: dict, flags: int, names: dict[int, str]) -> Address:
    return Address(names.get(a["index"], str(a["index"])), a["address"], a["prefixlen"], flags)


def _route(r: dict, names: dict[int, str]) -> RouteFact:
    return RouteFact(r["dst"], r["gateway"], names.get(r["oif"]) if r["oif"] else None, r["onlink"],
                     ROUTE_TYPES.get(r["type"], str(r["type"])), r["scope"], r["proto"], r["metric"])


def _read_tables(sock: rtnl.RtnlSocket, facts: KernelFacts) -> None:
    links = _read("links", facts.notes, lambda: [_link(p) for _, p in sock.dump(rtnl.link_dump_msg())], [])
    facts.links = {l.name: l for l in links}
    names = {l.index: l.name for l in links}
    facts.addresses = _read("addresses", facts.notes, lambda: [
        _address(rtnl.parse_addr(p), rtnl.parse_addr_flags(p), names)
        for _, p in sock.dump(rtnl.addr_dump_msg(socket.AF_INET))], [])
    facts.addresses += _read6("IPv6 addresses", facts.notes, lambda: [
        _address(rtnl.parse_addr(p), rtnl.parse_addr_flags(p), names)
        for _, p in sock.dump(rtnl.addr_dump_msg(socket.AF_INET6))])
    facts.routes = _read("routes", facts.notes, lambda: [
        _route(r, names) for r in _dump(sock, rtnl.route_dump_msg(socket.AF_INET), rtnl.parse_route)
        if r["table"] == rtnl.RT_TABLE_MAIN], [])
    facts.routes += _read6("IPv6 routes", facts.notes, lambda: [
        _route(r, names) for r in _dump(sock, rtnl.route_dump_msg(socket.AF_INET6), rtnl.parse_route)
        if r["table"] == rtnl.RT_TABLE_MAIN])


def _link(payload: bytes) -> Link:
    """A link as rtnl.parse_link decodes it (with a VXLAN device's identity)."""
    link = rtnl.parse_link(payload)
    vx = link.get("vxlan")
    vxlan = VxlanInfo(vx["vni"], vx["port"], vx["local"], vx["parent"], vx["learning"], vx["local6"]) if vx else None
    return Link(link["index"], link["ifname"], link["kind"], link["mtu"], link["address"], link["up"],
                link["link"], vxlan)


@contextlib.contextmanager
def _inside(netns: str | None):
    """This thread inside `netns` (None: stay where it is)."""
    if netns is None:
        yield
    else:
        with _netns.entered(netns):
            yield


def read_sysctls(netns: str | None, keys: Iterable[str], version: int = 4) -> dict[str, str]:
    """Values below /proc/sys/net/ipv4 (ipv6) of the namespace; keys that do not exist are left out."""
    out = {}
    with _inside(netns):  # /proc/sys/net resolves to the namespace of the thread that opens it
        for key in keys:
            try:
                out[key] = sysctl.read(f"/proc/sys/net/ipv{version}/{key}")
            except FileNotFoundError:
                pass
    return out


AGENT_HEALTH_ADDRESS = ("127.0.0.1", 9099)  # the agent's --health-listen default


def read_agent_health(netns: str | None, address: tuple[str, int] = AGENT_HEALTH_ADDRESS,
                      timeout: float = 2.0) -> AgentHealth:
    """GET /readyz from the agent's health endpoint, from inside the node's namespace (each node of a lab
    has its own loopback)."""
    where = f"{address[0]}:{address[1]}"
    try:
        sock = _netns.socket_in(netns, socket.AF_INET, socket.SOCK_STREAM)
    except (OSError, PodnetError):
        return AgentHealth(False, address=where)
    try:
        sock.settimeout(timeout)
        sock.connect(address)
        sock.sendall(b"GET /readyz HTTP/1.0\r\nHost: podnet\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    except OSError:
        return AgentHealth(False, address=where)
    finally:
        sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1:2]
    return AgentHealth(True, status == [b"200"], body.decode(errors="replace").strip(), where)


# --- ethtool: offload features (podnet.dataplane.ethtool reads them) --------------------------

WANTED_FEATURES = ("tx-checksum-ip-generic", "tx-checksum-ipv4", "rx-checksum")


def ethtool_features(netns: str | None, ifname: str, wanted: Iterable[str] | None = None) -> dict[str, bool]:
    """What `ethtool -k` shows for `ifname` in `netns`: podnet.dataplane.ethtool.features, argument order of old."""
    return ethtool.features(ifname, wanted, netns)


# --- the firewall: nftables (iptables-nft rules show up there too) ---------------------------


def read_firewall(netns: str | None) -> list[FirewallRule] | None:
    """Rules in the namespace's ruleset that drop or reject UDP by destination port; None if nft is missing."""
    if not nftables.available():
        return None
    with _inside(netns):  # a context binds to the namespace of the thread that makes it
        try:
            listing = nftables.run(None, "-j", "list", "ruleset", transient=True, timeout=10)
        except nftables.NftError as e:
            raise PodnetError(f"nft list ruleset failed: {e.detail or e.message}") from None
    return udp_drop_rules(json.loads(listing or "{}"))


def read_filter_table(netns: str | None) -> dict | None:
    """podnet's filter table (`inet podnet`) in brief: {"present", "nodes4", "nodes6", "endpoints"} (the
    interfaces its dispatch maps hold), "chains" (their names); None if nft is missing."""
    if not nftables.available():
        return None
    with _inside(netns):
        try:
            listing = nftables.run(None, "-j", "list", "table", "inet", "podnet", transient=True, timeout=10)
        except nftables.NftError:
            return {"present": False, "nodes4": [], "nodes6": [], "endpoints": [], "chains": []}
    out = {"present": True, "nodes4": [], "nodes6": [], "endpoints": [], "chains": []}
    for item in json.loads(listing or "{}").get("nftables", []):
        if "chain" in item:
            out["chains"].append(item["chain"]["name"])
        body = item.get("set") or item.get("map")
        if not body:
            continue
        elems = body.get("elem") or []
        if body["name"] in ("nodes4", "nodes6"):
            out[body["name"]] = sorted(e for e in elems if isinstance(e, str))
        elif body["name"] == "from-wl":
            out["endpoints"] = sorted(e[0] for e in elems if isinstance(e, list))
    return out


# podnet's filter table drops VXLAN on purpose (from workloads, from addresses that are not nodes):
# those rules are the protections, not a firewall in VXLAN's way. The filter check judges that table.
OWN_TABLES = {("inet", "podnet")}


def udp_drop_rules(ruleset: dict) -> list[FirewallRule]:
    """From `nft -j list ruleset`: the drop/reject rules that match UDP destination ports (outside
    podnet's own filter table)."""
    hooks = {}
    rules = []
    for item in ruleset.get("nftables", []):
        body = item.get("chain") or item.get("rule") or {}
        if (body.get("family"), body.get("table")) in OWN_TABLES:
            continue
        if "chain" in item:
            c = item["chain"]
            hooks[(c["family"], c["table"], c["name"])] = c.get("hook")
        elif "rule" in item:
            rules.append(item["rule"])
    out = []
    for r in rules:
        exprs = r.get("expr", [])
        verdict = next((v for e in exprs for v in ("drop", "reject") if v in e), None)
        if verdict is None:
            continue
        ports: list[tuple[int, int]] = []
        for e in exprs:
            m = e.get("match")
            if not m or m.get("op", "==") not in ("==", "in"):
                continue
            payload = m.get("left", {}).get("payload", {}) if isinstance(m.get("left"), dict) else {}
            if payload.get("protocol") in ("udp", "th") and payload.get("field") == "dport":
                ports += _port_ranges(m.get("right"))
        if ports:
            chain = (r["family"], r["table"], r["chain"])
            out.append(FirewallRule(*chain, hooks.get(chain), r.get("handle", 0), tuple(ports), verdict))
    return out


def _port_ranges(right) -> list[tuple[int, int]]:
    if isinstance(right, int):
        return [(right, right)]
    if isinstance(right, dict):
        if "range" in right:
            lo, hi = right["range"]
            return [(int(lo), int(hi))] if isinstance(lo, int) and isinstance(hi, int) else []
        if "set" in right:
            return [r for item in right["set"] for r in _port_ranges(item)]
    if isinstance(right, list):
        return [r for item in right for r in _port_ranges(item)]
    return []


# --- NetworkManager (this host only) -----------------------------------------------------------

NM_CONF = "/etc/NetworkManager/NetworkManager.conf"
NM_CONF_DIRS = ("/etc/NetworkManager/conf.d", "/usr/lib/NetworkManager/conf.d", "/run/NetworkManager/conf.d")


def read_networkmanager() -> dict:
    """Is NetworkManager running, and which unmanaged-devices specs do its config files hold?"""
    running = False
    for comm in glob.glob("/proc/[0-9]*/comm"):
        try:
            with open(comm) as f:
                if f.read().strip() == "NetworkManager":
                    running = True
                    break
        except OSError:
            continue
    files = [NM_CONF] + sorted(p for d in NM_CONF_DIRS for p in glob.glob(os.path.join(d, "*.conf")))
    specs, read = [], []
    for path in files:
        try:
            with open(path) as f:
                text = f.read()
        except OSError as e:
            if e.errno != errno.ENOENT:
                read.append(f"{path}: {e.strerror}")
            continue
        read.append(path)
        for line in text.splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "unmanaged-devices":
                specs += [s.strip() for s in value.split(";") if s.strip()]
    return {"running": running, "unmanaged_devices": specs, "config_files": read}
