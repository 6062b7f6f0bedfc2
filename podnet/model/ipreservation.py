"""IPReservation: addresses IPAM never hands out on its own (Calico's resource of that name).

A pod may still ask for a reserved address by name (CNI_ARGS IP=, the ipAddrs annotation): the
reservation keeps automatic assignment away from it, as in Calico. Addresses already in use when a
reservation is made stay with their owners.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

from podnet.model import fields
from podnet.model.errors import ValidationError

API_VERSION = "projectcalico.org/v3"


@dataclass(frozen=True)
class IPReservation:
    name: str
    reserved_cidrs: tuple[str, ...] = ()

    def __post_init__(self):
        fields.name("metadata.name", self.name)
        if isinstance(self.reserved_cidrs, (str, bytes)) or not isinstance(self.reserved_cidrs, (list, tuple)):
            raise ValidationError("spec.reservedCIDRs", "must be a list of CIDRs or addresses")
        cidrs = []
        for i, text in enumerate(self.reserved_cidrs):
            try:
                cidrs.append(str(ipaddress.ip_network(text, strict=False)))
            except (ValueError, TypeError):
                raise ValidationError(f"spec.reservedCIDRs[{i}]", f"{text!r} is not a CIDR or an address") from None
        object.__setattr__(self, "reserved_cidrs", tuple(cidrs))

    def to_manifest(self) -> dict:
        return {"apiVersion": API_VERSION, "kind": "IPReservation", "metadata": {"name": self.name},
                "spec": {"reservedCIDRs": list(self.reserved_cidrs)}}

    @classmethod
    def from_manifest(cls, doc: dict) -> IPReservation:
        spec = doc.get("spec") or {}
        if not isinstance(spec, dict):
            raise ValidationError("spec", "must be a mapping")
        unknown = sorted(set(spec) - {"reservedCIDRs"})
        if unknown:
            raise ValidationError(f"spec.{unknown[0]}", "is not an IPReservation field (reservedCIDRs)")
        return cls(name=(doc.get("metadata") or {}).get("name"), reserved_cidrs=tuple(spec.get("reservedCIDRs") or ()))


def encode_index(reservations: list[IPReservation]) -> bytes:
    """The one record IPAM reads: every reserved network, from all reservations."""
    return json.dumps(sorted({c for r in reservations for c in r.reserved_cidrs})).encode()


def decode_index(raw: bytes | None) -> tuple:
    """The reserved networks of an index record (None: nothing is reserved)."""
    if not raw:
        return ()
    return tuple(ipaddress.ip_network(c) for c in json.loads(raw))
