"""Network policy without root: the model (validation naming the field, Kubernetes conversion), which
policies select an endpoint and in what order, the nftables ruleset and its incremental diff."""

from __future__ import annotations

import pytest

from podnet.calc.filter_calc import FilterCalculator, compute_filter
from podnet.calc.policy import (FROM_MAP, NODES4, TO_MAP, FilterConfig, diff_filter, endpoint_chain, endpoint_policies,
                                ordered, policy_chain, policy_endpoint)
from podnet.model import ValidationError, WorkloadEndpoint
from podnet.model.kube import ContainerPort, Namespace, Pod, parse_port_flag
from podnet.model.policy import PortRange, parse_policy


def knp(name, ns, spec):
    return parse_policy({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                         "metadata": {"name": name, "namespace": ns}, "spec": spec})


def cnp(name, spec, ns="default", kind="NetworkPolicy"):
    meta = {"name": name, **({"namespace": ns} if kind == "NetworkPolicy" else {})}
    return parse_policy({"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": meta, "spec": spec})


def endpoint(node, ns, pod, n, labels=None, ports=(), ns_labels=None, ips=None):
    wep = WorkloadEndpoint(node=node, container_id=f"c{n}", interface="eth0", host_interface=f"cali{n:011d}",
                           ips=ips or (f"10.244.0.{n}/32",), mac="", pod_namespace=ns, pod_name=pod)
    return policy_endpoint(wep, Pod(ns, pod, labels or {}, tuple(ports)), Namespace(ns, ns_labels or {}))


# Model: Kubernetes NetworkPolicy -------------------------------------------------------------


def test_k8s_policy_becomes_knp_default_with_order_1000_and_allow_rules():
    p = knp("web", "x", {"podSelector": {"matchLabels": {"app": "web"}},
                         "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "db"}}}],
                                      "ports": [{"port": 80}, {"port": 81, "protocol": "UDP"}]}]})
    assert (p.name, p.namespace, p.order, p.types) == ("knp.default.web", "x", 1000.0, ("Ingress",))
    assert [r.protocol for r in p.ingress] == ["TCP", "UDP"]  # one rule per protocol
    assert all(r.action == "Allow" for r in p.ingress)
    assert p.ingress[0].destination.ports == (PortRange(80, 80),)
    assert "app == 'web'" in p.selector and "app == 'db'" in p.ingress[0].source.selector


def test_k8s_peer_with_both_selectors_is_and_two_peers_are_or():
    both = knp("p", "x", {"podSelector": {}, "ingress": [{"from": [
        {"podSelector": {"matchLabels": {"pod": "a"}}, "namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]})
    assert len(both.ingress) == 1
    src = both.ingress[0].source
    assert "pod == 'a'" in src.selector and src.namespace_selector == "ns == 'y'"
    two = knp("p", "x", {"podSelector": {}, "ingress": [{"from": [
        {"podSelector": {"matchLabels": {"pod": "a"}}}, {"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]})
    assert len(two.ingress) == 2
    assert two.ingress[0].source.namespace_selector is None  # the policy's own namespace
    assert two.ingress[1].source.namespace_selector == "ns == 'y'"


def test_k8s_policy_types_default_and_empty_rules_deny():
    assert knp("p", "x", {"podSelector": {}}).types == ("Ingress",)
    deny_egress = knp("p", "x", {"podSelector": {}, "policyTypes": ["Egress"]})
    assert deny_egress.types == ("Egress",) and deny_egress.egress == ()
    both = knp("p", "x", {"podSelector": {}, "egress": [{}]})
    assert both.types == ("Ingress", "Egress") and len(both.egress) == 1 and both.egress[0].destination.empty


def test_k8s_match_expressions_named_ports_end_port_ip_block():
    p = knp("p", "x", {"podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a", "b"]},
                                                            {"key": "x", "operator": "DoesNotExist"}]},
                       "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                                   "ports": [{"port": "dns", "protocol": "UDP"}, {"port": 8000, "endPort": 8080}]}]})
    assert "pod in {'a', 'b'}" in p.selector and "!has(x)" in p.selector
    udp, tcp = p.egress
    assert udp.destination.ports == ("dns",) and udp.destination.nets == ("10.0.0.0/8",)
    assert udp.destination.not_nets == ("10.1.0.0/16",)
    assert tcp.destination.ports == (PortRange(8000, 8080),)


@pytest.mark.parametrize("spec, field", [
    ({}, "spec.podSelector"),
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Is"}]}},
     "spec.podSelector.matchExpressions[0].operator"),
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
     "spec.podSelector.matchExpressions[0].values"),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": 0}]}]}, "spec.ingress[0].ports[0].port"),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": 80, "endPort": 79}]}]}, "spec.ingress[0].ports[0].endPort"),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": 80, "protocol": "ICMP"}]}]},
     "spec.ingress[0].ports[0].protocol"),
    ({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]},
     "spec.ingress[0].from[0].ipBlock"),
    ({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}]},
     "spec.ingress[0].from[0].ipBlock.except[0]"),
    ({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "nonsense"}}]}]}, "spec.egress[0].to[0].ipBlock.cidr[0]"),
    ({"podSelector": {}, "policyTypes": ["Sideways"]}, "spec.policyTypes"),
    ({"podSelector": {}, "ingres": []}, "spec.ingres"),
])
def test_bad_k8s_policy_names_the_field(spec, field):
    with pytest.raises(ValidationError) as e:
        knp("p", "x", spec)
    assert e.value.field == field


# Model: Calico policies --------------------------------------------------------------------------


def test_calico_policy_fields():
    p = cnp("c", {"order": 10, "selector": "app starts with 'web'", "types": ["Ingress", "Egress"], "ingress": [
        {"action": "Deny", "protocol": "ICMP", "icmp": {"type": 8, "code": 0}},
        {"action": "Allow", "protocol": "tcp", "source": {"notNets": ["10.1.2.3"], "namespaceSelector": "global()"},
         "destination": {"ports": [80, "1000:2000", "http"], "notPorts": [22]}},
        {"action": "Pass", "notProtocol": 17}, {"action": "Log"}], "egress": [{"action": "Allow"}]})
    assert p.order == 10.0 and p.types == ("Ingress", "Egress")
    deny, allow, pas, log = p.ingress
    assert deny.icmp == (8, 0) and allow.protocol == "TCP" and allow.source.not_nets == ("10.1.2.3/32",)
    assert allow.destination.ports == (PortRange(80, 80), PortRange(1000, 2000), "http")
    assert pas.not_protocol == 17 and log.action == "Log"
    assert cnp("g", {"namespaceSelector": "has(team)"}, kind="GlobalNetworkPolicy").namespace_selector == "has(team)"


@pytest.mark.parametrize("spec, field", [
    ({"ingress": [{"action": "Permit"}]}, "spec.ingress[0].action"),
    ({"ingress": [{"action": "Allow", "destination": {"ports": [80]}}]}, "spec.ingress[0].destination.ports"),
    ({"ingress": [{"action": "Allow", "protocol": "UDP", "icmp": {"type": 8}}]}, "spec.ingress[0].icmp"),
    ({"ingress": [{"action": "Allow", "protocol": "ICMP", "icmp": {"type": 300}}]}, "spec.ingress[0].icmp.type"),
    ({"ingress": [{"action": "Allow", "protocol": "GRE"}]}, "spec.ingress[0].protocol"),
    ({"ingress": [{"action": "Allow", "source": {"nets": ["10.0.0.0/33"]}}]}, "spec.ingress[0].source.nets[0]"),
    ({"ingress": [{"action": "Allow", "source": {"selector": "a =="}}]}, "spec.ingress[0].source.selector"),
    ({"ingress": [{"action": "Allow", "protocol": "ICMP", "source": {"nets": ["fd00::/8"]}}]},
     "spec.ingress[0].source.nets"),
    ({"ingress": [{"action": "Allow", "source": {"serviceAccounts": {"names": ["a"]}}}]},
     "spec.ingress[0].source.serviceAccounts"),
    ({"selector": "app in {'a'"}, "spec.selector"),
    ({"order": "first"}, "spec.order"),
    ({"types": ["Egress"], "ingress": [{"action": "Allow"}]}, "spec.types"),
    ({"tier": "security"}, "spec.tier"),
    ({"doNotTrack": True}, "spec.doNotTrack"),
    ({"namespaceSelector": "all()"}, "spec.namespaceSelector"),
    ({"egress": [{"action": "Allow", "bogus": 1}]}, "spec.egress[0].bogus"),
])
def test_bad_calico_policy_names_the_field(spec, field):
    with pytest.raises(ValidationError) as e:
        cnp("c", spec)
    assert e.value.field == field


def test_pod_and_namespace_documents():
    pod = Pod.from_manifest({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "x",
                                                                             "labels": {"pod": "a"}},
                             "spec": {"containers": [{"name": "c", "ports": [
                                 {"name": "serve-80", "containerPort": 80},
                                 {"name": "dns", "containerPort": 53, "protocol": "UDP"}, {"containerPort": 9}]}]}})
    assert pod.ports == (ContainerPort("serve-80", 80, "TCP"), ContainerPort("dns", 53, "UDP"))
    ns = Namespace.from_manifest({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}})
    assert ns.labels == {"kubernetes.io/metadata.name": "x"}
    with pytest.raises(ValidationError) as e:
        Pod.from_manifest({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"},
                           "spec": {"containers": [{"ports": [{"name": "x", "containerPort": 70000}]}]}})
    assert e.value.field == "spec.containers[0].ports[0].containerPort"
    assert parse_port_flag("http=8080/tcp") == ContainerPort("http", 8080, "TCP")
    with pytest.raises(ValidationError):
        parse_port_flag("http:80")


# Selection and order ------------------------------------------------------------------------------


def test_policies_in_felix_order_calico_by_order_then_k8s_then_unordered():
    ep = endpoint("n1", "x", "a", 1, {"pod": "a"})
    late = cnp("z-unordered", {"selector": "all()"}, ns="x")
    early = cnp("b-early", {"order": 10, "selector": "pod == 'a'"}, ns="x")
    tie = cnp("a-early", {"order": 10, "selector": "all()"}, kind="GlobalNetworkPolicy")
    k = knp("k", "x", {"podSelector": {}})
    elsewhere = cnp("other-ns", {"order": 1}, ns="y")
    picked = endpoint_policies(ep, ordered([late, k, early, tie, elsewhere]), "Ingress")
    assert [p.name for p in picked] == ["a-early", "b-early", "knp.default.k", "z-unordered"]


def test_namespace_selector_of_a_global_policy_and_global_selector():
    ep = endpoint("n1", "x", "a", 1, {"pod": "a"}, ns_labels={"team": "blue"})
    assert endpoint_policies(ep, [cnp("g", {"namespaceSelector": "team == 'blue'"}, kind="GlobalNetworkPolicy")],
                             "Ingress")
    assert not endpoint_policies(ep, [cnp("g", {"namespaceSelector": "team == 'red'"}, kind="GlobalNetworkPolicy")],
                                 "Ingress")
    assert not endpoint_policies(ep, [cnp("g", {"namespaceSelector": "global()"}, kind="GlobalNetworkPolicy")],
                                 "Ingress")


# The ruleset --------------------------------------------------------------------------------------


def _rules(rs, chain):
    return [r.body for r in rs.chains[chain].rules]


def test_endpoint_chains_name_no_anonymous_set():
    # libnftables reads back every anonymous set's elements on each transaction: one per endpoint chain
    # made a new pod's transaction grow with the node's pods (17 ms beside 1000, 2.3 ms without).
    eps = [endpoint("n1", "x", f"p{i}", i, {"pod": "a"}, ips=(f"10.244.0.{i}/32", f"10.244.1.{i}/32", f"fd00::{i}/128"))
           for i in range(1, 4)]
    deny = knp("deny", "x", {"podSelector": {}})
    rs = compute_filter("n1", eps, [deny], ["172.31.0.11/24"], FilterConfig(vxlan_port=4789))
    for ep in eps:
        for direction in ("Ingress", "Egress"):
            rules = _rules(rs, endpoint_chain(ep.interface, direction))
            assert rules and not any("{" in r for r in rules), rules


def test_endpoint_chains_dispatch_spoofing_vxlan_and_end_of_tier():
    a = endpoint("n1", "x", "a", 1, {"pod": "a"}, ips=("10.244.0.1/32", "fd00::1/128"))
    b = endpoint("n1", "x", "b", 2, {"pod": "b"})
    remote = endpoint("n2", "x", "c", 3, {"pod": "c"})
    deny_b = knp("deny-b", "x", {"podSelector": {"matchLabels": {"pod": "b"}}})
    rs = compute_filter("n1", [a, b, remote], [deny_b], ["172.31.0.11/24", "172.31.0.12/24"],
                        FilterConfig(vxlan_port=4789))
    assert rs.sets[FROM_MAP].elements == {f'"{a.interface}" : goto fw-{a.interface}',
                                          f'"{b.interface}" : goto fw-{b.interface}'}  # local endpoints only
    assert len(rs.sets[TO_MAP].elements) == 2
    assert rs.sets[NODES4].elements == {"172.31.0.11", "172.31.0.12"}
    fw_a = _rules(rs, endpoint_chain(a.interface, "Egress"))
    assert fw_a[:4] == ["udp dport 4789 drop", "meta l4proto 4 drop", "ip saddr != 10.244.0.1 drop",
                        "ip6 saddr != :: ip6 saddr != fe80::/10 ip6 saddr != fd00::1 drop"]
    assert fw_a[-1] == "goto to-workload"  # no egress policy: the profile allows; on to the receiver's side
    assert _rules(rs, endpoint_chain(b.interface, "Ingress")) == [f"jump {policy_chain(deny_b, 'Ingress')}", "drop"]
    assert _rules(rs, policy_chain(deny_b, "Ingress")) == []  # selected, no rule: default deny
    assert _rules(rs, endpoint_chain(a.interface, "Ingress")) == ["accept"]
    assert "fw-" + remote.interface not in rs.chains
    # One forward base chain: established first, the sender's side, then (goto) the receiver's.
    forward = _rules(rs, "forward")
    assert forward[0] == "ct state established,related accept" and forward[1] == "ct state invalid drop"
    assert forward[-3:] == ["iifname vmap @from-wl", 'iifname "cali*" drop', "goto to-workload"]
    assert _rules(rs, "to-workload") == ["oifname vmap @to-wl", 'oifname "cali*" drop', "accept"]
    assert [c.name for c in rs.chains.values() if c.hook and "hook forward" in c.hook] == ["forward"]
    assert any("udp dport 4789 ip saddr != @nodes4 drop" == r for r in _rules(rs, "input"))


def test_selector_sets_follow_labels_and_policy_chains_are_shared():
    server = endpoint("n1", "x", "s", 1, {"role": "server"}, ports=[ContainerPort("http", 8080)])
    c1 = endpoint("n2", "x", "c1", 2, {"role": "client"})
    c2 = endpoint("n2", "y", "c2", 3, {"role": "client"})
    p = knp("allow", "x", {"podSelector": {"matchLabels": {"role": "server"}}, "ingress": [
        {"from": [{"podSelector": {"matchLabels": {"role": "client"}}}], "ports": [{"port": "http"}]}]})
    rs = compute_filter("n1", [server, c1, c2], [p], [])
    body = _rules(rs, policy_chain(p, "Ingress"))[0]
    src_set = body.split("ip saddr @")[1].split()[0]
    port_set = body.split("th dport @")[1].split()[0]
    assert rs.sets[src_set].elements == {"10.244.0.2"}  # the policy's namespace only: c2 is in y
    assert rs.sets[port_set].elements == {"10.244.0.1 . 6 . 8080"}
    # c2 moves into the selection by a label change? No: its namespace differs. c1 loses its label.
    c1_relabelled = endpoint("n2", "x", "c1", 2, {"role": "other"})
    rs2 = compute_filter("n1", [server, c1_relabelled, c2], [p], [])
    assert diff_filter(rs, rs2) == [f"delete element inet podnet {src_set} {{ 10.244.0.2 }}"]
    assert diff_filter(rs2, rs2) == []


def test_a_policy_change_rewrites_only_its_chain():
    eps = [endpoint("n1", "x", f"p{i}", i, {"pod": f"p{i}"}) for i in range(1, 6)]
    pols = [cnp(f"pol{i}", {"order": i, "selector": "all()", "ingress": [{"action": "Allow", "protocol": "TCP",
                                                                          "destination": {"ports": [i]}}]}, ns="x")
            for i in range(1, 4)]
    rs = compute_filter("n1", eps, pols, [])
    changed = cnp("pol2", {"order": 2, "selector": "all()", "ingress": [{"action": "Deny", "protocol": "TCP",
                                                                         "destination": {"ports": [2]}}]}, ns="x")
    rs2 = compute_filter("n1", eps, [pols[0], changed, pols[2]], [])
    cmds = diff_filter(rs, rs2)
    assert cmds[0] == f"flush chain inet podnet {policy_chain(changed, 'Ingress')}"
    assert len(cmds) == 2 and cmds[1].startswith(f"add rule inet podnet {policy_chain(changed, 'Ingress')} "
                                                 "meta l4proto 6 th dport 2 drop")


def test_rules_compile_by_family_and_port_kind():
    ep = endpoint("n1", "x", "a", 1, {"pod": "a"})
    p = cnp("c", {"ingress": [
        {"action": "Allow", "source": {"notNets": ["10.9.0.0/16"]}},
        {"action": "Deny", "protocol": "ICMPv6", "notICMP": {"type": 128, "code": 0}},
        {"action": "Allow", "protocol": "UDP", "destination": {"ports": [53, "dns"], "notPorts": ["1:10"]}},
        {"action": "Pass", "ipVersion": 6},
        {"action": "Allow", "protocol": "SCTP", "destination": {"ports": [80]}},
    ]}, ns="x")
    rs = compute_filter("n1", [ep], [p], [])
    rules = _rules(rs, policy_chain(p, "Ingress"))
    assert rules[0] == "ip saddr != 10.9.0.0/16 accept"
    assert rules[1] == "meta nfproto ipv6 accept"  # an IPv6 packet has no 10.9/16 source to exclude
    assert rules[2] == "meta l4proto 58 icmpv6 type . icmpv6 code != { 128 . 0 } drop"
    # A named port is per family (a set of address . protocol . port), so the rule is too.
    assert rules[3] == "meta nfproto ipv4 meta l4proto 17 th dport 53 th dport != 1-10 accept"
    assert rules[4].startswith("meta l4proto 17 ip daddr . meta l4proto . th dport @n4-")
    assert rules[5] == "meta nfproto ipv6 meta l4proto 17 th dport 53 th dport != 1-10 accept"
    assert rules[6].startswith("meta l4proto 17 ip6 daddr . meta l4proto . th dport @n6-")
    assert rules[7] == "meta nfproto ipv6 accept"
    assert rules[8] == "meta l4proto 132 th dport 80 accept"  # SCTP never matches TCP or UDP


def test_a_rules_lists_are_named_sets_shared_by_policies_with_the_same_list():
    ep = endpoint("n1", "x", "a", 1, {"pod": "a"})
    spec = {"ingress": [{"action": "Allow", "protocol": "TCP",
                         "source": {"nets": ["10.1.0.0/16", "10.0.0.0/8", "192.168.1.7/32"]},
                         "destination": {"ports": [443, "8000:8100", 80, "8050:8200"], "notPorts": [8080, 9000]}}]}
    one, two = cnp("one", spec, ns="x"), cnp("two", spec, ns="x")
    rs = compute_filter("n1", [ep], [one, two], [])
    rules = _rules(rs, policy_chain(one, "Ingress"))
    assert rules == _rules(rs, policy_chain(two, "Ingress"))  # one set per content, whoever asks
    assert "{" not in rules[0], rules  # no anonymous set: each would be read back on every transaction
    names = [w[1:] for w in rules[0].split() if w.startswith("@")]
    nets, ports, not_ports = (rs.sets[n] for n in names)
    assert (nets.type, nets.flags, nets.elements) == ("ipv4_addr", "interval", {"10.0.0.0/8", "192.168.1.7"})
    assert (ports.type, ports.flags) == ("inet_service", "interval")
    assert ports.elements == {"80", "443", "8000-8200"}  # overlapping ranges merged: an interval set refuses them
    assert not_ports.elements == {"8080", "9000"}
    # The set lives while a policy names it.
    calc = FilterCalculator("n1")
    calc.update(endpoints={0: ep}, policies={1: one, 2: two})
    assert set(names) <= set(calc.update(policies={1: None}).sets)
    assert not set(names) & set(calc.update(policies={2: None}).sets)


def test_from_nothing_replaces_the_whole_table_in_one_transaction():
    rs = compute_filter("n1", [endpoint("n1", "x", "a", 1)], [], ["172.31.0.11/24"])
    cmds = diff_filter(None, rs)
    assert cmds[:2] == ["table inet podnet {}", "delete table inet podnet"]
    assert cmds[2].startswith("table inet podnet {") and "chain forward {" in cmds[2]


def test_an_egress_allow_goes_on_to_the_receivers_policy():
    a = endpoint("n1", "x", "a", 1, {"pod": "a"})
    p = cnp("both", {"selector": "all()", "types": ["Ingress", "Egress"],
                     "ingress": [{"action": "Allow", "protocol": "TCP"}, {"action": "Pass", "protocol": "UDP"}],
                     "egress": [{"action": "Allow", "protocol": "TCP"}, {"action": "Pass", "protocol": "UDP"},
                                {"action": "Deny"}]}, ns="x")
    rs = compute_filter("n1", [a], [p], [])
    assert _rules(rs, policy_chain(p, "Ingress")) == ["meta l4proto 6 accept", "meta l4proto 17 accept"]
    assert _rules(rs, policy_chain(p, "Egress")) == ["meta l4proto 6 goto to-workload",
                                                     "meta l4proto 17 goto to-workload", "drop"]


def test_endpoint_to_host_action_drop_and_protected_ports():
    rs = compute_filter("n1", [], [], [], FilterConfig(endpoint_to_host_action="Drop",
                                                       protected=((None, 6, 9099), ("172.31.0.1", 6, 2379))))
    assert _rules(rs, "wl-to-host")[-1] == "drop"
    assert rs.sets["protected-ports"].elements == {"6 . 9099"}
    assert rs.sets["protected4"].elements == {"172.31.0.1 . 6 . 2379"}


def test_evaluate_names_the_policy_and_rule_that_decided():
    from podnet.calc.policy import Packet, evaluate

    a = endpoint("n1", "x", "a", 1, {"pod": "a"}, ports=[ContainerPort("http", 8080)])
    b = endpoint("n2", "y", "b", 2, {"pod": "b"})
    pols = [knp("web", "x", {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [
                {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}}}],
                 "ports": [{"port": "http"}]}]}),
            cnp("no-ping", {"order": 1, "selector": "pod == 'a'", "ingress": [
                {"action": "Deny", "protocol": "ICMP", "icmp": {"type": 8}}]}, ns="x")]
    tcp = Packet("10.244.0.2", "10.244.0.1", protocol=6, dport=8080, src=b, dst=a)
    v = evaluate(tcp, "Ingress", pols)
    assert v.allowed and v.policy == "x/knp.default.web" and v.rule == 0
    assert not evaluate(Packet("10.244.0.2", "10.244.0.1", protocol=6, dport=80, src=b, dst=a), "Ingress",
                        pols).allowed  # the end of the tier
    v = evaluate(Packet("10.244.0.2", "10.244.0.1", src=b, dst=a), "Ingress", pols)
    assert (v.allowed, v.policy, v.rule) == (False, "x/no-ping", 0)
    assert evaluate(tcp, "Egress", pols).allowed  # nothing selects b for egress


def test_protected_destinations_from_the_datastore_url_and_listen_addresses():
    from podnet.agent.filter_loop import protected_destinations

    assert set(protected_destinations("etcd://172.31.0.1:2379,172.31.0.2:12379", "127.0.0.1:9099", ":9091")) == {
        (None, 6, 9099), (None, 6, 9091), ("172.31.0.1", 6, 2379), ("172.31.0.1", 6, 2380),
        ("172.31.0.2", 6, 12379), ("172.31.0.2", 6, 2380)}
    assert protected_destinations("sqlite:///x.db", "", None) == ()


def test_felix_configuration_sets_the_endpoint_to_host_action():
    from podnet.agent.filter_loop import endpoint_to_host_action
    from podnet.model.agentconfig import AgentConfiguration

    def felix(name, value):
        return AgentConfiguration.from_manifest({"apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration",
                                                 "metadata": {"name": name},
                                                 "spec": {"defaultEndpointToHostAction": value}})

    assert endpoint_to_host_action([], "n1", "Accept") == "Accept"  # the agent's flag
    assert endpoint_to_host_action([felix("default", "Drop")], "n1", "Accept") == "Drop"
    assert endpoint_to_host_action([felix("default", "Drop"), felix("node.n1", "Return")], "n1", "Accept") == "Return"
    assert endpoint_to_host_action([felix("default", "Sideways")], "n1", "Accept") == "Accept"
    assert felix("default", "Drop").not_applied() == []  # podnet applies it
    assert felix("default", "Sideways").not_applied()[0][0] == "defaultEndpointToHostAction"


def test_an_endpoint_whose_interface_nft_cannot_name_is_left_out():
    odd = WorkloadEndpoint(node="n1", container_id="c9", interface="eth0", host_interface="cali{x}",
                           ips=("10.244.0.9/32",), mac="", pod_namespace="x", pod_name="odd")
    rs = compute_filter("n1", [policy_endpoint(odd, None, None), endpoint("n1", "x", "a", 1)], [], [])
    assert len(rs.sets[FROM_MAP].elements) == 1 and "fw-cali{x}" not in rs.chains
