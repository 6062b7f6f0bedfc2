"""Unit tests of `podnet trace` and `podnet doctor` on hand-made facts: no root, no kernel.

`cluster()` builds the facts of a healthy two-node lab as the collector reads
them (pod-a and pod-c on node-1, pod-b on node-2); each test breaks one thing
and checks the hop or finding that names it, what it expected and the fix.
"""

import json
import xml.etree.ElementTree as ET

import pytest

from podnet.calc.config import VxlanConfig
from podnet.model import IPPool, vtep_mac
from podnet.observe.doctor import ERROR, NOTE, WARNING, diagnose, format_report, kernel_at_least
from podnet.observe.facts import (Address, ClusterFacts, FdbFact, FirewallRule, KernelFacts, Link, NeighFact,
                                  NodeFacts, PodFacts, RouteFact, VxlanInfo, udp_drop_rules)
from podnet.observe.svg import render_svg
from podnet.observe.trace import (BROKEN, OK, UNKNOWN, TraceError, format_trace, in_netns, sysctl_cmd, trace)

CROSS_HOPS = ["pod-interface", "pod-route", "gateway", "host-route", "vxlan-device", "neighbour", "fdb",
              "encapsulation", "underlay-route", "decapsulation", "remote-route", "dst-veth", "dst-pod"]
NODES = {
    "node-1": {"ip": "172.31.0.11", "tunnel": "10.244.0.0", "block": "10.244.0.0/26"},
    "node-2": {"ip": "172.31.0.12", "tunnel": "10.244.0.64", "block": "10.244.0.64/26"},
}
PODS = [  # name, node, ip, host interface, its index on the node
    ("pod-a", "node-1", "10.244.0.1", "calia000000000a", 10),
    ("pod-c", "node-1", "10.244.0.2", "calic000000000c", 11),
    ("pod-b", "node-2", "10.244.0.65", "calib000000000b", 10),
]
POD_ETH0 = 2  # eth0's index inside every pod


def node_kernel(name: str) -> KernelFacts:
    me = NODES[name]
    other_name = next(n for n in NODES if n != name)
    other = NODES[other_name]
    k = KernelFacts(release="6.1.0-18-amd64", firewall=[])
    k.links = {
        "lo": Link(1, "lo", None, 65536, "00:00:00:00:00:00", True),
        "eth0": Link(2, "eth0", "veth", 1500, "02:00:00:00:00:" + me["ip"][-2:], True, 7),
        "vxlan.calico": Link(3, "vxlan.calico", "vxlan", 1450, vtep_mac(name), True, None,
                             VxlanInfo(4096, 4789, me["ip"], 2, False)),
    }
    k.addresses = [Address("eth0", me["ip"], 24), Address("vxlan.calico", me["tunnel"], 32)]
    k.routes = [
        RouteFact("0.0.0.0/0", "172.31.0.1", "eth0", proto=4),
        RouteFact("172.31.0.0/24", None, "eth0", scope=253, proto=2),
        RouteFact(me["block"], type="blackhole", proto=80),
        RouteFact(other["block"], other["tunnel"], "vxlan.calico", onlink=True, proto=80),
    ]
    k.neighbours = [NeighFact(other["tunnel"], vtep_mac(other_name), "vxlan.calico", "PERMANENT")]
    k.fdb = [FdbFact(vtep_mac(other_name), other["ip"], "vxlan.calico", True)]
    k.sysctls = {"ip_forward": "1", "conf/all/rp_filter": "0", "conf/eth0/rp_filter": "0",
                 "conf/vxlan.calico/rp_filter": "0"}
    k.features = {"vxlan.calico": {"tx-checksum-ip-generic": False}}
    for pod, node, ip, cali, index in PODS:
        if node == name:
            k.links[cali] = Link(index, cali, "veth", 1450, "ee:ee:ee:ee:ee:ee", True, POD_ETH0)
            k.routes.append(RouteFact(f"{ip}/32", None, cali, scope=253, proto=3))
            k.sysctls.update({f"conf/{cali}/proxy_arp": "1", f"conf/{cali}/forwarding": "1"})
    return k


def pod_kernel(ip: str, host_index: int) -> KernelFacts:
    return KernelFacts(
        links={"lo": Link(1, "lo", None, 65536, None, True),
               "eth0": Link(POD_ETH0, "eth0", "veth", 1450, "0a:58:00:00:00:01", True, host_index)},
        addresses=[Address("lo", "127.0.0.1", 8), Address("eth0", ip, 32)],
        routes=[RouteFact("0.0.0.0/0", "169.254.1.1", "eth0", proto=3),
                RouteFact("169.254.1.1/32", None, "eth0", scope=253, proto=3)],
    )


def cluster(vxlan_mode: str = "Always") -> ClusterFacts:
    nodes = {name: NodeFacts(name, f"lab-{name}", f"{n['ip']}/24", "eth0", n["tunnel"], vtep_mac(name),
                             [n["block"]], kernel=node_kernel(name)) for name, n in NODES.items()}
    pods = [PodFacts(name, "default", node, ip, cali, "eth0", f"/run/netns/lab-{name}", f"{name}-container-id",
                     pod_kernel(ip, index)) for name, node, ip, cali, index in PODS]
    return ClusterFacts(nodes, pods, VxlanConfig(), "lab test",
                        [IPPool("default-ipv4-ippool", "10.244.0.0/16", 26, vxlan_mode=vxlan_mode)])


def node(f: ClusterFacts, name: str) -> KernelFacts:
    return f.nodes[name].kernel


def pod(f: ClusterFacts, name: str) -> PodFacts:
    return next(p for p in f.pods if p.name == name)


def replace_route(k: KernelFacts, dst: str, new: RouteFact | None) -> None:
    k.routes = [r for r in k.routes if r.dst != dst] + ([new] if new else [])


# --- trace: healthy paths ------------------------------------------------------------------------


def test_healthy_cross_node_path_has_every_hop_of_the_article():
    t = trace(cluster(), "pod-a", "pod-b")
    assert t.kind == "cross-node"
    assert [h.id for h in t.hops] == CROSS_HOPS
    assert [h.status for h in t.hops] == [OK] * len(CROSS_HOPS), [(h.id, h.found) for h in t.hops if not h.ok]
    assert t.ok and t.first_broken is None
    assert t.wire == {
        "vni": 4096, "port": 4789, "outer_src": "172.31.0.11", "outer_dst": "172.31.0.12",
        "underlay_interface": "eth0", "inner_src_mac": vtep_mac("node-1"), "inner_dst_mac": vtep_mac("node-2"),
        "inner_src": "10.244.0.1", "inner_dst": "10.244.0.65", "pod_mtu": 1450, "vxlan_mtu": 1450,
        "underlay_mtu": 1500,
    }
    hops = {h.id: h for h in t.hops}
    assert hops["host-route"].found == "10.244.0.64/26 via 10.244.0.64 dev vxlan.calico proto 80 onlink"
    assert hops["neighbour"].found == f"10.244.0.64 dev vxlan.calico lladdr {vtep_mac('node-2')} PERMANENT"
    assert hops["fdb"].found == f"{vtep_mac('node-2')} dev vxlan.calico dst 172.31.0.12 self permanent"
    assert hops["remote-route"].found == "10.244.0.65 dev calib000000000b scope link"


def test_pods_are_found_by_name_namespace_and_ip():
    f = cluster()
    for src, dst in (("10.244.0.1", "10.244.0.65"), ("default/pod-a", "pod-b"), ("pod-a-container-id", "pod-b")):
        t = trace(f, src, dst)
        assert (t.src.pod, t.dst.pod) == ("pod-a", "pod-b")


def test_same_node_path_skips_the_tunnel():
    t = trace(cluster(), "pod-a", "pod-c")
    assert t.kind == "same-node" and t.ok and t.wire is None
    assert [h.id for h in t.hops] == ["pod-interface", "pod-route", "gateway", "host-route", "dst-veth", "dst-pod"]
    assert t.hops[3].found == "10.244.0.2 dev calic000000000c scope link"


def test_crosssubnet_path_goes_direct_without_encapsulation():
    f = cluster("CrossSubnet")
    direct = RouteFact("10.244.0.64/26", "172.31.0.12", "eth0", True, proto=80)
    replace_route(node(f, "node-1"), "10.244.0.64/26", direct)
    t = trace(f, "pod-a", "pod-b")
    assert t.kind == "cross-node-direct" and t.ok, [(h.id, h.found) for h in t.hops if not h.ok]
    assert "vxlan-device" not in [h.id for h in t.hops]
    # The VXLAN route is now the wrong one for this pool.
    replace_route(node(f, "node-1"), "10.244.0.64/26",
                  RouteFact("10.244.0.64/26", "10.244.0.64", "vxlan.calico", True, proto=80))
    hop = trace(f, "pod-a", "pod-b").first_broken
    assert hop.id == "host-route" and hop.expected == "10.244.0.64/26 via 172.31.0.12 dev eth0 onlink proto 80"


def test_borrowed_address_is_expected_as_a_32_towards_the_node_using_it():
    f = cluster()
    # pod-x runs on node-1 with an address borrowed from node-2's block: node-2 reaches it by a /32
    # towards node-1, more specific than its own block's blackhole route.
    f.pods.append(PodFacts("pod-x", "default", "node-1", "10.244.0.70", "calix000000000x", "eth0",
                           "/run/netns/lab-pod-x", "x-id", pod_kernel("10.244.0.70", 12)))
    f.borrowed = [("10.244.0.70", "node-1")]
    k1 = node(f, "node-1")
    k1.links["calix000000000x"] = Link(12, "calix000000000x", "veth", 1450, "ee:ee:ee:ee:ee:ee", True, POD_ETH0)
    k1.routes.append(RouteFact("10.244.0.70/32", None, "calix000000000x", scope=253))
    k1.sysctls.update({"conf/calix000000000x/proxy_arp": "1", "conf/calix000000000x/forwarding": "1"})
    hop = trace(f, "pod-b", "pod-x").first_broken
    assert hop.id == "host-route" and hop.where == "node-2"
    assert hop.expected == "10.244.0.70/32 via 10.244.0.0 dev vxlan.calico onlink proto 80"
    node(f, "node-2").routes.append(RouteFact("10.244.0.70/32", "10.244.0.0", "vxlan.calico", True, proto=80))
    assert trace(f, "pod-b", "pod-x").ok


# --- trace: broken paths -------------------------------------------------------------------------


def _break(f, what):
    n1, n2 = node(f, "node-1"), node(f, "node-2")
    mac2 = vtep_mac("node-2")
    if what == "pod-default-route":
        pod(f, "pod-a").kernel.routes = [r for r in pod(f, "pod-a").kernel.routes if r.dst != "0.0.0.0/0"]
    elif what == "pod-address":
        pod(f, "pod-a").kernel.addresses = [a for a in pod(f, "pod-a").kernel.addresses if a.ifname != "eth0"]
    elif what == "proxy-arp":
        n1.sysctls["conf/calia000000000a/proxy_arp"] = "0"
    elif what == "no-default-route":
        replace_route(n1, "0.0.0.0/0", None)
    elif what == "ip-forward":  # as the kernel does: ip_forward=0 turns forwarding off on every interface
        n1.sysctls.update({k: "0" for k in n1.sysctls if k == "ip_forward" or k.endswith("/forwarding")})
    elif what == "block-route":
        replace_route(n1, "10.244.0.64/26", None)
    elif what == "vxlan-down":
        n1.links["vxlan.calico"] = Link(3, "vxlan.calico", "vxlan", 1450, vtep_mac("node-1"), False, None,
                                        n1.links["vxlan.calico"].vxlan)
    elif what == "neighbour-mac":
        n1.neighbours = [NeighFact("10.244.0.64", "66:00:00:00:00:99", "vxlan.calico", "PERMANENT")]
    elif what == "fdb-dst":
        n1.fdb = [FdbFact(mac2, "172.31.0.99", "vxlan.calico", True)]
    elif what == "pod-mtu":
        pod(f, "pod-a").kernel.links["eth0"] = Link(POD_ETH0, "eth0", "veth", 1500, None, True, 10)
    elif what == "remote-vni":
        n2.links["vxlan.calico"] = Link(3, "vxlan.calico", "vxlan", 1450, mac2, True, None,
                                        VxlanInfo(1, 4789, "172.31.0.12", 2, False))
    elif what == "remote-firewall":
        n2.firewall = [FirewallRule("inet", "filter", "input", "input", 7, ((4789, 4789),), "drop")]
    elif what == "remote-pod-route":
        replace_route(n2, "10.244.0.65/32", None)
    elif what == "veth-peer":
        n2.links["calib000000000b"] = Link(10, "calib000000000b", "veth", 1450, "ee:ee:ee:ee:ee:ee", True, 5)
    elif what == "dst-reply-route":
        pod(f, "pod-b").kernel.routes = []


@pytest.mark.parametrize("what, hop_id, fix", [
    ("pod-default-route", "pod-route", "ip -n lab-pod-a route replace default via 169.254.1.1 dev eth0"),
    ("pod-address", "pod-interface", "ip -n lab-pod-a addr add 10.244.0.1/32 dev eth0"),
    ("proxy-arp", "gateway", "ip netns exec lab-node-1 sysctl -w net.ipv4.conf.calia000000000a.proxy_arp=1"),
    ("no-default-route", "gateway", "ip -n lab-node-1 route add default via 172.31.0.1 dev eth0"),
    ("ip-forward", "gateway", "ip netns exec lab-node-1 sysctl -w net.ipv4.ip_forward=1"),
    ("block-route", "host-route",
     "ip -n lab-node-1 route replace 10.244.0.64/26 via 10.244.0.64 dev vxlan.calico onlink proto 80"),
    ("vxlan-down", "vxlan-device", "ip -n lab-node-1 link set vxlan.calico up"),
    ("neighbour-mac", "neighbour",
     f"ip -n lab-node-1 neigh replace 10.244.0.64 dev vxlan.calico lladdr {vtep_mac('node-2')} nud permanent"),
    ("fdb-dst", "fdb", f"bridge -n lab-node-1 fdb replace {vtep_mac('node-2')} dev vxlan.calico dst 172.31.0.12 "
                       "self permanent"),
    ("pod-mtu", "encapsulation", "ip -n lab-pod-a link set eth0 mtu 1450"),
    ("remote-vni", "decapsulation", "run every node's agent with the same --vni and --vxlan-port"),
    ("remote-firewall", "decapsulation", "ip netns exec lab-node-2 nft delete rule inet filter input handle 7"),
    ("remote-pod-route", "remote-route",
     "ip -n lab-node-2 route replace 10.244.0.65/32 dev calib000000000b scope link"),
    ("veth-peer", "dst-veth", "delete and recreate the pod (CNI DEL + ADD rebuild its veth)"),
    ("dst-reply-route", "dst-pod", "ip -n lab-pod-b route replace default via 169.254.1.1 dev eth0"),
])
def test_first_broken_hop_names_what_was_expected_and_the_fix(what, hop_id, fix):
    f = cluster()
    _break(f, what)
    t = trace(f, "pod-a", "pod-b")
    broken = t.first_broken
    assert broken is not None and not t.ok
    assert (broken.id, broken.status, broken.fix) == (hop_id, BROKEN, fix)
    assert broken.expected and broken.found
    text = format_trace(t)
    n = [h.id for h in t.hops].index(hop_id) + 1
    assert f"BROKEN at hop {n} ({broken.title}, {broken.where})" in text
    assert f"fix: {fix}" in text
    data = json.loads(json.dumps(t.to_dict()))
    assert data["ok"] is False and data["first_broken"] == hop_id


def test_a_device_that_went_down_took_its_routes_and_the_fix_brings_it_up_first():
    f = cluster()
    _break(f, "vxlan-down")
    _break(f, "block-route")  # what the kernel does when the device goes down
    hop = trace(f, "pod-a", "pod-b").first_broken
    assert hop.id == "host-route" and "vxlan.calico is down, which removed its routes" in hop.found
    assert hop.fix == ("ip -n lab-node-1 link set vxlan.calico up && "
                       "ip -n lab-node-1 route replace 10.244.0.64/26 via 10.244.0.64 dev vxlan.calico onlink proto 80")


def test_missing_block_route_says_the_packet_would_leave_unencapsulated():
    f = cluster()
    _break(f, "block-route")
    hop = trace(f, "pod-a", "pod-b").first_broken
    assert hop.found.startswith("default via 172.31.0.1 dev eth0")
    assert "missing" in hop.found and hop.expected == "10.244.0.64/26 via 10.244.0.64 dev vxlan.calico onlink proto 80"
    assert "agent on node-1" in hop.hint


def test_a_pod_address_nobody_holds_ends_in_the_blackhole():
    t = trace(cluster(), "pod-a", "10.244.0.66")
    assert t.dst.pod is None and t.hops[-1].id == "remote-route"
    assert t.first_broken is t.hops[-1]
    assert t.hops[-1].found == "blackhole 10.244.0.64/26 proto 80" and "no pod holds 10.244.0.66" in t.hops[-1].hint


def test_unknown_source_or_destination_is_an_error():
    with pytest.raises(TraceError, match="no pod is known as 'nope'"):
        trace(cluster(), "nope", "pod-b")
    with pytest.raises(TraceError, match="in no node's block"):
        trace(cluster(), "pod-a", "192.0.2.1")


def test_a_node_that_cannot_be_read_is_not_inspected_rather_than_judged():
    f = cluster()
    f.nodes["node-2"].kernel = None
    f.nodes["node-2"].unreadable = "node-2 is not readable from this host (node-1)"
    pod(f, "pod-b").kernel = None
    t = trace(f, "pod-a", "pod-b")
    status = {h.id: h.status for h in t.hops}
    assert [status[h] for h in ("decapsulation", "remote-route", "dst-veth", "dst-pod")] == [UNKNOWN] * 4
    assert all(status[h] == OK for h in CROSS_HOPS[:9])
    assert t.ok  # nothing is known to be broken
    assert "the path is intact where it could be inspected" in format_trace(t)


# --- rendering -------------------------------------------------------------------------------------


def test_text_reads_like_the_article():
    text = format_trace(trace(cluster(), "pod-a", "pod-b"))
    assert text.startswith("pod-a (10.244.0.1) on node-1 -> pod-b (10.244.0.65) on node-2: across nodes")
    assert " 6. ok      node-1  permanent ARP entry" in text
    assert "outer IPv4 172.31.0.11 -> 172.31.0.12 / UDP dport 4789 / VXLAN VNI 4096" in text
    assert "MTU budget: pod 1450 + 50 = 1500 <= underlay 1500" in text
    assert "ttl=62" in text
    brief = format_trace(trace(cluster(), "pod-a", "pod-b"), explain=False)
    assert "proxy ARP with its own MAC" in text and "proxy ARP with its own MAC" not in brief


def _svg(t) -> ET.Element:
    root = ET.fromstring(render_svg(t).split("\n", 1)[1])  # after the XML declaration
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return root


def _texts(root) -> str:
    return "\n".join(e.text or "" for e in root.iter("{http://www.w3.org/2000/svg}text"))


def _drawn_in(root, color: str) -> list:
    """Shapes stroked in `color`, leaving out the legend's swatches."""
    return [e for e in root.iter() if e.get("stroke") == color and e.get("width") != "14"]


def test_svg_draws_nodes_pods_devices_and_the_tunnel():
    root = _svg(trace(cluster(), "pod-a", "pod-b"))
    texts = _texts(root)
    for expected in ("node-1  172.31.0.11", "node-2  172.31.0.12", "pod-a", "pod-b", "calia000000000a",
                     "calib000000000b", "vxlan.calico", "VXLAN VNI 4096 / UDP 4789: 172.31.0.11 -> 172.31.0.12",
                     "every inspected hop is as it must be"):
        assert expected in texts
    assert _drawn_in(root, "#c62828") == [] and _drawn_in(root, "#9e9e9e") == []
    assert len(_drawn_in(root, "#2e7d32")) > 10


def test_svg_marks_the_broken_hop_red_and_prints_its_fix():
    f = cluster()
    _break(f, "fdb-dst")
    root = _svg(trace(f, "pod-a", "pod-b"))
    assert any(e.tag.endswith("rect") for e in _drawn_in(root, "#c62828"))
    texts = _texts(root)
    assert "broken at hop 7 (permanent FDB entry, node-1)" in texts
    assert "fix: bridge -n lab-node-1 fdb replace" in texts


def test_svg_of_a_same_node_path_and_of_an_unread_node():
    assert "calic000000000c" in _texts(_svg(trace(cluster(), "pod-a", "pod-c")))
    f = cluster()
    f.nodes["node-2"].kernel = None
    root = _svg(trace(f, "pod-a", "pod-b"))
    assert "kernel not read from here" in _texts(root)
    assert _drawn_in(root, "#9e9e9e") and not _drawn_in(root, "#c62828")


def test_svg_of_a_direct_crosssubnet_path_has_no_tunnel():
    f = cluster("CrossSubnet")
    direct = RouteFact("10.244.0.64/26", "172.31.0.12", "eth0", True, proto=80)
    replace_route(node(f, "node-1"), "10.244.0.64/26", direct)
    texts = _texts(_svg(trace(f, "pod-a", "pod-b")))
    assert "direct, no encapsulation (CrossSubnet): 10.244.0.1 -> 10.244.0.65" in texts
    assert "vxlan.calico" not in texts and "VXLAN VNI" not in texts


def test_commands_run_where_the_state_lives():
    assert in_netns(None, "ip link set x up") == "ip link set x up"
    assert in_netns("lab-node-1", "ip link set x up") == "ip -n lab-node-1 link set x up"
    assert in_netns("/run/netns/lab-pod-a", "ip link set eth0 up") == "ip -n lab-pod-a link set eth0 up"
    assert in_netns("/proc/42/ns/net", "ip link set eth0 up") == "nsenter --net=/proc/42/ns/net ip link set eth0 up"
    assert in_netns("n1", "bridge fdb del x") == "bridge -n n1 fdb del x"
    assert in_netns("n1", "ethtool -k x") == "ip netns exec n1 ethtool -k x"
    assert sysctl_cmd(None, "conf/vxlan.calico/rp_filter", 2) == "sysctl -w net/ipv4/conf/vxlan.calico/rp_filter=2"
    assert sysctl_cmd(None, "conf/all/rp_filter", 2) == "sysctl -w net.ipv4.conf.all.rp_filter=2"


# --- facts helpers --------------------------------------------------------------------------------


def test_route_lookup_is_longest_prefix_then_lowest_metric():
    k = KernelFacts(routes=[RouteFact("0.0.0.0/0", "1.1.1.1", "eth0"),
                            RouteFact("10.0.0.0/8", "2.2.2.2", "eth0", metric=5),
                            RouteFact("10.0.0.0/8", "3.3.3.3", "eth0", metric=1),
                            RouteFact("10.1.0.0/16", type="blackhole")])
    assert k.lookup("10.1.2.3").type == "blackhole"
    assert k.lookup("10.2.0.1").gateway == "3.3.3.3"
    assert k.lookup("8.8.8.8").gateway == "1.1.1.1"
    assert KernelFacts().lookup("8.8.8.8") is None


def test_nft_rules_dropping_udp_ports_are_found():
    ruleset = {"nftables": [
        {"chain": {"family": "inet", "table": "t", "name": "input", "hook": "input"}},
        {"chain": {"family": "inet", "table": "t", "name": "mine"}},
        {"rule": {"family": "inet", "table": "t", "chain": "input", "handle": 2, "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 4789}},
            {"drop": None}]}},
        {"rule": {"family": "inet", "table": "t", "chain": "mine", "handle": 3, "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}},
                       "right": {"set": [53, {"range": [4000, 5000]}]}}},
            {"reject": {"type": "icmpx"}}]}},
        {"rule": {"family": "inet", "table": "t", "chain": "input", "handle": 4, "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 4789}},
            {"accept": None}]}},
        {"rule": {"family": "inet", "table": "t", "chain": "input", "handle": 5, "expr": [
            {"match": {"op": "!=", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 4789}},
            {"drop": None}]}},
    ]}
    rules = udp_drop_rules(ruleset)
    assert [(r.handle, r.hook, r.verdict, r.ports) for r in rules] == [
        (2, "input", "drop", ((4789, 4789),)), (3, None, "reject", ((53, 53), (4000, 5000)))]
    assert all(r.matches(4789) for r in rules) and not rules[0].matches(8472)
    assert str(rules[1]) == "table inet t chain mine: udp dport { 53, 4000-5000 } reject"


# --- doctor on facts ---------------------------------------------------------------------------------


def findings(f, **kw):
    return [(x.severity, x.check, x.node) for x in diagnose(f, **kw).findings]


def test_doctor_finds_nothing_on_a_healthy_cluster():
    report = diagnose(cluster())
    assert report.findings == [] and report.ok and report.nodes == ["node-1", "node-2"]
    assert format_report(report) == "no problems found on 2 nodes (node-1, node-2)\n"


def test_doctor_stale_foreign_and_missing_fdb_and_neighbour_entries():
    f = cluster()
    k = node(f, "node-1")
    mac2 = vtep_mac("node-2")
    k.fdb = [FdbFact(mac2, "172.31.0.99", "vxlan.calico", True),  # node-2 moved: stale
             FdbFact("66:00:00:00:00:01", "172.31.0.50", "vxlan.calico", True)]  # nobody's: foreign
    k.neighbours = [NeighFact("10.244.0.64", "66:00:00:00:00:02", "vxlan.calico", "PERMANENT"),
                    NeighFact("10.244.9.9", "66:00:00:00:00:03", "vxlan.calico", "PERMANENT")]
    report = diagnose(f)
    agent = " (the agent on node-1 keeps these entries: is it running?)"
    assert sorted((x.severity, x.check, x.problem, x.fix) for x in report.findings) == sorted([
        (ERROR, "fdb", f"missing FDB entry {mac2} dev vxlan.calico dst 172.31.0.12 self permanent: frames to node-2 "
                       "have no destination" + agent,
         f"bridge -n lab-node-1 fdb append {mac2} dev vxlan.calico dst 172.31.0.12 self permanent"),
        (ERROR, "fdb", f"stale FDB entry {mac2} dev vxlan.calico dst 172.31.0.99 self permanent: node-2 is at "
                       "172.31.0.12", f"bridge -n lab-node-1 fdb del {mac2} dev vxlan.calico dst 172.31.0.99 self"),
        (WARNING, "fdb", "foreign FDB entry 66:00:00:00:00:01 dev vxlan.calico dst 172.31.0.50 self permanent: no "
                         "current remote node has MAC 66:00:00:00:00:01",
         "bridge -n lab-node-1 fdb del 66:00:00:00:00:01 dev vxlan.calico dst 172.31.0.50 self"),
        (ERROR, "neighbour", f"neighbour entry 10.244.0.64 has lladdr 66:00:00:00:00:02, not {mac2}" + agent,
         f"ip -n lab-node-1 neigh replace 10.244.0.64 dev vxlan.calico lladdr {mac2} nud permanent"),
        (WARNING, "neighbour", "foreign neighbour entry 10.244.9.9 lladdr 66:00:00:00:00:03: no current remote node "
                               "has this tunnel address", "ip -n lab-node-1 neigh del 10.244.9.9 dev vxlan.calico"),
    ])
    assert not report.ok


def test_doctor_routes_missing_and_stale():
    f = cluster()
    k = node(f, "node-1")
    replace_route(k, "10.244.0.64/26", None)
    k.routes.append(RouteFact("10.244.1.0/26", "10.244.1.0", "vxlan.calico", True, proto=80))
    assert {(x.severity, x.problem) for x in diagnose(f).findings} == {
        (ERROR, "missing route 10.244.0.64/26 via 10.244.0.64 dev vxlan.calico onlink (the agent on node-1 keeps "
                "these entries: is it running?)"),
        (WARNING, "stale route 10.244.1.0/26 via 10.244.1.0 dev vxlan.calico onlink (proto 80): "
                  "no current node owns 10.244.1.0/26"),
    }


@pytest.mark.parametrize("mutate, check, severity, fix", [
    (lambda f: node(f, "node-1").links.update({"eth0": Link(2, "eth0", "veth", 1400, None, True, 7)}),
     "mtu", ERROR, "ip -n lab-node-1 link set vxlan.calico mtu 1350"),
    (lambda f: pod(f, "pod-a").kernel.links.update({"eth0": Link(2, "eth0", "veth", 1500, None, True, 10)}),
     "mtu", ERROR, "ip -n lab-pod-a link set eth0 mtu 1450"),
    (lambda f: node(f, "node-1").sysctls.update({"conf/all/rp_filter": "1"}),
     "rp-filter", WARNING, "ip netns exec lab-node-1 sysctl -w net.ipv4.conf.all.rp_filter=2"),
    (lambda f: node(f, "node-1").sysctls.update({"conf/vxlan.calico/rp_filter": "1"}),
     "rp-filter", WARNING, "ip netns exec lab-node-1 sysctl -w net/ipv4/conf/vxlan.calico/rp_filter=2"),
    (lambda f: replace_route(node(f, "node-1"), "0.0.0.0/0", None),
     "default-route", ERROR, "ip -n lab-node-1 route add default via 172.31.0.1 dev eth0"),
    (lambda f: node(f, "node-1").sysctls.update({"ip_forward": "0"}),
     "ip-forward", ERROR, "ip netns exec lab-node-1 sysctl -w net.ipv4.ip_forward=1"),
    (lambda f: setattr(node(f, "node-1"), "firewall",
                       [FirewallRule("ip", "filter", "INPUT", "input", 9, ((4789, 4789),), "drop")]),
     "vxlan-port", ERROR, "ip netns exec lab-node-1 nft delete rule ip filter INPUT handle 9"),
    (lambda f: node(f, "node-1").links.pop("vxlan.calico"),
     "vxlan-device", ERROR, "start the podnet agent on node-1: it creates vxlan.calico"),
])
def test_doctor_checks(mutate, check, severity, fix):
    f = cluster()
    mutate(f)
    report = diagnose(f)
    mine = [x for x in report.findings if x.check == check]
    assert [(x.severity, x.node) for x in mine] == [(severity, "node-1")]
    assert mine[0].fix.startswith(fix)
    assert not report.ok
    text = format_report(report)
    assert f"fix: {mine[0].fix}" in text and mine[0].problem in text


def test_doctor_tx_checksum_depends_on_configuration_and_kernel():
    f = cluster()
    node(f, "node-1").features["vxlan.calico"]["tx-checksum-ip-generic"] = True
    old = [x for x in diagnose(f).findings if x.check == "tx-checksum"]
    assert [(x.severity, x.node) for x in old] == [(NOTE, "node-1")]  # 6.1: only the masquerade bug
    assert diagnose(f).ok
    node(f, "node-1").release = "6.12.9"
    new = [x for x in diagnose(f).findings if x.check == "tx-checksum"]
    # By default the agent turns it off on 6.12+: still on means the agent did not.
    assert [x.severity for x in new] == [WARNING] and "11435" in new[0].problem and "agent" in new[0].problem
    f.nodes["node-1"].config = VxlanConfig(tx_checksum_offload=True)  # the user wants it on anyway
    chosen = [x for x in diagnose(f).findings if x.check == "tx-checksum"]
    assert [x.severity for x in chosen] == [WARNING] and "collapses" in chosen[0].problem
    assert new[0].fix.endswith("ip netns exec lab-node-1 ethtool -K vxlan.calico tx-checksum-ip-generic off")
    f.nodes["node-1"].config = VxlanConfig(tx_checksum_offload=False)
    drift = [x for x in diagnose(f).findings if x.check == "tx-checksum"]
    assert [x.severity for x in drift] == [WARNING] and "agent configuration turns it off" in drift[0].problem
    assert kernel_at_least("6.18.44-fc-v657", (6, 12)) and not kernel_at_least("5.15.0", (6, 12))


def test_doctor_networkmanager_only_when_it_runs_without_unmanaged_devices():
    f = cluster()
    n = f.nodes["node-1"]
    n.host = {"networkmanager": {"running": False, "unmanaged_devices": []}}
    assert findings(f) == []
    n.host["networkmanager"]["running"] = True
    nm = [x for x in diagnose(f).findings if x.check == "networkmanager"]
    assert [(x.severity, x.node) for x in nm] == [(WARNING, "node-1")]
    assert "cali* veths and vxlan.calico" in nm[0].problem and "unmanaged-devices=" in nm[0].fix
    n.host["networkmanager"]["unmanaged_devices"] = ["interface-name:cali*"]
    assert "vxlan.calico" in [x for x in diagnose(f).findings if x.check == "networkmanager"][0].problem
    n.host["networkmanager"]["unmanaged_devices"] = ["interface-name:cali*", "interface-name:vxlan*"]
    assert findings(f) == []


def test_doctor_node_address_registered_as_32():
    f = cluster()
    f.nodes["node-2"].address = "172.31.0.12/32"
    nm = [x for x in diagnose(f).findings if x.check == "node-address"]
    assert [(x.severity, x.node) for x in nm] == [(WARNING, "node-2")]
    assert "registered as 172.31.0.12/32" in nm[0].problem and "(eth0 holds 172.31.0.12/24)" in nm[0].problem


def test_doctor_passes_on_what_it_could_not_read_as_notes():
    f = cluster()
    node(f, "node-1").notes.append("cannot read the firewall: nft list ruleset failed: permission denied")
    node(f, "node-2").firewall = None  # nft is not installed
    report = diagnose(f)
    assert [(x.severity, x.check, x.node) for x in report.findings] == [
        (NOTE, "access", "node-1"), (NOTE, "vxlan-port", "node-2")]
    assert report.ok


def test_doctor_reports_nodes_it_cannot_read_as_a_note():
    f = cluster()
    f.nodes["node-2"].kernel = None
    f.nodes["node-2"].unreadable = "node-2 is not readable from this host (node-1)"
    report = diagnose(f, ["node-1", "node-2"])
    assert [(x.severity, x.check, x.node) for x in report.findings] == [(NOTE, "access", "node-2")]
    assert report.ok and report.nodes == ["node-1"]
    assert json.loads(json.dumps(report.to_dict()))["findings"][0]["fix"] == "run podnet doctor on node-2"
