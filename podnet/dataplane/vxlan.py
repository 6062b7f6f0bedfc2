"""The VXLAN device (vxlan.calico): create it as the node needs it, repair it if it drifts.

Created through pyroute2 (the device changes rarely, so its readable API wins over raw
speed here), behind the kernel layer's typed errors. A device whose local address or
parent differs is changed in place (the kernel keeps its routes, neighbour and FDB
entries); only a different VNI, port, learning or MAC makes it again.
"""

from __future__ import annotations

import ipaddress
import logging
import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError as Pyroute2Error

from podnet.calc import vxlan_device as judged
from podnet.calc.state import VxlanDevice
from podnet.dataplane import rtnl
from podnet.errors import PodnetError

log = logging.getLogger(__name__)


class DeviceError(PodnetError):
    pass


def _info_data(link) -> dict:
    info = link.get_attr("IFLA_LINKINFO")
    if info is None or info.get_attr("IFLA_INFO_KIND") != "vxlan":
        return {}
    data = info.get_attr("IFLA_INFO_DATA")
    return {k: v for k, v in data["attrs"]} if data else {}


def seen_from_pyroute2(link, local6: bool) -> judged.DeviceSeen:
    """A device as pyroute2 read it (its addresses aside)."""
    data = _info_data(link)
    if not data:
        return judged.DeviceSeen(kind="not vxlan")
    return judged.DeviceSeen("vxlan", vni=data.get("IFLA_VXLAN_ID"), port=data.get("IFLA_VXLAN_PORT"),
                      local=data.get("IFLA_VXLAN_LOCAL6" if local6 else "IFLA_VXLAN_LOCAL"),
                      parent=data.get("IFLA_VXLAN_LINK"), learning=bool(data.get("IFLA_VXLAN_LEARNING")),
                      mac=link.get_attr("IFLA_ADDRESS"), mtu=link.get_attr("IFLA_MTU"), up=bool(link["flags"] & 1))


def _typed(e: Pyroute2Error, what: str) -> rtnl.NetlinkError:
    return rtnl.NetlinkError(e.code, what)


def ensure_device(ipr: IPRoute, want: VxlanDevice, sock: rtnl.RtnlSocket | None = None) -> int:
    """Make the device exist exactly as `want`; return its ifindex. Idempotent."""
    return converge(ipr, want, sock)[0]


def converge(ipr: IPRoute, want: VxlanDevice, sock: rtnl.RtnlSocket | None = None) -> tuple[int, str]:
    """Make the device exist exactly as `want`: (ifindex, what was done: "kept", "changed in
    place", "created" or "recreated"). A device made (again) has lost every entry on it."""
    parents = ipr.link_lookup(ifname=want.parent)
    if not parents:
        raise DeviceError(
            f"parent interface {want.parent} of {want.name} does not exist",
            "the node's underlay address must be on an existing interface",
        )
    parent = parents[0]
    existing = ipr.link_lookup(ifname=want.name)
    action = "kept"
    if existing:
        seen = seen_from_pyroute2(ipr.link("get", index=existing[0])[0], ":" in want.local_ip)
        # MTU and state are set below, on a device kept or made: what decides here is its identity.
        diffs = [m for m in judged.mismatches(seen, want, parent, read_all=True)
                 if m.repair in (judged.RECREATE, judged.IN_PLACE)]
        if diffs and not judged.must_recreate(diffs) and sock is not None:
            why = ", ".join(m.text for m in diffs)
            try:
                sock.check([rtnl.vxlan_change_msg(existing[0], want.local_ip, parent)], f"change {want.name}")
                log.info("changed %s in place: %s", want.name, why)
                action = "changed in place"
                diffs = []
            except rtnl.NetlinkError as e:  # an older kernel: make it again
                log.warning("cannot change %s in place (%s); recreating it", want.name, e)
        if diffs:
            why = ", ".join(m.text for m in diffs)
            log.warning("recreating %s: %s", want.name, why)
            ipr.link("del", index=existing[0])
            existing = []
            action = "recreated"
    try:
        if not existing:
            local = {"vxlan_local6" if ":" in want.local_ip else "vxlan_local": want.local_ip}
            ipr.link(
                "add",
                ifname=want.name,
                kind="vxlan",
                vxlan_id=want.vni,
                vxlan_link=parent,
                **local,
                vxlan_port=want.port,
                vxlan_learning=0,
                address=want.mac,
                mtu=want.mtu,
            )
            action = "created" if action == "kept" else action
        index = ipr.link_lookup(ifname=want.name)[0]
        link = ipr.link("get", index=index)[0]
        if link.get_attr("IFLA_MTU") != want.mtu:
            ipr.link("set", index=index, mtu=want.mtu)
        _ensure_only_address(ipr, index, judged.wanted_addresses(want))
        if not link["flags"] & 1:
            ipr.link("set", index=index, state="up")
        return index, action
    except Pyroute2Error as e:
        raise DeviceError(f"cannot set up {want.name}: {_typed(e, want.name)}") from None


def _ensure_only_address(ipr: IPRoute, index: int, want: frozenset[tuple[str, int]]) -> None:
    """The device holds exactly `want` (judged.wanted_addresses: the tunnel address as a host route);
    IPv6 link-local stays."""
    have = set()
    for msg in ipr.get_addr(index=index):
        addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        plen = msg["prefixlen"]
        if msg["family"] == socket.AF_INET6 and ipaddress.ip_address(addr).is_link_local:
            continue
        if (addr, plen) not in want:
            ipr.addr("del", index=index, address=addr, prefixlen=plen)
        else:
            have.add((addr, plen))
    for addr, plen in want - have:
        ipr.addr("add", index=index, address=addr, prefixlen=plen)


def delete_device(ipr: IPRoute, name: str) -> bool:
    """Delete the device if it exists; True if it did. Deleting what is gone is success."""
    idx = ipr.link_lookup(ifname=name)
    if not idx:
        return False
    try:
        ipr.link("del", index=idx[0])
    except Pyroute2Error as e:
        err = _typed(e, f"delete {name}")
        if isinstance(err, rtnl.NotFound):
            return False
        raise err from None
    return True


def interface_mtu(ipr: IPRoute, name: str) -> int | None:
    idx = ipr.link_lookup(ifname=name)
    if not idx:
        return None
    return ipr.link("get", index=idx[0])[0].get_attr("IFLA_MTU")
