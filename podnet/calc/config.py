from __future__ import annotations

from dataclasses import dataclass

VXLAN_OVERHEAD_V4 = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
DEFAULT_HOST_MTU = 1460  # Calico's fallback when no interface tells


@dataclass(frozen=True)
class VxlanConfig:
    """The agent's VXLAN settings; the defaults are Calico's."""

    vni: int = 4096
    port: int = 4789
    mtu: int | None = None  # None: the underlay MTU minus the encapsulation overhead
    device: str = "vxlan.calico"

    def __post_init__(self):
        if not 1 <= self.vni <= 0xFFFFFF:
            raise ValueError(f"VNI {self.vni} is outside 1-16777215")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"VXLAN port {self.port} is outside 1-65535")
        if self.mtu is not None and not 68 <= self.mtu <= 65535:
            raise ValueError(f"VXLAN MTU {self.mtu} is outside 68-65535")

    def device_mtu(self, underlay_mtu: int | None) -> int:
        if self.mtu is not None:
            return self.mtu
        return (underlay_mtu or DEFAULT_HOST_MTU) - VXLAN_OVERHEAD_V4
