"""The VXLAN device (vxlan.calico): create it as the node needs it, repair it if it drifts.

Managed through pyroute2: the device changes rarely, so its readable API wins
over raw speed here.
"""

from __future__ import annotations

import ipaddress
import logging
import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError as Pyroute2Error

from podnet.calc.state import VxlanDevice
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


def _mismatch(link, want: VxlanDevice, parent_index: int) -> str | None:
    """Why the existing device cannot be kept (its identity differs), or None."""
    data = _info_data(link)
    if not data:
        return "it is not a VXLAN device"
    local_attr = "IFLA_VXLAN_LOCAL6" if ":" in want.local_ip else "IFLA_VXLAN_LOCAL"
    checks = [
        ("VNI", data.get("IFLA_VXLAN_ID"), want.vni),
        ("local IP", data.get(local_attr), want.local_ip),
        ("parent", data.get("IFLA_VXLAN_LINK"), parent_index),
        ("port", data.get("IFLA_VXLAN_PORT"), want.port),
        ("learning", data.get("IFLA_VXLAN_LEARNING"), 0),
        ("MAC", link.get_attr("IFLA_ADDRESS"), want.mac),
    ]
    for name, have, should in checks:
        if have != should:
            return f"its {name} is {have}, not {should}"
    return None


def ensure_device(ipr: IPRoute, want: VxlanDevice) -> int:
    """Make the device exist exactly as `want`; return its ifindex. Idempotent."""
    parents = ipr.link_lookup(ifname=want.parent)
    if not parents:
        raise DeviceError(
            f"parent interface {want.parent} of {want.name} does not exist",
            "the node's underlay address must be on an existing interface",
        )
    parent = parents[0]
    existing = ipr.link_lookup(ifname=want.name)
    if existing:
        why = _mismatch(ipr.link("get", index=existing[0])[0], want, parent)
        if why:
            log.warning("recreating %s: %s", want.name, why)
            ipr.link("del", index=existing[0])
            existing = []
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
        index = ipr.link_lookup(ifname=want.name)[0]
        link = ipr.link("get", index=index)[0]
        if link.get_attr("IFLA_MTU") != want.mtu:
            ipr.link("set", index=index, mtu=want.mtu)
        _ensure_only_address(ipr, index, want.address)
        if not link["flags"] & 1:
            ipr.link("set", index=index, state="up")
        return index
    except Pyroute2Error as e:
        raise DeviceError(f"cannot set up {want.name}: {e}") from None


def _ensure_only_address(ipr: IPRoute, index: int, address: str | None) -> None:
    """The tunnel address as a host route is the only address; IPv6 link-local stays."""
    want = None
    if address:
        a = ipaddress.ip_address(address)
        want = (str(a), a.max_prefixlen)
    have = set()
    for msg in ipr.get_addr(index=index):
        addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        plen = msg["prefixlen"]
        if msg["family"] == socket.AF_INET6 and ipaddress.ip_address(addr).is_link_local:
            continue
        if (addr, plen) != want:
            ipr.addr("del", index=index, address=addr, prefixlen=plen)
        else:
            have.add((addr, plen))
    if want and want not in have:
        ipr.addr("add", index=index, address=want[0], prefixlen=want[1])


def delete_device(ipr: IPRoute, name: str) -> bool:
    idx = ipr.link_lookup(ifname=name)
    if not idx:
        return False
    ipr.link("del", index=idx[0])
    return True


def interface_mtu(ipr: IPRoute, name: str) -> int | None:
    idx = ipr.link_lookup(ifname=name)
    if not idx:
        return None
    return ipr.link("get", index=idx[0])[0].get_attr("IFLA_MTU")
