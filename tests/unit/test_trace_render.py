"""Unit tests of `podnet trace` and `podnet doctor` on hand-made facts: no root, no kernel.

`cluster()` builds the facts of a healthy two-node lab as the collector reads
them (pod-a and pod-c on node-1, pod-b on node-2); each test breaks one thing
and checks the hop or finding that names it, what it expected and the fix.
"""

import dataclasses
import ipaddress
import json
import socket
import struct
import xml.etree.ElementTree as ET

import pytest

from podnet.calc.config import VxlanConfig
from podnet.dataplane import rtnl
from podnet.dataplane.pod import GATEWAY_V6
from podnet.model import IPPool, vtep_mac
from podnet.observe.doctor import ERROR, NOTE, WARNING, diagnose, format_report
from podnet.observe.facts import (Address, ClusterFacts, FdbFact, FirewallRule, KernelFacts, Link, NeighFact,
                                  NodeFacts, PodFacts, RouteFact, VxlanInfo, udp_drop_rules)
from podnet.observe.svg import render_svg
from podnet.observe.trace import (BROKEN, OK, UNKNOWN, TraceError, format_trace, in_netns, sysctl_cmd, trace)
from podnet.observe.trace import WARNING as TRACE_WARNING

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
    k.features = {"vxlan.calico": {"tx-checksum-ip-generic": True}}  # the kernel's default
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
    # What calc/vxlan_device judges, as the agent does: learning, MAC, parent.
    (lambda f: _device(f, vxlan=VxlanInfo(4096, 4789, "172.31.0.11", 2, True)),
     "vxlan-device", WARNING, "restart the podnet agent on node-1 (it recreates vxlan.calico with nolearning)"),
    (lambda f: _device(f, mac="66:00:00:00:00:01"),
     "vxlan-device", ERROR, "restart the podnet agent on node-1 (it recreates vxlan.calico)"),
    (lambda f: _device(f, vxlan=VxlanInfo(4096, 4789, "172.31.0.11", 1, False)),
     "vxlan-device", ERROR, "restart the podnet agent on node-1 (it recreates vxlan.calico)"),
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


def _device(f, **changes):
    links = node(f, "node-1").links
    links["vxlan.calico"] = dataclasses.replace(links["vxlan.calico"], **changes)


def test_trace_and_doctor_judge_the_device_alike():
    f = cluster()
    _device(f, mac="66:00:00:00:00:01")
    hop = next(h for h in trace(f, "pod-a", "pod-b").hops if h.id == "vxlan-device")
    assert hop.status == WARNING and "66:00:00:00:00:01" in hop.hint and vtep_mac("node-1") in hop.hint
    assert [x.problem for x in diagnose(f).findings if x.check == "vxlan-device"] == [
        f"vxlan.calico has MAC 66:00:00:00:00:01, the node record's VTEP MAC is {vtep_mac('node-1')}: the other "
        "nodes' neighbour entries name " + vtep_mac("node-1") + ", so packets to node-1's pods are not taken"]


def _offload_status(on: bool, source: str, reason: str) -> dict:
    return {"offloads": {"vxlan.calico": {"txChecksumOffload": on, "source": source, "reason": reason}}}


def test_doctor_tx_checksum_follows_the_agents_decision_not_the_kernel_version():
    f = cluster()
    node(f, "node-1").release = "6.12.9"  # the version alone decides nothing
    assert [x for x in diagnose(f).findings if x.check == "tx-checksum"] == []  # on, as the kernel sets it
    node(f, "node-1").features["vxlan.calico"]["tx-checksum-ip-generic"] = False
    drift = [x for x in diagnose(f).findings if x.check == "tx-checksum"]
    assert [(x.severity, x.node) for x in drift] == [(WARNING, "node-1")] and "keeps it on" in drift[0].problem
    assert drift[0].fix == "ip netns exec lab-node-1 ethtool -K vxlan.calico tx-checksum-ip-generic on"
    # The node's self-test saw bad checksums: off is right, and doctor says why.
    f.nodes["node-1"].status = _offload_status(False, "self-test", "turned off: 3 bad inner checksums")
    why = [x for x in diagnose(f).findings if x.check == "tx-checksum"]
    assert [x.severity for x in why] == [NOTE] and "3 bad inner checksums" in why[0].problem
    assert diagnose(f).ok
    node(f, "node-1").features["vxlan.calico"]["tx-checksum-ip-generic"] = True
    back_on = [x for x in diagnose(f).findings if x.check == "tx-checksum"]
    assert [x.severity for x in back_on] == [WARNING] and back_on[0].fix.endswith("tx-checksum-ip-generic off")
    # An explicit setting without an agent's report: the configuration is what the agent keeps.
    f.nodes["node-1"].status = None
    f.nodes["node-1"].config = VxlanConfig(tx_checksum_offload=False)
    drift = [x for x in diagnose(f).findings if x.check == "tx-checksum"]
    assert [x.severity for x in drift] == [WARNING] and "vxlanTxChecksumOffload is false" in drift[0].problem


def test_doctor_reports_checksum_error_counters():
    f = cluster()
    node(f, "node-2").csum_errors = {"Tcp": 0, "Udp": 0}
    assert [x for x in diagnose(f).findings if x.check == "tx-checksum"] == []
    node(f, "node-2").csum_errors = {"Tcp": 17, "Udp": 0}
    seen = [x for x in diagnose(f).findings if x.check == "tx-checksum"]
    assert [(x.severity, x.node) for x in seen] == [(NOTE, "node-2")] and "17 Tcp" in seen[0].problem


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


# --- IPv6: the same paths on a dual-stack cluster ------------------------------------------------------

NODES6 = {
    "node-1": {"ip": "fd31::11", "tunnel": "fd00:10:244::", "block": "fd00:10:244::/122"},
    "node-2": {"ip": "fd31::12", "tunnel": "fd00:10:244::40", "block": "fd00:10:244::40/122"},
}
POD_IP6 = {"pod-a": "fd00:10:244::1", "pod-c": "fd00:10:244::2", "pod-b": "fd00:10:244::41"}
NODAD, TENTATIVE, DADFAILED = rtnl.IFA_F_NODAD, rtnl.IFA_F_TENTATIVE, rtnl.IFA_F_DADFAILED


def dual_stack(f: ClusterFacts | None = None, pod_mtu: int = 1430) -> ClusterFacts:
    """cluster() with the IPv6 side a dual-stack lab has: fd31::/64 underlay, /122 blocks of fd00:10:244::/48,
    vxlan-v6.calico (MTU 1500 - 70), pods with a /128 and the veth's link-local gateway.

    `pod_mtu`: the pods' eth0 MTU; 1430 fits the IPv6 tunnel (the lab gives pods 1450, the IPv4 budget)."""
    f = f or cluster()
    f.pools.append(IPPool("default-ipv6-ippool", "fd00:10:244::/48"))
    for name, n in NODES6.items():
        other_name = next(o for o in NODES6 if o != name)
        other = NODES6[other_name]
        nf = f.nodes[name]
        nf.address6, nf.tunnel_ip6, nf.vtep_mac6, nf.blocks6 = f"{n['ip']}/64", n["tunnel"], vtep_mac(name, True), \
            [n["block"]]
        k = nf.kernel
        k.links["vxlan-v6.calico"] = Link(4, "vxlan-v6.calico", "vxlan", 1430, vtep_mac(name, True), True, None,
                                          VxlanInfo(4096, 4789, None, 2, False, n["ip"]))
        k.addresses += [Address("eth0", n["ip"], 64), Address("vxlan-v6.calico", n["tunnel"], 128),
                        Address("vxlan-v6.calico", "fe80::6424:acff:fe63:df6c", 64)]
        k.routes += [
            RouteFact("::/0", "fd31::1", "eth0", proto=4, metric=1024),
            RouteFact("fd31::/64", None, "eth0", proto=2, metric=256),
            RouteFact(n["block"], None, "lo", type="blackhole", proto=80, metric=1024),
            RouteFact(other["block"], other["tunnel"], "vxlan-v6.calico", onlink=True, proto=80, metric=1024),
        ]
        k.neighbours += [NeighFact(other["tunnel"], vtep_mac(other_name, True), "vxlan-v6.calico", "PERMANENT"),
                         NeighFact("ff02::16", "33:33:00:00:00:16", "vxlan-v6.calico", "NOARP")]
        k.fdb.append(FdbFact(vtep_mac(other_name, True), other["ip"], "vxlan-v6.calico", True))
        k.sysctls6 = {"conf/all/forwarding": "1"}
        k.features["vxlan-v6.calico"] = {"tx-checksum-ip-generic": True}
    for p in f.pods:
        p.ip6 = POD_IP6[p.name]
        k = node(f, p.node)
        k.addresses.append(Address(p.host_interface, GATEWAY_V6, 64, NODAD))
        k.routes.append(RouteFact(f"{p.ip6}/128", None, p.host_interface, proto=3, metric=1024))
        k.sysctls6.update({f"conf/{p.host_interface}/proxy_ndp": "1", f"conf/{p.host_interface}/accept_dad": "0"})
        pk = p.kernel
        eth0 = pk.links["eth0"]
        pk.links["eth0"] = Link(eth0.index, "eth0", "veth", pod_mtu, eth0.mac, True, eth0.peer)
        pk.addresses += [Address("eth0", p.ip6, 128, NODAD), Address("eth0", "fe80::683a:84ff:fe20:9ffb", 64)]
        pk.routes += [RouteFact("fe80::/64", None, "eth0", proto=2, metric=256),
                      RouteFact("::/0", GATEWAY_V6, "eth0", proto=3, metric=1024)]
    return f


def v6(f: ClusterFacts, src: str = "pod-a", dst: str = "pod-b"):
    return trace(f, src, dst, family=6)


def test_healthy_ipv6_path_across_nodes_has_every_hop_with_the_ipv6_state():
    t = v6(dual_stack())
    assert (t.kind, t.family) == ("cross-node", 6)
    assert [h.id for h in t.hops] == CROSS_HOPS
    assert [h.status for h in t.hops] == [OK] * len(CROSS_HOPS), [(h.id, h.found) for h in t.hops if not h.ok]
    assert (t.src.ip, t.dst.ip) == ("fd00:10:244::1", "fd00:10:244::41")
    assert t.wire == {
        "vni": 4096, "port": 4789, "outer_src": "fd31::11", "outer_dst": "fd31::12",
        "underlay_interface": "eth0", "inner_src_mac": vtep_mac("node-1", True),
        "inner_dst_mac": vtep_mac("node-2", True), "inner_src": "fd00:10:244::1", "inner_dst": "fd00:10:244::41",
        "pod_mtu": 1430, "vxlan_mtu": 1430, "underlay_mtu": 1500,
    }
    hops = {h.id: h for h in t.hops}
    assert hops["pod-interface"].found.endswith("fd00:10:244::1/128 nodad, fe80::683a:84ff:fe20:9ffb/64")
    assert hops["pod-route"].found == f"default via {GATEWAY_V6} dev eth0"
    assert hops["gateway"].title == f"NDP for {GATEWAY_V6}"
    assert f"{GATEWAY_V6}/64: held; accept_dad=0; proxy_ndp=1" in hops["gateway"].found
    assert hops["host-route"].found == \
        "fd00:10:244::40/122 via fd00:10:244::40 dev vxlan-v6.calico proto 80 onlink"
    assert hops["vxlan-device"].found.endswith("local fd31::11 dev eth0 dstport 4789 nolearning, fd00:10:244::/128")
    assert hops["neighbour"].title == "permanent NDP entry"
    assert hops["neighbour"].found == \
        f"fd00:10:244::40 dev vxlan-v6.calico lladdr {vtep_mac('node-2', True)} PERMANENT"
    assert hops["fdb"].found == f"{vtep_mac('node-2', True)} dev vxlan-v6.calico dst fd31::12 self permanent"
    assert hops["underlay-route"].title == "underlay route to fd31::12"
    assert hops["decapsulation"].title == "vxlan-v6.calico on node-2 decapsulates"
    assert hops["remote-route"].found == "fd00:10:244::41 dev calib000000000b"
    assert "reply route: default via fe80::ecee:eeff:feee:eeee dev eth0" in hops["dst-pod"].found
    text = format_trace(t)
    assert text.startswith("pod-a (fd00:10:244::1) on node-1 -> pod-b (fd00:10:244::41) on node-2: across nodes, "
                           "through the VXLAN tunnel (IPv6)")
    assert "outer IPv6 fd31::11 -> fd31::12 / UDP dport 4789 / VXLAN VNI 4096" in text
    assert "/ IPv6 fd00:10:244::1 -> fd00:10:244::41" in text
    assert "MTU budget: pod 1430 + 70 = 1500 <= underlay 1500" in text
    data = json.loads(json.dumps(t.to_dict()))
    assert (data["family"], data["ok"]) == (6, True)
    assert data["nodes"]["node-2"]["device"] == "vxlan-v6.calico" and data["nodes"]["node-2"]["ip"] == "fd31::12"
    # The IPv4 path of the same cluster is unchanged.
    t4 = trace(dual_stack(), "pod-a", "pod-b")
    assert t4.family == 4 and t4.ok and t4.wire["outer_src"] == "172.31.0.11"
    assert t4.hops[2].title.startswith("proxy ARP")


def test_ipv6_family_is_chosen_by_flag_by_address_or_by_the_pods():
    f = dual_stack()
    assert trace(f, "pod-a", "pod-b").family == 4  # the default
    assert v6(f).family == 6
    assert trace(f, "fd00:10:244::1", "fd00:10:244::41").family == 6  # addresses choose
    assert trace(f, "pod-a", "fd00:10:244:0::41").dst.pod == "pod-b"  # any spelling of the address
    assert trace(f, "pod-a", "fd00:10:244::42").dst.pod is None  # an IPv6 address no pod holds
    with pytest.raises(TraceError, match="different families"):
        trace(f, "10.244.0.1", "fd00:10:244::41")
    with pytest.raises(TraceError, match="IPv6 was asked for, but 10.244.0.65 is an IPv4 address"):
        trace(f, "pod-a", "10.244.0.65", family=6)
    with pytest.raises(TraceError, match="pod pod-a has no IPv6 address"):
        trace(cluster(), "pod-a", "pod-b", family=6)  # an IPv4-only cluster
    # Pods with only IPv6 are traced over IPv6 without -6.
    for p in f.pods:
        p.ip = None
    assert trace(f, "pod-a", "pod-b").family == 6


def test_healthy_ipv6_path_on_one_node():
    t = v6(dual_stack(), "pod-a", "pod-c")
    assert (t.kind, t.family, t.ok, t.wire) == ("same-node", 6, True, None)
    assert [h.id for h in t.hops] == ["pod-interface", "pod-route", "gateway", "host-route", "dst-veth", "dst-pod"]
    assert [h.status for h in t.hops] == [OK] * 6, [(h.id, h.found) for h in t.hops if not h.ok]
    assert t.hops[3].found == "fd00:10:244::2 dev calic000000000c"
    assert "(IPv6)" in format_trace(t) and "the path is intact" in format_trace(t)


def _break6(f, what):
    n1, n2 = node(f, "node-1"), node(f, "node-2")
    a, b = pod(f, "pod-a").kernel, pod(f, "pod-b").kernel
    mac2 = vtep_mac("node-2", True)
    if what == "pod-default-route":
        a.routes = [r for r in a.routes if r.dst != "::/0"]
    elif what == "pod-address":
        a.addresses = [x for x in a.addresses if x.ip != "fd00:10:244::1"]
    elif what == "pod-address-dadfailed":
        a.addresses = [Address("eth0", "fd00:10:244::1", 128, DADFAILED) if x.ip == "fd00:10:244::1" else x
                       for x in a.addresses]
    elif what == "gateway-missing":
        n1.addresses = [x for x in n1.addresses if not (x.ifname == "calia000000000a" and x.ip == GATEWAY_V6)]
    elif what == "gateway-tentative":
        n1.addresses = [Address(x.ifname, x.ip, 64, TENTATIVE) if x.ifname == "calia000000000a" and x.ip == GATEWAY_V6
                        else x for x in n1.addresses]
    elif what == "forwarding":
        n1.sysctls6["conf/all/forwarding"] = "0"
    elif what == "block-route":
        replace_route(n1, "fd00:10:244::40/122", None)
    elif what == "vxlan-down":
        n1.links["vxlan-v6.calico"] = Link(4, "vxlan-v6.calico", "vxlan", 1430, vtep_mac("node-1", True), False,
                                           None, n1.links["vxlan-v6.calico"].vxlan)
    elif what == "vxlan-local":
        n1.links["vxlan-v6.calico"] = Link(4, "vxlan-v6.calico", "vxlan", 1430, vtep_mac("node-1", True), True,
                                           None, VxlanInfo(4096, 4789, None, 2, False, "fd31::99"))
    elif what == "ndp-mac":
        n1.neighbours = [x for x in n1.neighbours if x.dev != "vxlan-v6.calico"] + [
            NeighFact("fd00:10:244::40", "66:00:00:00:00:99", "vxlan-v6.calico", "PERMANENT")]
    elif what == "fdb-missing":
        n1.fdb = [x for x in n1.fdb if x.dev != "vxlan-v6.calico"]
    elif what == "fdb-v4-address":  # the IPv6 device pointed at the node's IPv4 address
        n1.fdb = [x for x in n1.fdb if x.dev != "vxlan-v6.calico"] + [
            FdbFact(mac2, "172.31.0.12", "vxlan-v6.calico", True)]
    elif what == "vxlan-mtu":
        n1.links["vxlan-v6.calico"] = Link(4, "vxlan-v6.calico", "vxlan", 1450, vtep_mac("node-1", True), True,
                                           None, n1.links["vxlan-v6.calico"].vxlan)
    elif what == "underlay-route":
        replace_route(n1, "::/0", None)
        replace_route(n1, "fd31::/64", None)
    elif what == "remote-firewall":
        n2.firewall = [FirewallRule("ip6", "filter", "input", "input", 7, ((4789, 4789),), "drop")]
    elif what == "remote-forwarding":
        n2.sysctls6["conf/all/forwarding"] = "0"
    elif what == "remote-pod-route":
        replace_route(n2, "fd00:10:244::41/128", None)
    elif what == "dst-gateway-missing":
        n2.addresses = [x for x in n2.addresses if not (x.ifname == "calib000000000b" and x.ip == GATEWAY_V6)]
    elif what == "dst-reply-route":
        b.routes = [r for r in b.routes if r.dst != "::/0"]


CASES6 = [
    ("pod-default-route", "pod-route",
     "ip -n lab-pod-a -6 route replace default via fe80::ecee:eeff:feee:eeee dev eth0"),
    ("pod-address", "pod-interface", "ip -n lab-pod-a addr add fd00:10:244::1/128 dev eth0 nodad"),
    ("pod-address-dadfailed", "pod-interface", "ip -n lab-pod-a addr del fd00:10:244::1/128 dev eth0 && "
                                               "ip -n lab-pod-a addr add fd00:10:244::1/128 dev eth0 nodad"),
    ("gateway-missing", "gateway",
     "ip -n lab-node-1 addr add fe80::ecee:eeff:feee:eeee/64 dev calia000000000a nodad"),
    ("gateway-tentative", "gateway",
     "ip -n lab-node-1 addr del fe80::ecee:eeff:feee:eeee/64 dev calia000000000a && "
     "ip -n lab-node-1 addr add fe80::ecee:eeff:feee:eeee/64 dev calia000000000a nodad"),
    ("forwarding", "host-route", "ip netns exec lab-node-1 sysctl -w net.ipv6.conf.all.forwarding=1"),
    ("block-route", "host-route",
     "ip -n lab-node-1 -6 route replace fd00:10:244::40/122 via fd00:10:244::40 dev vxlan-v6.calico onlink proto 80"),
    ("vxlan-down", "vxlan-device", "ip -n lab-node-1 link set vxlan-v6.calico up"),
    ("vxlan-local", "vxlan-device", "restart the podnet agent on node-1: it recreates vxlan-v6.calico with the "
                                    "node's address"),
    ("ndp-mac", "neighbour", f"ip -n lab-node-1 neigh replace fd00:10:244::40 dev vxlan-v6.calico lladdr "
                             f"{vtep_mac('node-2', True)} nud permanent"),
    ("fdb-missing", "fdb", f"bridge -n lab-node-1 fdb append {vtep_mac('node-2', True)} dev vxlan-v6.calico "
                           "dst fd31::12 self permanent"),
    ("fdb-v4-address", "fdb", f"bridge -n lab-node-1 fdb replace {vtep_mac('node-2', True)} dev vxlan-v6.calico "
                              "dst fd31::12 self permanent"),
    ("vxlan-mtu", "encapsulation", "ip -n lab-node-1 link set vxlan-v6.calico mtu 1430"),
    ("underlay-route", "underlay-route", "ip -n lab-node-1 -6 route add fd31::12 via fd31::1 dev eth0"),
    ("remote-firewall", "decapsulation", "ip netns exec lab-node-2 nft delete rule ip6 filter input handle 7"),
    ("remote-forwarding", "remote-route", "ip netns exec lab-node-2 sysctl -w net.ipv6.conf.all.forwarding=1"),
    ("remote-pod-route", "remote-route", "ip -n lab-node-2 -6 route replace fd00:10:244::41/128 dev calib000000000b"),
    ("dst-gateway-missing", "dst-veth",
     "ip -n lab-node-2 addr add fe80::ecee:eeff:feee:eeee/64 dev calib000000000b nodad"),
    ("dst-reply-route", "dst-pod", "ip -n lab-pod-b -6 route replace default via fe80::ecee:eeff:feee:eeee dev eth0"),
]


@pytest.mark.parametrize("what, hop_id, fix", CASES6)
def test_first_broken_ipv6_hop_names_what_was_expected_and_the_fix(what, hop_id, fix):
    f = dual_stack()
    _break6(f, what)
    t = v6(f)
    broken = t.first_broken
    assert broken is not None and not t.ok, [(h.id, h.status, h.found) for h in t.hops]
    assert (broken.id, broken.status, broken.fix) == (hop_id, BROKEN, fix), broken
    assert broken.expected and broken.found
    assert f"fix: {fix}" in format_trace(t)
    assert json.loads(json.dumps(t.to_dict()))["first_broken"] == hop_id
    # Breaking the IPv6 side leaves the IPv4 path of the same pods intact.
    t4 = trace(f, "pod-a", "pod-b")
    assert t4.ok, [(h.id, h.found) for h in t4.hops if not h.ok]


def test_ipv6_vxlan_device_down_took_its_routes_and_the_fix_brings_it_up_first():
    f = dual_stack()
    _break6(f, "vxlan-down")
    _break6(f, "block-route")  # what the kernel does when the device goes down (IPv6 also drops NDP and addresses)
    hop = v6(f).first_broken
    assert hop.id == "host-route" and "vxlan-v6.calico is down, which removed its routes" in hop.found
    assert hop.fix == ("ip -n lab-node-1 link set vxlan-v6.calico up && ip -n lab-node-1 -6 route replace "
                       "fd00:10:244::40/122 via fd00:10:244::40 dev vxlan-v6.calico onlink proto 80")
    assert "the route to fd00:10:244::40/122 is missing" in hop.found


def test_ipv6_warnings_do_not_break_the_path():
    # The pods' MTU of the IPv4 budget (1450) is above vxlan-v6.calico's: Packet Too Big, then path MTU discovery.
    t = v6(dual_stack(pod_mtu=1450))
    hop = next(h for h in t.hops if h.id == "encapsulation")
    assert (hop.status, t.ok) == (TRACE_WARNING, True)
    assert hop.expected == "pod MTU + 70 <= underlay MTU 1500 (pod MTU <= 1430)"
    assert hop.fix == "ip -n lab-pod-a link set eth0 mtu 1430" and "Packet Too Big" in hop.hint
    assert "MTU budget: pod 1450 + 70 = 1520 > underlay 1500" in format_trace(t)
    assert "the path is intact (1 warning)" in format_trace(t)
    assert trace(dual_stack(pod_mtu=1450), "pod-a", "pod-b").ok  # 1450 fits IPv4
    # DAD and proxy NDP switched back on: nothing breaks now, but the gateway goes tentative on the next link flap.
    for key, value, fix in (("accept_dad", "1", "net.ipv6.conf.calia000000000a.accept_dad=0"),
                            ("proxy_ndp", "0", "net.ipv6.conf.calia000000000a.proxy_ndp=1")):
        f = dual_stack()
        node(f, "node-1").sysctls6[f"conf/calia000000000a/{key}"] = value
        t = v6(f)
        gw = t.hops[2]
        assert (gw.id, gw.status, t.ok) == ("gateway", TRACE_WARNING, True)
        assert gw.fix == f"ip netns exec lab-node-1 sysctl -w {fix}"
    # The tunnel address went with a link flap: the agent puts it back; pods' packets pass meanwhile.
    f = dual_stack()
    node(f, "node-1").addresses = [x for x in node(f, "node-1").addresses if x.ip != "fd00:10:244::"]
    hop = next(h for h in v6(f).hops if h.id == "vxlan-device")
    assert hop.status == TRACE_WARNING and hop.fix == "ip -n lab-node-1 addr add fd00:10:244::/128 dev vxlan-v6.calico"


def test_firewall_rules_count_only_for_the_family_they_see():
    f = dual_stack()
    node(f, "node-2").firewall = [FirewallRule("ip", "filter", "input", "input", 7, ((4789, 4789),), "drop")]
    assert v6(f).ok  # an `ip` table sees IPv4 only
    assert trace(f, "pod-a", "pod-b").first_broken.id == "decapsulation"
    node(f, "node-2").firewall = [FirewallRule("inet", "filter", "input", "input", 7, ((4789, 4789),), "drop")]
    assert v6(f).first_broken.id == "decapsulation" and trace(f, "pod-a", "pod-b").first_broken.id == "decapsulation"


def test_ipv6_unread_remote_node_is_not_inspected():
    f = dual_stack()
    f.nodes["node-2"].kernel = None
    f.nodes["node-2"].unreadable = "node-2 is not readable from this host (node-1)"
    pod(f, "pod-b").kernel = None
    t = v6(f)
    status = {h.id: h.status for h in t.hops}
    assert [status[h] for h in ("decapsulation", "remote-route", "dst-veth", "dst-pod")] == [UNKNOWN] * 4
    assert all(status[h] == OK for h in CROSS_HOPS[:9]) and t.ok


def test_svg_of_an_ipv6_path():
    root = _svg(v6(dual_stack()))
    texts = _texts(root)
    for expected in ("node-1  fd31::11", "node-2  fd31::12", "fd00:10:244::1/128", "fd00:10:244::41/128",
                     "vxlan-v6.calico", GATEWAY_V6, "VXLAN VNI 4096 / UDP 4789: fd31::11 -> fd31::12",
                     "neigh fd00:10:244::40", "every inspected hop is as it must be"):
        assert expected in texts, expected
    assert "169.254.1.1" not in texts and "/32" not in texts
    assert _drawn_in(root, "#c62828") == []
    f = dual_stack()
    _break6(f, "fdb-missing")
    texts = _texts(_svg(v6(f)))
    assert "broken at hop 7 (permanent FDB entry, node-1)" in texts and "MISSING" in texts
    texts = _texts(_svg(v6(dual_stack(pod_mtu=1450))))
    assert "no hop is broken; 1 warning: hop 8 (on the wire)" in texts
    assert "fd00:10:244::2/128" in _texts(_svg(v6(dual_stack(), "pod-a", "pod-c")))


def test_route_text_and_sysctl_commands_for_ipv6():
    assert str(RouteFact("fd00:10:244::41/128", None, "cali1", proto=3)) == "fd00:10:244::41 dev cali1"
    assert str(RouteFact("::/0", GATEWAY_V6, "eth0")) == f"default via {GATEWAY_V6} dev eth0"
    assert sysctl_cmd("n1", "conf/all/forwarding", 1, 6) == "ip netns exec n1 sysctl -w net.ipv6.conf.all.forwarding=1"
    assert sysctl_cmd(None, "conf/vxlan-v6.calico/accept_dad", 0, 6) == \
        "sysctl -w net/ipv6/conf/vxlan-v6.calico/accept_dad=0"
    k = dual_stack().nodes["node-1"].kernel
    assert k.lookup("fd00:10:244::41").dev == "vxlan-v6.calico" and k.lookup("10.244.0.65").dev == "vxlan.calico"
    assert k.default_route(6).gateway == "fd31::1" and k.default_route().gateway == "172.31.0.1"
    assert str(Address("eth0", "fe80::1", 64, TENTATIVE | NODAD)) == "fe80::1/64 nodad tentative"
    assert not Address("eth0", "fe80::1", 64, DADFAILED).usable and Address("eth0", "fe80::1", 64, NODAD).usable


# --- rtnl decoding of what the facts are built from ---------------------------------------------------------


def _rta(kind: int, data: bytes) -> bytes:
    length = 4 + len(data)
    return struct.pack("=HH", length, kind) + data + b"\0" * ((4 - length % 4) % 4)


def test_parse_link_decodes_a_vxlan_device_of_either_family():
    def vxlan_link(local_attr: bytes) -> bytes:
        data = (_rta(rtnl.IFLA_VXLAN_ID, struct.pack("=I", 4096)) + _rta(rtnl.IFLA_VXLAN_LINK, struct.pack("=I", 2))
                + local_attr + _rta(rtnl.IFLA_VXLAN_LEARNING, b"\0")
                + _rta(rtnl.IFLA_VXLAN_PORT, struct.pack("!H", 4789)))
        info = _rta(rtnl.IFLA_INFO_KIND, b"vxlan\0") + _rta(rtnl.IFLA_INFO_DATA, data)
        return (struct.pack("=BBHiII", socket.AF_UNSPEC, 0, 1, 4, 0x1, 0) + _rta(rtnl.IFLA_IFNAME, b"vxlan-v6.calico\0")
                + _rta(rtnl.IFLA_MTU, struct.pack("=I", 1430)) + _rta(rtnl.IFLA_ADDRESS, bytes.fromhex("662400000001"))
                + _rta(rtnl.IFLA_LINKINFO, info))

    def subset(link: dict, want: dict) -> dict:
        return {k: link.get(k) for k in want}

    link = rtnl.parse_link(vxlan_link(_rta(rtnl.IFLA_VXLAN_LOCAL6, ipaddress.IPv6Address("fd31::11").packed)))
    want = {"index": 4, "ifname": "vxlan-v6.calico", "mtu": 1430, "address": "66:24:00:00:00:01", "up": True,
            "kind": "vxlan", "link": None,
            "vxlan": {"vni": 4096, "port": 4789, "local": None, "local6": "fd31::11", "parent": 2, "learning": False}}
    assert subset(link, want) == want
    link = rtnl.parse_link(vxlan_link(_rta(rtnl.IFLA_VXLAN_LOCAL, bytes([172, 31, 0, 11]))))
    assert (link["vxlan"]["local"], link["vxlan"]["local6"]) == ("172.31.0.11", None)
    veth = struct.pack("=BBHiII", socket.AF_UNSPEC, 0, 1, 5, 0, 0) + _rta(rtnl.IFLA_IFNAME, b"cali1\0") + \
        _rta(rtnl.IFLA_LINKINFO, _rta(rtnl.IFLA_INFO_KIND, b"veth\0")) + _rta(rtnl.IFLA_LINK, struct.pack("=I", 9))
    link = rtnl.parse_link(veth)
    want = {"index": 5, "ifname": "cali1", "mtu": None, "address": None, "up": False, "kind": "veth", "link": 9}
    assert subset(link, want) == want and "vxlan" not in link  # no `vxlan` key on other links
    addr = struct.pack("=BBBBI", socket.AF_INET6, 64, NODAD, 253, 5) + \
        _rta(rtnl.IFA_ADDRESS, ipaddress.IPv6Address(GATEWAY_V6).packed) + \
        _rta(rtnl.IFA_FLAGS, struct.pack("=I", 0x202))
    assert rtnl.parse_addr_flags(addr) == 0x202  # IFA_FLAGS wins: it holds the flags above 8 bits too
    assert rtnl.parse_addr(addr)["address"] == GATEWAY_V6


# --- doctor on a dual-stack node -------------------------------------------------------------------------------


def test_doctor_finds_nothing_on_a_healthy_dual_stack_cluster_but_notes_the_pods_ipv6_mtu():
    assert diagnose(dual_stack()).findings == []
    report = diagnose(dual_stack(pod_mtu=1450))
    assert [(x.severity, x.check, x.node) for x in report.findings] == [(NOTE, "mtu", "node-1"),
                                                                         (NOTE, "mtu", "node-2")]
    assert report.ok and "above vxlan-v6.calico's 1430" in report.findings[0].problem
    assert "(pod-a, pod-c: 1450)" in report.findings[0].problem


@pytest.mark.parametrize("mutate, check, severity, fix", [
    (lambda f: node(f, "node-1").links.update({"vxlan-v6.calico": Link(
        4, "vxlan-v6.calico", "vxlan", 1450, vtep_mac("node-1", True), True, None,
        VxlanInfo(4096, 4789, None, 2, False, "fd31::11"))}),
     "mtu", ERROR, "ip -n lab-node-1 link set vxlan-v6.calico mtu 1430"),
    (lambda f: node(f, "node-1").sysctls6.update({"conf/all/forwarding": "0"}),
     "ipv6-forward", ERROR, "ip netns exec lab-node-1 sysctl -w net.ipv6.conf.all.forwarding=1"),
    (lambda f: node(f, "node-1").links.pop("vxlan-v6.calico"),
     "vxlan-device", ERROR, "start the podnet agent on node-1: it creates vxlan-v6.calico"),
    (lambda f: node(f, "node-1").links.update({"vxlan-v6.calico": Link(
        4, "vxlan-v6.calico", "vxlan", 1430, vtep_mac("node-1", True), True, None,
        VxlanInfo(4096, 4789, None, 2, False, "fd31::99"))}),
     "vxlan-device", ERROR, "restart the podnet agent on node-1 (it recreates vxlan-v6.calico)"),
    (lambda f: setattr(node(f, "node-1"), "fdb", [x for x in node(f, "node-1").fdb if x.dev != "vxlan-v6.calico"]),
     "fdb", ERROR, f"bridge -n lab-node-1 fdb append {vtep_mac('node-2', True)} dev vxlan-v6.calico dst fd31::12 "
                   "self permanent"),
    (lambda f: setattr(node(f, "node-1"), "neighbours", [x for x in node(f, "node-1").neighbours
                                                         if x.dev != "vxlan-v6.calico"]),
     "neighbour", ERROR, f"ip -n lab-node-1 neigh replace fd00:10:244::40 dev vxlan-v6.calico lladdr "
                         f"{vtep_mac('node-2', True)} nud permanent"),
    (lambda f: node(f, "node-1").fdb.append(FdbFact("66:00:00:00:00:01", "fd31::99", "vxlan-v6.calico", True)),
     "fdb", WARNING, "bridge -n lab-node-1 fdb del 66:00:00:00:00:01 dev vxlan-v6.calico dst fd31::99 self"),
    (lambda f: node(f, "node-1").neighbours.append(
        NeighFact("fd00:10:244::99", "66:00:00:00:00:03", "vxlan-v6.calico", "PERMANENT")),
     "neighbour", WARNING, "ip -n lab-node-1 neigh del fd00:10:244::99 dev vxlan-v6.calico"),
    (lambda f: replace_route(node(f, "node-1"), "fd00:10:244::40/122", None),
     "routes", ERROR, "ip -n lab-node-1 route replace fd00:10:244::40/122 via fd00:10:244::40 dev vxlan-v6.calico "
                      "onlink proto 80"),
])
def test_doctor_ipv6_checks(mutate, check, severity, fix):
    f = dual_stack()
    mutate(f)
    report = diagnose(f)
    mine = [x for x in report.findings if x.check == check]
    assert [(x.severity, x.node) for x in mine] == [(severity, "node-1")], report.findings
    assert mine[0].fix == fix
    assert not report.ok


def test_doctor_ipv6_stale_entries_name_the_node_and_its_ipv6_side():
    f = dual_stack()
    k = node(f, "node-1")
    mac2 = vtep_mac("node-2", True)
    k.fdb = [x for x in k.fdb if x.dev != "vxlan-v6.calico"] + [FdbFact(mac2, "fd31::99", "vxlan-v6.calico", True)]
    k.neighbours = [x for x in k.neighbours if x.dev != "vxlan-v6.calico"] + [
        NeighFact("fd00:10:244::40", "66:00:00:00:00:02", "vxlan-v6.calico", "PERMANENT")]
    problems = {x.problem for x in diagnose(f).findings}
    assert f"stale FDB entry {mac2} dev vxlan-v6.calico dst fd31::99 self permanent: node-2 is at fd31::12" in problems
    assert any(p.startswith(f"neighbour entry fd00:10:244::40 has lladdr 66:00:00:00:00:02, not {mac2}")
               for p in problems)


def test_doctor_ipv6_tx_checksum_and_networkmanager_cover_vxlan_v6():
    f = dual_stack()
    node(f, "node-1").features["vxlan-v6.calico"]["tx-checksum-ip-generic"] = False
    tx = [x for x in diagnose(f).findings if x.check == "tx-checksum"]
    assert [x.severity for x in tx] == [WARNING]
    assert tx[0].fix.endswith("ethtool -K vxlan-v6.calico tx-checksum-ip-generic on")
    f.nodes["node-1"].host = {"networkmanager": {"running": True, "unmanaged_devices": ["interface-name:cali*",
                                                                                        "interface-name:vxlan.calico"]}}
    nm = [x for x in diagnose(f).findings if x.check == "networkmanager"]
    assert len(nm) == 1 and "may manage vxlan-v6.calico" in nm[0].problem and "vxlan-v6.calico" in nm[0].fix
