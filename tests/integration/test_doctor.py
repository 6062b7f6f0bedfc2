"""`podnet doctor` on a real lab: a healthy lab has no findings; each known foot-gun, made in a node's
namespace, is found with the right severity, and running the printed fix clears it.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import podnet
from podnet.cli.main import main
from podnet.datastore import open_datastore
from podnet.datastore.resources import Resources
from tests.integration.witness import run_fix, wait_for

REPO = Path(podnet.__file__).resolve().parents[1]


def doctor(capsys, *argv) -> tuple[int, dict]:
    capsys.readouterr()
    code = main(["doctor", *argv, "-o", "json"])
    out, err = capsys.readouterr()
    assert out, err
    return code, json.loads(out)


def _resources(lab):
    store = open_datastore(lab.datastore_url)
    return store, Resources(store)


@pytest.fixture
def healthy_lab(lab_factory):
    """Two nodes, a pod on each, podnet's defaults (TX checksum offload as the nodes' self-tests decide)."""
    return lab_factory(nodes=2, pods_per_node=1)


def test_a_healthy_lab_has_no_findings(healthy_lab, capsys):
    code, report = doctor(capsys, "--lab", healthy_lab.name)
    assert (code, report["findings"], report["nodes"]) == (0, [], ["node-1", "node-2"])
    capsys.readouterr()
    assert main(["doctor", "--lab", healthy_lab.name]) == 0
    assert capsys.readouterr().out == "no problems found on 2 nodes (node-1, node-2)\n"


# name: (commands in node-1's namespace ({n1}; {p1} is pod-1-1's), stop node-1's agent first?,
#        the findings expected as (severity, check, node))
NFT_DROP = ["ip netns exec {n2} nft add table inet t",
            "ip netns exec {n2} nft add chain inet t input '{{ type filter hook input priority 0; }}'",
            "ip netns exec {n2} nft add rule inet t input udp dport 4789 drop"]
CASES = {
    # The kernel refuses a VXLAN MTU above its parent's minus 50, so the parent's MTU is lowered instead.
    "vxlan-mtu": (["ip -n {n1} link set eth0 mtu 1400"], True, [("error", "mtu", "node-1")]),
    "pod-mtu": (["ip -n {p1} link set eth0 mtu 1500"], False, [("error", "mtu", "node-1")]),
    "tx-checksum": (["ip netns exec {n1} ethtool -K vxlan.calico tx-checksum-ip-generic off"], True,
                    [("warning", "tx-checksum", "node-1")]),
    "rp-filter": (["ip netns exec {n1} sysctl -qw net.ipv4.conf.all.rp_filter=1",
                   "ip netns exec {n1} sysctl -qw net.ipv4.conf.eth0.rp_filter=1"], False,
                  [("warning", "rp-filter", "node-1"), ("warning", "rp-filter", "node-1")]),
    "default-route": (["ip -n {n1} route del default"], False, [("error", "default-route", "node-1")]),
    "ip-forward": (["ip netns exec {n1} sysctl -qw net.ipv4.ip_forward=0"], False, [("error", "ip-forward", "node-1")]),
    "foreign-fdb": (["bridge -n {n1} fdb append 66:00:00:00:00:01 dev vxlan.calico dst 172.31.0.99 self permanent"],
                    True, [("warning", "fdb", "node-1")]),
    "missing-fdb": (["bridge -n {n1} fdb del {m2} dev vxlan.calico dst {u2} self"], True, [("error", "fdb", "node-1")]),
    "stale-neighbour": (["ip -n {n1} neigh replace {t2} dev vxlan.calico lladdr 66:00:00:00:00:02 nud permanent"],
                        True, [("error", "neighbour", "node-1")]),
    "vxlan-port": (NFT_DROP, False, [("error", "vxlan-port", "node-2")]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_problem_is_found_and_its_fix_clears_it(healthy_lab, capsys, case):
    lab = healthy_lab
    status = lab.status()
    nodes = {n["name"]: n for n in status["nodes"]}
    commands, stop_agent, expected = CASES[case]
    if stop_agent:  # the agent would repair its own state within milliseconds
        lab.stop_agent("node-1")
    values = {"n1": lab.node_netns("node-1"), "n2": lab.node_netns("node-2"),
              "p1": next(p["netns"] for p in status["pods"] if p["node"] == "node-1"),
              "m2": nodes["node-2"]["vtep_mac"], "u2": nodes["node-2"]["underlay_ip"],
              "t2": nodes["node-2"]["tunnel_ip"]}
    for command in commands:
        subprocess.run(command.format(**values), shell=True, check=True, capture_output=True)

    code, report = doctor(capsys, "--lab", lab.name)
    assert code == 1 and not report["ok"]
    assert [(f["severity"], f["check"], f["node"]) for f in report["findings"]] == expected, report["findings"]
    # Fix, check again. A smaller VXLAN MTU makes the pods' MTU too big: that takes a second round.
    for _ in range(2 if case == "vxlan-mtu" else 1):
        for finding in report["findings"]:
            fixed = run_fix(lab, finding["fix"])
            assert fixed.returncode == 0, (finding["fix"], fixed.stderr)
        code, report = doctor(capsys, "--lab", lab.name)
    assert (code, report["findings"]) == (0, [])


def test_node_address_registered_as_32_and_the_agent_restart_that_fixes_it(healthy_lab, capsys):
    lab = healthy_lab
    store, res = _resources(lab)
    try:
        record = res.node("node-2")
        res.put_node(type(record)(record.name, record.ip + "/32", record.interface, record.vtep_mac,
                                  record.tunnel_address, record.labels))
        code, report = doctor(capsys, "--lab", lab.name)
        assert code == 1
        assert [(f["severity"], f["check"], f["node"]) for f in report["findings"]] == [
            ("warning", "node-address", "node-2")]
        assert "(eth0 holds 172.31.0.12/24)" in report["findings"][0]["problem"]
        lab.restart_agent("node-2")  # the fix: the agent registers the prefix the interface holds
        deadline = time.monotonic() + 20
        while res.node("node-2").address.endswith("/32"):
            assert time.monotonic() < deadline, "the restarted agent did not re-register node-2"
            time.sleep(0.05)
    finally:
        store.close()
    lab.wait_converged()
    assert doctor(capsys, "--lab", lab.name) == (0, {"ok": True, "access": f"lab {lab.name}",
                                                    "nodes": ["node-1", "node-2"], "findings": []})


def test_node_flag_checks_one_node(healthy_lab, capsys):
    subprocess.run(["ip", "netns", "exec", healthy_lab.node_netns("node-1"), "sysctl", "-qw",
                    "net.ipv4.ip_forward=0"], check=True)
    code, report = doctor(capsys, "--lab", healthy_lab.name, "--node", "node-2")
    assert (code, report["nodes"], report["findings"]) == (0, ["node-2"], [])
    code, report = doctor(capsys, "--lab", healthy_lab.name, "--node", "node-1")
    assert code == 1 and [f["check"] for f in report["findings"]] == ["ip-forward"]


def test_on_a_node_itself_doctor_checks_that_node_and_networkmanager(healthy_lab):
    """Without --lab the current namespace is the node: run it inside node-2's namespace."""
    proc = subprocess.run(["ip", "netns", "exec", healthy_lab.node_netns("node-2"), sys.executable, "-m", "podnet",
                           "doctor", "--datastore", healthy_lab.datastore_url, "-o", "json"],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    report = json.loads(proc.stdout)
    # NetworkManager is checked here (this host), and it does not run on this machine.
    assert (proc.returncode, report["nodes"], report["findings"]) == (0, ["node-2"], []), proc.stderr


def test_a_datastore_without_this_host_is_a_clean_error(tmp_path, capsys):
    open_datastore(f"sqlite://{tmp_path}/empty.db").close()
    code = main(["doctor", "--datastore", f"sqlite://{tmp_path}/empty.db"])
    assert code == 1 and "cannot tell which node this host is" in capsys.readouterr().err


def test_a_missing_datastore_is_named_and_not_created(tmp_path, capsys):
    code = main(["doctor", "--datastore", f"sqlite://{tmp_path}/none.db"])
    assert code == 1 and f"no embedded datastore at {tmp_path}/none.db" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()


# --- a dual-stack lab: the IPv6 side of every node -------------------------------------------------------------


@pytest.fixture
def dual_stack_lab(lab_factory):
    """Two dual-stack nodes (vxlan.calico and vxlan-v6.calico), a pod on each, podnet's defaults."""
    return lab_factory("pnt-t6", nodes=2, pods_per_node=1, ipv6=True)


def _problems(report: dict) -> list[tuple[str, str, str]]:
    """Errors and warnings; notes (the pods' MTU above vxlan-v6.calico's, for one) do not fail a run."""
    return [(f["severity"], f["check"], f["node"]) for f in report["findings"] if f["severity"] != "note"]


def test_a_healthy_dual_stack_lab_has_no_problems(dual_stack_lab, capsys):
    code, report = doctor(capsys, "--lab", dual_stack_lab.name)
    assert (code, report["ok"], _problems(report)) == (0, True, [])
    # The lab gives pods the IPv4 budget as MTU (1450), 20 bytes above vxlan-v6.calico's: a note per node.
    assert {(f["check"], f["node"]) for f in report["findings"]} <= {("mtu", "node-1"), ("mtu", "node-2")}


# name: (commands ({n1} node-1's namespace, {t2} node-2's IPv6 tunnel address, {m2} its IPv6 VTEP MAC,
#        {u2} its IPv6 underlay address), stop node-1's agent first?, the problems expected)
CASES6 = {
    "ipv6-forward": (["ip netns exec {n1} sysctl -qw net.ipv6.conf.all.forwarding=0"], False,
                     [("error", "ipv6-forward", "node-1")]),
    "missing-ndp": (["ip -n {n1} -6 neigh del {t2} dev vxlan-v6.calico"], True, [("error", "neighbour", "node-1")]),
    "missing-fdb6": (["bridge -n {n1} fdb del {m2} dev vxlan-v6.calico dst {u2} self"], True,
                     [("error", "fdb", "node-1")]),
    "foreign-ndp": (["ip -n {n1} neigh replace fd00:10:244:ffff::1 dev vxlan-v6.calico lladdr 66:00:00:00:00:03 "
                     "nud permanent"], True, [("warning", "neighbour", "node-1")]),
    "foreign-fdb6": (["bridge -n {n1} fdb append 66:00:00:00:00:01 dev vxlan-v6.calico dst fd31::99 self permanent"],
                     True, [("warning", "fdb", "node-1")]),
    # The kernel refuses a VXLAN MTU above its parent's minus the overhead: lower the parent's instead. Both
    # devices are then too big; after their fix, the pods are (the second round).
    "vxlan-mtu": (["ip -n {n1} link set eth0 mtu 1400"], True,
                  [("error", "mtu", "node-1"), ("error", "mtu", "node-1")]),
}


@pytest.mark.parametrize("case", sorted(CASES6))
def test_each_ipv6_problem_is_found_and_its_fix_clears_it(dual_stack_lab, capsys, case):
    lab = dual_stack_lab
    store, res = _resources(lab)
    try:
        node2 = res.node("node-2")
    finally:
        store.close()
    commands, stop_agent, expected = CASES6[case]
    if stop_agent:  # the agent would repair its own state within milliseconds
        lab.stop_agent("node-1")
    values = {"n1": lab.node_netns("node-1"), "t2": node2.tunnel_address6, "m2": node2.vtep_mac6, "u2": node2.ip6}
    for command in commands:
        subprocess.run(command.format(**values), shell=True, check=True, capture_output=True)

    code, report = doctor(capsys, "--lab", lab.name)
    assert code == 1 and not report["ok"]
    assert _problems(report) == expected, report["findings"]
    if case == "vxlan-mtu":
        problems = " ".join(f["problem"] for f in report["findings"])
        assert "vxlan-v6.calico MTU 1430 > underlay eth0 MTU 1400 - 70 = 1330" in problems
    for _ in range(2 if case == "vxlan-mtu" else 1):
        for finding in report["findings"]:
            if finding["severity"] == "note":
                continue
            fixed = run_fix(lab, finding["fix"])
            assert fixed.returncode == 0, (finding["fix"], fixed.stderr)
        code, report = doctor(capsys, "--lab", lab.name)
    assert (code, _problems(report)) == (0, []), report["findings"]


@pytest.mark.parametrize("command", [
    "sysctl -w net.ipv4.ip_forward=1",  # this machine's own namespace
    "ip link set eth0 mtu 1400",
    "ip -n other-node-1 link set eth0 up",  # another lab's
    "ip -n hardening-zz-node-1 link set x up; ip link del eth0",  # a second command outside
    "ip -n hardening-zz-node-1 link set x up && sysctl -w net.ipv4.ip_forward=0",
    "nsenter --net=/proc/1/ns/net ip link",
    "ip netns exec hardening-zz-node-1 sh -c \"$(echo x)\"",
])
def test_a_fix_outside_the_lab_is_never_run(command):
    from types import SimpleNamespace

    from tests.integration.witness import assert_targets_lab

    with pytest.raises(AssertionError):
        assert_targets_lab(SimpleNamespace(name="hardening-zz", prefix="hardening-zz-"), command)


# --- pods: each attachment judged as CNI CHECK judges it -----------------------------------------------------

RECREATE = "delete and recreate the pod (CNI DEL + ADD rebuild its veth)"
# name: (commands ({n1}, {n2}: node namespaces; {p1}: pod-1-1's; {c1}: its host veth; {ip1}: its address;
#        {b1}: node-1's block), node whose agent stops first (or None), findings expected, the fix runs?)
POD_CASES = {
    "proxy-arp-off": (["ip netns exec {n1} sysctl -qw net.ipv4.conf.{c1}.proxy_arp=0"], None,
                      [("error", "pod", "node-1", "proxy_arp is off on {c1}")], True),
    "veth-forwarding-off": (["ip netns exec {n1} sysctl -qw net.ipv4.conf.{c1}.forwarding=0"], None,
                            [("error", "pod", "node-1", "forwarding is off on {c1}")], True),
    "host-route-missing": (["ip -n {n1} route del {ip1} dev {c1}"], None,
                           [("error", "pod", "node-1", "host route {ip1}/32 dev {c1} is missing")], True),
    "pod-interface-down": (["ip -n {p1} link set eth0 down"], None,
                           [("error", "pod", "node-1", "eth0 in the pod is down"),
                            ("error", "pod", "node-1", "pod route 169.254.1.1 dev eth0 is missing"),
                            ("error", "pod", "node-1", "pod default route via 169.254.1.1 dev eth0 is missing")],
                           True),
    "veth-missing": (["ip -n {n1} link del {c1}"], None,
                     [("error", "pod", "node-1", "host interface {c1} does not exist")], False),
    "netns-gone": (["ip netns del {p1}"], None,
                   [("error", "pod", "node-1", "network namespace /run/netns/{p1} is gone")], False),
    "block-route-missing": (["ip -n {n2} route del {b1}"], "node-2",
                            [("error", "routes", "node-2", "missing route {b1}")], True),
}


@pytest.mark.parametrize("case", sorted(POD_CASES))
def test_each_broken_pod_is_found_with_its_fix(healthy_lab, capsys, case):
    lab = healthy_lab
    status = lab.status()
    pod = next(p for p in status["pods"] if p["node"] == "node-1")
    node1 = next(n for n in status["nodes"] if n["name"] == "node-1")
    values = {"n1": lab.node_netns("node-1"), "n2": lab.node_netns("node-2"), "p1": pod["netns"],
              "c1": pod["interface"], "ip1": pod["ip"], "b1": node1["blocks"][0]}
    commands, stop_agent, expected, runnable = POD_CASES[case]
    if stop_agent:  # the agent would put its own route back within milliseconds
        lab.stop_agent(stop_agent)
    for command in commands:
        subprocess.run(command.format(**values), shell=True, check=True, capture_output=True)

    def findings(report) -> list[dict]:
        # A stopped agent also leaves its filter layer unprogrammed (check_filter): not this case's subject.
        return [f for f in report["findings"] if not (stop_agent and f["check"] == "filter")]

    code, report = doctor(capsys, "--lab", lab.name)
    assert code == 1 and not report["ok"]
    found = findings(report)
    assert [(f["severity"], f["check"], f["node"]) for f in found] == [e[:3] for e in expected], found
    for finding, (*_, words) in zip(found, expected):
        assert words.format(**values) in finding["problem"], finding
    if not runnable:  # no command brings a veth or a namespace back
        assert all(f["fix"] == RECREATE or "podnet ipam check" in f["fix"] for f in found), found
        return
    for finding in found:
        fixed = run_fix(lab, finding["fix"])  # asserts first that it acts in the lab's namespaces only
        assert fixed.returncode == 0, (finding["fix"], fixed.stderr)
    code, report = doctor(capsys, "--lab", lab.name)
    assert findings(report) == [] and (code == 0 or stop_agent), report["findings"]
    if stop_agent:
        lab.restart_agent(stop_agent)
        lab.wait_converged()
    assert subprocess.run(["ip", "netns", "exec", pod["netns"], "ping", "-c1", "-W2",
                           next(p["ip"] for p in status["pods"] if p["node"] == "node-2")]).returncode == 0


def test_a_pool_that_leaves_a_node_in_another_subnet_unrouted(lab_factory, capsys):
    """vxlanMode Never with nodes in two subnets: nothing routes either node's block from the other."""
    lab = lab_factory(nodes=2, pods_per_node=1, subnets=2, vxlan_mode="Never")
    code, report = doctor(capsys, "--lab", lab.name)
    mode = [f for f in report["findings"] if f["check"] == "pool-mode"]
    assert code == 1 and sorted(f["node"] for f in mode) == ["node-1", "node-2"], report["findings"]
    assert all("vxlanMode Never" in f["problem"] and "CrossSubnet" in f["fix"] for f in mode), mode
    store, res = _resources(lab)
    try:  # the fix as it says: CrossSubnet encapsulates between subnets
        pool = res.pools()[0]
        import dataclasses

        res.apply_pool(dataclasses.replace(pool, vxlan_mode="CrossSubnet"))
    finally:
        store.close()
    a, b = lab.status()["pods"]
    assert wait_for(lambda: subprocess.run(["ip", "netns", "exec", a["netns"], "ping", "-c1", "-W1", b["ip"]],
                                           capture_output=True).returncode == 0, timeout=20)
    code, report = doctor(capsys, "--lab", lab.name)
    assert not [f for f in report["findings"] if f["check"] == "pool-mode"], report["findings"]
