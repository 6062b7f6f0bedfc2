"""The filter layer a node must hold, as one nftables table (`inet podnet`). Pure: no I/O.

Felix's invariants, in nftables terms:

* Base chains: one `forward` chain (hook forward, priority filter) dispatches by input interface to
  the sending workload's from-workload chain (its egress policy) and by output interface to the
  receiving workload's to-workload chain (its ingress policy). An egress Allow is not the end: it
  `goto`s `to-workload`, the receiving side's dispatch, so pod-to-pod traffic on one node meets both
  policies while an established packet crosses one base chain only. `input` guards the node: VXLAN
  only from member nodes' underlay addresses; workload-to-host traffic through `wl-to-host`
  (node-protection list, then the endpoint's egress policy, then DefaultEndpointToHostAction).
  Each begins with conntrack ESTABLISHED/RELATED accept, INVALID drop.
* Dispatch is a verdict map keyed on the interface name (constant time per packet, as Calico's
  nftables mode does); a `cali*` interface without an element is dropped: fail closed.
* A from-workload chain drops VXLAN and IPIP the workload sends and any source address that is not
  the endpoint's (anti-spoofing, v4 and v6), then jumps to each policy that selects the endpoint.
* A policy becomes one chain per direction, shared by every endpoint it selects: Allow allows (an
  ingress chain accepts, an egress chain goes on to the receiving side's `to-workload`), Deny drops,
  Log logs and goes on, Pass leaves the tier for the namespace profile, which allows (podnet has the
  default tier only; Kubernetes namespaces' profiles allow everything). When a policy of the tier
  selected the endpoint and none decided, the endpoint chain drops.
* Selectors become sets of endpoint addresses (one per family), named ports sets of
  (address . protocol . port); both follow endpoint and label changes by element updates only.

`compute_filter` returns the desired `FilterRuleset`; `diff_filter` the nft commands that take the
kernel from one ruleset to another in one transaction, touching only what changed.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from podnet.model import selector as selectors
from podnet.model.kube import NAMESPACE_NAME_LABEL, Namespace, Pod
from podnet.model.policy import (NAMESPACE_LABEL, ORCHESTRATOR_LABEL, EntityRule, Policy, PortRange, Rule,
                                 protocol_number)

TABLE = "podnet"
FAMILY = "inet"
FROM_MAP, TO_MAP = "from-wl", "to-wl"
FORWARD, TO_WORKLOAD = "forward", "to-workload"
NODES4, NODES6 = "nodes4", "nodes6"
PROTECTED4, PROTECTED6, PROTECTED_PORTS = "protected4", "protected6", "protected-ports"
WORKLOAD_PREFIX = "cali"
ENDPOINT_TO_HOST_ACTIONS = ("Accept", "Drop", "Return")
NFT_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")  # an interface name nft takes as a chain name's tail
_PROTO_NAMES = {"tcp": 6, "udp": 17, "icmp": 1, "ipv6-icmp": 58, "icmpv6": 58, "sctp": 132, "udplite": 136}


# Inputs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyEndpoint:
    """A workload endpoint as policy sees it: where it is, its addresses, labels and named ports."""
    node: str
    namespace: str
    pod: str
    interface: str  # the host side, cali...
    ips: tuple[str, ...]  # bare addresses
    labels: Mapping = field(default_factory=dict, hash=False, compare=True)
    namespace_labels: Mapping = field(default_factory=dict, hash=False, compare=True)
    ports: tuple = ()  # ContainerPort

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.pod}"


def policy_endpoint(wep, pod: Pod | None, namespace: Namespace | None) -> PolicyEndpoint:
    """The endpoint with its pod's labels and ports and its namespace's labels, as Calico's
    kube-controllers would sync them; a pod or namespace podnet was not told about has no labels but
    the ones every endpoint carries."""
    ns = wep.pod_namespace or "default"
    labels = dict(pod.labels) if pod else {}
    labels[NAMESPACE_LABEL] = ns
    labels[ORCHESTRATOR_LABEL] = "k8s"
    ns_labels = dict(namespace.labels) if namespace else {NAMESPACE_NAME_LABEL: ns}
    return PolicyEndpoint(node=wep.node, namespace=ns, pod=wep.pod_name or wep.container_id[:12],
                          interface=wep.host_interface,
                          ips=tuple(str(ipaddress.ip_address(ip.split("/")[0])) for ip in wep.ips),
                          labels=labels, namespace_labels=ns_labels, ports=pod.ports if pod else ())


@dataclass(frozen=True)
class FilterConfig:
    vxlan_port: int = 4789
    endpoint_to_host_action: str = "Accept"  # Calico's DefaultEndpointToHostAction (the k8s manifest's value)
    # (address or None for this node, protocol number, port): pods may not reach these.
    protected: tuple = ()


# Selection ---------------------------------------------------------------------------------


def policy_selects(policy: Policy, ep: PolicyEndpoint) -> bool:
    if policy.namespace and policy.namespace != ep.namespace:
        return False
    if policy.namespace_selector is not None:
        nsel = selectors.parse(policy.namespace_selector, "spec.namespaceSelector")
        if nsel.is_global or not nsel.matches(ep.namespace_labels):
            return False
    return selectors.parse(policy.selector, "spec.selector").matches(ep.labels)


def ordered(policies: Iterable[Policy]) -> list[Policy]:
    return sorted(policies, key=lambda p: p.sort_key)


def endpoint_policies(ep: PolicyEndpoint, policies: Iterable[Policy], direction: str) -> list[Policy]:
    """The policies that apply to `ep` in `direction` ("Ingress" or "Egress"), in Felix's order.
    `policies` must already be `ordered`."""
    return [p for p in policies if direction in p.types and policy_selects(p, ep)]


# Entity matching: which endpoints a rule's selector means --------------------------------------


@dataclass(frozen=True)
class Scope:
    """Which endpoints a selector in a rule of `policy` may match: a namespace selector, the policy's
    own namespace, or any namespace (a GlobalNetworkPolicy's rule without namespaceSelector)."""
    namespace_selector: str | None = None
    namespace: str | None = None

    def admits(self, ep: PolicyEndpoint) -> bool:
        if self.namespace_selector is not None:
            nsel = selectors.parse(self.namespace_selector, "namespaceSelector")
            return not nsel.is_global and nsel.matches(ep.namespace_labels)
        if self.namespace is not None:
            return ep.namespace == self.namespace
        return True

    def text(self) -> str:
        if self.namespace_selector is not None:
            return f"namespaces {self.namespace_selector or 'all()'}"
        return f"namespace {self.namespace}" if self.namespace is not None else "all namespaces"


def entity_scope(entity: EntityRule, policy: Policy) -> Scope:
    if entity.namespace_selector is not None:
        return Scope(namespace_selector=entity.namespace_selector)
    return Scope(namespace=policy.namespace or None)


def selector_members(text: str, scope: Scope, endpoints: Iterable[PolicyEndpoint]) -> list[PolicyEndpoint]:
    sel = selectors.parse(text, "selector")
    return [ep for ep in endpoints if scope.admits(ep) and sel.matches(ep.labels)]


# The ruleset -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=65536)
def rule_hash(body: str) -> str:
    return hashlib.sha1(body.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class NftRule:
    body: str  # matches and verdict
    info: str = ""  # who asked for it, for people reading `nft list` and for trace

    @functools.cached_property
    def hash(self) -> str:
        return rule_hash(self.body)

    @functools.cached_property
    def text(self) -> str:
        note = f"{self.hash} {self.info}".strip()[:120].replace('"', "'")
        return f'{self.body} comment "{note}"'

    def render(self) -> str:
        return self.text


@dataclass(frozen=True)
class NftChain:
    name: str
    rules: tuple[NftRule, ...]
    hook: str | None = None  # e.g. "type filter hook forward priority filter; policy accept;"

    @functools.cached_property
    def hashes(self) -> tuple[str, ...]:
        return tuple(r.hash for r in self.rules)


@dataclass(frozen=True)
class NftSet:
    name: str
    type: str
    elements: frozenset = frozenset()  # rendered element texts; for a map "key : verdict"
    flags: str = ""
    is_map: bool = False

    def declaration(self) -> str:
        flags = f" flags {self.flags};" if self.flags else ""
        return f"{'map' if self.is_map else 'set'} {self.name} {{ type {self.type};{flags} }}"


@dataclass
class FilterRuleset:
    sets: dict[str, NftSet] = field(default_factory=dict)
    chains: dict[str, NftChain] = field(default_factory=dict)
    # Per local endpoint interface: the policies of each direction, for describe and trace.
    endpoint_policies: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    # A ruleset made from another by a few changes names it and what it changed, so diff_filter
    # looks at those names only (calc/filter_calc.py). Only one step back is kept.
    parent: "FilterRuleset | None" = field(default=None, compare=False, repr=False)
    touched_sets: set = field(default_factory=set, compare=False, repr=False)
    touched_chains: set = field(default_factory=set, compare=False, repr=False)

    def child(self) -> "FilterRuleset":
        """A copy to change: it shares every set and chain (they are immutable) and remembers `self`."""
        self.parent = None  # a chain of ancestors would keep every old ruleset alive
        return FilterRuleset(dict(self.sets), dict(self.chains), dict(self.endpoint_policies), parent=self)

    def put_set(self, s: NftSet) -> None:
        if self.sets.get(s.name) != s:
            self.sets[s.name] = s
            self.touched_sets.add(s.name)

    def drop_set(self, name: str) -> None:
        if self.sets.pop(name, None) is not None:
            self.touched_sets.add(name)

    def put_chain(self, c: NftChain) -> None:
        prev = self.chains.get(c.name)
        if prev is not c:
            self.chains[c.name] = c
            self.touched_chains.add(c.name)

    def drop_chain(self, name: str) -> None:
        if self.chains.pop(name, None) is not None:
            self.touched_chains.add(name)

    def render(self) -> str:
        """The whole table in `nft -f` syntax."""
        out = [f"table {FAMILY} {TABLE} {{"]
        for s in sorted(self.sets.values(), key=lambda s: s.name):
            flags = f"\n    flags {s.flags}" if s.flags else ""
            elements = f"\n    elements = {{ {', '.join(sorted(s.elements))} }}" if s.elements else ""
            out.append(f"  {'map' if s.is_map else 'set'} {s.name} {{\n    type {s.type}{flags}{elements}\n  }}")
        for c in sorted(self.chains.values(), key=lambda c: (c.hook is None, c.name)):
            out.append(f"  chain {c.name} {{")
            if c.hook:
                out.append(f"    {c.hook}")
            out.extend(f"    {r.text}" for r in c.rules)
            out.append("  }")
        out.append("}")
        return "\n".join(out) + "\n"


def addr_family(ip: str) -> int:
    return 6 if ":" in ip else 4


def _short(text: str, n: int = 12) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:n]


def policy_chain(policy: Policy, direction: str) -> str:
    return _policy_chain_name(policy.key, direction)


@functools.lru_cache(maxsize=65536)
def _policy_chain_name(key: str, direction: str) -> str:
    base = ("pi-" if direction == "Ingress" else "po-") + key
    return base if len(base) <= 200 else base[:3] + _short(key, 20)


@functools.lru_cache(maxsize=65536)
def jump_rule(chain: str, display: str) -> NftRule:
    """One rule object per policy chain, shared by every endpoint chain that jumps to it."""
    return NftRule(f"jump {chain}", f"policy {display}")


def endpoint_chain(interface: str, direction: str) -> str:
    """tw-<if>: to the workload (its ingress policy); fw-<if>: from it (its egress policy)."""
    return ("tw-" if direction == "Ingress" else "fw-") + interface


class SetRequests:
    """Collects the sets a policy's rules ask for, by what they mean (their names follow from that
    alone); calc/filter_calc.py computes their members."""

    def __init__(self):
        self.wanted: dict[str, tuple] = {}

    def selector_set(self, text: str, scope: Scope, family: int) -> str:
        """The set of addresses (of `family`) of endpoints the selector matches within the scope."""
        name = f"s{family}-{_short(repr((text, scope)))}"
        self.wanted[name] = ("sel", text, scope, family)
        return name

    def constant_set(self, kind: int | str, items: Iterable[str]) -> str:
        """A named set holding a rule's literal list: `kind` 4 or 6 (networks) or "port" (ports and
        ranges). Named, not anonymous: libnftables reads every anonymous set's elements back on each
        transaction, so a policy's lists would tax every later change; one name per content, so
        policies written from one template share one set."""
        elements = _constant_elements(kind, items)
        name = f"c{kind if kind != 'port' else 'p'}-{_short(repr(elements))}"
        self.wanted[name] = ("const", kind, elements)
        return name

    def named_port_set(self, text: str, scope: Scope, port: str, protocol: int, family: int) -> str:
        """(address . protocol . port) of every endpoint the selector matches that names `port`."""
        name = f"n{family}-{_short(repr((text, scope, port, protocol)))}"
        self.wanted[name] = ("port", text, scope, family, port, protocol)
        return name


def _constant_elements(kind: int | str, items: Iterable[str]) -> tuple[str, ...]:
    """Sorted, overlaps merged (an interval set refuses overlapping elements)."""
    if kind == "port":
        spans = sorted(tuple(int(x) for x in (i.split("-") if "-" in i else (i, i))) for i in items)
        merged: list[list[int]] = []
        for first, last in spans:
            if merged and first <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], last)
            else:
                merged.append([first, last])
        return tuple(str(a) if a == b else f"{a}-{b}" for a, b in merged)
    nets = ipaddress.collapse_addresses(ipaddress.ip_network(n, strict=False) for n in items)
    return tuple(str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n) for n in nets)


def is_constant(spec: tuple) -> bool:
    """A set whose elements are in its request (a rule's literal list), not from endpoints."""
    return spec[0] == "const"


def set_flags(spec: tuple) -> str:
    return "interval" if is_constant(spec) else ""


def set_type(spec: tuple) -> str:
    if is_constant(spec):
        return {4: "ipv4_addr", 6: "ipv6_addr", "port": "inet_service"}[spec[1]]
    addr = "ipv4_addr" if spec[3] == 4 else "ipv6_addr"
    return addr if spec[0] == "sel" else f"{addr} . inet_proto . inet_service"


def set_matches(spec: tuple, ep: PolicyEndpoint) -> bool:
    """Whether the selector of set `spec` (a SetRequests request) matches `ep` (its signature decides)."""
    return spec[2].admits(ep) and selectors.parse(spec[1], "selector").matches(ep.labels)


def set_elements(spec: tuple, ep: PolicyEndpoint) -> frozenset:
    """What endpoint `ep`, when `set_matches`, puts into the set `spec`."""
    kind, family = spec[0], spec[3]
    ips = [ip for ip in ep.ips if addr_family(ip) == family]
    if kind == "sel":
        return frozenset(ips)
    port, protocol = spec[4:]
    return frozenset(f"{ip} . {protocol} . {cp.port}" for cp in ep.ports
                     if cp.name == port and protocol_number(cp.protocol) == protocol for ip in ips)


def _ports_expr(ports, b: SetRequests) -> str:
    items = [str(p.first) if p.first == p.last else f"{p.first}-{p.last}" for p in ports]
    return items[0] if len(items) == 1 else f"@{b.constant_set('port', items)}"


def _nets_expr(nets, family: int, b: SetRequests) -> str:
    return nets[0] if len(nets) == 1 else f"@{b.constant_set(family, nets)}"


def _port_variants(ports) -> list:
    """A rule's port list is an OR: numeric ones in one match, each named port in its own."""
    if not ports:
        return [None]
    numeric = tuple(p for p in ports if isinstance(p, PortRange))
    return ([("num", numeric)] if numeric else []) + [("named", p) for p in ports if isinstance(p, str)]


def _families(rule: Rule) -> list[int | None]:
    """The address families the rule needs a rule of its own for; [None] when it is family-blind."""
    fams = {4, 6}
    specific = False
    if rule.ip_version:
        fams &= {rule.ip_version}
        specific = True
    if rule.protocol in ("ICMP", "ICMPv6"):
        fams &= {4 if rule.protocol == "ICMP" else 6}
        specific = True
    for e in (rule.source, rule.destination):
        if e.nets:
            fams &= {addr_family(n) for n in e.nets}
            specific = True
        if (e.selector is not None or e.not_selector is not None or e.namespace_selector is not None or e.not_nets
                or any(isinstance(p, str) for p in e.ports + e.not_ports)):
            specific = True
    if not specific:
        return [None]
    return sorted(fams)


def allow_verdict(direction: str) -> str:
    """What an allowed packet does next: leaving its sender (egress) it goes on to the receiving
    side's policy; arriving at its receiver (ingress) it is accepted."""
    return "accept" if direction == "Ingress" else f"goto {TO_WORKLOAD}"


def compile_rule(rule: Rule, policy: Policy, b: SetRequests, info: str, direction: str = "Ingress") -> list[NftRule]:
    bodies, wanted = _rule_bodies(rule, policy.namespace or None, policy.name[:16] if rule.action == "Log" else "",
                                  allow_verdict(direction))
    b.wanted.update(wanted)
    return [NftRule(body, info) for body in bodies]


@functools.lru_cache(maxsize=16384)
def _rule_bodies(rule: Rule, namespace: str | None, log_name: str,
                 allow: str = "accept") -> tuple[tuple[str, ...], tuple]:
    """A rule's nft matches and verdicts, and the sets they name. They depend on the rule, the
    policy's namespace (the scope of its selectors), the direction's allow verdict and, for Log,
    the policy's name only, so policies written from one template share the work."""
    policy = _ScopeOf(namespace, log_name)
    b = SetRequests()
    out = [r.body for r in _compile_rule(rule, policy, b, allow)]
    return tuple(out), tuple(b.wanted.items())


@dataclass(frozen=True)
class _ScopeOf:
    """What compiling a rule reads of its policy."""
    namespace: str | None
    name: str


def _compile_rule(rule: Rule, policy, b: SetRequests, allow: str = "accept") -> list[NftRule]:
    info = ""
    out = []
    proto = protocol_number(rule.protocol) if rule.protocol is not None else None
    verdict = {"Allow": allow, "Deny": "drop", "Pass": allow, "Log": None}[rule.action]
    if rule.action == "Log":
        verdict = f'log prefix "podnet {policy.name[:16]} " level info'
    for fam in _families(rule):
        ipk = {4: "ip", 6: "ip6", None: None}[fam]
        base = []
        if proto is not None:
            base.append(f"meta l4proto {proto}")
        if rule.not_protocol is not None:
            base.append(f"meta l4proto != {protocol_number(rule.not_protocol)}")
        icmpk = "icmp" if rule.protocol == "ICMP" else "icmpv6"
        if rule.icmp:
            base.append(f"{icmpk} type {rule.icmp[0]}")
            if rule.icmp[1] is not None:
                base.append(f"{icmpk} code {rule.icmp[1]}")
        if rule.not_icmp:
            if rule.not_icmp[1] is None:
                base.append(f"{icmpk} type != {rule.not_icmp[0]}")
            else:
                base.append(f"{icmpk} type . {icmpk} code != {{ {rule.not_icmp[0]} . {rule.not_icmp[1]} }}")
        skip = False
        for side, e, addr in (("source", rule.source, "saddr"), ("destination", rule.destination, "daddr")):
            if fam is None:
                continue
            nets = [n for n in e.nets if addr_family(n) == fam]
            if e.nets and not nets:
                skip = True  # no network of this family: the rule cannot match it
            if nets:
                base.append(f"{ipk} {addr} {_nets_expr(nets, fam, b)}")
            not_nets = [n for n in e.not_nets if addr_family(n) == fam]
            if not_nets:
                base.append(f"{ipk} {addr} != {_nets_expr(not_nets, fam, b)}")
            scope = entity_scope(e, policy)
            if e.selector is not None or e.namespace_selector is not None:
                base.append(f"{ipk} {addr} @{b.selector_set(e.selector or 'all()', scope, fam)}")
            if e.not_selector is not None:
                base.append(f"{ipk} {addr} != @{b.selector_set(e.not_selector, scope, fam)}")
        if skip:
            continue
        src_variants = _port_variants(rule.source.ports)
        dst_variants = _port_variants(rule.destination.ports)
        for sv in src_variants:
            for dv in dst_variants:
                m = list(base)
                for side, variant, e, addr, th in (("source", sv, rule.source, "saddr", "sport"),
                                                   ("destination", dv, rule.destination, "daddr", "dport")):
                    if variant is not None:
                        if variant[0] == "num":
                            m.append(f"th {th} {_ports_expr(variant[1], b)}")
                        else:
                            s = b.named_port_set(e.selector or "all()", entity_scope(e, policy), variant[1], proto, fam)
                            m.append(f"{ipk} {addr} . meta l4proto . th {th} @{s}")
                    numeric_not = [p for p in e.not_ports if isinstance(p, PortRange)]
                    if numeric_not:
                        m.append(f"th {th} != {_ports_expr(numeric_not, b)}")
                    for name in (p for p in e.not_ports if isinstance(p, str)):
                        s = b.named_port_set(e.selector or "all()", entity_scope(e, policy), name, proto, fam)
                        m.append(f"{ipk} {addr} . meta l4proto . th {th} != @{s}")
                if fam is not None and not any(x.startswith((f"{ipk} ", "icmp")) for x in m):
                    m.insert(0, f"meta nfproto ipv{fam}")  # nothing else in it binds the family
                out.append(NftRule(" ".join(m + [verdict]), info))
    return out


def policy_chains(policy: Policy, b: SetRequests) -> list[NftChain]:
    chains = []
    for direction in policy.types:
        rules: list[NftRule] = []
        short = "ingress" if direction == "Ingress" else "egress"
        for i, rule in enumerate(policy.rules(direction)):
            info = f"{policy.display} {short}[{i}] {rule.action}"
            rules.extend(compile_rule(rule, policy, b, info, direction))
        chains.append(NftChain(policy_chain(policy, direction), tuple(rules)))
    return chains


def workload_chain(ep: PolicyEndpoint, pols: list[Policy], direction: str, config: FilterConfig) -> NftChain:
    rules = []
    if direction == "Egress":
        rules.append(NftRule(f"udp dport {config.vxlan_port} drop", "workloads may not send VXLAN"))
        rules.append(NftRule("meta l4proto 4 drop", "workloads may not send IPIP"))
        v4 = sorted(ip for ip in ep.ips if addr_family(ip) == 4)
        v6 = sorted(ip for ip in ep.ips if addr_family(ip) == 6)
        # Each address its own `!=` match, never an anonymous set: libnftables reads back the elements
        # of every anonymous set in the table on each transaction, so one per endpoint chain made a
        # pod's transaction cost grow with the node's pods (14 ms beside 1000).
        rules.append(NftRule(" ".join(f"ip saddr != {ip}" for ip in v4) + " drop" if v4 else "meta nfproto ipv4 drop",
                             f"anti-spoofing: {ep.key} sends from its own IPv4 address only"))
        # Link-local and unspecified sources are never forwarded; the host needs them for NDP and DAD.
        rules.append(NftRule(" ".join(f"ip6 saddr != {a}" for a in ["::", "fe80::/10"] + v6) + " drop",
                             f"anti-spoofing: {ep.key} sends from its own IPv6 address only"))
    for p in pols:
        rules.append(jump_rule(policy_chain(p, direction), p.display))
    if pols:
        rules.append(NftRule("drop", "end of tier default: a policy selected the endpoint and none allowed"))
    else:
        rules.append(NftRule(allow_verdict(direction),
                             f"no {direction.lower()} policy selects {ep.key}: the profile allows"))
    return NftChain(endpoint_chain(ep.interface, direction), tuple(rules))


_CT = (NftRule("ct state established,related accept", "established and related flows"),
       NftRule("ct state invalid drop", "invalid packets"))


def base_chains(config: FilterConfig) -> list[NftChain]:
    wl = f'"{WORKLOAD_PREFIX}*"'
    # One base chain: an established packet costs one chain and one rule. The sender's side first;
    # its Allow goes on to `to-workload`, so an accept means both sides allowed.
    forward = NftChain(FORWARD, _CT + (
        NftRule(f"iifname {wl} ip daddr . meta l4proto . th dport @{PROTECTED4} drop", "node protection"),
        NftRule(f"iifname {wl} ip6 daddr . meta l4proto . th dport @{PROTECTED6} drop", "node protection"),
        NftRule(f"iifname vmap @{FROM_MAP}", "dispatch to the sending workload's chain"),
        NftRule(f"iifname {wl} drop", "fail closed: a workload interface without a programmed endpoint"),
        NftRule(f"goto {TO_WORKLOAD}", "not from a workload: on to the receiving side"),
    ), "type filter hook forward priority filter; policy accept;")
    to_workload = NftChain(TO_WORKLOAD, (
        NftRule(f"oifname vmap @{TO_MAP}", "dispatch to the receiving workload's chain"),
        NftRule(f"oifname {wl} drop", "fail closed: a workload interface without a programmed endpoint"),
        NftRule("accept", "not to a workload"),
    ))
    to_host = [
        NftRule("icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } accept",
                "workloads resolve their gateway"),
        NftRule(f"meta l4proto . th dport @{PROTECTED_PORTS} drop", "node protection: pods may not reach these ports"),
        NftRule(f"ip daddr . meta l4proto . th dport @{PROTECTED4} drop", "node protection"),
        NftRule(f"ip6 daddr . meta l4proto . th dport @{PROTECTED6} drop", "node protection"),
    ]
    if config.endpoint_to_host_action == "Drop":
        to_host.append(NftRule("drop", "DefaultEndpointToHostAction Drop"))
    else:
        # The endpoint's own chain: anti-spoofing and its egress policy; its accept is the action Accept.
        to_host.append(NftRule(f"iifname vmap @{FROM_MAP}",
                               f"the workload's egress policy, then DefaultEndpointToHostAction "
                               f"{config.endpoint_to_host_action}"))
        to_host.append(NftRule("drop", "fail closed: a workload interface without a programmed endpoint"))
    wl_to_host = NftChain("wl-to-host", tuple(to_host))
    input_chain = NftChain("input", _CT + (
        NftRule(f"iifname {wl} goto wl-to-host", "workload to host"),
        NftRule(f"udp dport {config.vxlan_port} ip saddr != @{NODES4} drop", "VXLAN only from member nodes"),
        NftRule(f"udp dport {config.vxlan_port} ip6 saddr != @{NODES6} drop", "VXLAN only from member nodes"),
    ), "type filter hook input priority filter; policy accept;")
    return [forward, to_workload, input_chain, wl_to_host]


def base_chain_names() -> list[str]:
    """The chains every node's table has, whatever its endpoints and policies."""
    return [c.name for c in base_chains(FilterConfig())]


# Diff ----------------------------------------------------------------------------------------


def _obj(kind: str, name: str) -> str:
    return f"{kind} {FAMILY} {TABLE} {name}"


def diff_filter(old: FilterRuleset | None, new: FilterRuleset) -> list[str]:
    """nft commands (one transaction) from `old` to `new`; [] when nothing changed. Only changed sets,
    elements and chains are touched. `old` None: create the table from nothing, replacing any.
    When `new` was made from `old` (FilterRuleset.child), only the names it touched are compared."""
    if old is None:
        return [f"table {FAMILY} {TABLE} {{}}", f"delete table {FAMILY} {TABLE}", new.render()]
    if new is old:
        return []
    if new.parent is old:
        set_names, chain_names = sorted(new.touched_sets), sorted(new.touched_chains)
    else:
        set_names = list(new.sets) + [n for n in old.sets if n not in new.sets]
        chain_names = list(new.chains) + [n for n in old.chains if n not in new.chains]
    cmds: list[str] = []
    # 1. New sets, then element changes of every set (maps whose verdicts name new chains come later).
    for name in set_names:
        s = new.sets.get(name)
        if s is not None and name not in old.sets:
            cmds.append(f"add {s.declaration().replace(f'{s.name} ', f'{FAMILY} {TABLE} {s.name} ', 1)}")
    later: list[str] = []
    for name in set_names:
        s = new.sets.get(name)
        if s is None or old.sets.get(name) is s:
            continue
        before = old.sets[name].elements if name in old.sets else frozenset()
        removed, added = before - s.elements, s.elements - before
        target = later if s.is_map else cmds
        if removed:
            keys = sorted(e.split(" : ")[0] for e in removed) if s.is_map else sorted(removed)
            target.append(f"delete element {FAMILY} {TABLE} {name} {{ {', '.join(keys)} }}")
        if added:
            target.append(f"add element {FAMILY} {TABLE} {name} {{ {', '.join(sorted(added))} }}")
    # 2. Chains: new ones exist (empty) before any rule jumps to them; changed ones are refilled.
    for name in chain_names:
        c = new.chains.get(name)
        if c is not None and name not in old.chains:
            hook = f" {{ {c.hook} }}" if c.hook else ""
            cmds.append(f"add chain {FAMILY} {TABLE} {name}{hook}")
    for name in chain_names:
        c = new.chains.get(name)
        if c is None:
            continue
        prev = old.chains.get(name)
        if prev is c or (prev is not None and prev.hashes == c.hashes and prev.hook == c.hook):
            continue
        if prev is not None:
            cmds.append(f"flush chain {FAMILY} {TABLE} {name}")
        cmds.extend(f"add rule {FAMILY} {TABLE} {name} {r.text}" for r in c.rules)
    cmds.extend(later)
    # 3. What is gone: chains (emptied first: they may jump to each other), then sets.
    gone = [n for n in chain_names if n in old.chains and n not in new.chains]
    cmds.extend(f"flush chain {FAMILY} {TABLE} {n}" for n in gone)
    cmds.extend(f"delete chain {FAMILY} {TABLE} {n}" for n in gone)
    cmds.extend(f"delete {'map' if old.sets[n].is_map else 'set'} {FAMILY} {TABLE} {n}"
                for n in set_names if n in old.sets and n not in new.sets)
    return cmds


# For describe and trace ------------------------------------------------------------------


def effective_rules(ep: PolicyEndpoint, policies: Iterable[Policy]) -> dict[str, list[tuple[str, list[str]]]]:
    """Per direction: [(policy, [rule descriptions])] in evaluation order, and what happens after."""
    pols = ordered(policies)
    out = {}
    for direction in ("Ingress", "Egress"):
        selected = endpoint_policies(ep, pols, direction)
        out[direction] = [(p.display, [r.describe() for r in p.rules(direction)]) for p in selected]
    return out


# Evaluation of one packet, as the table does it: for trace ----------------------------------------


@dataclass(frozen=True)
class Packet:
    src_ip: str
    dst_ip: str
    protocol: int = 1  # ICMP echo, as ping sends it
    dport: int | None = None
    sport: int | None = None
    icmp_type: int = 8
    src: PolicyEndpoint | None = None  # the endpoints holding the addresses, when pods do
    dst: PolicyEndpoint | None = None


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    policy: str | None  # the policy that decided (None: no policy, or the end of the tier)
    rule: int | None  # its rule's index
    reason: str


def _entity_matches(e: EntityRule, policy: Policy, ip: str, ep: PolicyEndpoint | None, port: int | None,
                    protocol: int) -> bool:
    addr = ipaddress.ip_address(ip)
    if e.nets and not any(addr in ipaddress.ip_network(n) for n in e.nets if ipaddress.ip_network(n).version == addr.version):
        return False
    if any(addr in ipaddress.ip_network(n) for n in e.not_nets if ipaddress.ip_network(n).version == addr.version):
        return False
    scope = entity_scope(e, policy)
    if e.selector is not None or e.namespace_selector is not None:
        sel = selectors.parse(e.selector or "all()", "selector")
        if ep is None or not scope.admits(ep) or not sel.matches(ep.labels):
            return False
    if e.not_selector is not None and ep is not None and scope.admits(ep):
        if selectors.parse(e.not_selector, "notSelector").matches(ep.labels):
            return False

    def port_in(ports) -> bool:
        for p in ports:
            if isinstance(p, PortRange) and port is not None and p.first <= port <= p.last:
                return True
            if isinstance(p, str) and ep is not None and any(
                    cp.name == p and protocol_number(cp.protocol) == protocol and cp.port == port for cp in ep.ports):
                return True
        return False

    if e.ports and not port_in(e.ports):
        return False
    if e.not_ports and port_in(e.not_ports):
        return False
    return True


def rule_matches(rule: Rule, policy: Policy, pkt: Packet) -> bool:
    version = ipaddress.ip_address(pkt.src_ip).version
    if rule.ip_version and rule.ip_version != version:
        return False
    if rule.protocol is not None and protocol_number(rule.protocol) != pkt.protocol:
        return False
    if rule.not_protocol is not None and protocol_number(rule.not_protocol) == pkt.protocol:
        return False
    if rule.icmp and (rule.icmp[0] != pkt.icmp_type or rule.icmp[1] not in (None, 0)):
        return False
    if rule.not_icmp and rule.not_icmp[0] == pkt.icmp_type and rule.not_icmp[1] in (None, 0):
        return False
    return (_entity_matches(rule.source, policy, pkt.src_ip, pkt.src, pkt.sport, pkt.protocol)
            and _entity_matches(rule.destination, policy, pkt.dst_ip, pkt.dst, pkt.dport, pkt.protocol))


def evaluate(pkt: Packet, direction: str, policies: Iterable[Policy]) -> Verdict:
    """What the endpoint's chain decides for `pkt`: egress of `pkt.src`, or ingress of `pkt.dst`."""
    ep = pkt.src if direction == "Egress" else pkt.dst
    if ep is None:
        return Verdict(True, None, None, "no workload endpoint: no policy applies")
    selected = endpoint_policies(ep, ordered(policies), direction)
    for p in selected:
        for i, rule in enumerate(p.rules(direction)):
            if rule.action == "Log" or not rule_matches(rule, p, pkt):
                continue
            short = "ingress" if direction == "Ingress" else "egress"
            if rule.action == "Allow":
                return Verdict(True, p.display, i, f"allowed by {p.display} {short}[{i}]: {rule.describe()}")
            if rule.action == "Deny":
                return Verdict(False, p.display, i, f"denied by {p.display} {short}[{i}]: {rule.describe()}")
            return Verdict(True, p.display, i, f"passed by {p.display} {short}[{i}] to the namespace profile, "
                                                "which allows")
    if selected:
        names = ", ".join(p.display for p in selected)
        return Verdict(False, None, None, f"denied at the end of tier default: selected by {names}, none allowed it")
    return Verdict(True, None, None, f"no {direction.lower()} policy selects {ep.key}: the namespace profile allows")
