"""`podnet trace` on a real lab: every hop of a healthy path is found as it must be, and when one
piece of kernel state is broken, the trace names that hop first, the ping fails too, and running the
fix the trace prints makes both the trace and the ping succeed again.
"""

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import podnet
from podnet.cli.main import main
from podnet.model import vtep_mac

from .kernel import ping
from .witness import run_fix

REPO = Path(podnet.__file__).resolve().parents[1]


def cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def trace_json(capsys, lab, src: str, dst: str) -> tuple[int, dict]:
    code, out, err = cli(capsys, "trace", src, dst, "--lab", lab.name, "-o", "json")
    assert out, err
    return code, json.loads(out)


def by_name(status: dict) -> tuple[dict, dict]:
    return {n["name"]: n for n in status["nodes"]}, {p["name"]: p for p in status["pods"]}


def test_healthy_paths_across_nodes_and_on_one_node(lab_factory, capsys, tmp_path):
    lab = lab_factory(nodes=2, pods_per_node=2)
    nodes, pods = by_name(lab.status())
    a, b, c = pods["pod-1-1"], pods["pod-2-1"], pods["pod-1-2"]

    svg = tmp_path / "path.svg"
    code, out, err = cli(capsys, "trace", "pod-1-1", "pod-2-1", "--lab", lab.name, "--svg", str(svg))
    assert code == 0, out + err
    assert "the path is intact: a ping shows ttl=62" in out
    assert f"{nodes['node-2']['tunnel_ip']} dev vxlan.calico lladdr {nodes['node-2']['vtep_mac']} PERMANENT" in out
    assert ET.parse(svg).getroot().tag == "{http://www.w3.org/2000/svg}svg"

    code, data = trace_json(capsys, lab, a["ip"], b["ip"])  # by address this time
    assert code == 0 and data["ok"] and data["kind"] == "cross-node"
    assert {h["status"] for h in data["hops"]} == {"ok"}, [h for h in data["hops"] if h["status"] != "ok"]
    assert data["wire"]["outer_src"] == nodes["node-1"]["underlay_ip"]
    assert data["wire"]["outer_dst"] == nodes["node-2"]["underlay_ip"]
    assert (data["wire"]["inner_src_mac"], data["wire"]["inner_dst_mac"]) == (vtep_mac("node-1"), vtep_mac("node-2"))
    assert (data["wire"]["vni"], data["wire"]["port"]) == (4096, 4789)
    # The kernel agrees: two routers on the way.
    assert "ttl=62" in ping(a["netns"], b["ip"]).stdout

    code, data = trace_json(capsys, lab, "pod-1-1", "pod-1-2")
    assert code == 0 and data["kind"] == "same-node" and data["ok"]
    assert [h["id"] for h in data["hops"]] == ["pod-interface", "pod-route", "gateway", "filter-egress", "host-route",
                                               "filter-ingress", "dst-veth", "dst-pod"]
    assert data["hops"][4]["found"] == f"{c['ip']} dev {c['interface']} scope link"
    assert "ttl=63" in ping(a["netns"], c["ip"]).stdout


def test_crosssubnet_trace_goes_direct_inside_a_subnet_and_through_the_tunnel_across(lab_factory, capsys):
    lab = lab_factory(nodes=3, pods_per_node=1, subnets=2, vxlan_mode="CrossSubnet")  # node-1, node-3: subnet 0
    code, data = trace_json(capsys, lab, "pod-1-1", "pod-3-1")
    assert code == 0 and data["ok"] and data["kind"] == "cross-node-direct", data["hops"]
    nodes, _ = by_name(lab.status())
    host_route = next(h for h in data["hops"] if h["id"] == "host-route")
    assert host_route["found"].endswith(f"via {nodes['node-3']['underlay_ip']} dev eth0 proto 80 onlink")
    code, data = trace_json(capsys, lab, "pod-1-1", "pod-2-1")
    assert code == 0 and data["ok"] and data["kind"] == "cross-node", data["hops"]


# Each case breaks one thing on the path pod-1-1 (node-1) -> pod-2-1 (node-2). Placeholders:
# {n1} {n2} node namespaces, {p1} pod-1-1's, {c1} {c2} host veths, {t2} node-2's tunnel IP,
# {m2} its VTEP MAC, {u2} its underlay IP, {b2} its block, {ip2} pod-2-1's IP.
FLUSH_POD_ARP = "ip -n {p1} neigh flush dev eth0"  # else the pod's cached ARP entry outlives the breakage
CASES = {
    "neighbour": (["ip -n {n1} neigh del {t2} dev vxlan.calico"], "neighbour"),
    "fdb": (["bridge -n {n1} fdb del {m2} dev vxlan.calico dst {u2} self"], "fdb"),
    "block-route": (["ip -n {n1} route del {b2}"], "host-route"),
    "vxlan-down": (["ip -n {n1} link set vxlan.calico down"], "host-route"),
    "proxy-arp": (["ip netns exec {n1} sysctl -qw net.ipv4.conf.{c1}.proxy_arp=0", FLUSH_POD_ARP], "gateway"),
    "default-route": (["ip -n {n1} route del default", FLUSH_POD_ARP], "gateway"),
    "ip-forward": (["ip netns exec {n1} sysctl -qw net.ipv4.ip_forward=0", FLUSH_POD_ARP], "gateway"),
    "remote-firewall": (["ip netns exec {n2} nft add table inet t",
                         "ip netns exec {n2} nft add chain inet t input '{{ type filter hook input priority 0; }}'",
                         "ip netns exec {n2} nft add rule inet t input udp dport 4789 drop"], "decapsulation"),
    "remote-pod-route": (["ip -n {n2} route del {ip2}/32 dev {c2}"], "remote-route"),
    "dst-veth-down": (["ip -n {n2} link set {c2} down"], "remote-route"),
    "pod-route": (["ip -n {p1} route del default"], "pod-route"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_broken_hop_is_named_and_its_fix_repairs_the_path(lab_factory, capsys, case):
    lab = lab_factory(nodes=2, pods_per_node=1)
    nodes, pods = by_name(lab.status())
    n1, n2, a, b = nodes["node-1"], nodes["node-2"], pods["pod-1-1"], pods["pod-2-1"]
    assert ping(a["netns"], b["ip"]).returncode == 0
    # The agents would repair their own entries within milliseconds: stop them to see the breakage.
    for node in ("node-1", "node-2"):
        lab.stop_agent(node)
    values = {"n1": n1["netns"], "n2": n2["netns"], "p1": a["netns"], "c1": a["interface"], "c2": b["interface"],
              "t2": n2["tunnel_ip"], "m2": n2["vtep_mac"], "u2": n2["underlay_ip"], "b2": n2["blocks"][0],
              "ip2": b["ip"]}
    commands, hop_id = CASES[case]
    for command in commands:
        subprocess.run(command.format(**values), shell=True, check=True, capture_output=True)

    code, data = trace_json(capsys, lab, "pod-1-1", "pod-2-1")
    assert code == 1 and not data["ok"]
    assert data["first_broken"] == hop_id, [(h["id"], h["status"], h["found"]) for h in data["hops"]]
    hop = next(h for h in data["hops"] if h["id"] == hop_id)
    assert hop["status"] == "broken" and hop["expected"] and hop["fix"]
    assert ping(a["netns"], b["ip"], timeout=1).returncode != 0, "the trace says broken, the ping must agree"

    # Fix, trace again: a device that went down took its routes and neighbour entries with it, so
    # vxlan-down needs the fixes of two hops, one after the other; everything else needs one.
    for _ in range(2 if case == "vxlan-down" else 1):
        fixed = run_fix(lab, hop["fix"])
        assert fixed.returncode == 0, (hop["fix"], fixed.stderr)
        code, data = trace_json(capsys, lab, "pod-1-1", "pod-2-1")
        hop = next((h for h in data["hops"] if h["status"] == "broken"), None)
    assert code == 0 and data["ok"], [(h["id"], h["found"]) for h in data["hops"] if h["status"] != "ok"]
    assert ping(a["netns"], b["ip"]).returncode == 0


def test_on_a_node_itself_the_trace_reads_only_that_node(lab_factory):
    """Without --lab the current namespace is the node (a real host): run it inside node-1's namespace."""
    lab = lab_factory(nodes=2, pods_per_node=1)
    proc = subprocess.run(["ip", "netns", "exec", lab.node_netns("node-1"), sys.executable, "-m", "podnet", "trace",
                           "pod-1-1", "pod-2-1", "--datastore", lab.datastore_url, "-o", "json"],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["access"] == "this host (node-1)"
    status = {h["id"]: h["status"] for h in data["hops"]}
    local = ["pod-interface", "pod-route", "gateway", "host-route", "vxlan-device", "neighbour", "fdb",
             "encapsulation", "underlay-route"]
    assert [status[h] for h in local] == ["ok"] * len(local)
    assert [status[h] for h in ("decapsulation", "remote-route", "dst-veth", "dst-pod")] == ["unknown"] * 4

    # Naming a node that is not this host is refused rather than reading the wrong kernel.
    proc = subprocess.run(["ip", "netns", "exec", lab.node_netns("node-1"), sys.executable, "-m", "podnet", "trace",
                           "pod-1-1", "pod-2-1", "--datastore", lab.datastore_url, "--node", "node-2"],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 1 and "node-2 is not this host" in proc.stderr


def test_unknown_pods_and_labs_are_clean_errors(lab_factory, capsys):
    lab = lab_factory(nodes=1, pods_per_node=1)
    code, out, err = cli(capsys, "trace", "nope", "pod-1-1", "--lab", lab.name)
    assert code == 1 and "no pod is known as 'nope'" in err
    code, out, err = cli(capsys, "trace", "pod-1-1", "pod-1-1", "--lab", "pnt-no-such-lab")
    assert code == 1 and "no lab named pnt-no-such-lab" in err
