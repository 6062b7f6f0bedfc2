"""Attach a pod to the node: the veth pair, addresses, routes and sysctls of the seed.

Host side: `cali…` with MAC ee:ee:ee:ee:ee:ee, proxy ARP on with no delay, and
`<podIP>/32 dev cali… scope link`. Pod side: `eth0` with the IP as /32,
`169.254.1.1 dev eth0 scope link` and `default via 169.254.1.1`. The pod ARPs
for 169.254.1.1, the host answers with its own MAC by proxy ARP, and every
packet of the pod reaches the host's routing table, whatever its destination.

This runs on the CNI hot path, in two steps so the first can overlap with
IPAM: create_pair() makes the pair (the pod end born inside the pod's
namespace), writes its sysctls and brings both ends up, none of which needs
the address; Pair.address() then adds the host route and the pod's address
and routes, one netlink batch on each side.
"""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass

from podnet.dataplane import rtnl, sysctl
from podnet.netns import entered, open_netns
from podnet.errors import PodnetError

HOST_MAC = "ee:ee:ee:ee:ee:ee"
GATEWAY_V4 = "169.254.1.1"
# The host end's IPv6 link-local address, from HOST_MAC by EUI-64: the pod's IPv6 gateway.
GATEWAY_V6 = "fe80::ecee:eeff:feee:eeee"
IFA_F_NODAD = 0x02


class InterfaceExists(PodnetError):
    pass


class AttachError(PodnetError):
    pass


@dataclass(frozen=True)
class Attachment:
    host_ifname: str
    pod_ifname: str
    pod_mac: str
    ips: tuple[str, ...]  # with prefix: 10.244.0.5/32
    mtu: int


def random_mac() -> str:
    """A pod interface's MAC: random, unicast, locally administered."""
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFE) | 0x02  # unicast, locally administered
    return ":".join(f"{x:02x}" for x in b)


def _index_in(fd: int, ifname: str) -> int | None:
    with entered(fd):
        return _index(ifname)


class Pair:
    """A veth pair made by create_pair() and not yet given its addresses.

    Attaching is split in two so the agent can create the pair (which needs no
    address) while IPAM picks the address, and only then route to it."""

    def __init__(self, host: rtnl.RtnlSocket, netns_fd: int, pod_sock: rtnl.RtnlSocket, host_ifname: str,
                 host_index: int, pod_ifname: str, pod_index: int, pod_mac: str, mtu: int):
        self.host = host
        self.netns_fd = netns_fd
        self.pod_sock = pod_sock  # a netlink socket inside the pod's namespace
        self.host_ifname = host_ifname
        self.host_index = host_index
        self.pod_ifname = pod_ifname
        self.pod_index = pod_index
        self.pod_mac = pod_mac
        self.mtu = mtu
        self._open = True

    def address(self, ipv4: str | None, ipv6: str | None = None) -> Attachment:
        """Give the pair its addresses and routes: one netlink batch on each side."""
        if ipv4 is None and ipv6 is None:
            raise AttachError("a pod needs an IPv4 or an IPv6 address")
        set_ = rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE
        host_routes = [ip for ip in (ipv4, ipv6) if ip]
        host_msgs = [rtnl.route_msg(rtnl.RTM_NEWROUTE, f"{ip}/{32 if ':' not in ip else 128}", oif=self.host_index,
                                    scope=rtnl.RT_SCOPE_LINK, proto=rtnl.RTPROT_BOOT,
                                    flags=rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL)
                     for ip in host_routes]
        codes = self.host.request(host_msgs)
        for n, ip in enumerate(host_routes):
            if codes[n] == errno.EEXIST:
                raise AttachError(
                    f"a route to {ip} already exists on this node",
                    "another interface uses this address; look for a leaked workload (podnet ipam check)",
                )
            if codes[n]:
                raise rtnl.NetlinkError(codes[n], f"route {ip} dev {self.host_ifname}", self.host.last_details.get(n))
        msgs = []
        if ipv4:
            msgs += [
                rtnl.addr_msg(rtnl.RTM_NEWADDR, self.pod_index, ipv4, 32, flags=set_),
                rtnl.route_msg(rtnl.RTM_NEWROUTE, f"{GATEWAY_V4}/32", oif=self.pod_index, scope=rtnl.RT_SCOPE_LINK,
                               proto=rtnl.RTPROT_BOOT, flags=set_),
                rtnl.route_msg(rtnl.RTM_NEWROUTE, "0.0.0.0/0", gateway=GATEWAY_V4, oif=self.pod_index,
                               proto=rtnl.RTPROT_BOOT, flags=set_),
            ]
        if ipv6:
            msgs += [
                rtnl.addr_msg(rtnl.RTM_NEWADDR, self.pod_index, ipv6, 128, flags=set_, ifa_flags=IFA_F_NODAD),
                rtnl.route_msg(rtnl.RTM_NEWROUTE, "::/0", gateway=GATEWAY_V6, oif=self.pod_index,
                               proto=rtnl.RTPROT_BOOT, flags=set_),
            ]
        self.pod_sock.check(msgs, f"configure {self.pod_ifname} in the pod")
        ips = ((f"{ipv4}/32",) if ipv4 else ()) + ((f"{ipv6}/128",) if ipv6 else ())
        return Attachment(self.host_ifname, self.pod_ifname, self.pod_mac, ips, self.mtu)

    def remove(self) -> None:
        """Delete the pair (both ends and their routes go with it)."""
        self.host.request([rtnl.link_del_msg(ifname=self.host_ifname)])

    def close(self) -> None:
        if self._open:
            self._open = False
            self.pod_sock.close()
            os.close(self.netns_fd)

    def __enter__(self) -> "Pair":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def create_pair(host: rtnl.RtnlSocket, netns: str | int, pod_ifname: str, host_ifname: str, mtu: int,
                ipv4: bool = True, ipv6: bool = False, pod_mac: str | None = None) -> Pair:
    """Create the veth pair, its sysctls for the families asked for, and bring both ends up.
    `netns`: the pod's namespace, by path or as an open descriptor (which stays the caller's).

    Nothing here needs the pod's address. On failure the pair is removed again."""
    fd = os.dup(netns) if isinstance(netns, int) else open_netns(netns)
    try:
        pod_mac = pod_mac or random_mac()
        # Both ends are born down (the kernel refuses IFF_UP on a new pair
        # whose peer is elsewhere) and brought up below.
        create = rtnl.veth_msg(host_ifname, HOST_MAC, mtu, pod_ifname, fd, pod_mac, up=False)
        code = host.request([create])[0]
        if code == errno.EEXIST:
            # Either the pod already has an interface of that name (looked for only now: the
            # common case pays nothing for it), or a host end is left from an earlier sandbox.
            if _index_in(fd, pod_ifname) is not None:
                raise InterfaceExists(f"interface {pod_ifname} already exists in {netns}")
            host.check([rtnl.link_del_msg(ifname=host_ifname)], f"delete stale {host_ifname}", ignore=(errno.ENODEV,))
            code = host.request([create])[0]
        if code:
            raise rtnl.NetlinkError(code, f"create veth {host_ifname} <-> {pod_ifname}", host.last_details.get(0))
        try:
            return _bring_up(host, fd, host_ifname, pod_ifname, pod_mac, mtu, ipv4, ipv6)
        except BaseException:
            host.request([rtnl.link_del_msg(ifname=host_ifname)])
            raise
    except BaseException:
        os.close(fd)
        raise


def _index(ifname: str) -> int | None:
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        return None


def _bring_up(host: rtnl.RtnlSocket, fd: int, host_ifname: str, pod_ifname: str, pod_mac: str, mtu: int,
              ipv4: bool, ipv6: bool) -> Pair:
    host_index = socket.if_nametoindex(host_ifname)
    if ipv6:
        # Set before the link comes up: its link-local address (the pod's gateway) is then usable at once.
        # (IPv6's per-device sysctls cannot be set over netlink.)
        for key, value in (("accept_dad", 0), ("accept_ra", 0), ("proxy_ndp", 1), ("forwarding", 1)):
            sysctl.write(sysctl.conf_path(6, host_ifname, key), value)
    if ipv4:
        # proxy_arp, forwarding and proxy_delay in the same round trip as bringing the link up:
        # three procfs writes cost more than the whole batch.
        host.check([rtnl.arp_proxy_delay_msg(host_index, 0),
                    rtnl.link_set_ipv4_conf_msg(host_index, {rtnl.IPV4_DEVCONF_PROXY_ARP: 1,
                                                             rtnl.IPV4_DEVCONF_FORWARDING: 1}, up=True)],
                   f"set up {host_ifname} with proxy ARP")
    else:
        host.check([rtnl.link_set_msg(host_index, up=True)], f"set {host_ifname} up")
    with entered(fd):
        pod_sock = rtnl.RtnlSocket(small=True)  # lives in the pod's namespace from now on
        try:
            pod_index = _index(pod_ifname)
            if pod_index is None:
                raise AttachError(f"{pod_ifname} vanished from the pod's namespace while it was being set up")
            if ipv6:
                sysctl.write(sysctl.conf_path(6, pod_ifname, "accept_dad"), 0)
        except BaseException:
            pod_sock.close()
            raise
    try:
        pod_sock.check([rtnl.link_set_msg(pod_index, up=True)], f"set {pod_ifname} up in the pod")
    except BaseException:
        pod_sock.close()
        raise
    return Pair(host, fd, pod_sock, host_ifname, host_index, pod_ifname, pod_index, pod_mac, mtu)


def detach(host: rtnl.RtnlSocket, host_ifname: str | None, netns: str | None = None,
           pod_ifname: str | None = None) -> bool:
    """Remove the pair (its routes go with it). Already gone is success; True if something was removed.

    The pod's end, found in the pod's namespace, is the safest handle: deleting
    it deletes the pair, and it cannot belong to another sandbox. The host end
    is deleted by name only when the caller knows it is this pod's (from the
    workload endpoint), because a newer sandbox of the same pod reuses the name.
    """
    if netns and pod_ifname:
        try:
            fd = open_netns(netns)
        except PodnetError:
            fd = None
        if fd is not None:
            try:
                index = _index_in(fd, pod_ifname)
                if index is not None:
                    with entered(fd):
                        pod = rtnl.RtnlSocket(small=True)
                    try:
                        if pod.request([rtnl.link_del_msg(index)])[0] == 0:
                            return True
                    finally:
                        pod.close()
            finally:
                os.close(fd)
    if host_ifname:
        return host.request([rtnl.link_del_msg(ifname=host_ifname)])[0] == 0
    return False


def inspect(host: rtnl.RtnlSocket, netns: str, host_ifname: str, pod_ifname: str, ipv4: str | None,
            ipv6: str | None = None) -> list[str]:
    """Everything about the attachment that differs from what create_pair() and Pair.address() made;
    [] if all is well."""
    problems: list[str] = []
    try:
        host_index = socket.if_nametoindex(host_ifname)
    except OSError:
        return [f"host interface {host_ifname} does not exist"]
    links = {l["index"]: l for l in (rtnl.parse_link(p) for _, p in host.dump(rtnl.link_dump_msg()))}
    link = links.get(host_index, {})
    if link.get("address") != HOST_MAC:
        problems.append(f"{host_ifname} has MAC {link.get('address')}, not {HOST_MAC}")
    if not link.get("up"):
        problems.append(f"{host_ifname} is down")
    if ipv4 and sysctl.read(sysctl.conf_path(4, host_ifname, "proxy_arp")) != "1":
        problems.append(f"proxy_arp is off on {host_ifname}")
    if ipv6 and sysctl.read(sysctl.conf_path(6, host_ifname, "proxy_ndp")) != "1":
        problems.append(f"proxy_ndp is off on {host_ifname}")
    families = [(socket.AF_INET, ipv4, 32, GATEWAY_V4, "0.0.0.0/0"), (socket.AF_INET6, ipv6, 128, GATEWAY_V6, "::/0")]
    families = [f for f in families if f[1]]
    for family, ip, plen, _, _ in families:
        routes = [rtnl.parse_route(p) for _, p in host.dump(rtnl.route_dump_msg(family))]
        if not any(r["dst"] == f"{ip}/{plen}" and r["oif"] == host_index for r in routes):
            problems.append(f"host route {ip}/{plen} dev {host_ifname} is missing")
    try:
        fd = open_netns(netns)
    except PodnetError as e:
        return problems + [str(e)]
    try:
        pod_index = _index_in(fd, pod_ifname)
        if pod_index is None:
            return problems + [f"interface {pod_ifname} does not exist in {netns}"]
        with entered(fd):
            pod = rtnl.RtnlSocket()
        try:
            for family, ip, plen, gateway, default in families:
                addrs = [rtnl.parse_addr(p) for _, p in pod.dump(rtnl.addr_dump_msg(family))]
                if not any(a["index"] == pod_index and a["address"] == ip and a["prefixlen"] == plen for a in addrs):
                    problems.append(f"{pod_ifname} does not hold {ip}/{plen}")
                proutes = [rtnl.parse_route(p) for _, p in pod.dump(rtnl.route_dump_msg(family))]
                if family == socket.AF_INET and not any(r["dst"] == f"{gateway}/32" and r["oif"] == pod_index
                                                        for r in proutes):
                    problems.append(f"pod route {gateway} dev {pod_ifname} is missing")
                if not any(r["dst"] == default and r["gateway"] == gateway for r in proutes):
                    problems.append(f"pod default route via {gateway} is missing")
        finally:
            pod.close()
    finally:
        os.close(fd)
    return problems
