"""IPv6 and dual stack: vxlan-v6.calico, /128 pods, the link-local gateway, both families across nodes."""

from __future__ import annotations

import subprocess

import pytest

from podnet.datastore import open_datastore
from podnet.ipam import Ipam
from podnet.model import vtep_mac
from tests.integration import kernel
from tests.integration.conftest import built_lab


@pytest.fixture(scope="module")
def lab():
    with built_lab("pnt-6", nodes=2, pods_per_node=1, ipv6=True) as lab:
        yield lab


def ping6(netns: str, ip: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", netns, "ping", "-6", "-c", "1", "-W", "2", ip],
                          capture_output=True, text=True)


def test_pods_get_one_address_of_each_family_and_reach_each_other_by_both(lab):
    a, b = lab.status()["pods"]
    assert len(a["ips"]) == 2 and ":" not in a["ips"][0] and ":" in a["ips"][1]
    assert kernel.ping(a["netns"], b["ips"][0]).returncode == 0
    result = ping6(a["netns"], b["ips"][1])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ttl=62" in result.stdout or "hlim=62" in result.stdout


def test_pod_side_ipv6(lab):
    a = lab.status()["pods"][0]
    # The smallest tunnel budget: vxlan-v6.calico's 1500 - 70, not vxlan.calico's 1450.
    assert kernel.link(a["netns"], "eth0")["mtu"] == 1430
    addrs = [x for x in kernel.addresses(a["netns"], "eth0") if x["family"] == "inet6" and x["scope"] == "global"]
    assert [(x["local"], x["prefixlen"]) for x in addrs] == [(a["ips"][1], 128)]
    assert addrs[0].get("nodad") is True
    default = [r for r in kernel.ip_json(a["netns"], "-6", "route", "show", "default")]
    assert default and default[0]["gateway"] == "fe80::ecee:eeff:feee:eeee" and default[0]["dev"] == "eth0"
    node_ns = lab.node_netns(a["node"])
    assert kernel.sysctl(node_ns, f"net/ipv6/conf/{a['interface']}/proxy_ndp") == "1"
    assert kernel.sysctl(node_ns, f"net/ipv6/conf/{a['interface']}/accept_dad") == "0"
    host = [r for r in kernel.ip_json(node_ns, "-6", "route", "show", a["ips"][1])]
    assert host and host[0]["dev"] == a["interface"]


def test_vxlan_v6_device_and_entries(lab):
    status = lab.status()
    store = open_datastore(lab.datastore_url)
    try:
        blocks6 = {b.node: b.cidr for b in Ipam(store).blocks(6)}
        from podnet.datastore.resources import Resources

        records = {n.name: n for n in Resources(store).nodes()}
    finally:
        store.close()
    for node in status["nodes"]:
        ns, me = node["netns"], records[node["name"]]
        other = next(records[n["name"]] for n in status["nodes"] if n["name"] != node["name"])
        dev = kernel.link(ns, "vxlan-v6.calico")
        info = dev["linkinfo"]["info_data"]
        assert dev["mtu"] == 1430 and dev["address"] == vtep_mac(node["name"], ipv6=True)
        assert info["id"] == 4096 and info["port"] == 4789 and info["local6"] == me.ip6
        routes = kernel.ip_json(ns, "-6", "route", "show", "dev", "vxlan-v6.calico")
        assert {(r["dst"], r.get("gateway")) for r in routes if r.get("gateway")} == \
            {(blocks6[other.name], other.tunnel_address6)}
        neigh = kernel.ip_json(ns, "-6", "neigh", "show", "dev", "vxlan-v6.calico")
        assert [(n["dst"], n["lladdr"]) for n in neigh if "PERMANENT" in n["state"]] == \
            [(other.tunnel_address6, vtep_mac(other.name, ipv6=True))]
        fdb = kernel.fdb(ns, "vxlan-v6.calico")
        assert [(f["mac"], f["dst"]) for f in fdb if f.get("dst")] == [(vtep_mac(other.name, ipv6=True), other.ip6)]


def test_check_and_del_cover_both_families(lab):
    pod = lab.add_pod("node-1", "dual")
    code, out, raw = lab.cni("node-1", "CHECK", pod["container_id"], f"/run/netns/{pod['netns']}", "dual",
                             config=dict(lab.network_config(), prevResult={
                                 "cniVersion": "1.0.0", "ips": [{"address": f"{pod['ips'][0]}/32"},
                                                                {"address": f"{pod['ips'][1]}/128"}]}))
    assert code == 0, raw
    lab.exec(pod["netns"], "ip", "-6", "route", "del", "default", check=True)
    code, out, _ = lab.cni("node-1", "CHECK", pod["container_id"], f"/run/netns/{pod['netns']}", "dual",
                           config=dict(lab.network_config(), prevResult={"cniVersion": "1.0.0", "ips": []}))
    assert code != 0 and "fe80::ecee:eeff:feee:eeee" in out["msg"]
    lab.delete_pod("dual")
    store = open_datastore(lab.datastore_url)
    try:
        in_use = {ip for b in Ipam(store).blocks() for ip in b.in_use()}
    finally:
        store.close()
    assert not set(pod["ips"]) & in_use


def test_ipv6_only_pod(lab):
    config = lab.network_config()
    config["ipam"] = {"type": "podnet-ipam", "assign_ipv4": "false", "assign_ipv6": "true"}
    ns = f"{lab.name}-v6only"
    from podnet.dataplane import topology

    topology.create_netns(ns)
    try:
        code, result, raw = lab.cni("node-2", "ADD", "v6only", f"/run/netns/{ns}", "v6only", config=config)
        assert code == 0, raw
        assert [ip["address"].endswith("/128") for ip in result["ips"]] == [True]
        assert result["routes"] == [{"dst": "::/0", "gw": "fe80::ecee:eeff:feee:eeee"}]
        a = lab.status()["pods"][0]
        # The new pod's first packets may meet the filter layer before its endpoint is programmed.
        assert kernel.reaches(a["netns"], result["ips"][0]["address"].split("/")[0])
        assert lab.cni("node-2", "DEL", "v6only", f"/run/netns/{ns}", "v6only", config=config)[0] == 0
    finally:
        topology.delete_netns(ns)


def _podnet(lab, *args) -> str:
    import sys

    proc = subprocess.run([sys.executable, "-m", "podnet", *args, "--lab", lab.name], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_ipv6_facts_appear_in_get_wide_describe_and_lab_status(lab):
    status = lab.status()
    node = status["nodes"][0]
    assert node["underlay_ip6"] and node["tunnel_ip6"] and node["vtep_mac6"] == vtep_mac(node["name"], ipv6=True)
    wide = _podnet(lab, "get", "nodes", "-o", "wide")
    assert "ADDRESS6" in wide and node["tunnel_ip6"] in wide and node["vtep_mac6"] in wide
    described = _podnet(lab, "describe", "node", node["name"])
    assert f"IPv6 tunnel address:" in described and node["tunnel_ip6"] in described
    assert node["vtep_mac6"] in described and node["underlay_ip6"] in described
    shown = _podnet(lab, "lab", "status")
    assert "TUNNEL-IP6" in shown and node["tunnel_ip6"] in shown
    pod = status["pods"][0]
    assert ",".join(pod["ips"]) in shown
    workloads = _podnet(lab, "get", "workloads", "-o", "wide")
    assert pod["ips"][1] in workloads
