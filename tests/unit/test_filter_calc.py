"""The incremental filter calculation without root: after any sequence of changes, the table it keeps
is the one calculated from nothing for the same state, its diff names exactly what changed, and the
work of one change stays with that change."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from podnet.calc import filter_calc
from podnet.calc.filter_calc import EndpointJoin, FilterCalculator, compute_filter
from podnet.calc.policy import FROM_MAP, FilterConfig, diff_filter, policy_endpoint
from podnet.model import WorkloadEndpoint
from podnet.model.kube import ContainerPort, Namespace, Pod
from podnet.model.policy import parse_policy

NAMESPACES = ("x", "y", "z")
APPS = ("a", "b", "c")


def knp(name, ns, spec):
    return parse_policy({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                         "metadata": {"name": name, "namespace": ns}, "spec": spec})


def calico(name, spec, ns=None):
    kind = "NetworkPolicy" if ns else "GlobalNetworkPolicy"
    meta = {"name": name, **({"namespace": ns} if ns else {})}
    return parse_policy({"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": meta, "spec": spec})


# Policies from templates: selectors of endpoints and namespaces, named ports, nets, Pass, Log, order.
POLICIES = [
    knp("web", "x", {"podSelector": {"matchLabels": {"app": "a"}},
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "b"}}}], "ports": [{"port": "http"}]}]}),
    knp("web", "x", {"podSelector": {"matchLabels": {"app": "b"}}, "policyTypes": ["Ingress", "Egress"],
                     "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"team": "t1"}}}]}]}),
    knp("deny", "y", {"podSelector": {}, "policyTypes": ["Ingress"]}),
    knp("ns", "z", {"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["a", "c"]}]},
                    "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "c"}}}]}],
                    "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.9.0.0/16"]}}]}]}),
    calico("g1", {"order": 10, "selector": "app == 'a'", "types": ["Ingress"],
                  "ingress": [{"action": "Deny", "source": {"selector": "app == 'c'"}},
                              {"action": "Pass", "protocol": "TCP", "destination": {"ports": ["http", 81]}}]}),
    calico("g1", {"order": 5, "selector": "all()", "namespaceSelector": "team == 't1'", "types": ["Egress"],
                  "egress": [{"action": "Log"}, {"action": "Allow", "destination": {"notSelector": "app == 'b'"}}]}),
    calico("n1", {"order": 1, "selector": "has(app)", "types": ["Ingress", "Egress"],
                  "ingress": [{"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8}}],
                  "egress": [{"action": "Allow", "destination": {"nets": ["fd00::/8"]}}]}, ns="x"),
]

NODE_ADDRESSES = (("172.31.0.11/24",), ("172.31.0.12/24", "fd00:1::12/64"), ("172.31.0.13",), ())


def make_endpoint(node: str, ns: str, pod: str, iface: int, app: str | None, team: str | None, ip: int,
                  port: bool, v6: bool) -> object:
    ips = (f"10.244.0.{ip}/32",) + ((f"fd00::{ip:x}/128",) if v6 else ())
    wep = WorkloadEndpoint(node=node, container_id=f"c{pod}", interface="eth0", host_interface=f"cali{iface:011d}",
                           ips=ips, mac="", pod_namespace=ns, pod_name=pod)
    labels = {"app": app} if app else {}
    ports = (ContainerPort("http", 8080),) if port else ()
    return policy_endpoint(wep, Pod(ns, pod, labels, ports), Namespace(ns, {"team": team} if team else {}))


endpoints = st.builds(make_endpoint, st.sampled_from(("n1", "n1", "n2")), st.sampled_from(NAMESPACES),
                      st.sampled_from(("p1", "p2", "p3")), st.integers(0, 5), st.sampled_from(APPS + (None,)),
                      st.sampled_from(("t1", "t2", None)), st.integers(1, 6), st.booleans(), st.booleans())
endpoint_change = st.tuples(st.just("ep"), st.integers(0, 7), st.one_of(st.none(), endpoints, endpoints))
changes = st.lists(st.one_of(
    endpoint_change, endpoint_change, endpoint_change,
    # Keyed as the datastore keys them: one record per policy name (a name's two variants replace each other).
    st.sampled_from(POLICIES).flatmap(lambda p: st.tuples(st.just("policy"), st.just(p.key), st.sampled_from((p, None)))),
    st.tuples(st.just("node"), st.integers(0, 2), st.sampled_from(NODE_ADDRESSES)),
    st.tuples(st.just("config"), st.just(0), st.sampled_from(("Accept", "Drop", "Return"))),
), max_size=8)


def same_table(a, b) -> None:
    assert a.sets == b.sets
    assert a.chains == b.chains
    assert a.endpoint_policies == b.endpoint_policies


@settings(max_examples=400, deadline=None)
@given(st.lists(changes, min_size=2, max_size=8))
def test_any_sequence_of_changes_keeps_the_table_calculated_from_nothing(batches):
    calc = FilterCalculator("n1")
    state = {"ep": {}, "policy": {}, "node": {}}
    config = FilterConfig()
    previous = calc.ruleset
    for batch in batches:
        update = {"ep": {}, "policy": {}, "node": {}}
        for kind, key, value in batch:
            if kind == "config":
                config = dataclasses.replace(config, endpoint_to_host_action=value)
                continue
            update[kind][key] = value
            if value is None or value == ():
                state[kind].pop(key, None)
            else:
                state[kind][key] = value
        rs = calc.update(endpoints=update["ep"], policies=update["policy"], node_addresses=update["node"],
                         config=config)
        fresh = compute_filter("n1", state["ep"].values(), state["policy"].values(),
                               [a for addrs in state["node"].values() for a in addrs], config)
        same_table(rs, fresh)
        # The diff of the change names exactly what the diff of the whole tables finds.
        whole = dataclasses.replace(rs, parent=None)
        assert sorted(diff_filter(previous, rs)) == sorted(diff_filter(previous, whole))
        previous = rs


def test_an_endpoint_added_touches_its_own_chains_and_map_elements_only():
    calc = FilterCalculator("n1")
    many = {i: make_endpoint("n1" if i % 2 else "n2", NAMESPACES[i % 3], f"p{i}", i, APPS[i % 3], "t1", i % 250 + 1,
                             True, False) for i in range(300)}
    before = calc.update(endpoints=many, policies=dict(enumerate(POLICIES)), node_addresses={0: ("172.31.0.11",)})
    new = make_endpoint("n1", "x", "new", 999, "a", "t1", 251, True, False)
    after = calc.update(endpoints={"new": new})
    assert after.parent is before
    assert after.touched_chains == {"tw-cali00000000999", "fw-cali00000000999"}
    # Its map elements, and the selector sets of the policies whose rules match it (app a in x, all()).
    assert FROM_MAP in after.touched_sets
    assert all(name in (FROM_MAP, "to-wl") or name[0] in "sn" for name in after.touched_sets)
    cmds = diff_filter(before, after)
    assert sum(c.startswith("add chain") for c in cmds) == 2
    assert not any("flush" in c or "delete" in c for c in cmds)


def test_nothing_changed_is_the_same_ruleset_and_no_commands():
    calc = FilterCalculator("n1")
    rs = calc.update(endpoints={1: make_endpoint("n1", "x", "p", 1, "a", None, 1, False, False)},
                     policies=dict(enumerate(POLICIES)))
    again = calc.update(endpoints={1: make_endpoint("n1", "x", "p", 1, "a", None, 1, False, False)})
    assert again is rs and diff_filter(rs, again) == []


def test_a_policy_change_compiles_that_policy_only(monkeypatch):
    calc = FilterCalculator("n1")
    eps = {i: make_endpoint("n1", "x", f"p{i}", i, APPS[i % 3], "t1", i + 1, True, False) for i in range(30)}
    calc.update(endpoints=eps, policies=dict(enumerate(POLICIES)))
    compiled = []
    real = filter_calc.policy_chains
    monkeypatch.setattr(filter_calc, "policy_chains", lambda p, b: compiled.append(p.key) or real(p, b))
    changed = knp("web", "x", {"podSelector": {"matchLabels": {"app": "a"}},
                               "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "c"}}}]}]})
    calc.update(policies={0: changed})
    assert compiled == [changed.key]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("wep"), st.integers(0, 4), st.one_of(st.none(), st.tuples(st.sampled_from(NAMESPACES + ("",)),
                                                                                  st.sampled_from(("p1", "p2"))))),
    st.tuples(st.just("pod"), st.sampled_from(NAMESPACES + ("default",)), st.sampled_from(("p1", "p2")),
              st.sampled_from(APPS + (None,))),
    st.tuples(st.just("ns"), st.sampled_from(NAMESPACES + ("default",)), st.sampled_from(("t1", "t2", None))),
), max_size=20))
def test_the_join_follows_endpoints_pods_and_namespaces_in_any_order(steps):
    join = EndpointJoin()
    weps, pods, namespaces, current = {}, {}, {}, {}
    for kind, *value in steps:
        if kind == "wep":  # records keyed as the datastore keys them; None: deleted
            key, where = value
            w = None if where is None else WorkloadEndpoint(
                node="n1", container_id=f"c{key}", interface="eth0", host_interface=f"cali{key}", ips=("10.0.0.1/32",),
                mac="", pod_namespace=where[0], pod_name=where[1])
            weps[key] = w
            current.update(join.update(endpoints={key: w}))
        elif kind == "pod":
            ns, name, app = value
            pod = None if app is None else Pod(ns, name, {"app": app}, ())
            pods[f"{ns}/{name}"] = pod
            current.update(join.update(pods={f"/pods/{ns}/{name}": pod}))
        else:
            name, team = value
            n = None if team is None else Namespace(name, {"team": team})
            namespaces[name] = n
            current.update(join.update(namespaces={f"/namespaces/{name}": n}))
        # What the join says now equals joining the whole state from nothing.
        for k, w in weps.items():
            if w is None:
                assert current.get(k) is None
                continue
            ns = w.pod_namespace or "default"
            assert current[k] == policy_endpoint(w, pods.get(f"{ns}/{w.pod_name}"), namespaces.get(ns))


def test_an_endpoint_that_comes_later_joins_the_sets_of_the_rules_that_name_it():
    calc = FilterCalculator("n1")
    calc.update(endpoints={0: make_endpoint("n1", "x", "p1", 1, "a", None, 1, True, False)}, policies={0: POLICIES[0]})
    rs = calc.update(endpoints={1: make_endpoint("n2", "x", "p2", 2, "b", None, 2, True, False)})
    sources = [s for name, s in rs.sets.items() if name.startswith("s4-")]
    assert [s.elements for s in sources] == [frozenset({"10.244.0.2"})]
    rs = calc.update(endpoints={1: None})
    assert [s.elements for name, s in rs.sets.items() if name.startswith("s4-")] == [frozenset()]
