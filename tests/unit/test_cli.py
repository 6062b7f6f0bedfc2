"""Unit tests of the admin CLI, driven in-process on a throw-away SQLite datastore.

Each test calls `podnet.cli.main.main([...])` as a user would type it and reads
what it printed; data the CLI cannot create itself (nodes, allocations,
workload endpoints) is written through the same layers the agent and the CNI
plugin use (Resources and Ipam).
"""

import json
import textwrap

import pytest
import yaml

from podnet.cli.main import main
from podnet.datastore.resources import Resources
from podnet.datastore.sqlite import SqliteDatastore
from podnet.ipam import Ipam
from podnet.model import IPPool, Node, WorkloadEndpoint, vtep_mac
from podnet.model.endpoint import ipam_handle, tunnel_handle
from tests.nodes import register_nodes

POOL_YAML = """\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: default-ipv4-ippool
spec:
  cidr: 10.244.0.0/16
  blockSize: 26
  vxlanMode: Always
  ipipMode: Never
  natOutgoing: {nat}
  nodeSelector: all()
"""


@pytest.fixture
def db(tmp_path):
    """An empty store: read-only commands never create one (test_cli_errors.py)."""
    SqliteDatastore(str(tmp_path / "x.db")).close()
    return tmp_path / "x.db"


@pytest.fixture
def cli(db, capsys):
    """Run the CLI against the test's datastore; returns (exit code, stdout, stderr)."""

    def run(*argv):
        capsys.readouterr()  # drop anything printed before
        code = main(["--datastore", f"sqlite://{db}", *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def store(db):
    s = SqliteDatastore(str(db))
    yield s
    s.close()


def write(tmp_path, name, text) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def apply_text(cli, tmp_path, text, name="pool.yaml"):
    return cli("apply", "-f", write(tmp_path, name, text))


def table_rows(out: str) -> list[list[str]]:
    return [line.split() for line in out.strip().splitlines()]


# apply ---------------------------------------------------------------------------


def test_apply_creates_then_unchanged_then_updated(cli, tmp_path):
    assert apply_text(cli, tmp_path, POOL_YAML.format(nat="false")) == (
        0, "ippool/default-ipv4-ippool created\n", "")
    assert apply_text(cli, tmp_path, POOL_YAML.format(nat="false")) == (
        0, "ippool/default-ipv4-ippool unchanged\n", "")
    assert apply_text(cli, tmp_path, POOL_YAML.format(nat="true")) == (
        0, "ippool/default-ipv4-ippool updated\n", "")
    code, out, _ = cli("get", "ippools", "-o", "json")
    assert code == 0
    (item,) = json.loads(out)["items"]
    assert item["spec"]["natOutgoing"] is True


def test_apply_stores_the_pool_as_given(cli, tmp_path, store):
    apply_text(cli, tmp_path, POOL_YAML.format(nat="true"))
    assert Resources(store).pools() == [
        IPPool(name="default-ipv4-ippool", cidr="10.244.0.0/16", block_size=26, nat_outgoing=True)
    ]


def test_apply_multi_document_file(cli, tmp_path, store):
    code, out, err = apply_text(cli, tmp_path, """\
        apiVersion: projectcalico.org/v3
        kind: IPPool
        metadata: {name: pool-a}
        spec: {cidr: 10.244.0.0/16}
        ---
        apiVersion: projectcalico.org/v3
        kind: IPPool
        metadata: {name: pool-b}
        spec: {cidr: 10.245.0.0/16, blockSize: 24}
        ---
        """)
    assert (code, err) == (0, "")
    assert out == "ippool/pool-a created\nippool/pool-b created\n"
    assert {p.name: p.block_size for p in Resources(store).pools()} == {"pool-a": 26, "pool-b": 24}


def test_apply_ippool_list(cli, tmp_path, store):
    code, out, _ = apply_text(cli, tmp_path, """\
        apiVersion: projectcalico.org/v3
        kind: IPPoolList
        items:
        - apiVersion: projectcalico.org/v3
          kind: IPPool
          metadata: {name: pool-a}
          spec: {cidr: 10.244.0.0/16}
        - apiVersion: projectcalico.org/v3
          kind: IPPool
          metadata: {name: pool-v6}
          spec: {cidr: "fd00:10:244::/48"}
        """)
    assert code == 0
    assert out == "ippool/pool-a created\nippool/pool-v6 created\n"
    assert sorted(p.name for p in Resources(store).pools()) == ["pool-a", "pool-v6"]


def test_apply_from_stdin(cli, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(POOL_YAML.format(nat="false")))
    assert cli("apply", "-f", "-") == (0, "ippool/default-ipv4-ippool created\n", "")


def test_changing_cidr_is_rejected_naming_spec_cidr(cli, tmp_path, store):
    apply_text(cli, tmp_path, POOL_YAML.format(nat="false"))
    changed = POOL_YAML.format(nat="false").replace("10.244.0.0/16", "10.244.0.0/15")
    code, out, err = apply_text(cli, tmp_path, changed)
    assert code == 1
    assert out == ""
    assert err.startswith("error: ")
    assert "spec.cidr" in err and "immutable" in err
    assert Resources(store).pools()[0].cidr == "10.244.0.0/16"


def test_changing_block_size_is_rejected_naming_spec_block_size(cli, tmp_path):
    apply_text(cli, tmp_path, POOL_YAML.format(nat="false"))
    code, _, err = apply_text(cli, tmp_path, POOL_YAML.format(nat="false").replace("blockSize: 26", "blockSize: 24"))
    assert code == 1
    assert "spec.blockSize" in err


def test_overlapping_pool_is_rejected(cli, tmp_path, store):
    apply_text(cli, tmp_path, POOL_YAML.format(nat="false"))
    code, out, err = apply_text(cli, tmp_path, """\
        apiVersion: projectcalico.org/v3
        kind: IPPool
        metadata: {name: other}
        spec: {cidr: 10.244.128.0/17}
        """, name="other.yaml")
    assert code == 1
    assert out == ""
    assert "spec.cidr" in err and "overlaps" in err and "default-ipv4-ippool" in err
    assert [p.name for p in Resources(store).pools()] == ["default-ipv4-ippool"]


def test_invalid_pool_is_rejected_naming_the_field(cli, tmp_path, store):
    code, _, err = apply_text(cli, tmp_path, """\
        apiVersion: projectcalico.org/v3
        kind: IPPool
        metadata: {name: bad}
        spec: {cidr: 10.244.0.1/16}
        """)
    assert code == 1
    assert "spec.cidr" in err and "10.244.0.0/16" in err
    assert Resources(store).pools() == []


def test_apply_unknown_kind_fails(cli, tmp_path):
    code, out, err = apply_text(cli, tmp_path, """\
        apiVersion: projectcalico.org/v3
        kind: BGPPeer
        metadata: {name: x}
        spec: {}
        """)
    assert code == 1
    assert out == ""
    assert err.startswith("error: ") and "BGPPeer" in err


def test_apply_invalid_yaml_fails(cli, tmp_path):
    code, _, err = apply_text(cli, tmp_path, "kind: [unclosed\n")
    assert code == 1
    assert "not valid YAML" in err


# get ippools -------------------------------------------------------------------------


def test_get_ippools_yaml_round_trips(cli, tmp_path):
    applied = IPPool.from_manifest(yaml.safe_load(POOL_YAML.format(nat="true")))
    apply_text(cli, tmp_path, POOL_YAML.format(nat="true"))
    code, out, _ = cli("get", "ippools", "-o", "yaml")
    assert code == 0
    doc = yaml.safe_load(out)
    assert doc["apiVersion"] == "projectcalico.org/v3"
    assert doc["kind"] == "IPPoolList"
    assert [IPPool.from_manifest(item) for item in doc["items"]] == [applied]


def test_get_ippools_output_can_be_applied_again(cli, tmp_path):
    apply_text(cli, tmp_path, POOL_YAML.format(nat="true"))
    _, out, _ = cli("get", "ippools", "-o", "yaml")
    code, again, _ = apply_text(cli, tmp_path, out, name="exported.yaml")
    assert (code, again) == (0, "ippool/default-ipv4-ippool unchanged\n")


def test_get_ippools_table(cli, tmp_path):
    apply_text(cli, tmp_path, POOL_YAML.format(nat="true"))
    code, out, _ = cli("get", "ippools")
    assert code == 0
    assert table_rows(out) == [
        ["NAME", "CIDR", "BLOCK", "VXLAN", "NAT", "DISABLED", "SELECTOR"],
        ["default-ipv4-ippool", "10.244.0.0/16", "26", "Always", "True", "False", "all()"],
    ]


def test_get_ippool_singular_is_accepted(cli, tmp_path):
    apply_text(cli, tmp_path, POOL_YAML.format(nat="true"))
    _, plural, _ = cli("get", "ippools")
    assert cli("get", "ippool") == (0, plural, "")


# get nodes / blocks / workloads -------------------------------------------------------


@pytest.fixture
def cluster(cli, tmp_path, store):
    """Two nodes with a tunnel address each, three pods on node-1, one on node-2."""
    apply_text(cli, tmp_path, POOL_YAML.format(nat="true"))
    res, ipam = Resources(store), Ipam(store)
    tunnels = {}
    for name, ip, ifname in (("node-1", "172.31.0.11/24", "eth0"), ("node-2", "172.31.0.12/24", "ens5")):
        res.put_node(Node(name, address=ip, interface=ifname))  # as the agent registers: record first
        tunnels[name] = ipam.auto_assign(name, tunnel_handle(name), {"type": "vxlanTunnelAddress", "node": name},
                                         use="Tunnel")
        res.put_node(Node(name, address=ip, interface=ifname, tunnel_address=tunnels[name]))
    pods = {}
    for i, node in enumerate(["node-1", "node-1", "node-1", "node-2"]):
        cid = f"{i:02d}" + "ab" * 31
        ip = ipam.auto_assign(node, ipam_handle(cid), {"node": node, "pod": f"pod-{i}", "namespace": "default"})
        ep = WorkloadEndpoint(
            node=node, container_id=cid, interface="eth0", host_interface=f"cali{i:011d}", ips=(f"{ip}/32",),
            mac="ee:ee:ee:ee:ee:ee", netns=f"/var/run/netns/pod-{i}", pod_namespace="default", pod_name=f"pod-{i}",
            network="k8s-pod-network",
        )
        res.put_endpoint(ep)
        pods[f"pod-{i}"] = (ip, ep)
    return {"tunnels": tunnels, "pods": pods, "res": res, "ipam": ipam}


def test_cluster_fixture_layout(cluster):
    # The numbers the later tests rely on: node-1 got the first block, node-2 the second.
    assert cluster["tunnels"] == {"node-1": "10.244.0.0", "node-2": "10.244.0.64"}
    assert [cluster["pods"][f"pod-{i}"][0] for i in range(4)] == ["10.244.0.1", "10.244.0.2", "10.244.0.3",
                                                                   "10.244.0.65"]


def test_get_nodes_table(cli, cluster):
    code, out, _ = cli("get", "nodes")
    assert code == 0
    assert table_rows(out) == [
        ["NAME", "ADDRESS", "INTERFACE", "TUNNEL-IP", "VTEP-MAC", "BLOCKS"],
        ["node-1", "172.31.0.11/24", "eth0", "10.244.0.0", vtep_mac("node-1"), "10.244.0.0/26"],
        ["node-2", "172.31.0.12/24", "ens5", "10.244.0.64", vtep_mac("node-2"), "10.244.0.64/26"],
    ]


@pytest.mark.parametrize("fmt, load", [("json", json.loads), ("yaml", yaml.safe_load)])
def test_get_nodes_json_and_yaml(cli, cluster, fmt, load):
    code, out, _ = cli("get", "nodes", "-o", fmt)
    assert code == 0
    doc = load(out)
    assert (doc["apiVersion"], doc["kind"]) == ("projectcalico.org/v3", "NodeList")
    nodes = [Node.from_manifest(item) for item in doc["items"]]
    assert nodes == cluster["res"].nodes()
    assert [(n.name, n.tunnel_address) for n in nodes] == [("node-1", "10.244.0.0"), ("node-2", "10.244.0.64")]


def test_get_blocks_table(cli, cluster):
    code, out, _ = cli("get", "blocks")
    assert code == 0
    assert table_rows(out) == [
        ["CIDR", "AFFINITY", "IN-USE", "FREE"],
        ["10.244.0.0/26", "host:node-1", "4", "60"],
        ["10.244.0.64/26", "host:node-2", "2", "62"],
    ]


@pytest.mark.parametrize("fmt, load", [("json", json.loads), ("yaml", yaml.safe_load)])
def test_get_blocks_json_and_yaml(cli, cluster, fmt, load):
    code, out, _ = cli("get", "blocks", "-o", fmt)
    assert code == 0
    blocks = load(out)
    assert [(b["cidr"], b["affinity"], b["allocated"], b["free"]) for b in blocks] == [
        ("10.244.0.0/26", "host:node-1", 4, 60),
        ("10.244.0.64/26", "host:node-2", 2, 62),
    ]
    first = blocks[0]["allocations"]
    assert sorted(first) == ["10.244.0.0", "10.244.0.1", "10.244.0.2", "10.244.0.3"]
    assert first["10.244.0.0"] == {"handle": "vxlan-tunnel-addr-node-1", "type": "vxlanTunnelAddress",
                                   "node": "node-1"}
    cid = cluster["pods"]["pod-1"][1].container_id
    assert first["10.244.0.2"] == {"handle": f"k8s-pod-network.{cid}", "node": "node-1", "pod": "pod-1",
                                   "namespace": "default"}


def test_get_workloads_table(cli, cluster):
    code, out, _ = cli("get", "workloads")
    assert code == 0
    rows = table_rows(out)
    assert rows[0] == ["NODE", "POD", "NAMESPACE", "INTERFACE", "HOST-IF", "IPS", "CONTAINER"]
    expected = []
    for i, node in enumerate(["node-1", "node-1", "node-1", "node-2"]):
        ip, ep = cluster["pods"][f"pod-{i}"]
        expected.append([node, f"pod-{i}", "default", "eth0", f"cali{i:011d}", f"{ip}/32", ep.container_id[:12]])
    assert sorted(rows[1:]) == sorted(expected)


@pytest.mark.parametrize("fmt, load", [("json", json.loads), ("yaml", yaml.safe_load)])
def test_get_workloads_json_and_yaml(cli, cluster, fmt, load):
    code, out, _ = cli("get", "workloads", "-o", fmt)
    assert code == 0
    doc = load(out)
    assert doc["kind"] == "WorkloadEndpointList"
    got = {WorkloadEndpoint.from_manifest(item) for item in doc["items"]}
    assert got == {ep for _, ep in cluster["pods"].values()}


def test_get_workloadendpoints_is_the_same_as_workloads(cli, cluster):
    _, short, _ = cli("get", "workloads", "-o", "json")
    assert cli("get", "workloadendpoints", "-o", "json") == (0, short, "")


# ipam show ------------------------------------------------------------------------------


def test_ipam_show_pool_usage_matches_allocations(cli, cluster):
    code, out, _ = cli("ipam", "show")
    assert code == 0
    assert table_rows(out) == [
        ["GROUPING", "CIDR", "IPS", "TOTAL", "IPS", "IN", "USE", "IPS", "FREE"],
        ["IP", "Pool", "10.244.0.0/16", "65536", "6", "(0%)", "65530"],
    ]


def test_ipam_show_blocks(cli, cluster):
    code, out, _ = cli("ipam", "show", "--show-blocks")
    assert code == 0
    assert table_rows(out)[1:] == [
        ["IP", "Pool", "10.244.0.0/16", "65536", "6", "(0%)", "65530"],
        ["Block", "10.244.0.0/26", "64", "4", "(6%)", "60"],
        ["Block", "10.244.0.64/26", "64", "2", "(3%)", "62"],
    ]


def test_ipam_show_follows_a_release(cli, cluster):
    ip, ep = cluster["pods"]["pod-0"]
    assert cluster["ipam"].release_handle(ep.handle) == [ip]
    _, out, _ = cli("ipam", "show", "--show-blocks")
    assert table_rows(out)[1:] == [
        ["IP", "Pool", "10.244.0.0/16", "65536", "5", "(0%)", "65531"],
        ["Block", "10.244.0.0/26", "64", "3", "(5%)", "61"],
        ["Block", "10.244.0.64/26", "64", "2", "(3%)", "62"],
    ]


def test_ipam_show_json(cli, cluster):
    code, out, _ = cli("ipam", "show", "-o", "json")
    assert code == 0
    assert json.loads(out) == [{"pool": "default-ipv4-ippool", "cidr": "10.244.0.0/16", "size": 65536, "in_use": 6}]


def test_ipam_show_with_pools_of_both_families(cli, tmp_path, store):
    apply_text(cli, tmp_path, """\
        apiVersion: projectcalico.org/v3
        kind: IPPool
        metadata: {name: v4}
        spec: {cidr: 10.244.0.0/24}
        ---
        apiVersion: projectcalico.org/v3
        kind: IPPool
        metadata: {name: v6}
        spec: {cidr: "fd00:10:244::/120"}
        """)
    ipam = Ipam(store)
    register_nodes(store, "node-1")
    ipam.auto_assign("node-1", "h4a")
    ipam.auto_assign("node-1", "h4b")
    ipam.auto_assign("node-1", "h6", version=6)
    code, out, err = cli("ipam", "show", "--show-blocks")
    assert (code, err) == (0, "")
    assert table_rows(out)[1:] == [
        ["IP", "Pool", "10.244.0.0/24", "256", "2", "(1%)", "254"],
        ["Block", "10.244.0.0/26", "64", "2", "(3%)", "62"],
        ["IP", "Pool", "fd00:10:244::/120", "256", "1", "(0%)", "255"],
        ["Block", "fd00:10:244::/122", "64", "1", "(2%)", "63"],
    ]


def test_ipam_show_ip_in_use(cli, cluster):
    ip, ep = cluster["pods"]["pod-1"]
    code, out, _ = cli("ipam", "show", "--ip", ip)
    assert code == 0
    assert out.splitlines() == [
        f"IP {ip} is in use by handle {ep.handle} (block 10.244.0.0/26, host:node-1)",
        "  namespace: default",
        "  node: node-1",
        "  pod: pod-1",
    ]


def test_ipam_show_tunnel_ip(cli, cluster):
    _, out, _ = cli("ipam", "show", "--ip", "10.244.0.64")
    assert out.splitlines()[0] == "IP 10.244.0.64 is in use by handle vxlan-tunnel-addr-node-2 (block 10.244.0.64/26, host:node-2)"
    assert "  type: vxlanTunnelAddress" in out.splitlines()


@pytest.mark.parametrize("ip", ["10.244.0.50", "10.244.200.1", "192.168.1.1"],
                         ids=["free-in-claimed-block", "unclaimed-block", "outside-pools"])
def test_ipam_show_ip_unused(cli, cluster, ip):
    assert cli("ipam", "show", "--ip", ip) == (0, f"IP {ip} is not assigned\n", "")


def test_ipam_show_ip_after_release_is_unused(cli, cluster):
    ip, ep = cluster["pods"]["pod-2"]
    cluster["ipam"].release_handle(ep.handle)
    assert cli("ipam", "show", "--ip", ip) == (0, f"IP {ip} is not assigned\n", "")


# delete ------------------------------------------------------------------------------------


def test_delete_existing_pool(cli, tmp_path, store):
    apply_text(cli, tmp_path, POOL_YAML.format(nat="false"))
    assert cli("delete", "ippool", "default-ipv4-ippool") == (0, "ippool/default-ipv4-ippool deleted\n", "")
    assert Resources(store).pools() == []
    _, out, _ = cli("get", "ippools")
    assert table_rows(out) == [["NAME", "CIDR", "BLOCK", "VXLAN", "NAT", "DISABLED", "SELECTOR"]]
    # A deleted pool can be created again.
    assert apply_text(cli, tmp_path, POOL_YAML.format(nat="false"))[1] == "ippool/default-ipv4-ippool created\n"


def test_delete_missing_pool_fails(cli, tmp_path, store):
    apply_text(cli, tmp_path, POOL_YAML.format(nat="false"))
    code, out, err = cli("delete", "ippools", "no-such-pool")
    assert code == 1
    assert out == ""
    assert err.startswith("error: ") and "no-such-pool" in err and "does not exist" in err
    assert [p.name for p in Resources(store).pools()] == ["default-ipv4-ippool"]


def test_delete_unsupported_kind_fails(cli):
    code, out, err = cli("delete", "node", "node-1")
    assert code == 1
    assert out == ""
    assert err.startswith("error: ") and "node" in err


# unknown kinds -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["frobnicators", "bgppeers", "hostendpoint"])
def test_get_unknown_kind_fails_with_an_error_on_stderr(cli, kind):
    code, out, err = cli("get", kind)
    assert code == 1
    assert out == ""
    assert err.startswith("error: ") and repr(kind) in err
    from podnet.model.kinds import names

    assert "kinds: " + names() in err and "ippools" in names() and "nodes" in names()


# calicoctl's habits: one registry of kinds behind every verb ---------------------------------------

NODE_YAML = """\
apiVersion: projectcalico.org/v3
kind: Node
metadata:
  name: node-9
  labels: {rack: r1}
spec:
  address: 172.31.0.99/24
  interface: eth0
"""

CONFIG_YAML = """\
apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata:
  name: default
spec:
  vxlanVNI: 4096
  vxlanMTU: 1400
"""


@pytest.mark.parametrize("word", ["ippools", "IPPools", "ippool", "IPPool", "ipp", "pool", "IPPOOLS"])
def test_get_takes_any_case_singular_plural_and_short_names(cli, tmp_path, word):
    apply_text(cli, tmp_path, POOL_YAML.format(nat="true"))
    _, expected, _ = cli("get", "ippools")
    assert cli("get", word) == (0, expected, "")


def test_get_by_name_prints_one_resource_not_a_list(cli, tmp_path):
    apply_text(cli, tmp_path, POOL_YAML.format(nat="true"))
    code, out, _ = cli("get", "ippool", "default-ipv4-ippool", "-o", "yaml")
    assert code == 0
    doc = yaml.safe_load(out)
    assert doc["kind"] == "IPPool" and doc["metadata"]["name"] == "default-ipv4-ippool"
    code, out, err = cli("get", "ippool", "nope")
    assert (code, out) == (1, "") and "IPPool nope does not exist" in err


def test_get_several_names_keeps_their_order(cli, tmp_path):
    apply_text(cli, tmp_path, POOL_YAML.format(nat="true"))
    apply_text(cli, tmp_path, POOL_YAML.format(nat="true").replace("default-ipv4-ippool", "second")
               .replace("10.244.0.0/16", "10.245.0.0/16"))
    code, out, _ = cli("get", "ippools", "second", "default-ipv4-ippool")
    assert code == 0
    assert [r[0] for r in table_rows(out)[1:]] == ["second", "default-ipv4-ippool"]


def test_get_wide_adds_columns(cli, tmp_path):
    apply_text(cli, tmp_path, POOL_YAML.format(nat="true"))
    _, out, _ = cli("get", "ippools", "-o", "wide")
    assert table_rows(out)[0] == ["NAME", "CIDR", "BLOCK", "VXLAN", "NAT", "DISABLED", "SELECTOR", "IPIP", "USES"]
    assert table_rows(out)[1][-2:] == ["Never", "Workload,Tunnel"]


def test_get_custom_columns_by_heading_and_by_path(cli, tmp_path):
    apply_text(cli, tmp_path, POOL_YAML.format(nat="true"))
    assert cli("get", "ippools", "-o", "custom-columns=name,CIDR")[1].split() == \
        ["NAME", "CIDR", "default-ipv4-ippool", "10.244.0.0/16"]
    _, out, _ = cli("get", "ippools", "-o", "custom-columns=POOL:.metadata.name,MODE:.spec.vxlanMode")
    assert table_rows(out) == [["POOL", "MODE"], ["default-ipv4-ippool", "Always"]]
    code, _, err = cli("get", "ippools", "-o", "custom-columns=NOPE")
    assert code == 1 and "no column 'NOPE'" in err


def test_unknown_output_format_is_an_error(cli):
    code, out, err = cli("get", "ippools", "-o", "xml")
    assert (code, out) == (1, "") and "unknown output format 'xml'" in err


def test_global_flags_are_accepted_after_the_verb(db, capsys, tmp_path):
    path = write(tmp_path, "pool.yaml", POOL_YAML.format(nat="false"))
    assert main(["apply", "-f", path, "--datastore", f"sqlite://{db}"]) == 0
    capsys.readouterr()
    assert main(["get", "ippools", "--datastore", f"sqlite://{db}"]) == 0
    after = capsys.readouterr().out
    assert main(["--datastore", f"sqlite://{db}", "get", "ippools"]) == 0
    assert capsys.readouterr().out == after and "default-ipv4-ippool" in after


def test_create_fails_when_it_exists_and_replace_when_it_does_not(cli, tmp_path, store):
    path = write(tmp_path, "pool.yaml", POOL_YAML.format(nat="false"))
    code, _, err = cli("replace", "-f", path)
    assert code == 1 and "does not exist" in err and Resources(store).pools() == []
    assert cli("create", "-f", path) == (0, "ippool/default-ipv4-ippool created\n", "")
    code, _, err = cli("create", "-f", path)
    assert code == 1 and "already exists" in err
    changed = write(tmp_path, "pool2.yaml", POOL_YAML.format(nat="true"))
    assert cli("replace", "-f", changed) == (0, "ippool/default-ipv4-ippool updated\n", "")
    assert Resources(store).pools()[0].nat_outgoing is True


def test_delete_from_a_file_and_several_names(cli, tmp_path, store):
    path = write(tmp_path, "pool.yaml", POOL_YAML.format(nat="false"))
    cli("apply", "-f", path)
    assert cli("delete", "-f", path) == (0, "ippool/default-ipv4-ippool deleted\n", "")
    assert Resources(store).pools() == []
    cli("apply", "-f", path)
    apply_text(cli, tmp_path, CONFIG_YAML, name="c.yaml")
    code, out, err = cli("delete", "ippools", "default-ipv4-ippool", "nope")
    assert code == 1 and out == "ippool/default-ipv4-ippool deleted\n" and "IPPool nope does not exist" in err


def test_delete_refuses_kinds_podnet_writes_itself(cli, cluster):
    for kind in ("blocks", "workloads"):
        code, out, err = cli("delete", kind, "x")
        assert (code, out) == (1, "") and "podnet writes and removes them itself" in err


def test_felixconfiguration_applies_and_round_trips(cli, tmp_path, store):
    assert apply_text(cli, tmp_path, CONFIG_YAML, name="c.yaml") == (0, "agentconfiguration/default created\n", "")
    _, out, _ = cli("get", "felixconfigurations", "-o", "yaml")
    assert apply_text(cli, tmp_path, out, name="again.yaml") == (0, "agentconfiguration/default unchanged\n", "")


def test_node_yaml_round_trips_and_labels_change(cli, tmp_path, store):
    assert apply_text(cli, tmp_path, NODE_YAML, name="n.yaml") == (0, "node/node-9 created\n", "")
    _, out, _ = cli("get", "node", "node-9", "-o", "yaml")
    assert apply_text(cli, tmp_path, out, name="again.yaml") == (0, "node/node-9 unchanged\n", "")
    assert cli("label", "nodes", "node-9", "zone=a") == (0, "node/node-9 labeled\n", "")
    code, _, err = cli("label", "nodes", "node-9", "rack=r2")
    assert code == 1 and "--overwrite" in err
    assert cli("label", "nodes", "node-9", "rack=r2", "--overwrite")[0] == 0
    assert Resources(store).node("node-9").labels == {"rack": "r2", "zone": "a"}
    assert cli("label", "node", "node-9", "zone-")[0] == 0
    assert Resources(store).node("node-9").labels == {"rack": "r2"}
    code, _, err = cli("label", "node", "node-9", "bad key=x")
    assert code == 1 and "metadata.labels" in err
    assert Resources(store).node("node-9").labels == {"rack": "r2"}


@pytest.mark.parametrize("kind", ["workloads", "nodes"])
def test_yaml_of_kinds_podnet_writes_round_trips_through_the_model(cli, cluster, kind):
    from podnet.model.kinds import lookup

    k = lookup(kind)
    _, out, _ = cli("get", kind, "-o", "yaml")
    items = yaml.safe_load(out)["items"]
    assert items and [k.cls.from_manifest(d).to_manifest() for d in items] == items


def test_version_prints_the_client_version(cli):
    import podnet

    code, out, _ = cli("version")
    assert code == 0 and podnet.__version__ in out


def test_agent_flags_reach_the_agent_parser(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--datastore", "sqlite:///nonexistent/x.db", "agent", "--help"])
    assert exit.value.code == 0
    assert "--node" in capsys.readouterr().out


CALICOCTL_FELIX_YAML = """\
apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata:
  creationTimestamp: "2026-11-02T10:00:00Z"
  name: default
  resourceVersion: "812"
  uid: 0b8e1f0e-6a3c-4c33-9a55-3f0d4a6b1d2e
spec:
  bpfConnectTimeLoadBalancing: TCP
  bpfHostNetworkedNATWithoutCTLB: Enabled
  bpfLogLevel: ""
  floatingIPs: Disabled
  healthPort: 9099
  logSeverityScreen: Info
  reportingInterval: 0s
  vxlanEnabled: true
  vxlanVNI: 4096
  failsafeInboundHostPorts:
  - {protocol: tcp, port: 22}
  someFutureSetting: 3
"""


def test_calicoctls_felixconfiguration_applies_and_describe_names_what_is_not_applied(cli, tmp_path, store):
    code, out, err = apply_text(cli, tmp_path, CALICOCTL_FELIX_YAML, name="felix.yaml")
    assert (code, out, err) == (0, "agentconfiguration/default created\n", "")
    code, out, _ = cli("describe", "felixconfiguration", "default")
    assert code == 0
    assert "VXLAN VNI:" in out and "4096" in out
    not_applied = out.split("Not applied by podnet", 1)[1]
    rows = {line.split()[0]: line for line in not_applied.strip().splitlines()[2:]}
    assert set(rows) == {"bpfConnectTimeLoadBalancing", "bpfHostNetworkedNATWithoutCTLB", "bpfLogLevel",
                         "floatingIPs", "healthPort", "logSeverityScreen", "reportingInterval", "vxlanEnabled",
                         "failsafeInboundHostPorts", "someFutureSetting"}
    assert "does not implement" in rows["healthPort"] and "typo" in rows["someFutureSetting"]
    # Stored as given: what get prints applies again unchanged.
    _, exported, _ = cli("get", "felixconfiguration", "default", "-o", "yaml")
    assert yaml.safe_load(exported)["spec"]["failsafeInboundHostPorts"] == [{"protocol": "tcp", "port": 22}]
    assert apply_text(cli, tmp_path, exported, name="again.yaml")[1] == "agentconfiguration/default unchanged\n"


IPAMCONFIG_YAML = """\
apiVersion: projectcalico.org/v3
kind: IPAMConfiguration
metadata:
  name: default
spec:
  strictAffinity: true
  maxBlocksPerHost: 4
  autoAllocateBlocks: true
"""


def test_ipamconfiguration_is_what_ipam_reads(cli, tmp_path, store):
    assert apply_text(cli, tmp_path, IPAMCONFIG_YAML, name="i.yaml") == \
        (0, "ipamconfiguration/default created\n", "")
    config = Ipam(store).config()
    assert (config.strict_affinity, config.max_blocks_per_host) == (True, 4)
    assert cli("ipam", "configure", "--max-blocks-per-host", "7")[0] == 0
    _, out, _ = cli("get", "ipamconfig", "default", "-o", "yaml")
    assert yaml.safe_load(out)["spec"] == {"strictAffinity": True, "maxBlocksPerHost": 7}
    code, _, err = apply_text(cli, tmp_path, IPAMCONFIG_YAML.replace("name: default", "name: other"), name="j.yaml")
    assert code == 1 and "metadata.name" in err
    code, _, err = apply_text(cli, tmp_path, IPAMCONFIG_YAML.replace("4", "-1"), name="k.yaml")
    assert code == 1 and "spec.maxBlocksPerHost" in err


IPRESERVATION_YAML = """\
apiVersion: projectcalico.org/v3
kind: IPReservation
metadata:
  name: gateways
spec:
  reservedCIDRs: [10.244.0.0/30, 10.244.0.9]
"""


def test_ipreservation_applies_lists_and_keeps_ipam_away(cli, tmp_path, store):
    apply_text(cli, tmp_path, POOL_YAML.format(nat="false"))
    path = write(tmp_path, "r.yaml", IPRESERVATION_YAML)
    assert cli("apply", "-f", path) == (0, "ipreservation/gateways created\n", "")
    _, out, _ = cli("get", "ipreservations")
    assert table_rows(out) == [["NAME", "RESERVED-CIDRS"], ["gateways", "10.244.0.0/30,10.244.0.9/32"]]
    from tests.nodes import register_nodes

    register_nodes(store, "node-1")
    ips = {Ipam(store).auto_assign("node-1", f"h{i}") for i in range(6)}
    assert not ips & {"10.244.0.0", "10.244.0.1", "10.244.0.2", "10.244.0.3", "10.244.0.9"}
    assert cli("delete", "-f", path) == (0, "ipreservation/gateways deleted\n", "")
    assert Ipam(store).auto_assign("node-1", "after") == "10.244.0.0"
    code, _, err = apply_text(cli, tmp_path, IPRESERVATION_YAML.replace("10.244.0.9", "10.244.0.x"), name="bad.yaml")
    assert code == 1 and "spec.reservedCIDRs[1]" in err
