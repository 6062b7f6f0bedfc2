"""Is a pod's attachment whole? One judgement, pure over what was read, for CNI CHECK, `podnet doctor`
and `podnet trace`.

What ADD makes (podnet.dataplane.pod): a veth pair, the host end `cali…` up with MAC ee:ee:ee:ee:ee:ee,
proxy ARP (IPv4) or proxy NDP (IPv6) and forwarding on it, a host route to each pod address through it;
the pod end up, holding each address (/32, /128, usable: not tentative), an IPv4 route to the gateway
169.254.1.1 and a default route via the gateway of each family. `judge_attachment` lists what differs,
in the order a packet needs it, each problem with the side it is on and the commands that repair it
(to run in that side's namespace; none: the pod must be recreated).
"""

from __future__ import annotations

from dataclasses import dataclass, field

HOST_MAC = "ee:ee:ee:ee:ee:ee"  # the host end of every pod's veth
GATEWAY_V4 = "169.254.1.1"  # the pods' IPv4 gateway, answered by proxy ARP
GATEWAY_V6 = "fe80::ecee:eeff:feee:eeee"  # the host end's link-local address (EUI-64 of HOST_MAC)
RECREATE = "delete and recreate the pod (CNI DEL + ADD rebuild its veth)"
NODE, POD = "node", "pod"


@dataclass(frozen=True)
class LinkSeen:
    index: int
    up: bool
    mac: str | None = None
    peer: int | None = None  # a veth's peer ifindex (IFLA_LINK); None: not known
    alias: str | None = None


@dataclass(frozen=True)
class AddressSeen:
    ip: str
    prefixlen: int
    usable: bool = True  # not tentative, DAD not failed


@dataclass(frozen=True)
class RouteSeen:
    dst: str  # CIDR
    dev: str | None
    gateway: str | None = None
    metric: int = 0


@dataclass(frozen=True)
class Attachment:
    """What ADD made: the names, the addresses (either may be None), and what only the record knows."""

    host_ifname: str
    pod_ifname: str
    ipv4: str | None = None
    ipv6: str | None = None
    owner: str | None = None  # the host end's alias; None: not checked
    pod_mac: str | None = None  # None: not checked
    route_metric: int | None = None  # the pod routes' metric; None: any


@dataclass
class AttachmentSeen:
    """What the node's and the pod's kernels hold of it; `netns_error` set when the pod's namespace is gone."""

    host_link: LinkSeen | None
    host_sysctls: dict[str, str] = field(default_factory=dict)  # "proxy_arp", "forwarding", "proxy_ndp"
    ip_forward: str | None = None
    host_routes: list[RouteSeen] = field(default_factory=list)  # the node's routes (only /32 and /128 matter)
    netns_error: str | None = None
    pod_link: LinkSeen | None = None
    pod_addresses: list[AddressSeen] = field(default_factory=list)  # of the pod's interface
    pod_routes: list[RouteSeen] = field(default_factory=list)  # the pod's routes (both families)
    pod_namespace: str = "the pod"  # for messages


@dataclass(frozen=True)
class Problem:
    part: str  # host-link, host-owner, host-mac, host-down, proxy-arp, forwarding, proxy-ndp, host-route,
    #            netns, pod-link, pod-mac, veth-peer, pod-down, pod-address, pod-gateway-route, pod-default-route
    side: str  # NODE or POD: whose namespace the fix runs in
    message: str
    fix: tuple[str, ...] = ()  # commands, in order; () means: recreate the pod (RECREATE)


def sysctl_command(key: str, value, version: int = 4) -> str:
    """`sysctl -w` for a key below net/ipv4 (net/ipv6); slashes when an interface name holds a dot."""
    name = f"net/ipv{version}/{key}" if "." in key else f"net.ipv{version}." + key.replace("/", ".")
    return f"sysctl -w {name}={value}"


def _families(want: Attachment):
    if want.ipv4:
        yield 4, want.ipv4, 32, GATEWAY_V4
    if want.ipv6:
        yield 6, want.ipv6, 128, GATEWAY_V6


def judge_attachment(want: Attachment, seen: AttachmentSeen) -> list[Problem]:
    """Everything about the attachment that differs from what ADD made; [] when it is whole."""
    if seen.netns_error is not None:  # the pod is gone, and its veth with it
        return [Problem("netns", POD, seen.netns_error)]
    host = judge_host_end(want, seen)
    if host and host[0].part in ("host-link", "host-owner"):
        return host[:1]  # not there, or not ours: nothing else of it means anything
    pod = judge_pod_end(want, seen)
    if pod and pod[0].part in ("pod-link", "pod-mac"):
        return host + pod[:1]
    return host + pod


def judge_host_end(want: Attachment, seen: AttachmentSeen) -> list[Problem]:
    """The node's side: the host end of the veth (ours, the pod's peer, MAC, up), proxy ARP/NDP and
    forwarding on it, and the host routes to the pod's addresses."""
    host, inner = want.host_ifname, want.pod_ifname
    link = seen.host_link
    if link is None:
        return [Problem("host-link", NODE, f"host interface {host} does not exist")]
    if want.owner is not None and link.alias != want.owner:
        return [Problem("host-owner", NODE,
                        f"host interface {host} is not this attachment's (its alias is {link.alias!r})")]
    out: list[Problem] = []
    pod = seen.pod_link
    if pod is not None and link.peer is not None and pod.peer is not None \
            and (link.peer != pod.index or pod.peer != link.index):
        out.append(Problem("veth-peer", NODE, f"{host} is not the peer of the pod's {inner} (peer index "
                           f"{pod.peer}, {host} is {link.index})"))
    if link.mac is not None and link.mac != HOST_MAC:
        out.append(Problem("host-mac", NODE, f"{host} has MAC {link.mac}, not {HOST_MAC}",
                           (f"ip link set {host} address {HOST_MAC}",)))
    if not link.up:
        out.append(Problem("host-down", NODE, f"{host} is down", (f"ip link set {host} up",)))
    if want.ipv4 and seen.host_sysctls.get("proxy_arp") not in (None, "1"):
        out.append(Problem("proxy-arp", NODE, f"proxy_arp is off on {host}",
                           (sysctl_command(f"conf/{host}/proxy_arp", 1),)))
    if want.ipv4 and seen.host_sysctls.get("forwarding") not in (None, "1"):
        # Proxy ARP answers only for what the node would forward from this interface.
        key = "ip_forward" if seen.ip_forward not in (None, "1") else f"conf/{host}/forwarding"
        out.append(Problem("forwarding", NODE, f"forwarding is off on {host}: proxy ARP stays silent",
                           (sysctl_command(key, 1),)))
    if want.ipv6 and seen.host_sysctls.get("proxy_ndp") not in (None, "1"):
        out.append(Problem("proxy-ndp", NODE, f"proxy_ndp is off on {host}",
                           (sysctl_command(f"conf/{host}/proxy_ndp", 1, 6),)))
    for version, ip, plen, _ in _families(want):
        if not any(r.dst == f"{ip}/{plen}" and r.dev == host for r in seen.host_routes):
            route = (f"ip route replace {ip}/{plen} dev {host} scope link" if version == 4
                     else f"ip -6 route replace {ip}/{plen} dev {host}")
            up = () if link.up else (f"ip link set {host} up",)
            out.append(Problem("host-route", NODE, f"host route {ip}/{plen} dev {host} is missing", up + (route,)))
    return out


def judge_pod_end(want: Attachment, seen: AttachmentSeen) -> list[Problem]:
    """The pod's side: its interface (there, the attachment's MAC, up), its addresses (usable) and routes."""
    inner = want.pod_ifname
    if seen.netns_error is not None:
        return [Problem("netns", POD, seen.netns_error)]
    pod = seen.pod_link
    if pod is None:
        return [Problem("pod-link", POD, f"interface {inner} does not exist in {seen.pod_namespace}")]
    if want.pod_mac and pod.mac != want.pod_mac:
        return [Problem("pod-mac", POD, f"{inner} in the pod has MAC {pod.mac}, not the attachment's {want.pod_mac}")]
    out: list[Problem] = []
    if not pod.up:
        out.append(Problem("pod-down", POD, f"{inner} in the pod is down", (f"ip link set {inner} up",)))
    for version, ip, plen, gateway in _families(want):
        held = next((a for a in seen.pod_addresses if a.ip == ip and a.prefixlen == plen), None)
        nodad = " nodad" if version == 6 else ""
        if held is None:
            out.append(Problem("pod-address", POD, f"{inner} does not hold {ip}/{plen}",
                               (f"ip addr add {ip}/{plen} dev {inner}{nodad}",)))
        elif not held.usable:
            out.append(Problem("pod-address", POD, f"{inner} holds {ip}/{plen} but it is tentative or failed "
                               "duplicate address detection", (f"ip addr del {ip}/{plen} dev {inner}",
                                                               f"ip addr add {ip}/{plen} dev {inner} nodad")))
        # IPv6 routes given no metric get the kernel's 1024
        metric = want.route_metric if want.route_metric is None or version == 4 else (want.route_metric or 1024)
        mine = [r for r in seen.pod_routes if r.dev == inner and (metric is None or r.metric == metric)]
        if version == 4 and not any(r.dst == f"{gateway}/32" for r in mine):
            out.append(Problem("pod-gateway-route", POD, f"pod route {gateway} dev {inner} is missing",
                               (f"ip route replace {gateway} dev {inner} scope link",)))
        default = "0.0.0.0/0" if version == 4 else "::/0"
        if not any(r.dst == default and r.gateway == gateway for r in mine):
            ip_route = "ip route" if version == 4 else "ip -6 route"
            out.append(Problem("pod-default-route", POD, f"pod default route via {gateway} dev {inner} is missing",
                               (f"{ip_route} replace default via {gateway} dev {inner}",)))
    return out
