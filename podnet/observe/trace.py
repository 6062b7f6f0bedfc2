"""`podnet trace`: the path of a packet from one pod to another, hop by hop, checked against the kernel.

Pure: `trace(facts, src, dst)` takes the facts the collector read
(podnet.observe.facts) and returns the hops the seed article walks through,
each with what the kernel holds, whether that is what it must be, and when it
is not, what was expected and the command that fixes it:

  pod route -> proxy ARP for 169.254.1.1 -> the node's route to the remote block
  -> vxlan.calico -> permanent neighbour (remote VTEP MAC) -> FDB (remote node IP)
  -> the encapsulated packet on the wire -> the underlay route -> the remote
  vxlan.calico decapsulates -> the remote /32 route -> the cali veth -> the pod

Pods on the same node skip the tunnel: pod -> /32 route -> the other cali veth.

IPv6 (`family=6`) walks the same path with the IPv6 state: the pod's /128 and
its default route via fe80::ecee:eeff:feee:eeee, the link-local address of the
host end of its veth (answered by NDP; DAD off so it is never tentative), the
route to the remote /122 on vxlan-v6.calico, the permanent NDP and FDB entries
(remote node's IPv6 address), an outer IPv6 header (70 bytes of overhead), and
the remote /128 host route.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field

from podnet.calc import compute_desired
from podnet.calc.attachment import RECREATE, judge_host_end, judge_pod_end
from podnet.calc.policy import TABLE as POLICY_TABLE
from podnet.calc.config import VXLAN_OVERHEAD_V4, VXLAN_OVERHEAD_V6
from podnet.calc.state import DesiredState, Route, VxlanDevice
from podnet.calc.vxlan_device import mismatches as device_mismatches
from podnet.dataplane.pod import GATEWAY_V4, GATEWAY_V6
from podnet.errors import PodnetError
from podnet.model import Node, vtep_mac
from podnet.observe.facts import Address, ClusterFacts, KernelFacts, Link, NodeFacts, PodFacts, attachment_of

OK, BROKEN, WARNING, UNKNOWN = "ok", "broken", "warning", "unknown"


@dataclass(frozen=True)
class Family:
    """What differs between an IPv4 and an IPv6 path."""

    version: int

    @property
    def name(self) -> str:
        return f"IPv{self.version}"

    @property
    def gateway(self) -> str:
        """The pods' next hop: a link-local address the host end of the veth answers for."""
        return GATEWAY_V4 if self.version == 4 else GATEWAY_V6

    @property
    def host_len(self) -> int:
        return 32 if self.version == 4 else 128

    @property
    def overhead(self) -> int:
        """Outer Ethernet + IP + UDP + VXLAN headers."""
        return VXLAN_OVERHEAD_V4 if self.version == 4 else VXLAN_OVERHEAD_V6

    @property
    def ip_route(self) -> str:
        return "ip route" if self.version == 4 else "ip -6 route"

    @property
    def forwarding_name(self) -> str:
        return "ip_forward" if self.version == 4 else "net.ipv6.conf.all.forwarding"

    def forwarding(self, k: KernelFacts | None) -> str | None:
        """Whether the node routes this family (IPv6 knows no per-interface switch: conf/all decides)."""
        if k is None:
            return None
        return k.sysctls.get("ip_forward") if self.version == 4 else k.sysctls6.get("conf/all/forwarding")

    def forwarding_fix(self, netns: str | None) -> str:
        return sysctl_cmd(netns, "ip_forward" if self.version == 4 else "conf/all/forwarding", 1, self.version)


V4, V6 = Family(4), Family(6)


class TraceError(PodnetError):
    pass


@dataclass
class Hop:
    id: str  # stable name: pod-route, gateway, host-route, ...
    where: str  # the pod or node whose kernel this hop is about
    title: str
    status: str  # ok | broken | warning | unknown
    found: str  # what the kernel holds, as `ip` prints it
    explain: str = ""  # what happens to the packet here
    expected: str | None = None
    fix: str | None = None  # a command that repairs it
    hint: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == OK


@dataclass
class Endpoint:
    ip: str
    node: str
    pod: str | None = None  # None: an address no pod holds
    host_interface: str | None = None
    netns: str | None = None

    @property
    def label(self) -> str:
        return f"{self.pod} ({self.ip})" if self.pod else self.ip


@dataclass
class Trace:
    src: Endpoint
    dst: Endpoint
    kind: str  # cross-node | same-node
    hops: list[Hop]
    wire: dict | None = None  # the encapsulated packet, for a cross-node path
    nodes: dict = field(default_factory=dict)  # node name -> {ip, interface, tunnel_ip, vtep_mac, netns, devices}
    access: str = ""
    family: int = 4  # the IP version of the traced packet

    @property
    def first_broken(self) -> Hop | None:
        return next((h for h in self.hops if h.status == BROKEN), None)

    @property
    def ok(self) -> bool:
        return self.first_broken is None

    def to_dict(self) -> dict:
        broken = self.first_broken
        return {
            "src": asdict(self.src), "dst": asdict(self.dst), "kind": self.kind, "family": self.family, "ok": self.ok,
            "first_broken": broken.id if broken else None, "access": self.access,
            "hops": [asdict(h) for h in self.hops], "wire": self.wire, "nodes": self.nodes,
        }


# --- commands that fix things ---------------------------------------------------------------


def in_netns(netns: str | None, command: str) -> str:
    """`command` as run inside a namespace: `ip -n X ...`, `ip netns exec X ...`, or as is (this host)."""
    if netns is None:
        return command
    name = netns
    for run_dir in ("/run/netns/", "/var/run/netns/"):
        if name.startswith(run_dir):
            name = name[len(run_dir):]
    if "/" in name:
        return f"nsenter --net={netns} {command}"
    tool, _, rest = command.partition(" ")
    if tool in ("ip", "bridge"):
        return f"{tool} -n {name} {rest}"
    return f"ip netns exec {name} {command}"


def sysctl_cmd(netns: str | None, key: str, value, version: int = 4) -> str:
    """`sysctl -w` for a key below net/ipv4 (net/ipv6); slashes, since interface names may hold dots."""
    name = f"net/ipv{version}/{key}" if "." in key else f"net.ipv{version}." + key.replace("/", ".")
    return in_netns(netns, f"sysctl -w {name}={value}")


def agent_hint(node: str) -> str:
    return (f"the podnet agent on {node} keeps this entry: if it is wrong for long, the agent is not running "
            f"or the datastore is stale (`podnet lab status` / the agent's log)")


# --- the trace ---------------------------------------------------------------------------------


def _literal(ref: str) -> int | None:
    """The IP version when `ref` is an address, else None."""
    try:
        return ipaddress.ip_address(ref).version
    except ValueError:
        return None


def choose_family(src_pod: PodFacts, dst_pod: PodFacts | None, src: str, dst: str, family: int | None) -> int:
    """The IP version to trace: an address given sets it, else `family` (-6), else IPv4 when both pods have
    it, else IPv6 when both have that."""
    given = {v for v in (_literal(src), _literal(dst)) if v}
    if len(given) > 1:
        raise TraceError(f"{src} and {dst} are addresses of different families", "give two IPv4 or two IPv6 addresses")
    if given:
        version = given.pop()
        if family and family != version:
            which = src if _literal(src) else dst
            raise TraceError(f"IPv{family} was asked for, but {which} is an IPv{version} address",
                             "leave out -6, or give the pods' IPv6 addresses")
        return version
    if family:
        return family
    pods = [p for p in (src_pod, dst_pod) if p is not None]
    if all(p.ip for p in pods):
        return 4
    if all(p.ip6 for p in pods):
        return 6
    raise TraceError(f"{src_pod.label} and {dst_pod.label} have no address family in common",
                     "one of them has only IPv4, the other only IPv6")


def resolve(facts: ClusterFacts, src: str, dst: str,
            family: int | None = None) -> tuple[PodFacts, Endpoint, PodFacts | None]:
    """The source pod, the destination endpoint (its `ip` of the family traced) and pod (None: an address
    no pod holds). `family`: 6 for IPv6 between pods given by name (-6); addresses given choose it."""
    src_pod = facts.find_pod(src)
    if src_pod is None:
        raise TraceError(f"no pod is known as {src!r}",
                         "the source must be a pod podnet attached: its name, namespace/name or IP "
                         "(`podnet get workloads`)")
    if src_pod.node not in facts.nodes:
        raise TraceError(f"pod {src_pod.label} runs on {src_pod.node}, which has no node record")
    dst_pod = facts.find_pod(dst)
    if dst_pod is None and _literal(dst) is None:
        raise TraceError(f"no pod is known as {dst!r}", "give a pod's name, namespace/name or IP")
    version = choose_family(src_pod, dst_pod, src, dst, family)
    other = "leave out -6" if version == 6 else "add -6 for IPv6"
    for p in (src_pod, dst_pod):
        if p is not None and p.ip_of(version) is None:
            raise TraceError(f"pod {p.label} has no IPv{version} address", other)
    if dst_pod is not None:
        dst_ep = Endpoint(dst_pod.ip_of(version), dst_pod.node, dst_pod.label, dst_pod.host_interface, dst_pod.netns)
        return src_pod, dst_ep, dst_pod
    ip = str(ipaddress.ip_address(dst))
    owner = facts.block_owner(ip)
    if owner is None:
        raise TraceError(f"{ip} is in no node's block", "podnet trace follows paths between pod addresses")
    return src_pod, Endpoint(ip, owner[0]), None


def trace(facts: ClusterFacts, src: str, dst: str, family: int | None = None) -> Trace:
    """The hops from pod `src` to pod (or pod address) `dst`; `family` 6 traces IPv6 between pods named."""
    src_pod, dst_ep, dst_pod = resolve(facts, src, dst, family)
    fam = Family(ipaddress.ip_address(dst_ep.ip).version)
    a = facts.nodes[src_pod.node]
    b = facts.nodes.get(dst_ep.node)
    if b is None:
        raise TraceError(f"{dst_ep.label} is on {dst_ep.node}, which has no node record")
    t = _Tracer(facts, src_pod, dst_ep, dst_pod, a, b, fam)
    src_ep = Endpoint(t.src_ip, src_pod.node, src_pod.label, src_pod.host_interface, src_pod.netns)
    hops = [t.pod_interface(), t.pod_route(), t.gateway() if fam.version == 4 else t.gateway6()]
    if a is b:
        kind = "same-node"
        hops.append(t.final_route(a, first=True))
    elif t.route is not None and not t.route.blackhole and t.route.ifname != t.dev:
        kind = "cross-node-direct"  # CrossSubnet: same subnet, no encapsulation
        hops += [t.host_route(), t.final_route(b, first=False)]
    else:
        kind = "cross-node"
        hops += [t.host_route(), t.vxlan_device(), t.neighbour(), t.fdb(), t.encapsulation(), t.underlay_route(),
                 t.decapsulation(), t.final_route(b, first=False)]
    if dst_pod is not None:
        hops += [t.dst_veth(), t.dst_pod()]
    nodes = {n.name: _node_summary(n, fam) for n in ([a] if a is b else [a, b])}
    return Trace(src_ep, dst_ep, kind, hops, t.wire if kind == "cross-node" else None, nodes, facts.access,
                 fam.version)


def desired_for(facts: ClusterFacts, n: NodeFacts) -> DesiredState:
    """What the agent programs on `n` (both families), from the same calculation the agent runs."""
    nodes = [Node(o.name, o.address, o.interface, o.vtep_mac, o.tunnel_ip, address6=o.address6,
                  tunnel_address6=o.tunnel_ip6) for o in facts.nodes.values()]
    local = next(x for x in nodes if x.name == n.name)
    return compute_desired(local, nodes, facts.affinities, n.config, None, facts.pools, facts.borrowed)


def wanted_device(facts: ClusterFacts, n: NodeFacts, version: int) -> VxlanDevice:
    """The VXLAN device of `version` that n's agent makes (desired_for); when it would make none (no
    tunnel address yet, say), what its configuration and node record say, MAC, MTU and address unjudged."""
    desired = desired_for(facts, n)
    device = desired.device if version == 4 else desired.device6
    if device is not None:
        return device
    return VxlanDevice(n.device(version), n.config.vni, n.config.port, n.underlay_ip(version) or "",
                       n.interface or "", None, None, None)


def parent_index(k: KernelFacts, n: NodeFacts) -> int | None:
    link = k.links.get(n.interface) if n.interface else None
    return link.index if link else None


def route_for(routes, ip: str) -> Route | None:
    """The most specific of `routes` (calc Route objects) that covers `ip`."""
    addr = ipaddress.ip_address(ip)
    covering = [r for r in routes if addr in ipaddress.ip_network(r.dst)]
    return max(covering, key=lambda r: ipaddress.ip_network(r.dst).prefixlen, default=None)


def _node_summary(n: NodeFacts, fam: Family = V4) -> dict:
    """The node as the picture shows it; `ip`, `tunnel_ip`, `vtep_mac`, `device` are of the family traced."""
    k = n.kernel
    dev = n.device(fam.version)
    vx = k.links.get(dev) if k else None
    under = k.links.get(n.interface) if k and n.interface else None
    return {"ip": n.underlay_ip(fam.version), "interface": n.interface, "tunnel_ip": n.tunnel(fam.version),
            "vtep_mac": n.mac(fam.version), "netns": n.netns, "readable": k is not None,
            "blocks": n.blocks if fam.version == 4 else n.blocks6,
            "vxlan_mtu": vx.mtu if vx else None, "underlay_mtu": under.mtu if under else None, "device": dev}


def _unknown(hop_id: str, where: str, title: str, why: str | None, explain: str = "") -> Hop:
    return Hop(hop_id, where, title, UNKNOWN, f"not inspected: {why or 'its kernel was not read'}", explain,
               hint="run podnet trace on that node to inspect it")


def _link_text(link: Link) -> str:
    text = f"{link.name} {'UP' if link.up else 'DOWN'} mtu {link.mtu}"
    return text + (f" {link.mac}" if link.mac else "")


def _is_peer(pod_link: Link | None, host_link: Link | None) -> bool | None:
    """Are these the two ends of one veth? None when a side is unknown."""
    if pod_link is None or host_link is None:
        return None
    return pod_link.peer == host_link.index and host_link.peer == pod_link.index


class _Tracer:
    """One hop per method; each judges one piece of kernel state against what the datastore implies."""

    def __init__(self, facts: ClusterFacts, src: PodFacts, dst: Endpoint, dst_pod: PodFacts | None,
                 a: NodeFacts, b: NodeFacts, fam: Family = V4):
        self.facts, self.src, self.dst, self.dpod, self.a, self.b = facts, src, dst, dst_pod, a, b
        self.fam = fam
        self.v6 = fam.version == 6
        self.src_ip = src.ip_of(fam.version)
        self.dev, self.cfg = a.device(fam.version), a.config
        # What a's agent programs for the destination: the block route, or a host route for a borrowed address.
        self.route = route_for(desired_for(facts, a).routes, dst.ip) if a is not b else None
        self.wire: dict = {}

    def _ip(self, n: NodeFacts) -> str | None:
        """A node's underlay address of the family traced: the outer header's."""
        return n.underlay_ip(self.fam.version)

    def _tunnel(self, n: NodeFacts) -> str | None:
        return n.tunnel(self.fam.version)

    def _addresses(self, k: KernelFacts, ifname: str) -> str:
        return ", ".join(str(x) for x in k.addresses_of(ifname, self.fam.version)) or "no address"

    # --- the source pod ---

    def pod_interface(self) -> Hop:
        p, k, ip, plen = self.src, self.src.kernel, self.src_ip, self.fam.host_len
        title, explain = f"{p.interface} in the pod", f"the packet starts in {p.label} with source {ip}"
        if k is None:
            return _unknown("pod-interface", p.label, title, p.unreadable, explain)
        link = k.links.get(p.interface)
        want = f"{p.interface} UP holding {ip}/{plen}"
        found = _link_text(link) + ", " + self._addresses(k, link.name) if link else ""
        return self._pod_end("pod-interface", p, title, explain, want, link, found, ip, "sends") or \
            Hop("pod-interface", p.label, title, OK, found, explain)

    def _pod_end(self, kind: str, p, title: str, explain: str, want: str, link, found: str, ip: str,
                 verb: str) -> Hop | None:
        """What both ends of the path need of a pod's interface: it exists, is up and holds the
        address, usable (not tentative). The broken hop, or None when all of that holds."""
        judged = self._judged(p)
        if "pod-link" in judged:
            return Hop(kind, p.label, title, BROKEN, f"no {p.interface} in {p.netns}", explain, want, RECREATE)
        if "pod-down" in judged:
            return Hop(kind, p.label, title, BROKEN, found, explain, want, _fix(judged["pod-down"], p.netns))
        address = judged.get("pod-address")
        if address is not None and len(address.fix) == 1:  # missing
            return Hop(kind, p.label, title, BROKEN, found, explain, want, _fix(address, p.netns))
        if address is not None:  # held, but tentative or failed DAD: deleted and added again
            return Hop(kind, p.label, title, BROKEN, found, explain, want + " (nodad: never tentative)",
                       _fix(address, p.netns),
                       f"a tentative address or one that failed duplicate address detection {verb} nothing")
        return None

    def _judged(self, p: PodFacts) -> dict:
        """The first problem of each part of p's attachment in the family traced, as CNI CHECK and doctor
        judge it (podnet.calc.attachment)."""
        node = self.facts.nodes.get(p.node)
        want, seen = attachment_of(node.kernel if node and node.kernel else KernelFacts(), p, self.fam.version)
        judged: dict = {}
        for problem in judge_host_end(want, seen) + judge_pod_end(want, seen):
            judged.setdefault(problem.part, problem)
        return judged

    def pod_route(self) -> Hop:
        p, k, gw_ip = self.src, self.src.kernel, self.fam.gateway
        title = "pod route"
        if self.v6:
            explain = (f"whatever the destination, the pod's only way out is its default route via {gw_ip}, "
                       f"the link-local address of the host end of its veth")
        else:
            explain = (f"whatever the destination, the pod's only way out is its default route via {gw_ip}, "
                       f"a link-local address no one holds")
        if k is None:
            return _unknown("pod-route", p.label, title, p.unreadable, explain)
        chosen = k.lookup(self.dst.ip)
        default_fix = in_netns(p.netns, f"{self.fam.ip_route} replace default via {gw_ip} dev {p.interface}")
        if self.v6:
            # A link-local gateway needs no route of its own: the route names the device.
            found = str(chosen) if chosen else "no route"
            want = f"default via {gw_ip} dev {p.interface}"
            if chosen is None or chosen.gateway != gw_ip or chosen.dev != p.interface:
                return Hop("pod-route", p.label, title, BROKEN, found, explain, want, default_fix)
            return Hop("pod-route", p.label, title, OK, found, explain)
        gw = next((r for r in k.routes if r.dst == f"{gw_ip}/32" and r.dev == p.interface), None)
        found = "; ".join(str(r) for r in (chosen, gw) if r) or "no route"
        want = f"default via {gw_ip} dev {p.interface}; {gw_ip} dev {p.interface} scope link"
        if gw is None:
            return Hop("pod-route", p.label, title, BROKEN, found, explain, want,
                       in_netns(p.netns, f"ip route replace {gw_ip} dev {p.interface} scope link"))
        if chosen is None or chosen.gateway != gw_ip or chosen.dev != p.interface:
            return Hop("pod-route", p.label, title, BROKEN, found, explain, want, default_fix)
        return Hop("pod-route", p.label, title, OK, found, explain)

    def gateway(self) -> Hop:
        p, n, k = self.src, self.a, self.a.kernel
        title = f"proxy ARP for {GATEWAY_V4}"
        cali = p.host_interface
        explain = (f"the pod ARPs for {GATEWAY_V4}; the node answers on {cali}, the host end of the pod's veth, "
                   f"by proxy ARP with its own MAC, so the frame enters {n.name}'s routing")
        if k is None:
            return _unknown("gateway", n.name, title, n.unreadable, explain)
        link = k.links.get(cali)
        want = (f"{cali} UP, peer of the pod's {p.interface}, proxy_arp=1, and a route to {GATEWAY_V4} "
                f"on {n.name} (its default route)")
        proxy = k.sysctls.get(f"conf/{cali}/proxy_arp")
        route = k.lookup(GATEWAY_V4)
        arp = next((x for x in (p.kernel.neighbours if p.kernel else []) if x.ip == GATEWAY_V4), None)
        parts = [_link_text(link), f"proxy_arp={proxy}", f"route to {GATEWAY_V4}: {route or 'none'}"] if link else []
        if arp:
            parts.append(f"pod's ARP entry: {arp}")
        found = "; ".join(parts)
        broken = self._host_end(title, explain, want, link, found)
        if broken:
            return broken
        judged = self._judged(p)
        if "proxy-arp" in judged:
            return Hop("gateway", n.name, title, BROKEN, found, explain, want, _fix(judged["proxy-arp"], n.netns))
        if "forwarding" in judged:
            forwarding = k.sysctls.get(f"conf/{cali}/forwarding")
            return Hop("gateway", n.name, title, BROKEN, found + f"; forwarding={forwarding} on {cali}", explain,
                       want + f", forwarding on {cali}", _fix(judged["forwarding"], n.netns),
                       "proxy ARP answers only for packets the node would forward")
        if route is None or route.dev == cali or route.type != "unicast":
            gw = guess_router(n)
            return Hop("gateway", n.name, title, BROKEN, found, explain, want,
                       in_netns(n.netns, f"ip route add default via {gw} dev {n.interface or 'eth0'}"),
                       f"proxy ARP answers only for addresses the node can route; {gw} stands for the "
                       f"underlay's router")
        return Hop("gateway", n.name, title, OK, found, explain)

    def _host_end(self, title: str, explain: str, want: str, link, found: str) -> Hop | None:
        """What both families need of the host end of the source pod's veth: it exists, is the
        pod's peer and is up. The broken hop, or None when all of that holds."""
        p, n = self.src, self.a
        cali = p.host_interface
        judged = self._judged(p)
        if "host-link" in judged:
            return Hop("gateway", n.name, title, BROKEN, f"no interface {cali} on {n.name}", explain, want, RECREATE)
        if "veth-peer" in judged:
            return Hop("gateway", n.name, title, BROKEN, found + "; " + judged["veth-peer"].message, explain, want,
                       RECREATE)
        if "host-down" in judged:
            return Hop("gateway", n.name, title, BROKEN, found, explain, want, _fix(judged["host-down"], n.netns))
        return None

    def gateway6(self) -> Hop:
        """IPv6: the host end of the veth holds the pods' gateway as its own link-local address."""
        p, n, k = self.src, self.a, self.a.kernel
        title = f"NDP for {GATEWAY_V6}"
        cali = p.host_interface
        explain = (f"the pod sends a neighbour solicitation for {GATEWAY_V6}; {cali}, the host end of the pod's "
                   f"veth, holds that link-local address (EUI-64 of its MAC ee:ee:ee:ee:ee:ee) and answers, so the "
                   f"frame enters {n.name}'s routing")
        if k is None:
            return _unknown("gateway", n.name, title, n.unreadable, explain)
        link = k.links.get(cali)
        want = (f"{cali} UP, peer of the pod's {p.interface}, holding {GATEWAY_V6}/64 (not tentative), "
                f"accept_dad=0, proxy_ndp=1")
        held = _gateway_address(k, cali)
        accept_dad = k.sysctls6.get(f"conf/{cali}/accept_dad")
        proxy_ndp = k.sysctls6.get(f"conf/{cali}/proxy_ndp")
        ndp = next((x for x in (p.kernel.neighbours if p.kernel else []) if x.ip == GATEWAY_V6), None)
        parts = [_link_text(link), f"{GATEWAY_V6}/64: {_held_text(held)}", f"accept_dad={accept_dad}",
                 f"proxy_ndp={proxy_ndp}"] if link else []
        if ndp:
            parts.append(f"pod's NDP entry: {ndp}")
        found = "; ".join(parts)
        broken = self._host_end(title, explain, want, link, found)
        if broken:
            return broken
        gateway_hop = _gateway_hop(n.netns, cali, held, "the pod's gateway")
        if gateway_hop:
            fix, hint = gateway_hop
            return Hop("gateway", n.name, title, BROKEN, found, explain, want, fix, hint)
        if accept_dad not in (None, "0"):
            return Hop("gateway", n.name, title, WARNING, found, explain, want,
                       sysctl_cmd(n.netns, f"conf/{cali}/accept_dad", 0, 6),
                       f"with duplicate address detection on, {GATEWAY_V6} is tentative for a while each time "
                       f"{cali} comes up, and the pod cannot reach its gateway")
        if proxy_ndp not in (None, "1"):
            return Hop("gateway", n.name, title, WARNING, found, explain, want,
                       sysctl_cmd(n.netns, f"conf/{cali}/proxy_ndp", 1, 6),
                       "podnet turns proxy NDP on for every pod's veth (CNI CHECK reports it off)")
        return Hop("gateway", n.name, title, OK, found, explain)

    # --- the source node ---

    def _forwarding(self, n: NodeFacts) -> str | None:
        return self.fam.forwarding(n.kernel)

    def _forwarding_off(self, n: NodeFacts, hop_id: str, title: str, found: str, explain: str,
                        between: str | None = None) -> Hop:
        name = self.fam.forwarding_name
        want = f"{name}=1" + (f" (the node forwards between the veth and {between})" if between else "")
        return Hop(hop_id, n.name, title, BROKEN, f"{name}={self._forwarding(n)}; {found}", explain, want,
                   self.fam.forwarding_fix(n.netns))

    def host_route(self) -> Hop:
        n, b, k, want_route = self.a, self.b, self.a.kernel, self.route
        title = f"route to {b.name}"
        if want_route is None or want_route.blackhole:
            explain = f"{n.name} needs a route to {self.dst.ip}, which {b.name} holds"
        elif want_route.ifname == self.dev:
            explain = (f"{n.name} routes {self.dst.ip} by {want_route.dst}: via {b.name}'s tunnel address "
                       f"{want_route.gateway} on {self.dev}, onlink (no {'NDP' if self.v6 else 'ARP'} for the "
                       f"gateway on the wire)")
        else:
            explain = (f"{b.name} is in {n.name}'s own subnet and the pool is CrossSubnet: {want_route.dst} goes "
                       f"straight to {want_route.gateway} on {want_route.ifname}, without encapsulation")
        if k is None:
            return _unknown("host-route", n.name, title, n.unreadable, explain)
        r = k.lookup(self.dst.ip)
        found = str(r) if r else f"no route to {self.dst.ip}"
        if self._forwarding(n) != "1":
            return self._forwarding_off(n, "host-route", title, found, explain, self.dev)
        if want_route is None or want_route.blackhole:
            return Hop("host-route", n.name, title, BROKEN, found, explain, f"a route to {b.name}", None,
                       f"podnet programs no route to {b.name}: its node record has no underlay or tunnel address "
                       f"yet (is its agent running?), or its pool's vxlanMode is Never")
        want = f"{want_route} proto 80"
        if r is None or r.type != "unicast" or r.dst != want_route.dst or r.dev != want_route.ifname \
                or r.gateway != want_route.gateway:
            why = ""
            if r is not None and ipaddress.ip_network(r.dst).prefixlen < ipaddress.ip_network(want_route.dst).prefixlen:
                why = f" (the route to {want_route.dst} is missing: the packet would follow this one unencapsulated)"
            fix, down = _route_fix(n, want_route.ifname, f"{self.fam.ip_route} replace {want_route} proto 80")
            return Hop("host-route", n.name, title, BROKEN, found + why + down, explain, want, fix, agent_hint(n.name))
        return Hop("host-route", n.name, title, OK, found, explain)

    def vxlan_device(self) -> Hop:
        n, k, fam = self.a, self.a.kernel, self.fam
        title = f"{self.dev} on {n.name}"
        explain = (f"{self.dev} takes the frame and will wrap it in UDP; its MTU leaves room for the "
                   f"{fam.overhead} bytes of outer headers")
        if k is None:
            return _unknown("vxlan-device", n.name, title, n.unreadable, explain)
        cfg, ip, tunnel = self.cfg, self._ip(n), self._tunnel(n)
        want = (f"{self.dev} UP, vxlan id {cfg.vni} local {ip} dev {n.interface} dstport {cfg.port} nolearning, "
                f"holding {tunnel}/{fam.host_len}")
        seen = k.vxlan_seen(self.dev, fam.version)
        if seen is None or seen.kind != "vxlan":
            return Hop("vxlan-device", n.name, title, BROKEN, f"no VXLAN device {self.dev} on {n.name}", explain, want,
                       f"restart the podnet agent on {n.name}: it creates {self.dev}")
        found = _vxlan_text(k.links[self.dev], k)
        differs = {m.what: m for m in device_mismatches(seen, wanted_device(self.facts, n, fam.version),
                                                        parent_index(k, n))}
        if "state" in differs:
            return Hop("vxlan-device", n.name, title, BROKEN, found, explain, want,
                       in_netns(n.netns, f"ip link set {self.dev} up"))
        if "local IP" in differs or "parent" in differs:
            return Hop("vxlan-device", n.name, title, BROKEN, found, explain, want,
                       f"restart the podnet agent on {n.name}: it recreates {self.dev} with the node's address",
                       f"the outer source must be {n.name}'s underlay address {ip}")
        if "VNI" in differs or "port" in differs:
            return Hop("vxlan-device", n.name, title, WARNING, found, explain, want,
                       f"restart the podnet agent on {n.name} (it recreates {self.dev})",
                       "the other nodes' devices, made from the same configuration, take only its VNI and port")
        if "learning" in differs:
            return Hop("vxlan-device", n.name, title, WARNING, found, explain, want,
                       f"restart the podnet agent on {n.name} (it recreates the device with nolearning)",
                       "learning lets the device add FDB entries from received packets; podnet programs them all")
        if "MAC" in differs:
            return Hop("vxlan-device", n.name, title, WARNING, found, explain, want,
                       f"restart the podnet agent on {n.name} (it recreates {self.dev})",
                       f"the other nodes' neighbour entries name {n.name}'s VTEP MAC {differs['MAC'].should}, "
                       f"not {differs['MAC'].have}: packets back to {n.name} are not taken")
        if self.v6 and tunnel and not any(x.ip == tunnel for x in k.addresses_of(self.dev)):
            # IPv6 drops a device's addresses when it goes down; the agent puts the tunnel address back.
            return Hop("vxlan-device", n.name, title, WARNING, found, explain, want,
                       in_netns(n.netns, f"ip addr add {tunnel}/128 dev {self.dev}"),
                       f"pods' packets pass without it, but {n.name} has no source address of its own for "
                       "IPv6 into the tunnel; " + agent_hint(n.name).replace("this entry", "it"))
        return Hop("vxlan-device", n.name, title, OK, found, explain)

    def _remote_mac(self) -> str:
        """The remote VTEP's MAC: its device's as read from its kernel, else its node record's."""
        k = self.b.kernel
        link = k.links.get(self.dev) if k else None
        if link and link.mac:
            return link.mac
        return self.b.mac(self.fam.version) or vtep_mac(self.b.name, ipv6=self.v6)

    def neighbour(self) -> Hop:
        n, b, k = self.a, self.b, self.a.kernel
        title = "permanent NDP entry" if self.v6 else "permanent ARP entry"
        mac, tunnel = self._remote_mac(), self._tunnel(b)
        explain = (f"the next hop {tunnel} is {b.name}'s VTEP: a permanent neighbour entry gives its MAC {mac} "
                   f"(the inner destination MAC) without any {'NDP' if self.v6 else 'ARP'}")
        if k is None:
            return _unknown("neighbour", n.name, title, n.unreadable, explain)
        want = f"{tunnel} dev {self.dev} lladdr {mac} PERMANENT"
        fix = in_netns(n.netns, f"ip neigh replace {tunnel} dev {self.dev} lladdr {mac} nud permanent")
        entry = next((x for x in k.neighbours if x.ip == tunnel and x.dev == self.dev), None)
        if entry is None:
            return Hop("neighbour", n.name, title, BROKEN, f"no neighbour entry for {tunnel} on {self.dev}",
                       explain, want, fix, agent_hint(n.name))
        self.wire["inner_dst_mac"] = entry.mac
        if entry.mac != mac:
            return Hop("neighbour", n.name, title, BROKEN, str(entry), explain, want, fix,
                       f"{mac} is {b.name}'s VTEP MAC; frames to {entry.mac} are dropped or sent to the wrong node")
        if entry.state != "PERMANENT":
            return Hop("neighbour", n.name, title, WARNING, str(entry), explain, want, fix, agent_hint(n.name))
        return Hop("neighbour", n.name, title, OK, str(entry), explain)

    def fdb(self) -> Hop:
        n, b, k = self.a, self.b, self.a.kernel
        title = "permanent FDB entry"
        mac, ip = self._remote_mac(), self._ip(b)
        explain = (f"the FDB entry for {mac} tells {self.dev} which node owns that MAC: {ip}, "
                   f"the outer destination IP")
        if k is None:
            return _unknown("fdb", n.name, title, n.unreadable, explain)
        want = f"{mac} dev {self.dev} dst {ip} self permanent"
        entries = [e for e in k.fdb if e.mac == mac and e.dev == self.dev]
        found = "; ".join(str(e) for e in entries) or f"no FDB entry for {mac} on {self.dev}"
        if not any(e.dst == ip for e in entries):
            fix = in_netns(n.netns, f"bridge fdb {'replace' if entries else 'append'} {mac} dev {self.dev} "
                                    f"dst {ip} self permanent")
            return Hop("fdb", n.name, title, BROKEN, found, explain, want, fix, agent_hint(n.name))
        self.wire["outer_dst"] = ip
        wrong = [e for e in entries if e.dst != ip]
        if wrong:
            return Hop("fdb", n.name, title, WARNING, found, explain, want,
                       in_netns(n.netns, f"bridge fdb del {mac} dev {self.dev} dst {wrong[0].dst} self"),
                       "with several destinations for one MAC the device sends a copy to each")
        return Hop("fdb", n.name, title, OK, found, explain)

    def encapsulation(self) -> Hop:
        n, b, k, fam = self.a, self.b, self.a.kernel, self.fam
        title = "on the wire"
        cfg = self.cfg
        link = k.links.get(self.dev) if k else None
        vx = link.vxlan if link else None
        under = k.links.get(n.interface) if k and n.interface else None
        remote_under = b.kernel.links.get(b.interface) if b.kernel and b.interface else None
        pod_link = self.src.kernel.links.get(self.src.interface) if self.src.kernel else None
        local = (vx.local6 if self.v6 else vx.local) if vx else None
        w = self.wire
        w.update({
            "vni": vx.vni if vx else cfg.vni, "port": vx.port if vx else cfg.port,
            "outer_src": local or self._ip(n), "outer_dst": w.get("outer_dst", self._ip(b)),
            "underlay_interface": n.interface, "inner_src_mac": link.mac if link else n.mac(fam.version),
            "inner_dst_mac": w.get("inner_dst_mac", self._remote_mac()), "inner_src": self.src_ip,
            "inner_dst": self.dst.ip, "pod_mtu": pod_link.mtu if pod_link else None,
            "vxlan_mtu": link.mtu if link else None,
            "underlay_mtu": min([m.mtu for m in (under, remote_under) if m and m.mtu] or [0]) or None,
        })
        explain = (f"{self.dev} wraps the pod's frame: outer Ethernet / {fam.name} {w['outer_src']} -> "
                   f"{w['outer_dst']} / UDP {w['port']} / VXLAN VNI {w['vni']} / inner Ethernet {w['inner_src_mac']} "
                   f"-> {w['inner_dst_mac']} / {fam.name} {self.src_ip} -> {self.dst.ip}")
        found = (f"VNI {w['vni']}, UDP {w['port']}, outer {w['outer_src']} -> {w['outer_dst']}; "
                 f"MTU: pod {w['pod_mtu'] or '?'}, {self.dev} {w['vxlan_mtu'] or '?'}, "
                 f"underlay {w['underlay_mtu'] or '?'}")
        if k is None:
            return _unknown("encapsulation", n.name, title, n.unreadable, explain)
        pod_mtu, vx_mtu, ul_mtu, overhead = w["pod_mtu"], w["vxlan_mtu"], w["underlay_mtu"], fam.overhead
        budget = (ul_mtu - overhead) if ul_mtu else None
        if budget and vx_mtu and vx_mtu > budget:
            return Hop("encapsulation", n.name, title, BROKEN, found, explain,
                       f"{self.dev} MTU <= underlay MTU {ul_mtu} - {overhead} = {budget}",
                       in_netns(n.netns, f"ip link set {self.dev} mtu {budget}"),
                       "encapsulated packets bigger than the underlay MTU are dropped")
        # IPv6 routers never fragment: the node answers a packet too big for vxlan-v6.calico with ICMPv6 Packet
        # Too Big and the pod sends smaller ones (path MTU discovery); degraded, not broken.
        too_big = WARNING if self.v6 else BROKEN
        hint = ("the node answers IPv6 packets bigger than the tunnel takes with ICMPv6 Packet Too Big: they get "
                "through after path MTU discovery, or never where ICMPv6 is filtered; set the CNI config's mtu "
                "so new pods get it" if self.v6 else
                "large packets are dropped silently; set the CNI config's mtu so new pods get it")
        if budget and pod_mtu and pod_mtu > budget:
            return Hop("encapsulation", n.name, title, too_big, found, explain,
                       f"pod MTU + {overhead} <= underlay MTU {ul_mtu} (pod MTU <= {budget})",
                       in_netns(self.src.netns, f"ip link set {self.src.interface} mtu {budget}"), hint)
        if pod_mtu and vx_mtu and pod_mtu > vx_mtu:
            return Hop("encapsulation", n.name, title, too_big, found, explain,
                       f"pod MTU <= {self.dev} MTU {vx_mtu}",
                       in_netns(self.src.netns, f"ip link set {self.src.interface} mtu {vx_mtu}"), hint)
        return Hop("encapsulation", n.name, title, OK, found, explain)

    def underlay_route(self) -> Hop:
        n, b, k = self.a, self.b, self.a.kernel
        b_ip = self._ip(b)
        title = f"underlay route to {b_ip}"
        explain = f"the UDP packet leaves {n.name} on {n.interface} towards {b.name} ({b_ip}) like any host traffic"
        if k is None:
            return _unknown("underlay-route", n.name, title, n.unreadable, explain)
        port = self.wire.get("port", self.cfg.port)
        r = k.lookup(b_ip) if b_ip else None
        found = str(r) if r else f"no route to {b_ip}"
        want = f"a route to {b_ip} dev {n.interface}"
        if r is None or r.type != "unicast":
            return Hop("underlay-route", n.name, title, BROKEN, found, explain, want,
                       in_netns(n.netns, f"{self.fam.ip_route} add {b_ip} via {guess_router(n, self.fam.version)} "
                                         f"dev {n.interface}"))
        if r.dev == self.dev:
            return Hop("underlay-route", n.name, title, BROKEN, found, explain, want,
                       in_netns(n.netns, f"{self.fam.ip_route} del {r.dst} dev {self.dev}"),
                       f"a route to the node address through {self.dev} would loop")
        blocked = blocking_rules(n.kernel, port, ("output", "postrouting"), self.fam.version)
        if blocked:
            return Hop("underlay-route", n.name, title, BROKEN, f"{found}; firewall: {blocked[0]}", explain,
                       f"UDP {port} leaves {n.name}", nft_delete_cmd(n.netns, blocked[0]))
        if n.interface and r.dev != n.interface:
            return Hop("underlay-route", n.name, title, WARNING, found, explain, want, None,
                       f"the outer packet leaves on {r.dev}, not on the VXLAN parent {n.interface}")
        return Hop("underlay-route", n.name, title, OK, found, explain)

    # --- the destination node ---

    def decapsulation(self) -> Hop:
        a, b, k = self.a, self.b, self.b.kernel
        a_ip, b_ip = self._ip(a), self._ip(b)
        dev = b.device(self.fam.version)
        title = f"{dev} on {b.name} decapsulates"
        port, vni = self.wire.get("port", self.cfg.port), self.wire.get("vni", self.cfg.vni)
        mac = self.wire.get("inner_dst_mac", self._remote_mac())
        explain = (f"{b.name} receives UDP {port} on {b_ip}; its {dev} with VNI {vni} strips the outer "
                   f"headers and takes the inner frame addressed to its MAC")
        if k is None:
            return _unknown("decapsulation", b.name, title, b.unreadable, explain)
        link = k.links.get(dev)
        want = f"{dev} UP, vxlan id {vni} dstport {port}, MAC {mac}, and {b_ip} on {b.interface}"
        if link is None or link.vxlan is None:
            return Hop("decapsulation", b.name, title, BROKEN, f"no VXLAN device {dev} on {b.name}", explain,
                       want, f"restart the podnet agent on {b.name}: it creates {dev}")
        found = _vxlan_text(link, k)
        if not link.up:
            return Hop("decapsulation", b.name, title, BROKEN, found, explain, want,
                       in_netns(b.netns, f"ip link set {dev} up"))
        if link.vxlan.vni != vni or link.vxlan.port != port:
            return Hop("decapsulation", b.name, title, BROKEN, found, explain, want,
                       "run every node's agent with the same --vni and --vxlan-port",
                       f"{a.name} sends VNI {vni} to port {port}: {b.name} must listen there with that VNI")
        if link.mac != mac:
            return Hop("decapsulation", b.name, title, BROKEN, found, explain, want,
                       f"restart the podnet agent on {b.name} (it sets the device MAC from the node record)",
                       f"inner frames arrive for {mac}; a device with MAC {link.mac} drops them")
        if b_ip and not any(x.ip == b_ip for x in k.addresses):
            return Hop("decapsulation", b.name, title, BROKEN, found + f"; {b_ip} is not configured on {b.name}",
                       explain, want, f"restart the podnet agent on {b.name}: it registers its current address",
                       f"{b.name}'s record says {b_ip}, but no interface holds it (calico issue 6920)")
        blocked = blocking_rules(k, port, ("input", "prerouting"), self.fam.version)
        if blocked:
            return Hop("decapsulation", b.name, title, BROKEN, f"{found}; firewall: {blocked[0]}", explain,
                       f"UDP {port} from {a_ip} accepted", nft_delete_cmd(b.netns, blocked[0]))
        return Hop("decapsulation", b.name, title, OK, found, explain)

    def final_route(self, n: NodeFacts, first: bool) -> Hop:
        """The host route (/32, /128) to the destination pod's veth (same node: the first routing decision)."""
        k, d, fam = n.kernel, self.dst, self.fam
        hop_id = "host-route" if first else "remote-route"
        title = f"route to {d.ip}"
        if d.pod:
            explain = (f"{n.name} routes {d.ip} by the pod's /{fam.host_len} host route into {d.host_interface}, "
                       f"the veth of {d.pod}")
        else:
            explain = f"{n.name} owns {d.ip}'s block; only a pod holding the address has a /{fam.host_len} route"
        if k is None:
            return _unknown(hop_id, n.name, title, n.unreadable, explain)
        r = k.lookup(d.ip)
        found = str(r) if r else f"no route to {d.ip}"
        if self._forwarding(n) != "1":
            return self._forwarding_off(n, hop_id, title, found, explain)
        if d.pod is None:
            return Hop(hop_id, n.name, title, BROKEN, found, explain, f"a pod holding {d.ip}", None,
                       f"no pod holds {d.ip}: the packet ends in {n.name}'s blackhole route for the block")
        scope = "" if self.v6 else " scope link"  # IPv6 routes have no scope
        want = f"{d.ip} dev {d.host_interface}{scope}"
        if r is None or r.dev != d.host_interface or r.type != "unicast" or r.gateway:
            fix, down = _route_fix(n, d.host_interface,
                                   f"{fam.ip_route} replace {d.ip}/{fam.host_len} dev {d.host_interface}{scope}")
            return Hop(hop_id, n.name, title, BROKEN, found + down, explain, want, fix,
                       "CNI ADD creates this route with the veth; it goes away with the veth")
        return Hop(hop_id, n.name, title, OK, found, explain)

    # --- the destination pod ---

    def dst_veth(self) -> Hop:
        n, k, p = self.b, self.b.kernel, self.dpod
        cali = p.host_interface
        title = f"veth {cali}"
        explain = f"{cali} and the pod's {p.interface} are the two ends of one veth: what enters one leaves the other"
        if k is None:
            return _unknown("dst-veth", n.name, title, n.unreadable, explain)
        link = k.links.get(cali)
        want = f"{cali} UP, peer of {p.label}'s {p.interface}"
        if self.v6:
            want += f", holding {GATEWAY_V6}/64 (the reply's gateway)"
        if link is None:
            return Hop("dst-veth", n.name, title, BROKEN, f"no interface {cali} on {n.name}", explain, want,
                       "delete and recreate the pod (CNI DEL + ADD rebuild its veth)")
        found = _link_text(link)
        held = _gateway_address(k, cali) if self.v6 else None
        if self.v6:
            found += f"; {GATEWAY_V6}/64: {_held_text(held)}"
        pod_link = p.kernel.links.get(p.interface) if p.kernel else None
        if _is_peer(pod_link, link) is False:
            return Hop("dst-veth", n.name, title, BROKEN, found + f"; its peer is index {link.peer}, the pod's "
                       f"{p.interface} is index {pod_link.index}", explain, want,
                       "delete and recreate the pod (CNI DEL + ADD rebuild its veth)")
        if not link.up:
            return Hop("dst-veth", n.name, title, BROKEN, found, explain, want,
                       in_netns(n.netns, f"ip link set {cali} up"))
        gateway_hop = _gateway_hop(n.netns, cali, held, "the reply's gateway") if self.v6 else None
        if gateway_hop:
            fix, hint = gateway_hop
            return Hop("dst-veth", n.name, title, BROKEN, found, explain, want, fix, hint)
        return Hop("dst-veth", n.name, title, OK, found + f", peer {p.interface} in {p.label}"
                   if pod_link else found, explain)

    def dst_pod(self) -> Hop:
        p, k, fam = self.dpod, self.dpod.kernel, self.fam
        title = f"{p.interface} in {p.label}"
        explain = f"{p.label} receives the packet on {p.interface}; its reply goes back via {fam.gateway}"
        if k is None:
            return _unknown("dst-pod", p.label, title, p.unreadable, explain)
        link = k.links.get(p.interface)
        ip, plen = self.dst.ip, fam.host_len
        want = f"{p.interface} UP holding {ip}/{plen}, a route back to {self.src_ip} via {fam.gateway}"
        back = k.lookup(self.src_ip)
        found = (_link_text(link) + ", " + self._addresses(k, link.name) + f"; reply route: {back or 'none'}"
                 if link else "")
        broken = self._pod_end("dst-pod", p, title, explain, want, link, found, ip, "receives")
        if broken:
            return broken
        if back is None or back.gateway != fam.gateway or back.dev != p.interface:
            return Hop("dst-pod", p.label, title, BROKEN, found, explain, want,
                       in_netns(p.netns, f"{fam.ip_route} replace default via {fam.gateway} dev {p.interface}"),
                       "the request arrives but the reply has no way out")
        return Hop("dst-pod", p.label, title, OK, found, explain)


def _fix(problem, netns: str | None) -> str:
    """A judged problem's repair, each command in `netns`; recreating the pod when no command repairs it."""
    return " && ".join(in_netns(netns, command) for command in problem.fix) or RECREATE


def _gateway_address(k: KernelFacts, cali: str) -> Address | None:
    """The pods' IPv6 gateway as the host end of a veth holds it."""
    return next((x for x in k.addresses_of(cali, 6) if x.ip == GATEWAY_V6), None)


def _held_text(held: Address | None) -> str:
    if held is None:
        return "missing"
    return "dadfailed" if held.dadfailed else "tentative" if held.tentative else "held"


def _gateway_hop(netns: str | None, cali: str, held: Address | None, what: str) -> tuple[str, str] | None:
    """(fix, note) when the veth's link-local gateway address is missing or unusable, else None."""
    if held is None:
        return (in_netns(netns, f"ip addr add {GATEWAY_V6}/64 dev {cali} nodad"),
                f"{GATEWAY_V6} is {what}: without it on {cali} no one answers the pod's neighbour solicitation")
    if not held.usable:
        return (_readd(netns, f"{GATEWAY_V6}/64", cali),
                f"a {_held_text(held)} address answers no neighbour solicitation (duplicate address detection; "
                f"podnet sets accept_dad=0 on the veth so {what} is usable at once)")
    return None


def _readd(netns: str | None, cidr: str, ifname: str) -> str:
    """Delete and add an address again without duplicate address detection (clears tentative/dadfailed)."""
    return (in_netns(netns, f"ip addr del {cidr} dev {ifname}") + " && "
            + in_netns(netns, f"ip addr add {cidr} dev {ifname} nodad"))


def _route_fix(n: NodeFacts, ifname: str | None, route_cmd: str) -> tuple[str, str]:
    """The command restoring a route, and a note when its device is down.

    The kernel deletes the routes through a device that goes down, and they do not come back with
    it: the device must come up first."""
    link = n.kernel.links.get(ifname) if n.kernel and ifname else None
    fix = in_netns(n.netns, route_cmd)
    if link is not None and not link.up:
        up = in_netns(n.netns, f"ip link set {ifname} up")
        return f"{up} && {fix}", f"; {ifname} is down, which removed its routes"
    return fix, ""


def _vxlan_text(link: Link, k: KernelFacts) -> str:
    """A VXLAN device as `ip -d link` shows it, with the addresses of its family (no link-local ones)."""
    vx = link.vxlan
    version = 6 if vx.local6 and not vx.local else 4
    parent = k.link_by_index(vx.parent)
    addrs = ", ".join(f"{a.ip}/{a.prefixlen}" for a in k.addresses_of(link.name, version)
                      if not ipaddress.ip_address(a.ip).is_link_local)
    return (f"{_link_text(link)} vxlan id {vx.vni} local {vx.local6 if version == 6 else vx.local} "
            f"dev {parent.name if parent else vx.parent} "
            f"dstport {vx.port}{' nolearning' if not vx.learning else ' learning'}" + (f", {addrs}" if addrs else ""))


def guess_router(n: NodeFacts, version: int = 4) -> str:
    """The first host of the node's underlay subnet: a stand-in for its router in fix commands."""
    address = n.underlay_address(version)
    if not address:
        return "<router>"
    net = ipaddress.ip_interface(address).network
    return str(net.network_address + 1) if net.max_prefixlen - net.prefixlen > 1 else "<router>"


# podnet's own filter table (calc.policy.TABLE) drops VXLAN from workloads and from addresses that are no
# member node's, by design: its rules never block the tunnel between nodes.
# nftables families whose rules see packets of an IP version (ip: IPv4 only, ip6: IPv6 only).
_NFT_SKIPS = {4: "ip6", 6: "ip"}


def blocking_rules(k: KernelFacts | None, port: int, hooks: tuple[str, ...], version: int | None = None):
    """Firewall rules that drop UDP to `port` in chains on these hooks (or reached by jump); `version`:
    only rules that see outer packets of that IP version."""
    if k is None or not k.firewall:
        return []
    return [r for r in k.firewall if r.matches(port) and (r.hook is None or r.hook in hooks)
            and r.family != _NFT_SKIPS.get(version) and (r.family, r.table) != ("inet", POLICY_TABLE)]


def nft_delete_cmd(netns: str | None, rule) -> str:
    return in_netns(netns, f"nft delete rule {rule.family} {rule.table} {rule.chain} handle {rule.handle}")


# --- text for people ---------------------------------------------------------------------------

_MARK = {OK: "ok", BROKEN: "BROKEN", WARNING: "warning", UNKNOWN: "?"}


def format_trace(t: Trace, explain: bool = True) -> str:
    how = {"cross-node": "across nodes, through the VXLAN tunnel", "same-node": "on one node, no tunnel",
           "cross-node-direct": "across nodes in one subnet, routed directly (CrossSubnet, no tunnel)"}[t.kind]
    fam = Family(t.family)
    if t.family == 6:
        how += " (IPv6)"
    lines = [f"{t.src.label} on {t.src.node} -> {t.dst.label} on {t.dst.node}: {how}"]
    if t.access:
        lines.append(f"kernel state read from {t.access}")
    lines.append("")
    width = max(len(h.where) for h in t.hops)
    for i, h in enumerate(t.hops, 1):
        lines.append(f"{i:>2}. {_MARK[h.status]:<7} {h.where:<{width}}  {h.title}")
        pad = " " * 4
        if explain and h.explain:
            lines.append(f"{pad}{h.explain}")
        lines.append(f"{pad}found:    {h.found}")
        if h.expected and h.status != OK:
            lines.append(f"{pad}expected: {h.expected}")
        if h.fix and h.status != OK:
            lines.append(f"{pad}fix:      {h.fix}")
        if h.hint and h.status != OK:
            lines.append(f"{pad}note:     {h.hint}")
    if t.wire:
        w = t.wire
        lines += ["", f"On the wire ({t.src.node} {w['underlay_interface']} -> {t.dst.node}):",
                  f"  outer {fam.name} {w['outer_src']} -> {w['outer_dst']} / UDP dport {w['port']} / "
                  f"VXLAN VNI {w['vni']}",
                  f"  inner Ethernet {w['inner_src_mac']} -> {w['inner_dst_mac']} / {fam.name} {w['inner_src']} -> "
                  f"{w['inner_dst']}"]
        if w.get("pod_mtu") and w.get("underlay_mtu"):
            total = w["pod_mtu"] + fam.overhead
            lines.append(f"  MTU budget: pod {w['pod_mtu']} + {fam.overhead} = {total} "
                         f"{'<=' if total <= w['underlay_mtu'] else '>'} underlay {w['underlay_mtu']}")
    lines.append("")
    broken = t.first_broken
    if broken:
        n = t.hops.index(broken) + 1
        lines.append(f"BROKEN at hop {n} ({broken.title}, {broken.where}): expected {broken.expected}")
        if broken.fix:
            lines.append(f"fix: {broken.fix}")
    else:
        unknown = [h for h in t.hops if h.status == UNKNOWN]
        warn = [h for h in t.hops if h.status == WARNING]
        verdict = "the path is intact" + (" where it could be inspected" if unknown else "")
        if warn:
            verdict += f" ({len(warn)} warning{'s' if len(warn) > 1 else ''})"
        if t.kind != "same-node" and not unknown:
            verdict += ": a ping shows ttl=62 (two routers: both nodes)"
        lines.append(verdict)
    return "\n".join(lines) + "\n"
