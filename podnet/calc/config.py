from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable

VXLAN_OVERHEAD_V4 = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
VXLAN_OVERHEAD_V6 = 70  # the outer IPv6 header is 20 bytes longer
DEFAULT_HOST_MTU = 1460  # Calico's fallback when no interface tells


@dataclass(frozen=True)
class VxlanConfig:
    """The agent's VXLAN settings; the defaults are Calico's."""

    vni: int = 4096
    port: int = 4789
    mtu: int | None = None  # None: the underlay MTU minus the encapsulation overhead
    device: str = "vxlan.calico"
    mtu_iface_pattern: str | None = None  # None: the parent interface's MTU is the host MTU
    tx_checksum_offload: bool | None = None  # None: as the node's self-test decides (calc.offload)
    device6: str = "vxlan-v6.calico"
    mtu6: int | None = None  # None: the underlay MTU minus the IPv6 encapsulation overhead

    def __post_init__(self):
        if not 1 <= self.vni <= 0xFFFFFF:
            raise ValueError(f"VNI {self.vni} is outside 1-16777215")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"VXLAN port {self.port} is outside 1-65535")
        if self.mtu is not None and not 68 <= self.mtu <= 65535:
            raise ValueError(f"VXLAN MTU {self.mtu} is outside 68-65535")

    def device_mtu(self, underlay_mtu: int | None, family: int = 4) -> int:
        configured = self.mtu if family == 4 else self.mtu6
        if configured is not None:
            return configured
        overhead = VXLAN_OVERHEAD_V4 if family == 4 else VXLAN_OVERHEAD_V6
        return (underlay_mtu or DEFAULT_HOST_MTU) - overhead

    def device_name(self, family: int) -> str:
        return self.device if family == 4 else self.device6


def effective_config(base: VxlanConfig, configs: Iterable, node: str) -> VxlanConfig:
    """The node's settings: the agent's flags, then the cluster's `default` configuration,
    then the node's own `node.<name>`, each overriding what it sets."""
    by_name = {c.name: c for c in configs}
    out = base
    for name in ("default", f"node.{node}"):
        c = by_name.get(name)
        if c is None:
            continue
        changes = {k: getattr(c, k) for k in ("vni", "port", "mtu", "mtu_iface_pattern", "tx_checksum_offload")
                   if getattr(c, k) is not None}
        out = replace(out, **changes)
    return out
