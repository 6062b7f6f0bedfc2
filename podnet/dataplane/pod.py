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
import dataclasses
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from podnet.calc import attachment as judged
from podnet.calc.attachment import GATEWAY_V4, GATEWAY_V6, HOST_MAC
from podnet.dataplane import rtnl, sysctl
from podnet.netns import entered, open_netns
from podnet.errors import PodnetError
from podnet.model.endpoint import PRIMARY_INTERFACE

# HOST_MAC, GATEWAY_V4 and GATEWAY_V6 (the host end's IPv6 link-local address, from HOST_MAC by EUI-64)
# are defined in podnet.calc.attachment, which judges what this module makes.
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


def route_metric(pod_ifname: str, pod_index: int) -> int:
    """The metric of a pod interface's gateway and default routes. eth0 keeps the seed's routes
    (metric 0); any other interface gets routes of its own (1024 + its index, unique in the pod),
    so adding eth1 never replaces eth0's default route and deleting either leaves the other's."""
    return 0 if pod_ifname == PRIMARY_INTERFACE else 1024 + pod_index


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
        metric = route_metric(self.pod_ifname, self.pod_index)
        if ipv4:
            msgs += [
                rtnl.addr_msg(rtnl.RTM_NEWADDR, self.pod_index, ipv4, 32, flags=set_),
                rtnl.route_msg(rtnl.RTM_NEWROUTE, f"{GATEWAY_V4}/32", oif=self.pod_index, scope=rtnl.RT_SCOPE_LINK,
                               proto=rtnl.RTPROT_BOOT, flags=set_, priority=metric),
                rtnl.route_msg(rtnl.RTM_NEWROUTE, "0.0.0.0/0", gateway=GATEWAY_V4, oif=self.pod_index,
                               proto=rtnl.RTPROT_BOOT, flags=set_, priority=metric),
            ]
        if ipv6:
            msgs += [
                rtnl.addr_msg(rtnl.RTM_NEWADDR, self.pod_index, ipv6, 128, flags=set_, ifa_flags=IFA_F_NODAD),
                rtnl.route_msg(rtnl.RTM_NEWROUTE, "::/0", gateway=GATEWAY_V6, oif=self.pod_index,
                               proto=rtnl.RTPROT_BOOT, flags=set_, priority=metric),
            ]
        self.pod_sock.check(msgs, f"configure {self.pod_ifname} in the pod")
        ips = ((f"{ipv4}/32",) if ipv4 else ()) + ((f"{ipv6}/128",) if ipv6 else ())
        return Attachment(self.host_ifname, self.pod_ifname, self.pod_mac, ips, self.mtu)

    def remove(self) -> None:
        """Delete the pair this ADD created (both ends and their routes go with it): by its index,
        never by its name, which may since name something else."""
        self.host.request([rtnl.link_del_msg(self.host_index)])

    def close(self) -> None:
        if self._open:
            self._open = False
            self.pod_sock.close()
            os.close(self.netns_fd)

    def __enter__(self) -> "Pair":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def create_pair(host: rtnl.RtnlSocket, netns: str | int, pod_ifname: str, host_ifnames: Iterable[str] | str,
                mtu: int, ipv4: bool = True, ipv6: bool = False, pod_mac: str | None = None,
                owner: str | None = None) -> Pair:
    """Create the veth pair, its sysctls for the families asked for, and bring both ends up.
    `netns`: the pod's namespace, by path or as an open descriptor (which stays the caller's).
    `host_ifnames`: the names the host end may take, best first (model.host_veth_names); one that
    an existing interface holds is skipped, never taken over. `owner` is written as the host end's
    alias: the mark DEL, CHECK and GC require before they touch it (model.owner_mark).

    Nothing here needs the pod's address. On failure the pair is removed again."""
    fd = os.dup(netns) if isinstance(netns, int) else open_netns(netns)
    try:
        pod_mac = pod_mac or random_mac()
        names = [host_ifnames] if isinstance(host_ifnames, str) else list(host_ifnames)
        taken = []
        for host_ifname in names:
            # Both ends are born down (the kernel refuses IFF_UP on a new pair
            # whose peer is elsewhere) and brought up below.
            create = rtnl.veth_msg(host_ifname, HOST_MAC, mtu, pod_ifname, fd, pod_mac, up=False)
            code = host.request([create])[0]
            if code != errno.EEXIST:
                break
            # Either the pod already has an interface of that name (looked for only now: the
            # common case pays nothing for it), or the host name is held: by the pair of another
            # sandbox or interface whose DEL has not come, or by something podnet did not make.
            if _index_in(fd, pod_ifname) is not None:
                raise InterfaceExists(f"interface {pod_ifname} already exists in {_describe(netns)}")
            taken.append(host_ifname)
        else:
            raise AttachError(f"every host interface name for {pod_ifname} is taken: {', '.join(taken)}",
                              "they belong to live pods or to interfaces podnet did not create; "
                              "podnet never takes one over")
        if code:
            raise rtnl.NetlinkError(code, f"create veth {host_ifname} <-> {pod_ifname}", host.last_details.get(0))
        created = host.get_link(ifname=host_ifname)  # on the host socket: the node's namespace, whatever this thread's
        if created is None:
            raise AttachError(f"{host_ifname} vanished from the node while it was being set up")
        host_index = created["index"]
        try:
            return _bring_up(host, fd, host_ifname, host_index, pod_ifname, pod_mac, mtu, ipv4, ipv6, owner)
        except BaseException:
            host.request([rtnl.link_del_msg(host_index)])
            raise
    except BaseException:
        os.close(fd)
        raise


def _describe(netns: str | int) -> str:
    return netns if isinstance(netns, str) else "the pod's network namespace"


def _index(ifname: str) -> int | None:
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        return None


def _bring_up(host: rtnl.RtnlSocket, fd: int, host_ifname: str, host_index: int, pod_ifname: str, pod_mac: str,
              mtu: int, ipv4: bool, ipv6: bool, owner: str | None) -> Pair:
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
                                                             rtnl.IPV4_DEVCONF_FORWARDING: 1}, up=True, alias=owner)],
                   f"set up {host_ifname} with proxy ARP")
    else:
        host.check([rtnl.link_set_msg(host_index, up=True, alias=owner)], f"set {host_ifname} up")
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


def free_names_first(host: rtnl.RtnlSocket, names: list[str]) -> list[str]:
    """The candidate names from the first one no interface holds now (usually the first: one look).
    The endpoint record is then written with the name the veth will almost surely get; only an ADD
    racing another for the same name has to correct it."""
    for n, name in enumerate(names):
        if host.get_link(ifname=name) is None:
            return names[n:] + names[:n]
    return names


def owned_host_link(host: rtnl.RtnlSocket, host_ifname: str, owner: str) -> dict | None:
    """The host end of an attachment, if the link of that name is one: a veth with podnet's host MAC
    and the attachment's owner mark. Anything else of that name is not podnet's to touch."""
    if not host_ifname or len(host_ifname.encode()) > 15 or "/" in host_ifname:  # no link has such a name
        return None
    link = host.get_link(ifname=host_ifname)
    if link and link["kind"] == "veth" and link["address"] == HOST_MAC and link["alias"] == owner:
        return link
    return None


def detach(host: rtnl.RtnlSocket, host_ifname: str, owner: str, pod_mac: str = "",
           netns: str | int | None = None, pod_ifname: str | None = None) -> bool:
    """Remove one attachment's pair (its routes go with it), only where it is provably that
    attachment's: the host end named in its endpoint record that carries its owner mark
    (owned_host_link), else the pod end in `netns` named pod_ifname whose MAC is the one the
    record holds. Never an interface merely because of its name. Already gone is success;
    True if something was removed."""
    link = owned_host_link(host, host_ifname, owner)
    if link is not None:
        code = host.request([rtnl.link_del_msg(link["index"])])[0]
        if code == 0:
            return True
        if code != errno.ENODEV:
            raise rtnl.NetlinkError(code, f"delete {host_ifname}", host.last_details.get(0))
    if netns is None or not (pod_ifname and pod_mac):
        return False
    try:
        fd = os.dup(netns) if isinstance(netns, int) else open_netns(netns)
    except PodnetError:
        return False
    try:
        with entered(fd):
            pod = rtnl.RtnlSocket(small=True)
        try:
            inside = pod.get_link(ifname=pod_ifname)
            if inside is None or inside["address"] != pod_mac:
                return False
            code = pod.request([rtnl.link_del_msg(inside["index"])])[0]
            if code and code != errno.ENODEV:
                raise rtnl.NetlinkError(code, f"delete {pod_ifname} in the pod", pod.last_details.get(0))
            return code == 0
        finally:
            pod.close()
    finally:
        os.close(fd)


def inspect(host: rtnl.RtnlSocket, netns: str | int, host_ifname: str, pod_ifname: str, ipv4: str | None,
            ipv6: str | None = None, owner: str | None = None, pod_mac: str | None = None) -> list[str]:
    """Everything about the attachment that differs from what create_pair() and Pair.address() made;
    [] if all is well. `owner` and `pod_mac`, when given, must be on the host end and the pod end.
    This reads the kernel; podnet.calc.attachment judges it, as doctor and trace do."""
    seen = judged.AttachmentSeen(None, pod_namespace=_describe(netns))
    link = host.get_link(ifname=host_ifname)
    want = judged.Attachment(host_ifname, pod_ifname, ipv4, ipv6, owner, pod_mac)
    if link is not None:
        seen.host_link = judged.LinkSeen(link["index"], bool(link.get("up")), link.get("address"), link.get("link"),
                                  link.get("alias"))
        for version, key, wanted in ((4, "proxy_arp", ipv4), (4, "forwarding", ipv4), (6, "proxy_ndp", ipv6)):
            if wanted:
                seen.host_sysctls[key] = _sysctl_or_none(sysctl.conf_path(version, host_ifname, key))
        seen.ip_forward = _sysctl_or_none("/proc/sys/net/ipv4/ip_forward") if ipv4 else None
        for family, ip in ((socket.AF_INET, ipv4), (socket.AF_INET6, ipv6)):
            if ip:
                seen.host_routes += [judged.RouteSeen(r["dst"], host_ifname if r["oif"] == link["index"] else None)
                                     for r in (rtnl.parse_route(p) for _, p in host.dump(rtnl.route_dump_msg(family)))]
    try:
        fd = os.dup(netns) if isinstance(netns, int) else open_netns(netns)
    except PodnetError as e:
        seen.netns_error = str(e)
        return [problem.message for problem in judged.judge_attachment(want, seen)]
    try:
        with entered(fd):
            pod = rtnl.RtnlSocket()
        try:
            inside = pod.get_link(ifname=pod_ifname)
            if inside is not None:
                index = inside["index"]
                seen.pod_link = judged.LinkSeen(index, bool(inside.get("up")), inside.get("address"), inside.get("link"))
                want = dataclasses.replace(want, route_metric=route_metric(pod_ifname, index))
                for family, ip in ((socket.AF_INET, ipv4), (socket.AF_INET6, ipv6)):
                    if not ip:
                        continue
                    for _, payload in pod.dump(rtnl.addr_dump_msg(family)):
                        a = rtnl.parse_addr(payload)
                        if a["index"] == index:
                            usable = not rtnl.parse_addr_flags(payload) & (rtnl.IFA_F_TENTATIVE | rtnl.IFA_F_DADFAILED)
                            seen.pod_addresses.append(judged.AddressSeen(a["address"], a["prefixlen"], usable))
                    seen.pod_routes += [judged.RouteSeen(r["dst"], pod_ifname if r["oif"] == index else None, r["gateway"],
                                                  r["metric"])
                                        for r in (rtnl.parse_route(p) for _, p in pod.dump(rtnl.route_dump_msg(family)))]
        finally:
            pod.close()
    finally:
        os.close(fd)
    return [problem.message for problem in judged.judge_attachment(want, seen)]


def _sysctl_or_none(path: str) -> str | None:
    try:
        return sysctl.read(path)
    except OSError:
        return None
