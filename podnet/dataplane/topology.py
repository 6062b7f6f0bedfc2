"""Namespaces, bridges and veth links for labs and tests: hosts built inside one machine.

Nothing here touches the root namespace: every link is created inside a
namespace the caller names, and deleting a namespace deletes what it holds.
"""

from __future__ import annotations

import contextlib
import os

from pyroute2 import IPRoute
from pyroute2 import netns as pyroute2_netns
from pyroute2.netlink.exceptions import NetlinkError as Pyroute2Error

from podnet.dataplane import sysctl
from podnet.netns import NETNS_RUN_DIR, entered, open_netns
from podnet.errors import PodnetError


class TopologyError(PodnetError):
    pass


def list_netns() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


def create_netns(name: str) -> None:
    if name in list_netns():
        raise TopologyError(f"network namespace {name} already exists", "remove it or pick another lab name")
    pyroute2_netns.create(name)


def delete_netns(name: str) -> bool:
    if name not in list_netns():
        return False
    pyroute2_netns.remove(name)
    return True


@contextlib.contextmanager
def ipr_in(ns: str):
    """A pyroute2 socket inside namespace ns (never creates the namespace)."""
    with entered(ns):
        ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def _index(ipr: IPRoute, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise TopologyError(f"interface {name} does not exist")
    return found[0]


def add_bridge(ns: str, name: str, address: str | None = None, mtu: int = 1500) -> None:
    with ipr_in(ns) as ipr:
        ipr.link("add", ifname=name, kind="bridge", mtu=mtu)
        idx = _index(ipr, name)
        if address:
            ip, plen = address.split("/")
            ipr.addr("add", index=idx, address=ip, prefixlen=int(plen))
        ipr.link("set", index=idx, state="up")
        ipr.link("set", index=_index(ipr, "lo"), state="up")


def add_veth_between(ns_a: str, name_a: str, ns_b: str, name_b: str, mtu: int = 1500,
                     master_b: str | None = None) -> None:
    """A veth pair with one end in each namespace, both up; end b optionally enslaved to a bridge."""
    fd_b = open_netns(ns_b)
    try:
        with ipr_in(ns_a) as ipr:
            ipr.link("add", ifname=name_a, kind="veth", mtu=mtu, peer={"ifname": name_b, "net_ns_fd": fd_b, "mtu": mtu})
            ipr.link("set", index=_index(ipr, name_a), state="up")
    finally:
        os.close(fd_b)
    with ipr_in(ns_b) as ipr:
        idx = _index(ipr, name_b)
        if master_b:
            ipr.link("set", index=idx, master=_index(ipr, master_b))
        ipr.link("set", index=idx, state="up")


def configure_host(ns: str, ifname: str, address: str, gateway: str | None = None) -> None:
    """Address an interface, bring lo up, and add a default route (proxy ARP for pods needs one)."""
    with ipr_in(ns) as ipr:
        idx = _index(ipr, ifname)
        ip, plen = address.split("/")
        ipr.addr("add", index=idx, address=ip, prefixlen=int(plen))
        ipr.link("set", index=_index(ipr, "lo"), state="up")
        if gateway:
            ipr.route("add", dst="0.0.0.0/0", gateway=gateway)


def add_address6(ns: str, ifname: str, address: str, gateway: str | None = None) -> None:
    """An IPv6 address usable at once (duplicate address detection off: these links are ours alone)."""
    with entered(ns):
        sysctl.write(f"/proc/sys/net/ipv6/conf/{ifname}/accept_dad", 0)
    with ipr_in(ns) as ipr:
        ip, plen = address.split("/")
        ipr.addr("add", index=_index(ipr, ifname), address=ip, prefixlen=int(plen))
        if gateway:
            ipr.route("add", dst="::/0", gateway=gateway, family=10)


def set_forwarding(ns: str, on: bool = True, ipv6: bool = False) -> None:
    with entered(ns):
        sysctl.write("/proc/sys/net/ipv4/ip_forward", 1 if on else 0)
        if ipv6:
            sysctl.write("/proc/sys/net/ipv6/conf/all/forwarding", 1 if on else 0)


def links(ns: str) -> list[str]:
    with ipr_in(ns) as ipr:
        return [l.get_attr("IFLA_IFNAME") for l in ipr.get_links()]


def add_route(ns: str, dst: str, gateway: str) -> None:
    with ipr_in(ns) as ipr:
        try:
            ipr.route("replace", dst=dst, gateway=gateway)
        except Pyroute2Error as e:
            raise TopologyError(f"route {dst} via {gateway} in {ns}: {e}") from None
