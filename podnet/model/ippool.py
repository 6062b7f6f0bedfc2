"""IPPool: a range that pod addresses come from, cut into per-node blocks.

The stored and printed form is calicoctl's `projectcalico.org/v3` manifest, so
users can apply the YAML they already have.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import cached_property

from podnet.model import fields, selector
from podnet.model.errors import ValidationError

API_VERSION = "projectcalico.org/v3"
LINK_LOCAL_V4 = ipaddress.ip_network("169.254.0.0/16")
LINK_LOCAL_V6 = ipaddress.ip_network("fe80::/10")
VXLAN_MODES = ("Always", "CrossSubnet", "Never")
ALLOWED_USES = ("Workload", "Tunnel")
BLOCK_SIZE_RANGE = {4: (20, 32), 6: (116, 128)}
DEFAULT_BLOCK_SIZE = {4: 26, 6: 122}


@dataclass(frozen=True)
class IPPool:
    name: str
    cidr: str
    block_size: int = 0  # 0: the family's default (26 or 122)
    vxlan_mode: str = "Always"
    nat_outgoing: bool = False
    disabled: bool = False
    node_selector: str = "all()"
    allowed_uses: tuple[str, ...] = ALLOWED_USES
    ipip_mode: str = "Never"

    def __post_init__(self):
        fields.name("metadata.name", self.name)
        net = fields.strict_network("spec.cidr", self.cidr)
        object.__setattr__(self, "cidr", str(net))
        if self.block_size == 0:
            object.__setattr__(self, "block_size", DEFAULT_BLOCK_SIZE[net.version])
        if not isinstance(self.block_size, int) or isinstance(self.block_size, bool):
            raise ValidationError("spec.blockSize", f"must be a whole number, not {self.block_size!r}")
        low, high = BLOCK_SIZE_RANGE[net.version]
        if not low <= self.block_size <= high:
            raise ValidationError(
                "spec.blockSize", f"{self.block_size} is outside {low}-{high} for IPv{net.version} pools"
            )
        if net.prefixlen > self.block_size:
            raise ValidationError(
                "spec.cidr",
                f"{self.cidr} is smaller than one /{self.block_size} block; use a larger pool or a larger blockSize",
            )
        link_local = LINK_LOCAL_V4 if net.version == 4 else LINK_LOCAL_V6
        if net.overlaps(link_local):
            raise ValidationError(
                "spec.cidr", f"{self.cidr} overlaps the link-local range {link_local}, which pods use for their gateway"
            )
        if self.vxlan_mode not in VXLAN_MODES:
            raise ValidationError("spec.vxlanMode", f"{self.vxlan_mode!r} is not one of {', '.join(VXLAN_MODES)}")
        if self.ipip_mode != "Never":
            raise ValidationError("spec.ipipMode", "podnet implements VXLAN only; ipipMode must be Never")
        fields.boolean("spec.natOutgoing", self.nat_outgoing)
        fields.boolean("spec.disabled", self.disabled)
        selector.parse(self.node_selector, "spec.nodeSelector")
        uses = tuple(self.allowed_uses)
        for use in uses:
            if use not in ALLOWED_USES:
                raise ValidationError("spec.allowedUses", f"{use!r} is not one of {', '.join(ALLOWED_USES)}")
        object.__setattr__(self, "allowed_uses", uses)

    @cached_property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.cidr)

    @property
    def version(self) -> int:
        return self.network.version

    def selects(self, labels: dict) -> bool:
        """Whether the pool serves a node with these labels (its nodeSelector)."""
        return selector.parse(self.node_selector).matches(labels)

    def blocks(self):
        """Every block of this pool, in address order."""
        return self.network.subnets(new_prefix=self.block_size)

    def to_manifest(self) -> dict:
        return {
            "apiVersion": API_VERSION,
            "kind": "IPPool",
            "metadata": {"name": self.name},
            "spec": {
                "cidr": self.cidr,
                "blockSize": self.block_size,
                "vxlanMode": self.vxlan_mode,
                "ipipMode": self.ipip_mode,
                "natOutgoing": self.nat_outgoing,
                "disabled": self.disabled,
                "nodeSelector": self.node_selector,
                "allowedUses": list(self.allowed_uses),
            },
        }

    @classmethod
    def from_manifest(cls, doc: dict) -> IPPool:
        _expect_kind(doc, "IPPool")
        spec = doc.get("spec")
        if not isinstance(spec, dict):
            raise ValidationError("spec", "is missing")
        known = {"cidr", "blockSize", "vxlanMode", "ipipMode", "natOutgoing", "disabled", "nodeSelector", "allowedUses",
                 "assignmentMode", "disableBGPExport"}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ValidationError(f"spec.{unknown[0]}", "is not a field podnet knows")
        if "cidr" not in spec:
            raise ValidationError("spec.cidr", "is required")
        # Fields of recent calicoctl output that podnet accepts at their defaults only.
        if spec.get("assignmentMode", "Automatic") != "Automatic":
            raise ValidationError("spec.assignmentMode", "podnet supports Automatic only")
        if not isinstance(spec.get("disableBGPExport", False), bool):
            raise ValidationError("spec.disableBGPExport", "must be true or false")
        return cls(
            name=_metadata_name(doc),
            cidr=spec["cidr"],
            block_size=spec.get("blockSize", 0),
            vxlan_mode=spec.get("vxlanMode", "Always"),
            ipip_mode=spec.get("ipipMode", "Never"),
            nat_outgoing=spec.get("natOutgoing", False),
            disabled=spec.get("disabled", False),
            node_selector=spec.get("nodeSelector", "all()"),
            allowed_uses=tuple(spec.get("allowedUses", ALLOWED_USES)),
        )


def check_pools_disjoint(pools: list[IPPool]) -> None:
    """Pools may not overlap: an address must belong to exactly one pool."""
    for i, a in enumerate(pools):
        for b in pools[i + 1:]:
            if a.name != b.name and a.version == b.version and a.network.overlaps(b.network):
                raise ValidationError(
                    "spec.cidr", f"pool {a.name} ({a.cidr}) overlaps pool {b.name} ({b.cidr})"
                )


def _expect_kind(doc, kind: str) -> None:
    if not isinstance(doc, dict):
        raise ValidationError("(document)", "must be a mapping with apiVersion, kind, metadata and spec")
    if doc.get("apiVersion") != API_VERSION:
        raise ValidationError("apiVersion", f"must be {API_VERSION}, not {doc.get('apiVersion')!r}")
    if doc.get("kind") != kind:
        raise ValidationError("kind", f"must be {kind}, not {doc.get('kind')!r}")


def _metadata_name(doc: dict) -> str:
    meta = doc.get("metadata")
    if not isinstance(meta, dict) or "name" not in meta:
        raise ValidationError("metadata.name", "is required")
    return meta["name"]
