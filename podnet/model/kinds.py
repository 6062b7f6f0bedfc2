"""The registry of resource kinds: the one answer to "which kind does this word or manifest mean".

apply, create, replace, get, delete, describe, label and the datastore all look a kind up here, so
adding a kind is one entry (plus its storage in datastore/resources.py and, for tables, its
columns in cli/kinds.py) rather than a branch in every command. Words are matched as calicoctl
matches them: any case, singular, plural or a short name (`ippool`, `IPPools`, `ipp`, `pool`).
Classes are imported only when a manifest of their kind is parsed, so looking a word up costs
no imports.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from podnet.errors import PodnetError
from podnet.model.errors import ValidationError

CALICO_API = "projectcalico.org/v3"


@dataclass(frozen=True)
class Kind:
    name: str  # the kind as manifests spell it, e.g. IPPool
    plural: str  # lower case, e.g. ippools
    short: tuple[str, ...] = ()  # more words a user may type, lower case
    cls_path: str = ""  # "module:Class" with from_manifest(doc) / to_manifest() / .name
    namespaced: bool = False
    writable: bool = True  # False: podnet writes these itself (blocks, endpoints); get and describe only
    aliases: tuple[str, ...] = ()  # other kind names manifests may use for it (FelixConfiguration)
    api_versions: tuple[str, ...] = (CALICO_API,)

    @property
    def cls(self):
        module, _, attr = self.cls_path.partition(":")
        return getattr(importlib.import_module(module), attr)

    def words(self) -> set[str]:
        out = {self.name.lower(), self.plural, *self.short}
        for alias in self.aliases:
            out |= {alias.lower(), alias.lower() + "s"}
        return out

    def parse(self, doc: dict):
        """The resource of one manifest of this kind, validated (ValidationError names the field)."""
        if doc.get("apiVersion") not in self.api_versions:
            raise ValidationError("apiVersion", f"must be {' or '.join(self.api_versions)}, "
                                                f"not {doc.get('apiVersion')!r}")
        return self.cls.from_manifest(doc)


KINDS: tuple[Kind, ...] = (
    Kind("IPPool", "ippools", ("ippool", "ipp", "pool", "pools"), "podnet.model.ippool:IPPool"),
    Kind("Node", "nodes", ("node", "no"), "podnet.model.node:Node"),
    Kind("AgentConfiguration", "agentconfigurations", ("agentconfig", "agentconfigs", "felixconfig", "felixconfigs"),
         "podnet.model.agentconfig:AgentConfiguration", aliases=("FelixConfiguration",)),
    Kind("WorkloadEndpoint", "workloadendpoints", ("wep", "weps", "workload", "workloads"),
         "podnet.model.endpoint:WorkloadEndpoint", namespaced=True, writable=False),
    Kind("IPAMConfiguration", "ipamconfigurations", ("ipamconfiguration", "ipamconfig", "ipamconfigs"),
         "podnet.model.ipamconfig:IPAMConfiguration"),
    Kind("IPReservation", "ipreservations", ("ipreservation", "ipres"), "podnet.model.ipreservation:IPReservation"),
    Kind("IPAMBlock", "ipamblocks", ("block", "blocks", "ipamblock"), "podnet.model.block:Block", writable=False),
    # Calico's NetworkPolicy and Kubernetes' (networking.k8s.io/v1, shown as knp.default.<name>) share the kind.
    Kind("NetworkPolicy", "networkpolicies", ("networkpolicy", "netpol", "netpols", "np", "policy", "policies"),
         "podnet.model.policy:Policy", namespaced=True, api_versions=(CALICO_API, "networking.k8s.io/v1")),
    Kind("GlobalNetworkPolicy", "globalnetworkpolicies", ("globalnetworkpolicy", "gnp", "gnps"),
         "podnet.model.policy:Policy"),
    Kind("Namespace", "namespaces", ("namespace", "ns"), "podnet.model.kube:Namespace", api_versions=("v1",)),
    Kind("Pod", "pods", ("pod", "po"), "podnet.model.kube:Pod", namespaced=True, api_versions=("v1",)),
)


def _index() -> dict[str, Kind]:
    out: dict[str, Kind] = {}
    for kind in KINDS:
        for word in kind.words():
            out[word] = kind
    return out


_BY_WORD = _index()


def names() -> str:
    """Every kind, for error messages."""
    return ", ".join(k.plural for k in KINDS)


class UnknownKind(PodnetError):
    pass


def lookup(word: str) -> Kind:
    """The kind a user means by `word` (any case, singular, plural or short name)."""
    kind = _BY_WORD.get(word.lower())
    if kind is None:
        raise UnknownKind(f"{word!r} is not a kind podnet knows", f"kinds: {names()}")
    return kind


def kind_of(doc) -> Kind:
    """The kind of a manifest, by its `kind` field (exact spelling, as Kubernetes and calicoctl want)."""
    if not isinstance(doc, dict):
        raise ValidationError("(document)", "must be a mapping with apiVersion, kind, metadata and spec")
    name = doc.get("kind")
    for kind in KINDS:
        if name == kind.name or name in kind.aliases:
            return kind
    writable = ", ".join(k.name for k in KINDS if k.writable)
    raise ValidationError("kind", f"{name!r} is not a resource podnet can apply ({writable})")


def parse_resource(doc) -> object:
    """Turn one manifest into a podnet resource; refuses kinds podnet only writes itself."""
    kind = kind_of(doc)
    if not kind.writable:
        raise ValidationError("kind", f"{kind.name} resources are written by podnet itself, not applied")
    return kind.parse(doc)
