"""The always-on VXLAN-mode protections of the filter layer, on a real lab (issue 13, deliverable 2).

Each attack has a control that differs only in what the protection looks at, so a test that passes
because the path is broken for another reason fails on its control instead.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import textwrap
import time

import pytest

from podnet.dataplane import topology
from podnet.model.node import vtep_mac
from tests.integration.conftest import built_lab

LISTEN = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 9999)); s.settimeout(float(sys.argv[1]))
    got = []
    try:
        while True:
            got.append(s.recvfrom(100)[0].decode())
    except socket.timeout:
        pass
    print(",".join(got))
""")

SEND = textwrap.dedent("""
    import socket, sys
    src, dst, port, payload = sys.argv[1], sys.argv[2], int(sys.argv[3]), bytes.fromhex(sys.argv[4])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if src:
        s.bind((src, 0))
    for _ in range(3):
        s.sendto(payload, (dst, port))
""")


def _checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def vxlan_datagram(inner_src: str, inner_dst: str, dst_mac: str, text: str, vni: int = 4096) -> bytes:
    """VXLAN header + Ethernet + IPv4 + UDP to port 9999 carrying `text`."""
    payload = text.encode()
    udp = struct.pack("!HHHH", 40000, 9999, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, socket.inet_aton(inner_src),
                     socket.inet_aton(inner_dst))
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    eth = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex("02aabbccddee") + b"\x08\x00"
    return struct.pack("!II", 0x08000000, vni << 8) + eth + ip + udp


@pytest.fixture(scope="module")
def lab():
    with built_lab("polp-", nodes=2, pods_per_node=0) as lab:
        lab.add_pod("node-1", "a", "x", labels={"pod": "a"})
        lab.add_pod("node-2", "b", "x", labels={"pod": "b"})
        yield lab


def _pod(lab, name):
    return next(p for p in lab.state["pods"] if p["name"] == name)


def deliver(lab, listener_netns: str, sends: list[tuple[str, str, str, int, bytes]]) -> list[str]:
    """Listen on UDP 9999 in `listener_netns`, run each (netns, src, dst, port, payload) send; what arrived."""
    listener = subprocess.Popen(["ip", "netns", "exec", listener_netns, sys.executable, "-c", LISTEN, "1.5"],
                                stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)
        for netns, src, dst, port, payload in sends:
            lab.exec(netns, sys.executable, "-c", SEND, src, dst, str(port), payload.hex(), check=True)
        out, _ = listener.communicate(timeout=10)
    finally:
        listener.kill()
        listener.wait()
    return [x for x in out.strip().split(",") if x]


def test_vxlan_is_accepted_only_from_member_nodes_and_never_from_workloads(lab):
    a, b = _pod(lab, "a"), _pod(lab, "b")
    node2 = lab.state["nodes"][1]["address"].split("/")[0]
    frame = lambda text: vxlan_datagram("10.244.99.1", b["ip"], vtep_mac("node-2"), text)  # noqa: E731
    got = deliver(lab, b["netns"], [
        (lab.node_netns("node-1"), "", node2, 4789, frame("member")),  # control: a member node's underlay
        (lab.underlay_netns, "", node2, 4789, frame("outsider")),  # not a node
        (a["netns"], "", node2, 4789, frame("workload")),  # a pod
    ])
    assert got.count("member") >= 1
    assert "outsider" not in got and "workload" not in got


def test_anti_spoofing_on_workload_interfaces(lab):
    a, b = _pod(lab, "a"), _pod(lab, "b")
    node1 = lab.state["nodes"][0]["address"].split("/")[0]
    other = _spare_address(lab, "node-1")  # a pod address of the same node that is not a's
    for addr in (other, node1):  # the pod takes addresses that are not its endpoint's
        lab.exec(a["netns"], "ip", "addr", "add", f"{addr}/32", "dev", "eth0", check=True)
    try:
        got = deliver(lab, b["netns"], [
            (a["netns"], a["ip"], b["ip"], 9999, b"own"),  # control: its own address
            (a["netns"], other, b["ip"], 9999, b"spoofed-pod"),
            (a["netns"], node1, b["ip"], 9999, b"spoofed-node"),
        ])
    finally:
        for addr in (other, node1):
            lab.exec(a["netns"], "ip", "addr", "del", f"{addr}/32", "dev", "eth0")
    assert "own" in got
    assert "spoofed-pod" not in got and "spoofed-node" not in got


def _spare_address(lab, node: str) -> str:
    import ipaddress

    block = next(n for n in lab.status()["nodes"] if n["name"] == node)["blocks"][0]
    return str(ipaddress.ip_network(block)[50])


def test_a_workload_interface_without_a_programmed_endpoint_passes_nothing(lab):
    b = _pod(lab, "b")
    spare = _spare_address(lab, "node-1")
    node = lab.node_netns("node-1")
    rogue = f"{lab.prefix}rogue"
    lab.state["netns"].append(rogue)
    lab._save()
    topology.create_netns(rogue)
    try:
        results = {}
        for host_if in ("calirogue0", "rogue0"):  # the control differs only in the name
            topology.add_veth_between(rogue, "eth0", node, host_if)
            for cmd in (["ip", "addr", "add", f"{spare}/32", "dev", "eth0"],
                        ["ip", "route", "add", "169.254.1.1", "dev", "eth0"],
                        ["ip", "route", "add", "default", "via", "169.254.1.1"]):
                lab.exec(rogue, *cmd, check=True)
            lab.exec(node, "sysctl", "-qw", f"net.ipv4.conf.{host_if}.proxy_arp=1", check=True)
            lab.exec(node, "ip", "route", "add", f"{spare}/32", "dev", host_if, check=True)
            results[host_if] = deliver(lab, b["netns"], [(rogue, "", b["ip"], 9999, host_if.encode())])
            lab.exec(node, "ip", "link", "del", host_if, check=True)
        assert results["rogue0"] == ["rogue0"] * len(results["rogue0"]) and results["rogue0"]
        assert results["calirogue0"] == []
    finally:
        topology.delete_netns(rogue)


def test_pods_may_not_reach_the_agents_metrics_port(lab):
    a = _pod(lab, "a")
    node1 = lab.state["nodes"][0]["address"].split("/")[0]
    probe = ("import socket,sys\ns=socket.socket();s.settimeout(1)\n"
             "try:\n s.connect((sys.argv[1],9091));print('open')\nexcept OSError:\n print('closed')")
    assert lab.exec(lab.underlay_netns, sys.executable, "-c", probe, node1).stdout.strip() == "open"  # control
    assert lab.exec(a["netns"], sys.executable, "-c", probe, node1).stdout.strip() == "closed"


def _set(lab, node: str, name: str) -> set[str]:
    out = lab.exec(lab.node_netns(node), "nft", "-j", "list", "set", "inet", "podnet", name, check=True).stdout
    return {e if isinstance(e, str) else json.dumps(e) for e in json.loads(out)["nftables"][1]["set"].get("elem", [])}


def _until(fn, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return True
        time.sleep(0.05)
    return False


def test_the_vxlan_allow_list_follows_nodes_and_a_restart_changes_nothing(lab):
    assert _set(lab, "node-1", "nodes4") == {"172.31.0.11", "172.31.0.12"}
    lab.add_node("node-3", "172.31.0.13/24")
    try:
        assert _until(lambda: _set(lab, "node-1", "nodes4") == {"172.31.0.11", "172.31.0.12", "172.31.0.13"})
    finally:
        lab.remove_node("node-3")
    assert _until(lambda: _set(lab, "node-1", "nodes4") == {"172.31.0.11", "172.31.0.12"})
    # A restarted agent recognises its table and leaves it as it is (same rule handles).
    before = lab.exec(lab.node_netns("node-1"), "nft", "-a", "list", "table", "inet", "podnet", check=True).stdout
    lab.restart_agent("node-1")
    lab.wait_converged()
    lab.wait_filter()
    after = lab.exec(lab.node_netns("node-1"), "nft", "-a", "list", "table", "inet", "podnet", check=True).stdout
    assert after == before


def test_doctor_checks_the_filter_layer(lab, capsys):
    from podnet.cli.main import main

    def findings():
        capsys.readouterr()
        main(["doctor", "--lab", lab.name, "-o", "json"])
        out, _ = capsys.readouterr()
        return [f for f in json.loads(out)["findings"] if f["check"] == "filter"]

    assert findings() == []
    node = lab.node_netns("node-1")
    a = _pod(lab, "a")
    try:
        lab.exec(node, "nft", "delete", "element", "inet", "podnet", "from-wl", f'{{ "{a["host_interface"]}" }}',
                 check=True)
        lab.exec(node, "nft", "delete", "element", "inet", "podnet", "nodes4", "{ 172.31.0.12 }", check=True)
        lab.exec(node, "nft", "flush", "chain", "inet", "podnet", "input", check=True)
        lab.exec(node, "nft", "delete", "chain", "inet", "podnet", "input", check=True)
        found = findings()
        problems = [f["problem"] for f in found]
        assert any(a["host_interface"] in p and "no programmed endpoint" in p for p in problems)
        assert any("172.31.0.12 is not in the set nodes4" in p for p in problems)
        assert [f["severity"] for f in found if "chain input " in f["problem"]] == ["error"]
        assert not any("chain forward " in p for p in problems)  # control: the chains that are there
        lab.exec(node, "nft", "delete", "table", "inet", "podnet", check=True)
        assert any("filter table inet podnet is missing" in f["problem"] for f in findings())
    finally:
        lab.restart_agent("node-1")  # it programs the table again from what the datastore says
        lab.wait_converged()
        lab.wait_filter()
    assert findings() == []


def test_trace_names_the_policy_and_rule_on_the_path(lab, capsys):
    from podnet.cli.main import main
    from podnet.datastore.resources import Resources
    from podnet.model.kinds import lookup
    from podnet.model.policy import parse_policy

    policy = parse_policy({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                           "metadata": {"name": "web", "namespace": "x"},
                           "spec": {"podSelector": {"matchLabels": {"pod": "b"}},
                                    "ingress": [{"ports": [{"port": 80}]}]}})
    with lab.datastore() as store:
        Resources(store).write(lookup("NetworkPolicy"), policy, "apply")
    lab.wait_filter()

    def hops(*extra):
        capsys.readouterr()
        code = main(["trace", "--lab", lab.name, "x/a", "x/b", "-o", "json", *extra])
        out, _ = capsys.readouterr()
        return code, {h["id"]: h for h in json.loads(out)["hops"]}

    try:
        code, h = hops("--protocol", "tcp", "--port", "80")
        assert code == 0 and h["filter-egress"]["status"] == "ok"
        assert "allowed by x/knp.default.web ingress[0]" in h["filter-ingress"]["found"]
        code, h = hops("--protocol", "tcp", "--port", "81")
        assert code == 1 and h["filter-ingress"]["status"] == "broken"
        assert "end of tier default" in h["filter-ingress"]["found"] and "knp.default.web" in h["filter-ingress"]["found"]
    finally:
        with lab.datastore() as store:
            Resources(store).remove(lookup("NetworkPolicy"), policy.name, "x")
        lab.wait_filter()


def test_lab_pod_commands_and_status(lab, capsys):
    from podnet.cli.main import main

    assert main(["lab", "pod", "add", "--name", lab.name, "--node", "node-2", "z/c", "--label", "pod=c",
                 "--label", "tier=db", "--port", "serve-80-tcp=80/TCP"]) == 0
    try:
        capsys.readouterr()
        assert main(["lab", "status", "--name", lab.name, "-o", "json"]) == 0
        pods = {f"{p['namespace']}/{p['name']}": p for p in json.loads(capsys.readouterr()[0])["pods"]}
        c = pods["z/c"]
        assert c["labels"] == {"pod": "c", "tier": "db"} and c["node"] == "node-2"
        assert c["netns"] == f"{lab.prefix}pod-z-c" and c["addresses"] and c["ports"] == ["serve-80-tcp=80/TCP"]
        assert c["interface"] in (lab.filter_status("node-2") or {}).get("interfaces", [])  # programmed on return
    finally:
        assert main(["lab", "pod", "delete", "--name", lab.name, "z/c"]) == 0
    assert "z/c" not in {f"{p['namespace']}/{p['name']}" for p in lab.status()["pods"]}


def test_default_endpoint_to_host_action_from_felix_configuration(lab):
    from podnet.datastore.resources import Resources
    from podnet.model.agentconfig import AgentConfiguration
    from podnet.model.kinds import lookup

    a = _pod(lab, "a")
    node1 = lab.state["nodes"][0]["address"].split("/")[0]

    def ping() -> bool:
        return lab.exec(a["netns"], "ping", "-c", "1", "-W", "1", node1).returncode == 0

    assert ping()  # Accept, as Calico's Kubernetes manifest sets it
    drop = AgentConfiguration.from_manifest({"apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration",
                                             "metadata": {"name": "default"},
                                             "spec": {"defaultEndpointToHostAction": "Drop"}})
    with lab.datastore() as store:
        Resources(store).write(lookup("AgentConfiguration"), drop, "apply")
    lab.wait_filter()
    try:
        assert not ping()
    finally:
        with lab.datastore() as store:
            Resources(store).remove(lookup("AgentConfiguration"), "default")
        lab.wait_filter()
    assert ping()


def test_a_write_through_the_cli_in_a_lab_returns_once_enforced(lab, tmp_path):
    from podnet.cli.main import main

    a, b = _pod(lab, "a"), _pod(lab, "b")
    doc = tmp_path / "deny.yaml"
    doc.write_text("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
                   "metadata: {name: deny-b, namespace: x}\nspec: {podSelector: {matchLabels: {pod: b}}}\n")

    def ping() -> bool:
        return lab.exec(a["netns"], "ping", "-c", "1", "-W", "1", b["ip"]).returncode == 0

    assert ping()
    assert main(["--lab", lab.name, "apply", "-f", str(doc)]) == 0
    assert not ping()  # no wait of the test's own: the apply waited
    assert main(["--lab", lab.name, "delete", "-f", str(doc)]) == 0
    assert ping()
