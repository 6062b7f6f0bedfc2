"""Value objects for kernel state: what a node should have, and what it has."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, order=True, slots=True)
class Route:
    """A route podnet owns. `blackhole` routes have no gateway or device."""

    dst: str  # CIDR
    gateway: str | None = None
    ifname: str | None = None
    onlink: bool = False
    blackhole: bool = False

    def __str__(self) -> str:
        if self.blackhole:
            return f"blackhole {self.dst}"
        s = self.dst
        if self.gateway:
            s += f" via {self.gateway}"
        if self.ifname:
            s += f" dev {self.ifname}"
        return s + (" onlink" if self.onlink else "")


@dataclass(frozen=True, order=True, slots=True)
class Neighbour:
    """A permanent ARP (or NDP) entry: the remote tunnel IP -> the remote VTEP MAC."""

    ip: str
    mac: str
    ifname: str

    def __str__(self) -> str:
        return f"{self.ip} dev {self.ifname} lladdr {self.mac} PERMANENT"


@dataclass(frozen=True, order=True, slots=True)
class FdbEntry:
    """A permanent forwarding entry: frames for the remote VTEP MAC go to the remote node IP."""

    mac: str
    dst: str
    ifname: str

    def __str__(self) -> str:
        return f"{self.mac} dev {self.ifname} dst {self.dst} self permanent"


@dataclass(frozen=True)
class VxlanDevice:
    name: str
    vni: int
    port: int
    local_ip: str
    parent: str
    mac: str
    mtu: int
    address: str | None  # the tunnel address, put on the device as a /32 (or /128)


@dataclass(frozen=True)
class DesiredState:
    device: VxlanDevice | None
    routes: frozenset[Route] = field(default_factory=frozenset)
    neighbours: frozenset[Neighbour] = field(default_factory=frozenset)
    fdb: frozenset[FdbEntry] = field(default_factory=frozenset)
    remote_nodes: tuple[str, ...] = ()  # the nodes programmed, for status and metrics
    device6: VxlanDevice | None = None  # vxlan-v6.calico, when the node has an IPv6 underlay

    @property
    def devices(self) -> tuple[VxlanDevice, ...]:
        return tuple(d for d in (self.device, self.device6) if d)
