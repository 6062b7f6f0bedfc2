"""Node: one machine of the cluster and its VTEP (the VXLAN tunnel endpoint)."""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field

from podnet.model import fields
from podnet.model.errors import ValidationError


def vtep_mac(node_name: str, ipv6: bool = False) -> str:
    """The node's VTEP MAC: 0x66 then the first 5 bytes of SHA-1 of the name.

    0x66 has the locally administered bit set and the multicast bit clear, so the
    address never collides with a vendor MAC. Every node derives every other
    node's MAC the same way, so it need not be stored.
    """
    seed = node_name + "-v6" if ipv6 else node_name
    digest = hashlib.sha1(seed.encode()).digest()
    return ":".join(f"{b:02x}" for b in bytes([0x66]) + digest[:5])


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    address: str | None = None  # underlay address with prefix, e.g. 172.31.0.2/24
    interface: str | None = None  # parent interface holding the address
    vtep_mac: str | None = None  # None: derived from the name
    tunnel_address: str | None = None  # from the node's own block
    labels: dict = field(default_factory=dict, hash=False, compare=True)
    address6: str | None = None  # IPv6 underlay address with prefix, for vxlan-v6.calico
    tunnel_address6: str | None = None
    # Derived once per record (the agent reads them for every node on every pass). Slots, not cached
    # properties: those need a dict per instance, ~0.8 KiB each, 7 MiB at 10,000 nodes.
    ip: str | None = field(init=False, compare=False, repr=False)  # the underlay IP without its prefix
    ip6: str | None = field(init=False, compare=False, repr=False)
    effective_vtep_mac: str = field(init=False, compare=False, repr=False)
    vtep_mac6: str = field(init=False, compare=False, repr=False)

    def __post_init__(self):
        fields.name("metadata.name", self.name)
        ip = None
        if self.address is not None:
            address = fields.interface("spec.bgp.ipv4Address", self.address)
            object.__setattr__(self, "address", str(address))
            ip = str(address.ip)
        object.__setattr__(self, "ip", ip)
        if self.interface is not None:
            fields.ifname(f"metadata.annotations.{INTERFACE_ANNOTATION}", self.interface)
        if self.vtep_mac is not None:
            object.__setattr__(self, "vtep_mac", fields.mac("spec.vxlanTunnelMACAddr", self.vtep_mac))
        if self.tunnel_address is not None:
            object.__setattr__(self, "tunnel_address",
                               str(fields.ip_address("spec.ipv4VXLANTunnelAddr", self.tunnel_address)))
        object.__setattr__(self, "labels", fields.labels("metadata.labels", self.labels))
        if self.address6 is not None:
            a6 = fields.interface("spec.bgp.ipv6Address", self.address6)
            if a6.version != 6:
                raise ValidationError("spec.bgp.ipv6Address", f"{self.address6} is not an IPv6 address")
            object.__setattr__(self, "address6", str(a6))
        object.__setattr__(self, "ip6", str(ipaddress.ip_interface(self.address6).ip) if self.address6 else None)
        if self.tunnel_address6 is not None:
            object.__setattr__(self, "tunnel_address6",
                               str(fields.ip_address("spec.ipv6VXLANTunnelAddr", self.tunnel_address6)))
        object.__setattr__(self, "effective_vtep_mac", self.vtep_mac or vtep_mac(self.name))
        object.__setattr__(self, "vtep_mac6", vtep_mac(self.name, ipv6=True))

    def to_manifest(self) -> dict:
        """Calico's Node shape (calicoctl get node -o yaml), plus the parent interface podnet found
        the underlay address on, as an annotation (Calico's Node has no field for it)."""
        spec: dict = {}
        if self.address or self.address6:
            spec["bgp"] = {k: v for k, v in (("ipv4Address", self.address), ("ipv6Address", self.address6)) if v}
            spec["addresses"] = [{"address": a, "type": "CalicoNodeIP"} for a in (self.address, self.address6) if a]
        if self.tunnel_address:
            spec["ipv4VXLANTunnelAddr"] = self.tunnel_address
        spec["vxlanTunnelMACAddr"] = self.effective_vtep_mac
        if self.tunnel_address6:
            spec["ipv6VXLANTunnelAddr"] = self.tunnel_address6
        if self.address6:
            spec["vxlanTunnelMACAddrV6"] = self.vtep_mac6
        meta: dict = {"name": self.name, "labels": dict(self.labels)}
        if self.interface:
            meta["annotations"] = {INTERFACE_ANNOTATION: self.interface}
        return {"apiVersion": "projectcalico.org/v3", "kind": "Node", "metadata": meta, "spec": spec}

    @classmethod
    def from_manifest(cls, doc: dict) -> Node:
        """Calico's shape, or podnet's earlier one (spec.address, spec.tunnelAddress, ...) that older
        datastores hold. A VTEP MAC equal to the one derived from the name is not stored as set."""
        meta = doc.get("metadata") or {}
        spec = doc.get("spec") or {}
        bgp = spec.get("bgp") or {}
        if not isinstance(meta, dict) or not isinstance(spec, dict) or not isinstance(bgp, dict):
            raise ValidationError("spec", "metadata, spec and spec.bgp must be mappings")
        name = meta.get("name")
        mac = spec.get("vxlanTunnelMACAddr", spec.get("vtepMAC"))
        if isinstance(name, str) and isinstance(mac, str) and mac.lower() == vtep_mac(name):
            mac = None
        annotations = meta.get("annotations") or {}
        return cls(
            name=name,
            address=bgp.get("ipv4Address", spec.get("address")),
            interface=annotations.get(INTERFACE_ANNOTATION, spec.get("interface")),
            vtep_mac=mac,
            tunnel_address=spec.get("ipv4VXLANTunnelAddr", spec.get("tunnelAddress")),
            labels=meta.get("labels") or {},
            address6=bgp.get("ipv6Address", spec.get("address6")),
            tunnel_address6=spec.get("ipv6VXLANTunnelAddr", spec.get("tunnelAddress6")),
        )


INTERFACE_ANNOTATION = "podnet.io/underlay-interface"
