"""The node's filter table, kept up to date change by change. Pure: no I/O.

`FilterCalculator.update` takes what changed (policy endpoints of any node, policies, the nodes'
underlay addresses, the configuration) and returns the desired `FilterRuleset` (calc/policy.py has
what the table means). The work is in proportion to the change, as Felix's calculation graph does it:

* an endpoint that comes, goes or changes costs its own chains and map elements (when it is local)
  and one selector test per set the programmed policies name, not a pass over the cluster;
* a policy change re-selects the node's own endpoints (answers are kept per label signature, so
  only the changed policy's selector runs) and compiles only that policy;
* the returned ruleset shares every unchanged chain and set with the previous one and names what it
  changed, so `diff_filter` compares those names only.

`compute_filter` is the same calculation from nothing: one update with everything.
`EndpointJoin` turns workload endpoint, pod and namespace records into the policy endpoints that
changed with them.
"""

from __future__ import annotations

import ipaddress
import itertools
from typing import Hashable, Iterable, Mapping

from podnet.calc.policy import (FROM_MAP, NODES4, NODES6, PROTECTED4, PROTECTED6, PROTECTED_PORTS, TO_MAP,
                                NFT_NAME, FilterConfig, FilterRuleset, NftChain, NftSet, PolicyEndpoint,
                                addr_family, base_chains, SetRequests, workload_chain, policy_chains, endpoint_chain,
                                is_constant, ordered, policy_endpoint, policy_selects, set_elements,
                                set_flags, set_matches, set_type)
from podnet.model.policy import Policy

_DIRECTIONS = ("Ingress", "Egress")


def signature(ep: PolicyEndpoint) -> tuple:
    """What selection by a policy can depend on: namespace and both label sets."""
    return (ep.namespace, tuple(sorted(ep.labels.items())), tuple(sorted(ep.namespace_labels.items())))


class _Selection:
    """Which policies (in order) select endpoints of a signature; each policy's answer per signature is
    kept while the policy object lives, so a policy change evaluates that policy's selector only."""

    def __init__(self):
        self._policies: list[Policy] = []
        self._answers: dict[tuple, dict[int, bool]] = {}  # signature -> {id(policy): selects}
        self._alive: dict[int, Policy] = {}  # keeps answered policies alive: an id is never reused
        self._lists: dict[tuple, list[Policy]] = {}  # signature -> selecting policies (current order)

    def set_policies(self, policies: list[Policy]) -> None:
        alive = {id(p): p for p in policies}
        dead = [k for k, p in self._alive.items() if alive.get(k) is not p]
        if dead:
            for answers in self._answers.values():
                for k in dead:
                    answers.pop(k, None)
        self._alive, self._policies, self._lists = alive, policies, {}

    def selecting(self, ep: PolicyEndpoint, sig: tuple) -> list[Policy]:
        hit = self._lists.get(sig)
        if hit is not None:
            return hit
        known = self._answers.setdefault(sig, {})
        out = []
        for p in self._policies:
            if p.namespace and p.namespace != ep.namespace:
                continue  # a namespaced policy applies to its own namespace only
            answer = known.get(id(p))
            if answer is None:
                answer = known[id(p)] = policy_selects(p, ep)
            if answer:
                out.append(p)
        self._lists[sig] = out
        return out

    def forget(self, sig: tuple) -> None:
        self._answers.pop(sig, None)
        self._lists.pop(sig, None)


class FilterCalculator:
    """The desired `inet podnet` table of one node, updated by changes (see the module's docstring)."""

    def __init__(self, node: str, config: FilterConfig = FilterConfig()):
        self.node = node
        self.config = config
        self._eps: dict[Hashable, PolicyEndpoint] = {}  # every node's endpoints, by the caller's key
        self._sigs: dict[Hashable, tuple] = {}
        self._sig_count: dict[tuple, int] = {}
        self._local: dict[str, set] = {}  # interface -> keys of this node's endpoints naming it
        self._policies: dict[Hashable, Policy] = {}
        self._selection = _Selection()
        self._iface_uses: dict[str, frozenset] = {}  # interface -> keys of the policies its chains jump to
        self._ep_chains: dict[tuple, tuple] = {}  # (interface, direction) -> (what it depends on, chain)
        self._users: dict[str, set] = {}  # policy key -> interfaces using it
        self._programmed: dict[str, tuple] = {}  # policy key -> (policy, chain names, set names)
        self._set_specs: dict[str, tuple] = {}
        self._set_users: dict[str, set] = {}  # set name -> policy keys naming it
        self._set_members: dict[str, dict] = {}  # set name -> {endpoint key: its elements}
        self._nodes: dict[Hashable, tuple] = {}
        self._node_counts: dict[str, int] = {}
        self._by_key: dict[str, Policy] = {}  # policy key -> policy (the last of a duplicated key wins)
        # Of the update in progress: sets made from every endpoint in it, and whether the per-interface
        # policy lists (for describe and trace) changed.
        self._fresh_sets: set[str] = set()
        self._endpoint_policies_changed = False
        rs = FilterRuleset()
        for name, typ in ((FROM_MAP, "ifname : verdict"), (TO_MAP, "ifname : verdict")):
            rs.sets[name] = NftSet(name, typ, frozenset(), is_map=True)
        rs.sets[NODES4] = NftSet(NODES4, "ipv4_addr", frozenset())
        rs.sets[NODES6] = NftSet(NODES6, "ipv6_addr", frozenset())
        self._rs = rs
        self._apply_config(rs)

    @property
    def ruleset(self) -> FilterRuleset:
        return self._rs

    # The one entry point ------------------------------------------------------------------

    def update(self, endpoints: Mapping[Hashable, PolicyEndpoint | None] | None = None,
               policies: Mapping[Hashable, Policy | None] | None = None,
               node_addresses: Mapping[Hashable, Iterable[str] | None] | None = None,
               config: FilterConfig | None = None) -> FilterRuleset:
        """Apply the changes (a value None: the key is gone) and return the new desired ruleset, a
        child of the previous one (the same object when nothing changed)."""
        rs = self._rs.child()
        self._fresh_sets = set()
        self._endpoint_policies_changed = False
        ifaces: set[str] = set()
        if config is not None and config != self.config:
            self.config = config
            self._apply_config(rs)
            ifaces.update(self._local)
        changed_eps = self._take_endpoints(endpoints or {}, ifaces)
        touched_policies: set[str] = set()
        if policies:
            touched_policies = self._take_policies(policies)
            ifaces.update(self._local)
        for iface in ifaces:
            touched_policies |= self._program_interface(rs, iface)
        for key in touched_policies:
            self._program_policy(rs, key)
        self._update_set_members(rs, changed_eps)
        if node_addresses:
            self._take_nodes(rs, node_addresses)
        if not rs.touched_sets and not rs.touched_chains and not self._endpoint_policies_changed:
            return self._rs
        self._rs = rs
        return rs

    # Endpoints ----------------------------------------------------------------------------

    def _is_local(self, ep: PolicyEndpoint) -> bool:
        # No interface nft can name: a cali* one then passes nothing (fail closed).
        return ep.node == self.node and bool(NFT_NAME.match(ep.interface or ""))

    def _take_endpoints(self, changes: Mapping, ifaces: set) -> list:
        changed = []
        for key, ep in changes.items():
            old = self._eps.get(key)
            if old == ep:
                continue
            if old is not None:
                self._drop_sig(key)
                if self._is_local(old):
                    owners = self._local.get(old.interface)
                    owners.discard(key)
                    if not owners:
                        del self._local[old.interface]
                    ifaces.add(old.interface)
                del self._eps[key]
            if ep is not None:
                self._eps[key] = ep
                sig = self._sigs[key] = signature(ep)
                self._sig_count[sig] = self._sig_count.get(sig, 0) + 1
                if self._is_local(ep):
                    self._local.setdefault(ep.interface, set()).add(key)
                    ifaces.add(ep.interface)
            changed.append(key)
        return changed

    def _drop_sig(self, key) -> None:
        sig = self._sigs.pop(key)
        n = self._sig_count[sig] - 1
        if n:
            self._sig_count[sig] = n
        else:
            del self._sig_count[sig]
            self._selection.forget(sig)  # labels come and go: answers must not pile up

    def _program_interface(self, rs: FilterRuleset, iface: str) -> set[str]:
        """The interface's two chains, map elements and policy uses; returns the policy keys whose use
        by this interface changed."""
        owners = self._local.get(iface)
        before = self._iface_uses.get(iface, frozenset())
        if not owners:
            for direction in _DIRECTIONS:
                rs.drop_chain(endpoint_chain(iface, direction))
                self._ep_chains.pop((iface, direction), None)
            self._map_element(rs, iface, present=False)
            if rs.endpoint_policies.pop(iface, None) is not None:
                self._endpoint_policies_changed = True
            self._iface_uses.pop(iface, None)
            for k in before:
                self._users.get(k, set()).discard(iface)
            return set(before)
        # Two endpoints naming one interface: the last in this order wins (endpoints equal in it make
        # the same chains).
        winner = max(owners, key=lambda k: (self._eps[k].node, self._eps[k].key, self._eps[k].ips, self._sigs[k]))
        ep = self._eps[winner]
        selecting = self._selection.selecting(ep, self._sigs[winner])
        uses: set[str] = set()
        per_dir = {}
        for direction in _DIRECTIONS:
            selected = [p for p in selecting if direction in p.types]
            per_dir[direction] = [p.display for p in selected]
            uses.update(p.key for p in selected)
            rs.put_chain(self._endpoint_chain(ep, selected, direction))
        if rs.endpoint_policies.get(iface) != per_dir:
            rs.endpoint_policies[iface] = per_dir
            self._endpoint_policies_changed = True
        self._map_element(rs, iface, present=True)
        now = frozenset(uses)
        self._iface_uses[iface] = now
        for k in before - now:
            self._users.get(k, set()).discard(iface)
        for k in now - before:
            self._users.setdefault(k, set()).add(iface)
        return set(before ^ now)

    def _endpoint_chain(self, ep: PolicyEndpoint, selected: list[Policy], direction: str) -> NftChain:
        """The same chain object as last time when nothing it depends on changed."""
        depends = (ep.key, ep.ips, tuple(p.key for p in selected), self.config.vxlan_port)
        hit = self._ep_chains.get((ep.interface, direction))
        if hit is not None and hit[0] == depends:
            return hit[1]
        chain = workload_chain(ep, selected, direction, self.config)
        self._ep_chains[(ep.interface, direction)] = (depends, chain)
        return chain

    def _map_element(self, rs: FilterRuleset, iface: str, present: bool) -> None:
        for name, direction in ((FROM_MAP, "Egress"), (TO_MAP, "Ingress")):
            element = f'"{iface}" : goto {endpoint_chain(iface, direction)}'
            s = rs.sets[name]
            if (element in s.elements) != present:
                elements = s.elements | {element} if present else s.elements - {element}
                rs.put_set(NftSet(name, s.type, elements, s.flags, s.is_map))

    # Policies -----------------------------------------------------------------------------

    def _take_policies(self, changes: Mapping) -> set[str]:
        touched = set()
        for key, p in changes.items():
            old = self._policies.get(key)
            if old is p:
                continue
            if old is not None:
                touched.add(old.key)
                del self._policies[key]
            if p is not None:
                self._policies[key] = p
                touched.add(p.key)
        self._by_key = {p.key: p for p in self._policies.values()}
        self._selection.set_policies(ordered(self._by_key.values()))
        return touched

    def _program_policy(self, rs: FilterRuleset, key: str) -> None:
        """The policy's chains and the sets they name, present while some local interface uses it."""
        p = self._by_key.get(key)
        programmed = self._programmed.get(key)
        wanted = p is not None and bool(self._users.get(key))
        if programmed is not None and wanted and programmed[0] is p:
            return
        old_chains, old_sets = (programmed[1], programmed[2]) if programmed else ((), ())
        chains, sets = [], {}
        if wanted:
            b = SetRequests()
            chains = policy_chains(p, b)
            sets = b.wanted
            for c in chains:
                rs.put_chain(c)
            self._programmed[key] = (p, tuple(c.name for c in chains), tuple(sets))
        else:
            self._programmed.pop(key, None)
            if not self._users.get(key):
                self._users.pop(key, None)
        names = {c.name for c in chains}
        for name in old_chains:
            if name not in names:
                rs.drop_chain(name)
        for name, spec in sets.items():
            self._use_set(rs, name, spec, key)
        for name in old_sets:
            if name not in sets:
                self._release_set(rs, name, key)

    def _use_set(self, rs: FilterRuleset, name: str, spec: tuple, user: str) -> None:
        users = self._set_users.setdefault(name, set())
        users.add(user)
        if is_constant(spec):
            if len(users) == 1:  # its elements are in its name's request: no endpoint changes them
                rs.put_set(NftSet(name, set_type(spec), frozenset(spec[2]), set_flags(spec)))
            return
        if name in self._set_specs:
            return
        # A set named for the first time: its members from every endpoint of the cluster.
        self._set_specs[name] = spec
        self._fresh_sets.add(name)
        matches: dict[tuple, bool] = {}
        members = {}
        for k, ep in self._eps.items():
            sig = self._sigs[k]
            m = matches.get(sig)
            if m is None:
                m = matches[sig] = set_matches(spec, ep)
            if m:
                els = set_elements(spec, ep)
                if els:
                    members[k] = els
        self._set_members[name] = members
        rs.put_set(NftSet(name, set_type(spec), frozenset(itertools.chain.from_iterable(members.values()))))

    def _release_set(self, rs: FilterRuleset, name: str, user: str) -> None:
        users = self._set_users.get(name)
        if users is None:
            return
        users.discard(user)
        if not users:
            del self._set_users[name]
            if self._set_specs.pop(name, None) is not None:
                del self._set_members[name]
            rs.drop_set(name)

    def _update_set_members(self, rs: FilterRuleset, changed: list) -> None:
        if not changed or not self._set_specs:
            return
        dirty = set()
        for name, spec in self._set_specs.items():
            if name in self._fresh_sets:
                continue  # made from every endpoint in this update already
            members = self._set_members[name]
            for k in changed:
                ep = self._eps.get(k)
                els = set_elements(spec, ep) if ep is not None and set_matches(spec, ep) else frozenset()
                if members.get(k, frozenset()) != els:
                    if els:
                        members[k] = els
                    else:
                        members.pop(k, None)
                    dirty.add(name)
        for name in dirty:
            spec = self._set_specs[name]
            elements = frozenset(itertools.chain.from_iterable(self._set_members[name].values()))
            rs.put_set(NftSet(name, set_type(spec), elements))

    # Nodes and configuration --------------------------------------------------------------

    def _take_nodes(self, rs: FilterRuleset, changes: Mapping) -> None:
        dirty = False
        for key, addrs in changes.items():
            new = tuple(_bare(a) for a in addrs or () if a)
            old = self._nodes.get(key, ())
            if new == old:
                continue
            for a in old:
                n = self._node_counts[a] - 1
                if n:
                    self._node_counts[a] = n
                else:
                    del self._node_counts[a]
            for a in new:
                self._node_counts[a] = self._node_counts.get(a, 0) + 1
            if new:
                self._nodes[key] = new
            else:
                self._nodes.pop(key, None)
            dirty = True
        if dirty:
            rs.put_set(NftSet(NODES4, "ipv4_addr", frozenset(a for a in self._node_counts if addr_family(a) == 4)))
            rs.put_set(NftSet(NODES6, "ipv6_addr", frozenset(a for a in self._node_counts if addr_family(a) == 6)))

    def _apply_config(self, rs: FilterRuleset) -> None:
        for c in base_chains(self.config):
            rs.put_chain(c)
        p4, p6, ports = set(), set(), set()
        for addr, proto, port in self.config.protected:
            if addr is None:
                ports.add(f"{proto} . {port}")
            elif addr_family(addr) == 4:
                p4.add(f"{addr} . {proto} . {port}")
            else:
                p6.add(f"{ipaddress.ip_address(addr)} . {proto} . {port}")
        rs.put_set(NftSet(PROTECTED4, "ipv4_addr . inet_proto . inet_service", frozenset(p4)))
        rs.put_set(NftSet(PROTECTED6, "ipv6_addr . inet_proto . inet_service", frozenset(p6)))
        rs.put_set(NftSet(PROTECTED_PORTS, "inet_proto . inet_service", frozenset(ports)))


def _bare(address: str) -> str:
    a = address.split("/")[0]
    return str(ipaddress.ip_address(a)) if ":" in a else a


def compute_filter(node: str, endpoints: Iterable[PolicyEndpoint], policies: Iterable[Policy],
                   node_addresses: Iterable[str], config: FilterConfig = FilterConfig()) -> FilterRuleset:
    """The table of `node` from nothing: its endpoints' chains, the policies they use, the sets
    those name, the node allow-list and the protections."""
    calc = FilterCalculator(node, config)
    rs = calc.update(endpoints=dict(enumerate(endpoints)), policies=dict(enumerate(policies)),
                     node_addresses={0: tuple(node_addresses)})
    rs.parent = None
    return rs


class EndpointJoin:
    """Workload endpoint records joined with their pod (labels, named ports) and namespace (labels), as
    Calico's kube-controllers would sync them; `update` returns the policy endpoints that changed."""

    def __init__(self):
        self._weps: dict[Hashable, object] = {}
        self._pods: dict[str, object] = {}  # "namespace/name" -> Pod
        self._pod_names: dict[Hashable, str] = {}  # record key -> "namespace/name"
        self._namespaces: dict[str, object] = {}
        self._namespace_names: dict[Hashable, str] = {}
        self._by_pod: dict[str, set] = {}
        self._by_namespace: dict[str, set] = {}

    @staticmethod
    def _where(wep) -> tuple[str, str]:
        ns = wep.pod_namespace or "default"
        return ns, f"{ns}/{wep.pod_name}"

    def update(self, endpoints: Mapping | None = None, pods: Mapping | None = None,
               namespaces: Mapping | None = None) -> dict[Hashable, PolicyEndpoint | None]:
        affected: set = set()
        for key, pod in (pods or {}).items():
            for name in {self._pod_names.pop(key, None), pod and f"{pod.namespace}/{pod.name}"} - {None}:
                affected |= self._by_pod.get(name, set())
                self._pods.pop(name, None)
            if pod is not None:
                name = self._pod_names[key] = f"{pod.namespace}/{pod.name}"
                self._pods[name] = pod
        for key, ns in (namespaces or {}).items():
            for name in {self._namespace_names.pop(key, None), ns and ns.name} - {None}:
                affected |= self._by_namespace.get(name, set())
                self._namespaces.pop(name, None)
            if ns is not None:
                self._namespace_names[key] = ns.name
                self._namespaces[ns.name] = ns
        for key, wep in (endpoints or {}).items():
            old = self._weps.pop(key, None)
            if old is not None:
                ns, pod = self._where(old)
                self._by_pod[pod].discard(key)
                self._by_namespace[ns].discard(key)
                if not self._by_pod[pod]:
                    del self._by_pod[pod]
                if not self._by_namespace[ns]:
                    del self._by_namespace[ns]
            if wep is not None:
                self._weps[key] = wep
                ns, pod = self._where(wep)
                self._by_pod.setdefault(pod, set()).add(key)
                self._by_namespace.setdefault(ns, set()).add(key)
            affected.add(key)
        out = {}
        for key in affected:
            wep = self._weps.get(key)
            if wep is None:
                out[key] = None
                continue
            ns, pod = self._where(wep)
            out[key] = policy_endpoint(wep, self._pods.get(pod), self._namespaces.get(ns))
        return out
