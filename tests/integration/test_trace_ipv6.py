"""`podnet trace` over IPv6 on a real dual-stack lab: every hop of a healthy IPv6 path is found as it must be
(across nodes through vxlan-v6.calico and on one node), and when one piece of the IPv6 state is broken the trace
names that hop first, ping -6 fails too, and running the fix the trace prints makes both succeed again.
"""

import json
import subprocess
import xml.etree.ElementTree as ET

import pytest

from podnet.cli.main import main
from podnet.datastore import open_datastore
from podnet.datastore.resources import Resources
from podnet.model import vtep_mac

from .kernel import ping
from .witness import run_fix

GATEWAY_V6 = "fe80::ecee:eeff:feee:eeee"


def cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def trace_json(capsys, lab, src: str, dst: str, *flags: str) -> tuple[int, dict]:
    code, out, err = cli(capsys, "trace", src, dst, "--lab", lab.name, "-o", "json", *flags)
    assert out, err
    return code, json.loads(out)


def records(lab) -> dict:
    """The node records: the IPv6 underlay and tunnel addresses are there (lab status shows IPv4)."""
    store = open_datastore(lab.datastore_url)
    try:
        return {n.name: n for n in Resources(store).nodes()}
    finally:
        store.close()


def by_name(status: dict) -> tuple[dict, dict]:
    return {n["name"]: n for n in status["nodes"]}, {p["name"]: p for p in status["pods"]}


def test_healthy_ipv6_paths_across_nodes_and_on_one_node(lab_factory, capsys, tmp_path):
    lab = lab_factory("pnt-t6", nodes=2, pods_per_node=2, ipv6=True)
    nodes, pods = by_name(lab.status())
    rec = records(lab)
    a, b, c = pods["pod-1-1"], pods["pod-2-1"], pods["pod-1-2"]
    a6, b6, c6 = a["ips"][1], b["ips"][1], c["ips"][1]

    svg = tmp_path / "path6.svg"
    code, out, err = cli(capsys, "trace", "pod-1-1", "pod-2-1", "--lab", lab.name, "-6", "--svg", str(svg))
    assert code == 0, out + err
    assert f"pod-1-1 ({a6}) on node-1 -> pod-2-1 ({b6}) on node-2: across nodes" in out and "(IPv6)" in out
    assert f"NDP for {GATEWAY_V6}" in out
    assert f"{rec['node-2'].tunnel_address6} dev vxlan-v6.calico lladdr {vtep_mac('node-2', ipv6=True)} PERMANENT" \
        in out
    assert f"outer IPv6 {rec['node-1'].ip6} -> {rec['node-2'].ip6} / UDP dport 4789 / VXLAN VNI 4096" in out
    assert "the path is intact" in out
    root = ET.parse(svg).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert "vxlan-v6.calico" in "".join(e.text or "" for e in root.iter("{http://www.w3.org/2000/svg}text"))

    code, data = trace_json(capsys, lab, a6, b6)  # by IPv6 address: no -6 needed
    assert code == 0 and data["ok"] and (data["kind"], data["family"]) == ("cross-node", 6)
    status = {h["id"]: h["status"] for h in data["hops"]}
    # The lab gives pods the IPv4 budget (underlay - 50) as MTU, 20 bytes above vxlan-v6.calico's: the node
    # answers bigger IPv6 packets with Packet Too Big, which the trace reports as a warning, not a break.
    assert status.pop("encapsulation") in ("ok", "warning")
    assert set(status.values()) == {"ok"}, [h for h in data["hops"] if h["status"] != "ok"]
    w = data["wire"]
    assert (w["outer_src"], w["outer_dst"]) == (rec["node-1"].ip6, rec["node-2"].ip6)
    assert (w["inner_src_mac"], w["inner_dst_mac"]) == (vtep_mac("node-1", ipv6=True), vtep_mac("node-2", ipv6=True))
    assert (w["inner_src"], w["inner_dst"], w["vni"], w["port"], w["vxlan_mtu"]) == (a6, b6, 4096, 4789, 1430)
    hops = {h["id"]: h for h in data["hops"]}
    block6 = next(blk for blk in nodes["node-2"]["blocks"] if ":" in blk)
    assert hops["host-route"]["found"] == \
        f"{block6} via {rec['node-2'].tunnel_address6} dev vxlan-v6.calico proto 80 onlink"
    assert hops["remote-route"]["found"] == f"{b6} dev {b['interface']}"
    # The kernel agrees: two routers on the way, and IPv4 is still what a trace by name follows.
    assert "ttl=62" in ping(a["netns"], b6).stdout
    code, data4 = trace_json(capsys, lab, "pod-1-1", "pod-2-1")
    assert code == 0 and data4["family"] == 4 and data4["ok"] and data4["dst"]["ip"] == b["ip"]

    code, data = trace_json(capsys, lab, "pod-1-1", "pod-1-2", "-6")
    assert code == 0 and (data["kind"], data["family"]) == ("same-node", 6) and data["ok"]
    assert [h["id"] for h in data["hops"]] == ["pod-interface", "pod-route", "gateway", "filter-egress", "host-route",
                                               "filter-ingress", "dst-veth", "dst-pod"]
    assert {h["status"] for h in data["hops"]} == {"ok"}
    assert data["hops"][4]["found"] == f"{c6} dev {c['interface']}"
    assert "ttl=63" in ping(a["netns"], c6).stdout


# Each case breaks one piece of IPv6 state on the path pod-1-1 (node-1) -> pod-2-1 (node-2). Placeholders:
# {n1} {n2} node namespaces, {p1} pod-1-1's, {c1} its host veth, {t2} node-2's IPv6 tunnel address, {b2} its /122.
FLUSH_POD_NDP = "ip -n {p1} -6 neigh flush dev eth0"  # else the pod's cached entry outlives the breakage
CASES = {
    "block-route": (["ip -n {n1} -6 route del {b2}"], "host-route"),
    "ndp-entry": (["ip -n {n1} -6 neigh del {t2} dev vxlan-v6.calico"], "neighbour"),
    "veth-link-local": ([f"ip -n {{n1}} addr del {GATEWAY_V6}/64 dev {{c1}}", FLUSH_POD_NDP], "gateway"),
    "ipv6-forwarding": (["ip netns exec {n1} sysctl -qw net.ipv6.conf.all.forwarding=0"], "host-route"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_broken_ipv6_hop_is_named_and_its_fix_repairs_the_path(lab_factory, capsys, case):
    lab = lab_factory("pnt-t6", nodes=2, pods_per_node=1, ipv6=True)
    nodes, pods = by_name(lab.status())
    rec = records(lab)
    a, b = pods["pod-1-1"], pods["pod-2-1"]
    b6 = b["ips"][1]
    assert ping(a["netns"], b6).returncode == 0
    # The agents would repair their own entries within milliseconds: stop them to see the breakage.
    for node in ("node-1", "node-2"):
        lab.stop_agent(node)
    values = {"n1": nodes["node-1"]["netns"], "n2": nodes["node-2"]["netns"], "p1": a["netns"], "c1": a["interface"],
              "t2": rec["node-2"].tunnel_address6,
              "b2": next(blk for blk in nodes["node-2"]["blocks"] if ":" in blk)}
    commands, hop_id = CASES[case]
    for command in commands:
        subprocess.run(command.format(**values), shell=True, check=True, capture_output=True)

    code, data = trace_json(capsys, lab, "pod-1-1", "pod-2-1", "-6")
    assert code == 1 and not data["ok"] and data["family"] == 6
    assert data["first_broken"] == hop_id, [(h["id"], h["status"], h["found"]) for h in data["hops"]]
    hop = next(h for h in data["hops"] if h["id"] == hop_id)
    assert hop["status"] == "broken" and hop["expected"] and hop["fix"]
    assert ping(a["netns"], b6, timeout=1).returncode != 0, "the trace says broken, the ping must agree"
    # The IPv4 path of the same pods does not go through any of this.
    code, data4 = trace_json(capsys, lab, "pod-1-1", "pod-2-1")
    assert code == 0 and data4["ok"], [(h["id"], h["found"]) for h in data4["hops"] if h["status"] != "ok"]

    fixed = run_fix(lab, hop["fix"])
    assert fixed.returncode == 0, (hop["fix"], fixed.stderr)
    code, data = trace_json(capsys, lab, "pod-1-1", "pod-2-1", "-6")
    assert code == 0 and data["ok"], [(h["id"], h["found"]) for h in data["hops"] if h["status"] != "ok"]
    assert ping(a["netns"], b6).returncode == 0


def test_ipv6_flag_on_an_ipv4_only_lab_is_a_clean_error(lab_factory, capsys):
    lab = lab_factory("pnt-t6", nodes=1, pods_per_node=2)
    code, out, err = cli(capsys, "trace", "pod-1-1", "pod-1-2", "--lab", lab.name, "-6")
    assert code == 1 and "pod pod-1-1 has no IPv6 address" in err
