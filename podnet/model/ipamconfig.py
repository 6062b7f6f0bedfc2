"""IPAMConfiguration: cluster-wide IPAM settings, Calico's resource of that name (`default` only).

Stored at the IPAM config key in the compact form IPAM reads on every allocation; printed and
applied in calicoctl's manifest form.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from podnet.model import fields
from podnet.model.errors import ValidationError

API_VERSION = "projectcalico.org/v3"
DEFAULT_MAX_BLOCKS_PER_HOST = 20  # Calico's default


@dataclass(frozen=True)
class IPAMConfiguration:
    strict_affinity: bool = False  # never borrow from another node's block
    max_blocks_per_host: int = DEFAULT_MAX_BLOCKS_PER_HOST  # 0: no limit
    name: str = "default"

    def __post_init__(self):
        if self.name != "default":
            raise ValidationError("metadata.name", "must be 'default' (there is one IPAM configuration)")
        fields.boolean("spec.strictAffinity", self.strict_affinity)
        if not isinstance(self.max_blocks_per_host, int) or isinstance(self.max_blocks_per_host, bool) \
                or self.max_blocks_per_host < 0:
            raise ValidationError("spec.maxBlocksPerHost", f"must be a whole number >= 0 (0: no limit), "
                                                           f"not {self.max_blocks_per_host!r}")

    def to_json(self) -> bytes:
        return json.dumps({"strictAffinity": self.strict_affinity, "maxBlocksPerHost": self.max_blocks_per_host}).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> IPAMConfiguration:
        d = json.loads(raw)
        return cls(bool(d.get("strictAffinity", False)), int(d.get("maxBlocksPerHost", DEFAULT_MAX_BLOCKS_PER_HOST)))

    def to_manifest(self) -> dict:
        return {"apiVersion": API_VERSION, "kind": "IPAMConfiguration", "metadata": {"name": self.name},
                "spec": {"strictAffinity": self.strict_affinity, "maxBlocksPerHost": self.max_blocks_per_host}}

    @classmethod
    def from_manifest(cls, doc: dict) -> IPAMConfiguration:
        spec = doc.get("spec") or {}
        if not isinstance(spec, dict):
            raise ValidationError("spec", "must be a mapping")
        known = {"strictAffinity", "maxBlocksPerHost", "autoAllocateBlocks"}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ValidationError(f"spec.{unknown[0]}", f"is not an IPAMConfiguration field ({', '.join(sorted(known))})")
        if spec.get("autoAllocateBlocks", True) is not True:
            raise ValidationError("spec.autoAllocateBlocks", "podnet always allocates blocks automatically")
        return cls(strict_affinity=spec.get("strictAffinity", False),
                   max_blocks_per_host=spec.get("maxBlocksPerHost", DEFAULT_MAX_BLOCKS_PER_HOST),
                   name=(doc.get("metadata") or {}).get("name", "default"))
