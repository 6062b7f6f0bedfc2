"""Is a VXLAN device as podnet wants it? One judgement, pure over what was read, for the agent (leave the
device, change it in place, set its MTU or state, or make it again), `podnet doctor` and `podnet trace`.

What the agent makes (podnet.dataplane.vxlan): a `vxlan` link with the cluster's VNI and UDP port, the
node's underlay address of the device's family as the outer source, the underlay interface as parent,
learning off, the node's VTEP MAC, the configured MTU, up, and the tunnel address as its only address
(IPv6 link-local aside). `mismatches` lists what differs, in the order a packet needs it, each with how
it is repaired: the kernel changes a live device's outer source and parent (RTM_NEWLINK), its MTU and
state are set, its addresses are added and removed; anything else means making the device again.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from podnet.calc.state import VxlanDevice

RECREATE, IN_PLACE, SET, ADDRESS = "recreate", "in place", "set", "address"


@dataclass(frozen=True)
class DeviceSeen:
    """A device as read from the kernel. A field that was not read is None and is not judged."""

    kind: str | None  # "vxlan", or another link kind holding the name
    vni: int | None = None
    port: int | None = None
    local: str | None = None  # the outer source of the device's family (IFLA_VXLAN_LOCAL or LOCAL6)
    parent: int | None = None  # the underlay interface's ifindex (IFLA_VXLAN_LINK)
    learning: bool | None = None
    mac: str | None = None
    mtu: int | None = None
    up: bool | None = None
    addresses: frozenset[tuple[str, int]] | None = None  # (address, prefixlen), IPv6 link-local left out


@dataclass(frozen=True)
class Mismatch:
    what: str  # "kind", "VNI", "port", "learning", "MAC", "local IP", "parent", "MTU", "state", "address"
    have: object
    should: object
    repair: str  # RECREATE, IN_PLACE, SET or ADDRESS

    @property
    def text(self) -> str:
        return f"its {self.what} is {self.have}, not {self.should}"


def wanted_addresses(want: VxlanDevice) -> frozenset[tuple[str, int]]:
    """The tunnel address as a host route: the only address the device should hold."""
    if not want.address:
        return frozenset()
    a = ipaddress.ip_address(want.address)
    return frozenset({(str(a), a.max_prefixlen)})


def mismatches(seen: DeviceSeen, want: VxlanDevice, parent_index: int | None, *,
               read_all: bool = False) -> list[Mismatch]:
    """Everything about `seen` that differs from `want`. Empty: the device is as wanted.
    A field of `seen` that is None was not read and is not judged, nor is the parent when
    `parent_index` is None; unless `read_all` (the agent read the whole link): then a missing
    attribute, or an unknown parent, differs."""
    if seen.kind != "vxlan":
        return [Mismatch("kind", seen.kind or "unknown", "vxlan", RECREATE)]
    checks = [
        ("VNI", seen.vni, want.vni, RECREATE),
        ("port", seen.port, want.port, RECREATE),
        ("local IP", seen.local, want.local_ip, IN_PLACE),
        ("parent", seen.parent, parent_index, IN_PLACE),
        ("learning", None if seen.learning is None else bool(seen.learning), False, RECREATE),
        ("MAC", seen.mac, want.mac, RECREATE),
        ("MTU", seen.mtu, want.mtu, SET),
        ("state", None if seen.up is None else ("up" if seen.up else "down"), "up", SET),
    ]
    out = [Mismatch(what, "missing" if have is None else have, "unknown" if should is None else should, repair)
           for what, have, should, repair in checks
           if (have != should if read_all else have is not None and should is not None and have != should)]
    if seen.addresses is not None and seen.addresses != wanted_addresses(want):
        out.append(Mismatch("address", _addrs(seen.addresses), _addrs(wanted_addresses(want)), ADDRESS))
    return out


def must_recreate(found: list[Mismatch]) -> bool:
    return any(m.repair == RECREATE for m in found)


def _addrs(addresses) -> str:
    return ", ".join(f"{a}/{p}" for a, p in sorted(addresses)) or "none"
