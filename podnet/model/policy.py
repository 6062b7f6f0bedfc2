"""Network policy: Calico's projectcalico.org/v3 NetworkPolicy and GlobalNetworkPolicy, and Kubernetes'
networking.k8s.io/v1 NetworkPolicy, which becomes the Calico policy `knp.default.<name>` as Calico's
Kubernetes conversion makes it (order 1000, Allow rules, one rule per peer and protocol).

Everything is validated when parsed: a bad document raises ValidationError naming the field, so nothing
of it is ever stored or programmed. `Policy` is the one form the calculation layer reads.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from podnet.model import fields, selector
from podnet.model.errors import ValidationError
from podnet.model.kube import port_name

CALICO_API = "projectcalico.org/v3"
K8S_API = "networking.k8s.io/v1"
ACTIONS = ("Allow", "Deny", "Pass", "Log")
TYPES = ("Ingress", "Egress")
# Calico's protocol names; numbers 1-255 are accepted too.
PROTOCOL_NUMBERS = {"TCP": 6, "UDP": 17, "ICMP": 1, "ICMPv6": 58, "SCTP": 132, "UDPLite": 136}
PORT_PROTOCOLS = ("TCP", "UDP", "SCTP", "UDPLite")
K8S_ORDER = 1000.0  # Calico gives every converted Kubernetes policy this order
K8S_PREFIX = "knp.default."
ORCHESTRATOR_LABEL = "projectcalico.org/orchestrator"
NAMESPACE_LABEL = "projectcalico.org/namespace"
_RANGE = re.compile(r"^(\d+):(\d+)$")


@dataclass(frozen=True)
class PortRange:
    first: int
    last: int

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}:{self.last}"


Port = "PortRange | str"  # a range, or a named port resolved per endpoint


@dataclass(frozen=True)
class EntityRule:
    """The source or destination side of a rule: every field given must match (AND)."""
    nets: tuple[str, ...] = ()
    not_nets: tuple[str, ...] = ()
    selector: str | None = None
    not_selector: str | None = None
    namespace_selector: str | None = None
    ports: tuple = ()  # PortRange | str
    not_ports: tuple = ()

    @property
    def empty(self) -> bool:
        return self == EntityRule()

    def to_manifest(self) -> dict:
        out: dict = {}
        for key, value in (("nets", list(self.nets)), ("notNets", list(self.not_nets)), ("selector", self.selector),
                           ("notSelector", self.not_selector), ("namespaceSelector", self.namespace_selector),
                           ("ports", [_port_out(p) for p in self.ports]),
                           ("notPorts", [_port_out(p) for p in self.not_ports])):
            if value not in (None, []):
                out[key] = value
        return out


@dataclass(frozen=True)
class Rule:
    action: str
    protocol: str | int | None = None  # a name of PROTOCOL_NUMBERS or a number
    not_protocol: str | int | None = None
    icmp: tuple | None = None  # (type, code or None)
    not_icmp: tuple | None = None
    ip_version: int | None = None
    source: EntityRule = EntityRule()
    destination: EntityRule = EntityRule()

    def to_manifest(self) -> dict:
        out: dict = {"action": self.action}
        if self.protocol is not None:
            out["protocol"] = self.protocol
        if self.not_protocol is not None:
            out["notProtocol"] = self.not_protocol
        for key, icmp in (("icmp", self.icmp), ("notICMP", self.not_icmp)):
            if icmp is not None:
                out[key] = {"type": icmp[0], **({"code": icmp[1]} if icmp[1] is not None else {})}
        if self.ip_version is not None:
            out["ipVersion"] = self.ip_version
        for key, entity in (("source", self.source), ("destination", self.destination)):
            if not entity.empty:
                out[key] = entity.to_manifest()
        return out

    def describe(self) -> str:
        """One line a person reads: `Allow TCP from selector app == 'a' to ports 80`."""
        parts = [self.action]
        if self.protocol is not None:
            parts.append(str(self.protocol))
        if self.not_protocol is not None:
            parts.append(f"not {self.not_protocol}")
        if self.icmp:
            parts.append(f"type {self.icmp[0]}" + (f" code {self.icmp[1]}" if self.icmp[1] is not None else ""))
        if self.not_icmp:
            parts.append(f"not type {self.not_icmp[0]}" + (f" code {self.not_icmp[1]}" if self.not_icmp[1] is not None else ""))
        if self.ip_version:
            parts.append(f"IPv{self.ip_version}")
        for word, entity in (("from", self.source), ("to", self.destination)):
            if entity.empty:
                continue
            bits = []
            if entity.nets:
                bits.append("nets " + ",".join(entity.nets))
            if entity.not_nets:
                bits.append("not nets " + ",".join(entity.not_nets))
            if entity.namespace_selector is not None:
                bits.append(f"namespaces {entity.namespace_selector or 'all()'}")
            if entity.selector is not None:
                bits.append(f"pods {entity.selector or 'all()'}")
            if entity.not_selector is not None:
                bits.append(f"not pods {entity.not_selector}")
            if entity.ports:
                bits.append("ports " + ",".join(str(p) for p in entity.ports))
            if entity.not_ports:
                bits.append("not ports " + ",".join(str(p) for p in entity.not_ports))
            parts.append(f"{word} " + " ".join(bits))
        return " ".join(parts)


@dataclass(frozen=True)
class Policy:
    """A Calico policy as Felix evaluates it. `kind` is NetworkPolicy (namespaced), GlobalNetworkPolicy,
    or KubernetesNetworkPolicy (converted; named knp.default.<name>)."""
    kind: str
    name: str
    namespace: str = ""
    order: float | None = None
    selector: str = "all()"
    namespace_selector: str | None = None  # GlobalNetworkPolicy only
    types: tuple[str, ...] = ("Ingress",)
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    source: dict = field(default_factory=dict, compare=False, hash=False, repr=False)  # the manifest it came from

    @property
    def key(self) -> str:
        """Unique among every policy: kind, namespace and name."""
        short = {"NetworkPolicy": "np", "GlobalNetworkPolicy": "gnp", "KubernetesNetworkPolicy": "knp"}[self.kind]
        return f"{short}/{self.namespace}/{self.name}" if self.namespace else f"{short}/{self.name}"

    @property
    def display(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    @property
    def sort_key(self) -> tuple:
        """Felix's order: by `order` (unset last), then by name."""
        return (self.order is None, self.order or 0.0, self.name, self.namespace)

    def rules(self, direction: str) -> tuple[Rule, ...]:
        return self.ingress if direction == "Ingress" else self.egress

    def to_manifest(self) -> dict:
        if self.source:
            return self.source
        return calico_manifest(self)

    @classmethod
    def from_manifest(cls, doc: dict) -> Policy:
        return parse_policy(doc)


def calico_manifest(p: Policy) -> dict:
    spec: dict = {}
    if p.order is not None:
        spec["order"] = p.order
    spec["selector"] = p.selector
    if p.namespace_selector is not None:
        spec["namespaceSelector"] = p.namespace_selector
    spec["types"] = list(p.types)
    if p.ingress:
        spec["ingress"] = [r.to_manifest() for r in p.ingress]
    if p.egress:
        spec["egress"] = [r.to_manifest() for r in p.egress]
    kind = "GlobalNetworkPolicy" if p.kind == "GlobalNetworkPolicy" else "NetworkPolicy"
    meta = {"name": p.name, **({"namespace": p.namespace} if p.namespace else {})}
    return {"apiVersion": CALICO_API, "kind": kind, "metadata": meta, "spec": spec}


def _port_out(p):
    if isinstance(p, str):
        return p
    return p.first if p.first == p.last else f"{p.first}:{p.last}"


# Calico documents ------------------------------------------------------------------------

_POLICY_SPEC = {"order", "selector", "namespaceSelector", "types", "ingress", "egress", "tier", "doNotTrack",
                "preDNAT", "applyOnForward", "serviceAccountSelector", "performanceHints"}
_RULE_FIELDS = {"action", "protocol", "notProtocol", "icmp", "notICMP", "ipVersion", "source", "destination",
                "metadata", "http"}
_ENTITY_FIELDS = {"nets", "notNets", "selector", "notSelector", "namespaceSelector", "ports", "notPorts",
                  "serviceAccounts", "services"}


def _unknown(where: str, doc: dict, known: set) -> None:
    extra = sorted(set(doc) - known)
    if extra:
        raise ValidationError(f"{where}{extra[0]}", "is not a field of this resource")


def _selector(where: str, value, allow_none: bool = True) -> str | None:
    if value is None and allow_none:
        return None
    selector.parse(value, where)
    return value


def _protocol(where: str, value) -> str | int:
    if isinstance(value, bool):
        raise ValidationError(where, f"{value!r} is not a protocol")
    if isinstance(value, int):
        if not 1 <= value <= 255:
            raise ValidationError(where, f"{value} is outside 1-255")
        return value
    if isinstance(value, str):
        for name in PROTOCOL_NUMBERS:
            if value.lower() == name.lower():
                return name
        if value.isdigit() and 1 <= int(value) <= 255:
            return int(value)
    raise ValidationError(where, f"{value!r} is not one of {', '.join(PROTOCOL_NUMBERS)} or a number 1-255")


def protocol_number(protocol: str | int) -> int:
    return protocol if isinstance(protocol, int) else PROTOCOL_NUMBERS[protocol]


def _port(where: str, value):
    if isinstance(value, bool):
        raise ValidationError(where, f"{value!r} is not a port")
    if isinstance(value, int):
        if not 0 <= value <= 65535:
            raise ValidationError(where, f"{value} is outside 0-65535")
        return PortRange(value, value)
    if isinstance(value, str):
        m = _RANGE.match(value)
        if m:
            first, last = int(m.group(1)), int(m.group(2))
            if not 0 <= first <= last <= 65535:
                raise ValidationError(where, f"{value!r} is not a range first:last within 0-65535")
            return PortRange(first, last)
        if value.isdigit():
            return _port(where, int(value))
        return port_name(where, value)
    raise ValidationError(where, f"{value!r} is not a port number, a range 'first:last' or a port name")


def _nets(where: str, value) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValidationError(where, "must be a list of CIDRs")
    out = []
    for i, cidr in enumerate(value):
        try:
            out.append(str(ipaddress.ip_network(cidr, strict=False)))
        except (ValueError, TypeError):
            raise ValidationError(f"{where}[{i}]", f"{cidr!r} is not a CIDR") from None
    return tuple(out)


def _entity(where: str, doc, protocol) -> EntityRule:
    if doc is None:
        return EntityRule()
    if not isinstance(doc, dict):
        raise ValidationError(where, "must be a mapping")
    _unknown(where + ".", doc, _ENTITY_FIELDS)
    for unsupported in ("serviceAccounts", "services"):
        if doc.get(unsupported):
            raise ValidationError(f"{where}.{unsupported}", "is not supported by podnet")
    ports = {}
    for key in ("ports", "notPorts"):
        value = doc.get(key) or []
        if not isinstance(value, list):
            raise ValidationError(f"{where}.{key}", "must be a list")
        ports[key] = tuple(_port(f"{where}.{key}[{i}]", p) for i, p in enumerate(value))
        if ports[key] and (protocol is None or protocol not in PORT_PROTOCOLS):
            raise ValidationError(f"{where}.{key}", "needs the rule's protocol to be TCP, UDP, SCTP or UDPLite")
    return EntityRule(
        nets=_nets(f"{where}.nets", doc.get("nets")),
        not_nets=_nets(f"{where}.notNets", doc.get("notNets")),
        selector=_selector(f"{where}.selector", doc.get("selector")),
        not_selector=_selector(f"{where}.notSelector", doc.get("notSelector")),
        namespace_selector=_selector(f"{where}.namespaceSelector", doc.get("namespaceSelector")),
        ports=ports["ports"],
        not_ports=ports["notPorts"],
    )


def _icmp(where: str, doc) -> tuple | None:
    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise ValidationError(where, "must be a mapping with type and code")
    _unknown(where + ".", doc, {"type", "code"})
    itype, code = doc.get("type"), doc.get("code")
    if itype is None and code is not None:
        raise ValidationError(f"{where}.code", "needs a type")
    for key, value, high in (("type", itype, 254), ("code", code, 255)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= high):
            raise ValidationError(f"{where}.{key}", f"{value!r} is outside 0-{high}")
    return None if itype is None else (itype, code)


def parse_rule(where: str, doc) -> Rule:
    if not isinstance(doc, dict):
        raise ValidationError(where, "must be a mapping")
    _unknown(where + ".", doc, _RULE_FIELDS)
    if doc.get("http"):
        raise ValidationError(f"{where}.http", "HTTP match needs an application layer proxy, which podnet has not")
    action = doc.get("action")
    if action not in ACTIONS:
        raise ValidationError(f"{where}.action", f"{action!r} is not one of {', '.join(ACTIONS)}")
    protocol = _protocol(f"{where}.protocol", doc["protocol"]) if doc.get("protocol") is not None else None
    not_protocol = (_protocol(f"{where}.notProtocol", doc["notProtocol"])
                    if doc.get("notProtocol") is not None else None)
    ip_version = doc.get("ipVersion")
    if ip_version not in (None, 4, 6):
        raise ValidationError(f"{where}.ipVersion", f"{ip_version!r} is not 4 or 6")
    icmp, not_icmp = _icmp(f"{where}.icmp", doc.get("icmp")), _icmp(f"{where}.notICMP", doc.get("notICMP"))
    if icmp or not_icmp:
        if protocol not in ("ICMP", "ICMPv6"):
            raise ValidationError(f"{where}.{'icmp' if icmp else 'notICMP'}", "needs protocol ICMP or ICMPv6")
    implied = {"ICMP": 4, "ICMPv6": 6}.get(protocol)
    if implied and ip_version not in (None, implied):
        raise ValidationError(f"{where}.ipVersion", f"{ip_version} disagrees with protocol {protocol}")
    source = _entity(f"{where}.source", doc.get("source"), protocol)
    destination = _entity(f"{where}.destination", doc.get("destination"), protocol)
    for side, entity in (("source", source), ("destination", destination)):
        versions = {ipaddress.ip_network(n).version for n in entity.nets + entity.not_nets}
        if ip_version and versions - {ip_version}:
            raise ValidationError(f"{where}.{side}.nets", f"holds a network that is not IPv{ip_version}")
        if implied and versions - {implied}:
            raise ValidationError(f"{where}.{side}.nets", f"holds a network that is not IPv{implied} ({protocol})")
    return Rule(action, protocol, not_protocol, icmp, not_icmp, ip_version, source, destination)


def _types(where: str, value, ingress, egress) -> tuple[str, ...]:
    if value is None:
        # Calico's defaults: Ingress, plus Egress when there are egress rules; Egress alone with only those.
        if egress and not ingress:
            return ("Egress",)
        return ("Ingress", "Egress") if egress else ("Ingress",)
    if not isinstance(value, list) or not value or any(t not in TYPES for t in value) or len(set(value)) != len(value):
        raise ValidationError(where, f"must list Ingress and/or Egress, not {value!r}")
    if ingress and "Ingress" not in value:
        raise ValidationError(where, "has ingress rules but does not list Ingress")
    if egress and "Egress" not in value:
        raise ValidationError(where, "has egress rules but does not list Egress")
    return tuple(t for t in TYPES if t in value)


def _rules(where: str, value) -> tuple[Rule, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValidationError(where, "must be a list of rules")
    return tuple(parse_rule(f"{where}[{i}]", r) for i, r in enumerate(value))


def parse_calico(doc: dict) -> Policy:
    """A projectcalico.org/v3 NetworkPolicy or GlobalNetworkPolicy."""
    kind = doc.get("kind")
    if doc.get("apiVersion") != CALICO_API:
        raise ValidationError("apiVersion", f"must be {CALICO_API}, not {doc.get('apiVersion')!r}")
    if kind not in ("NetworkPolicy", "GlobalNetworkPolicy"):
        raise ValidationError("kind", f"must be NetworkPolicy or GlobalNetworkPolicy, not {kind!r}")
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        raise ValidationError("metadata", "is required")
    name = fields.name("metadata.name", meta.get("name"))
    if name.startswith(K8S_PREFIX):
        raise ValidationError("metadata.name", f"{K8S_PREFIX}* names belong to converted Kubernetes policies")
    namespace = ""
    if kind == "NetworkPolicy":
        namespace = fields.name("metadata.namespace", meta.get("namespace") or "default")
    elif meta.get("namespace"):
        raise ValidationError("metadata.namespace", "a GlobalNetworkPolicy has no namespace")
    spec = doc.get("spec") or {}
    if not isinstance(spec, dict):
        raise ValidationError("spec", "must be a mapping")
    _unknown("spec.", spec, _POLICY_SPEC)
    if spec.get("tier", "default") != "default":
        raise ValidationError("spec.tier", "podnet has the default tier only")
    for flag in ("doNotTrack", "preDNAT", "applyOnForward"):
        if spec.get(flag, False) is not False:
            raise ValidationError(f"spec.{flag}", "applies to host endpoints, which podnet has not; must be false")
    if spec.get("serviceAccountSelector"):
        raise ValidationError("spec.serviceAccountSelector", "is not supported by podnet")
    if "namespaceSelector" in spec and kind != "GlobalNetworkPolicy":
        raise ValidationError("spec.namespaceSelector", "is a GlobalNetworkPolicy field")
    order = spec.get("order")
    if order is not None and (isinstance(order, bool) or not isinstance(order, (int, float))):
        raise ValidationError("spec.order", f"{order!r} is not a number")
    ingress = _rules("spec.ingress", spec.get("ingress"))
    egress = _rules("spec.egress", spec.get("egress"))
    return Policy(
        kind=kind, name=name, namespace=namespace, order=None if order is None else float(order),
        selector=_selector("spec.selector", spec.get("selector") or "all()", allow_none=False),
        namespace_selector=_selector("spec.namespaceSelector", spec.get("namespaceSelector")),
        types=_types("spec.types", spec.get("types"), ingress, egress), ingress=ingress, egress=egress,
        source=_clean(doc),
    )


def _clean(doc: dict) -> dict:
    """The manifest as stored: apiVersion, kind, metadata (name, namespace, labels) and spec."""
    meta = {k: v for k, v in (doc.get("metadata") or {}).items() if k in ("name", "namespace", "labels", "annotations")}
    if doc.get("kind") == "NetworkPolicy" and "namespace" not in meta:
        meta["namespace"] = "default"
    return {"apiVersion": doc["apiVersion"], "kind": doc["kind"], "metadata": meta, "spec": doc.get("spec") or {}}


# Kubernetes NetworkPolicy ------------------------------------------------------------------


def label_selector(where: str, doc) -> str:
    """A Kubernetes LabelSelector (matchLabels, matchExpressions) as a Calico selector; {} is all()."""
    if doc is None:
        return "all()"
    if not isinstance(doc, dict):
        raise ValidationError(where, "must be a label selector (matchLabels, matchExpressions)")
    _unknown(where + ".", doc, {"matchLabels", "matchExpressions"})
    terms = []
    match_labels = fields.labels(f"{where}.matchLabels", doc.get("matchLabels"))
    for k in sorted(match_labels):
        terms.append(f"{k} == {selector.quote(match_labels[k])}")
    expressions = doc.get("matchExpressions") or []
    if not isinstance(expressions, list):
        raise ValidationError(f"{where}.matchExpressions", "must be a list")
    for i, e in enumerate(expressions):
        at = f"{where}.matchExpressions[{i}]"
        if not isinstance(e, dict):
            raise ValidationError(at, "must be a mapping with key, operator and values")
        _unknown(at + ".", e, {"key", "operator", "values"})
        key, op, values = e.get("key"), e.get("operator"), e.get("values") or []
        if not isinstance(key, str) or not key:
            raise ValidationError(f"{at}.key", "is required")
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ValidationError(f"{at}.values", "must be a list of strings")
        quoted = ", ".join(selector.quote(v) for v in values)
        if op in ("In", "NotIn"):
            if not values:
                raise ValidationError(f"{at}.values", f"must not be empty for {op}")
            terms.append(f"{key} {'in' if op == 'In' else 'not in'} {{{quoted}}}")
        elif op in ("Exists", "DoesNotExist"):
            if values:
                raise ValidationError(f"{at}.values", f"must be empty for {op}")
            terms.append(f"has({key})" if op == "Exists" else f"!has({key})")
        else:
            raise ValidationError(f"{at}.operator", f"{op!r} is not In, NotIn, Exists or DoesNotExist")
    text = " && ".join(terms) or "all()"
    selector.parse(text, where)
    return text


def _k8s_ports(where: str, value) -> list[tuple[str | None, tuple]]:
    """[(protocol, ports)]: one entry per protocol, in first-seen order; [] means any port, any protocol."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValidationError(where, "must be a list")
    groups: dict[str, list] = {}
    for i, p in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(p, dict):
            raise ValidationError(at, "must be a mapping with protocol, port and endPort")
        _unknown(at + ".", p, {"protocol", "port", "endPort"})
        protocol = p.get("protocol", "TCP")
        if protocol not in ("TCP", "UDP", "SCTP"):
            raise ValidationError(f"{at}.protocol", f"{protocol!r} is not TCP, UDP or SCTP")
        ports = groups.setdefault(protocol, [])
        if "port" not in p or p["port"] is None:
            if p.get("endPort") is not None:
                raise ValidationError(f"{at}.endPort", "needs a numeric port")
            ports.append(None)  # the whole protocol
            continue
        port, end = p["port"], p.get("endPort")
        if isinstance(port, str) and not port.isdigit():
            if end is not None:
                raise ValidationError(f"{at}.endPort", "cannot follow a named port")
            ports.append(port_name(f"{at}.port", port))
            continue
        port = int(port) if isinstance(port, str) else port
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise ValidationError(f"{at}.port", f"{p['port']!r} is not a port 1-65535 or a port name")
        if end is not None and (not isinstance(end, int) or isinstance(end, bool) or not port <= end <= 65535):
            raise ValidationError(f"{at}.endPort", f"{end!r} must be a port number >= port ({port})")
        ports.append(PortRange(port, end if end is not None else port))
    return [(proto, () if None in ports else tuple(ports)) for proto, ports in groups.items()]


def _k8s_peers(where: str, value, namespace: str) -> list[EntityRule]:
    """[] means from/to anywhere."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValidationError(where, "must be a list of peers")
    out = []
    for i, peer in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(peer, dict) or not peer:
            raise ValidationError(at, "must have podSelector, namespaceSelector or ipBlock")
        _unknown(at + ".", peer, {"podSelector", "namespaceSelector", "ipBlock"})
        if "ipBlock" in peer:
            if "podSelector" in peer or "namespaceSelector" in peer:
                raise ValidationError(f"{at}.ipBlock", "cannot be combined with podSelector or namespaceSelector")
            block = peer["ipBlock"]
            if not isinstance(block, dict) or "cidr" not in block:
                raise ValidationError(f"{at}.ipBlock.cidr", "is required")
            _unknown(f"{at}.ipBlock.", block, {"cidr", "except"})
            cidr = _nets(f"{at}.ipBlock.cidr", [block["cidr"]])
            excepts = _nets(f"{at}.ipBlock.except", block.get("except"))
            outer = ipaddress.ip_network(cidr[0])
            for j, e in enumerate(excepts):
                inner = ipaddress.ip_network(e)
                if inner.version != outer.version or not inner.subnet_of(outer):
                    raise ValidationError(f"{at}.ipBlock.except[{j}]", f"{e} is not inside {cidr[0]}")
            out.append(EntityRule(nets=cidr, not_nets=excepts))
            continue
        pods = label_selector(f"{at}.podSelector", peer.get("podSelector"))
        pod_sel = f"{ORCHESTRATOR_LABEL} == 'k8s'" + ("" if pods == "all()" else f" && ({pods})")
        if "namespaceSelector" in peer:
            out.append(EntityRule(selector=pod_sel,
                                  namespace_selector=label_selector(f"{at}.namespaceSelector",
                                                                    peer["namespaceSelector"])))
        else:
            out.append(EntityRule(selector=pod_sel))  # the policy's own namespace
    return out


def _k8s_rules(where: str, value, namespace: str, direction: str) -> tuple[Rule, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValidationError(where, "must be a list of rules")
    out = []
    peer_key = "from" if direction == "Ingress" else "to"
    for i, r in enumerate(value):
        at = f"{where}[{i}]"
        if r is None:
            r = {}
        if not isinstance(r, dict):
            raise ValidationError(at, "must be a mapping")
        _unknown(at + ".", r, {peer_key, "ports"})
        peers = _k8s_peers(f"{at}.{peer_key}", r.get(peer_key), namespace) or [EntityRule()]
        groups = _k8s_ports(f"{at}.ports", r.get("ports")) or [(None, ())]
        for peer in peers:
            for protocol, ports in groups:
                if direction == "Ingress":
                    out.append(Rule("Allow", protocol, source=peer, destination=EntityRule(ports=ports)))
                else:
                    out.append(Rule("Allow", protocol, destination=EntityRule(
                        nets=peer.nets, not_nets=peer.not_nets, selector=peer.selector,
                        namespace_selector=peer.namespace_selector, ports=ports)))
    return tuple(out)


def parse_kubernetes(doc: dict) -> Policy:
    """A networking.k8s.io/v1 NetworkPolicy, converted as Calico converts it."""
    if doc.get("apiVersion") != K8S_API or doc.get("kind") != "NetworkPolicy":
        raise ValidationError("kind", f"must be {K8S_API} NetworkPolicy")
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        raise ValidationError("metadata", "is required")
    name = fields.name("metadata.name", meta.get("name"))
    namespace = fields.name("metadata.namespace", meta.get("namespace") or "default")
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        raise ValidationError("spec", "is required (podSelector: {} selects every pod of the namespace)")
    _unknown("spec.", spec, {"podSelector", "policyTypes", "ingress", "egress"})
    if "podSelector" not in spec:
        raise ValidationError("spec.podSelector", "is required ({} selects every pod of the namespace)")
    pods = label_selector("spec.podSelector", spec.get("podSelector"))
    ingress = _k8s_rules("spec.ingress", spec.get("ingress"), namespace, "Ingress")
    egress = _k8s_rules("spec.egress", spec.get("egress"), namespace, "Egress")
    types = spec.get("policyTypes")
    if types is None:
        types = ["Ingress"] + (["Egress"] if spec.get("egress") else [])
    if not isinstance(types, list) or not types or any(t not in TYPES for t in types):
        raise ValidationError("spec.policyTypes", f"must list Ingress and/or Egress, not {types!r}")
    # Rules of a type the policy does not list are ignored, as Kubernetes does.
    return Policy(
        kind="KubernetesNetworkPolicy", name=K8S_PREFIX + name, namespace=namespace, order=K8S_ORDER,
        selector=f"{ORCHESTRATOR_LABEL} == 'k8s'" + ("" if pods == "all()" else f" && ({pods})"),
        types=tuple(t for t in TYPES if t in types),
        ingress=ingress if "Ingress" in types else (), egress=egress if "Egress" in types else (),
        source=_clean(doc),
    )


def parse_policy(doc: dict) -> Policy:
    """Any of the three policy documents."""
    if not isinstance(doc, dict):
        raise ValidationError("(document)", "must be a mapping with apiVersion, kind, metadata and spec")
    if doc.get("apiVersion") == K8S_API:
        return parse_kubernetes(doc)
    return parse_calico(doc)


def storage_key(policy: Policy) -> str:
    """Where the policy is stored: each of the three kinds under its own prefix."""
    from podnet.datastore import keys

    if policy.kind == "KubernetesNetworkPolicy":
        return f"{keys.K8S_NETWORK_POLICIES}{policy.namespace}/{k8s_name(policy)}"
    if policy.kind == "NetworkPolicy":
        return f"{keys.NETWORK_POLICIES}{policy.namespace}/{policy.name}"
    return keys.GLOBAL_NETWORK_POLICIES + policy.name


def k8s_name(policy: Policy) -> str:
    """The Kubernetes name of a converted policy (knp.default.NAME -> NAME)."""
    return policy.name[len(K8S_PREFIX):] if policy.kind == "KubernetesNetworkPolicy" else policy.name
