"""AgentConfiguration: the agent's settings in the datastore, Calico's FelixConfiguration for podnet.

`metadata.name: default` applies to every node; `node.<name>` overrides it for one node.
Accepted as kind FelixConfiguration too, so calicoctl users can apply what they know: every field
of Calico's spec is accepted; those podnet does not implement are kept (`extra`) and shown by
`podnet describe` as not applied, never rejected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from podnet.model import fields
from podnet.model.errors import ValidationError

KINDS = ("AgentConfiguration", "FelixConfiguration")
_SPEC = {
    "vxlanVNI": "vni",
    "vxlanPort": "port",
    "vxlanMTU": "mtu",
    "mtuIfacePattern": "mtu_iface_pattern",
    "vxlanTxChecksumOffload": "tx_checksum_offload",
}


@dataclass(frozen=True)
class AgentConfiguration:
    name: str = "default"
    vni: int | None = None
    port: int | None = None
    mtu: int | None = None
    mtu_iface_pattern: str | None = None  # regex: the host MTU is the smallest MTU of matching interfaces
    tx_checksum_offload: bool | None = None  # False: turn it off on the VXLAN device (calico issues 3145, 11435)
    extra: dict = field(default_factory=dict, hash=False, compare=True)  # spec fields podnet does not apply

    def __post_init__(self):
        if self.name != "default" and not self.name.startswith("node."):
            raise ValidationError("metadata.name", "must be 'default' or 'node.<node name>'")
        fields.name("metadata.name", self.name)
        for attr, field, low, high in (("vni", "spec.vxlanVNI", 1, 0xFFFFFF), ("port", "spec.vxlanPort", 1, 65535),
                                       ("mtu", "spec.vxlanMTU", 68, 65535)):
            v = getattr(self, attr)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high):
                raise ValidationError(field, f"{v!r} is outside {low}-{high}")
        if self.mtu_iface_pattern is not None:
            try:
                re.compile(self.mtu_iface_pattern)
            except (re.error, TypeError) as e:
                raise ValidationError("spec.mtuIfacePattern", f"is not a regular expression: {e}") from None
        if self.tx_checksum_offload is not None:
            fields.boolean("spec.vxlanTxChecksumOffload", self.tx_checksum_offload)

    def not_applied(self) -> list[tuple[str, object, str]]:
        """(field, value, why) of every stored field podnet does not apply."""
        from podnet.model.felixfields import CALICO_FIELDS

        return [(k, v, "a Calico setting podnet does not implement" if k in CALICO_FIELDS
                 else "not a FelixConfiguration field podnet knows (a newer Calico's, or a typo?)")
                for k, v in sorted(self.extra.items())
                if not (k == "defaultEndpointToHostAction" and v in ENDPOINT_TO_HOST_ACTIONS)  # applied: filter
                and not (k == "featureDetectOverride" and str(v).strip().startswith("ChecksumOffloadBroken=")
                        and "," not in str(v))]  # applied: TX checksum offload

    @property
    def node(self) -> str | None:
        return self.name[5:] if self.name.startswith("node.") else None

    def to_manifest(self) -> dict:
        spec = {k: getattr(self, a) for k, a in _SPEC.items() if getattr(self, a) is not None}
        spec.update(self.extra)
        return {"apiVersion": "projectcalico.org/v3", "kind": "AgentConfiguration", "metadata": {"name": self.name},
                "spec": spec}

    @classmethod
    def from_manifest(cls, doc: dict) -> AgentConfiguration:
        if doc.get("kind") not in KINDS:
            raise ValidationError("kind", f"must be one of {', '.join(KINDS)}")
        spec = doc.get("spec") or {}
        if not isinstance(spec, dict):
            raise ValidationError("spec", "must be a mapping")
        meta = doc.get("metadata") or {}
        extra = {k: v for k, v in spec.items() if k not in _SPEC}
        given = {a: spec[k] for k, a in _SPEC.items() if k in spec}
        broken = checksum_offload_broken(spec.get("featureDetectOverride"))
        if broken is not None and "tx_checksum_offload" not in given:
            given["tx_checksum_offload"] = not broken  # Calico's way of saying it; vxlanTxChecksumOffload wins
        return cls(name=meta.get("name", "default"), extra=extra, **given)


ENDPOINT_TO_HOST_ACTIONS = ("Accept", "Drop", "Return")


def endpoint_to_host_action(config: AgentConfiguration) -> str | None:
    """Calico's defaultEndpointToHostAction when the resource sets it to a value podnet applies."""
    value = config.extra.get("defaultEndpointToHostAction")
    return value if value in ENDPOINT_TO_HOST_ACTIONS else None


def checksum_offload_broken(overrides) -> bool | None:
    """`ChecksumOffloadBroken=true|false` in Calico's featureDetectOverride ("Name=value,..."), else None."""
    if not isinstance(overrides, str):
        return None
    for item in overrides.split(","):
        name, _, value = item.partition("=")
        if name.strip() == "ChecksumOffloadBroken" and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
    return None
