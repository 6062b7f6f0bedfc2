"""Unit tests of the resource model: IPPool, Node and its VTEP MAC, host veth names, IPAM blocks."""

import copy
import dataclasses
import hashlib
import ipaddress

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from podnet.model import Block, IPPool, Node, ValidationError, WorkloadEndpoint, host_veth_name, parse_resource, vtep_mac
from podnet.model.endpoint import (endpoint_name, explained_handles, host_veth_names, ipam_handle, owner_mark,
                                   tunnel_handle)
from podnet.model.ippool import check_pools_disjoint


def pool_doc(**spec):
    """A minimal valid IPPool manifest; keyword arguments override or add spec fields."""
    return {
        "apiVersion": "projectcalico.org/v3",
        "kind": "IPPool",
        "metadata": {"name": "pool-a"},
        "spec": {"cidr": "10.244.0.0/16", **spec},
    }


def rejection(doc) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        IPPool.from_manifest(doc)
    return caught.value


# IPPool: what is rejected, and which field is blamed -------------------------


@pytest.mark.parametrize(
    "spec, field, words",
    [
        # Pods use 169.254.1.1 / fe80:: as their gateway: a pool may not touch the link-local ranges.
        ({"cidr": "169.254.0.0/16"}, "spec.cidr", "169.254.0.0/16"),
        ({"cidr": "169.254.128.0/24"}, "spec.cidr", "link-local"),
        ({"cidr": "169.0.0.0/8"}, "spec.cidr", "link-local"),  # contains it
        ({"cidr": "fe80::/64"}, "spec.cidr", "fe80::/10"),
        ({"cidr": "fe00::/7"}, "spec.cidr", "link-local"),  # contains it
        # blockSize bounds per family.
        ({"blockSize": 19}, "spec.blockSize", "20-32"),
        ({"blockSize": 33}, "spec.blockSize", "20-32"),
        ({"blockSize": 122}, "spec.blockSize", "20-32"),  # an IPv6 size on an IPv4 pool
        ({"cidr": "fd00:10::/64", "blockSize": 115}, "spec.blockSize", "116-128"),
        ({"cidr": "fd00:10::/64", "blockSize": 129}, "spec.blockSize", "116-128"),
        ({"cidr": "fd00:10::/64", "blockSize": 26}, "spec.blockSize", "116-128"),
        ({"blockSize": "26"}, "spec.blockSize", "whole number"),
        ({"blockSize": True}, "spec.blockSize", "whole number"),
        # A pool must hold at least one block.
        ({"cidr": "10.244.0.0/27"}, "spec.cidr", "/26 block"),
        ({"cidr": "10.244.0.0/24", "blockSize": 23}, "spec.cidr", "/23 block"),
        ({"cidr": "fd00:10::/123"}, "spec.cidr", "/122 block"),
        # Not a CIDR at all.
        ({"cidr": "10.244.0.0/33"}, "spec.cidr", "not a CIDR"),
        ({"cidr": "pods"}, "spec.cidr", "not a CIDR"),
        ({"cidr": 10}, "spec.cidr", "CIDR string"),
        # Modes: VXLAN only.
        ({"vxlanMode": "always"}, "spec.vxlanMode", "Always, CrossSubnet, Never"),
        ({"vxlanMode": "VXLAN"}, "spec.vxlanMode", "Always, CrossSubnet, Never"),
        ({"ipipMode": "Always"}, "spec.ipipMode", "Never"),
        ({"ipipMode": "CrossSubnet"}, "spec.ipipMode", "Never"),
        # Other fields.
        ({"natOutgoing": "yes"}, "spec.natOutgoing", "true or false"),
        ({"disabled": 1}, "spec.disabled", "true or false"),
        ({"allowedUses": ["Workload", "LoadBalancer"]}, "spec.allowedUses", "LoadBalancer"),
        ({"nodeSelector": "zone =="}, "spec.nodeSelector", "expected a quoted value"),
        # Unknown fields are errors, not silently ignored (a typo must not drop a setting).
        ({"blocksize": 24}, "spec.blocksize", "not a field"),
        ({"vxlanmode": "Never"}, "spec.vxlanmode", "not a field"),
    ],
)
def test_pool_spec_rejected_naming_the_field(spec, field, words):
    err = rejection(pool_doc(**spec))
    assert err.field == field
    assert words in str(err)
    assert str(err).startswith(field + ":")


@pytest.mark.parametrize(
    "cidr, masked",
    [("10.244.1.0/16", "10.244.0.0/16"), ("192.168.7.9/24", "192.168.7.0/24"), ("fd00:10::1/64", "fd00:10::/64")],
)
def test_pool_cidr_with_host_bits_suggests_masked_form(cidr, masked):
    err = rejection(pool_doc(cidr=cidr))
    assert err.field == "spec.cidr"
    assert f"did you mean {masked}?" in err.message


def test_pool_without_cidr_rejected():
    doc = pool_doc()
    del doc["spec"]["cidr"]
    assert rejection(doc).field == "spec.cidr"


def test_pool_without_spec_rejected():
    doc = pool_doc()
    del doc["spec"]
    assert rejection(doc).field == "spec"


@pytest.mark.parametrize(
    "change, field",
    [
        ({"apiVersion": "projectcalico.org/v1"}, "apiVersion"),
        ({"apiVersion": "crd.projectcalico.org/v1"}, "apiVersion"),
        ({"apiVersion": None}, "apiVersion"),
        ({"kind": "IPPools"}, "kind"),
        ({"kind": "Node"}, "kind"),
        ({"metadata": {}}, "metadata.name"),
        ({"metadata": None}, "metadata.name"),
        ({"metadata": {"name": ""}}, "metadata.name"),
        ({"metadata": {"name": "Default_Pool"}}, "metadata.name"),
    ],
)
def test_pool_header_rejected_naming_the_field(change, field):
    doc = pool_doc()
    doc.update(change)
    assert rejection(doc).field == field


def test_pool_manifest_not_a_mapping_rejected():
    assert rejection(["not", "a", "map"]).field == "(document)"


def test_pool_rejected_when_built_directly_too():
    with pytest.raises(ValidationError) as caught:
        IPPool(name="p", cidr="169.254.0.0/24")
    assert caught.value.field == "spec.cidr"
    with pytest.raises(ValidationError) as caught:
        IPPool(name="p", cidr="10.0.0.0/8", ipip_mode="Always")
    assert caught.value.field == "spec.ipipMode"


def test_pool_exactly_one_block_is_accepted():
    assert IPPool(name="p", cidr="10.244.0.0/26").block_size == 26
    assert IPPool(name="p", cidr="10.244.0.0/30", block_size=30).block_size == 30
    assert IPPool(name="p6", cidr="fd00::/122").block_size == 122


def test_pool_block_size_bounds_are_inclusive():
    assert IPPool(name="p", cidr="10.0.0.0/16", block_size=20).block_size == 20
    assert IPPool(name="p", cidr="10.0.0.0/16", block_size=32).block_size == 32
    assert IPPool(name="p", cidr="fd00::/64", block_size=116).block_size == 116
    assert IPPool(name="p", cidr="fd00::/64", block_size=128).block_size == 128


# Overlap between pools ---------------------------------------------------------


def test_overlapping_pools_rejected():
    a = IPPool(name="pool-a", cidr="10.244.0.0/16")
    b = IPPool(name="pool-b", cidr="10.244.128.0/17")
    with pytest.raises(ValidationError) as caught:
        check_pools_disjoint([a, b])
    assert caught.value.field == "spec.cidr"
    assert "pool-a (10.244.0.0/16)" in caught.value.message
    assert "pool-b (10.244.128.0/17)" in caught.value.message


def test_overlap_found_among_many_pools():
    pools = [
        IPPool(name="a", cidr="10.1.0.0/16"),
        IPPool(name="b", cidr="10.2.0.0/16"),
        IPPool(name="v6", cidr="fd00::/48"),
        IPPool(name="c", cidr="10.0.0.0/8"),  # covers a and b
    ]
    with pytest.raises(ValidationError, match="overlaps"):
        check_pools_disjoint(pools)
    with pytest.raises(ValidationError, match="overlaps"):
        check_pools_disjoint([IPPool(name="x", cidr="fd00::/48"), IPPool(name="y", cidr="fd00:0:0:1::/64")])


def test_disjoint_pools_accepted():
    pools = [
        IPPool(name="a", cidr="10.1.0.0/16"),
        IPPool(name="b", cidr="10.2.0.0/16"),  # adjacent, not overlapping
        IPPool(name="v6", cidr="fd00::/48"),
    ]
    assert check_pools_disjoint(pools) is None


# calicoctl YAML ------------------------------------------------------------------


CALICOCTL_YAML = """\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  creationTimestamp: "2024-05-02T08:11:43Z"
  name: default-ipv4-ippool
  resourceVersion: "1049"
  uid: 9a1c3c1e-2b4e-4c53-9f1e-4f6d8ad0c3b1
spec:
  allowedUses:
  - Workload
  - Tunnel
  blockSize: 26
  cidr: 100.64.0.0/10
  ipipMode: Never
  natOutgoing: true
  nodeSelector: all()
  vxlanMode: Always
"""


def test_parse_calicoctl_yaml():
    pool = parse_resource(yaml.safe_load(CALICOCTL_YAML))
    assert pool == IPPool(
        name="default-ipv4-ippool",
        cidr="100.64.0.0/10",
        block_size=26,
        vxlan_mode="Always",
        ipip_mode="Never",
        nat_outgoing=True,
        disabled=False,
        node_selector="all()",
        allowed_uses=("Workload", "Tunnel"),
    )
    # The seed article's block sits in this pool, and is one of its blocks.
    blocks = pool.blocks()
    assert str(next(blocks)) == "100.64.0.0/26"
    assert ipaddress.ip_network("100.76.131.0/26").subnet_of(pool.network)


def test_parse_resource_rejects_other_kinds():
    with pytest.raises(ValidationError) as caught:
        parse_resource({"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer", "metadata": {"name": "x"}})
    assert caught.value.field == "kind"
    assert "BGPPeer" in caught.value.message


@pytest.mark.parametrize(
    "pool",
    [
        IPPool(name="default-ipv4-ippool", cidr="10.244.0.0/16"),
        IPPool(
            name="edge.pool-2",
            cidr="192.168.0.0/20",
            block_size=28,
            vxlan_mode="CrossSubnet",
            nat_outgoing=True,
            disabled=True,
            node_selector="zone == 'a'",
            allowed_uses=("Tunnel",),
        ),
        IPPool(name="default-ipv6-ippool", cidr="fd00:10:244::/64", vxlan_mode="Never"),
    ],
)
def test_pool_manifest_round_trip(pool):
    manifest = pool.to_manifest()
    assert IPPool.from_manifest(manifest) == pool
    # ... also through YAML text, as `podnet get ippool -o yaml | podnet apply -f -` would.
    assert IPPool.from_manifest(yaml.safe_load(yaml.safe_dump(manifest))) == pool
    assert manifest["spec"]["cidr"] == pool.cidr
    assert manifest["spec"]["blockSize"] == pool.block_size


def test_pool_manifest_uses_calico_field_names():
    spec = IPPool(name="p", cidr="10.244.0.0/16", nat_outgoing=True).to_manifest()["spec"]
    assert spec == {
        "cidr": "10.244.0.0/16",
        "blockSize": 26,
        "vxlanMode": "Always",
        "ipipMode": "Never",
        "natOutgoing": True,
        "disabled": False,
        "nodeSelector": "all()",
        "allowedUses": ["Workload", "Tunnel"],
    }


def test_pool_defaults():
    v4 = IPPool.from_manifest(pool_doc())
    assert (v4.block_size, v4.vxlan_mode, v4.ipip_mode) == (26, "Always", "Never")
    assert (v4.nat_outgoing, v4.disabled, v4.node_selector) == (False, False, "all()")
    assert v4.allowed_uses == ("Workload", "Tunnel")
    assert v4.version == 4
    v6 = IPPool.from_manifest(pool_doc(cidr="fd00:10:244::/64"))
    assert v6.block_size == 122
    assert v6.version == 6
    assert IPPool(name="x", cidr="10.0.0.0/8", block_size=0).block_size == 26


def test_pool_blocks_in_address_order():
    pool = IPPool(name="p", cidr="10.244.0.0/24")
    assert [str(n) for n in pool.blocks()] == [
        "10.244.0.0/26",
        "10.244.0.64/26",
        "10.244.0.128/26",
        "10.244.0.192/26",
    ]


def test_from_manifest_does_not_modify_its_input():
    doc = yaml.safe_load(CALICOCTL_YAML)
    before = copy.deepcopy(doc)
    IPPool.from_manifest(doc)
    assert doc == before


# Node and its VTEP MAC ---------------------------------------------------------


def expected_mac(seed: str) -> str:
    """Calico's rule, written out independently: 0x66 then the first 5 bytes of SHA-1(seed)."""
    digest = hashlib.sha1(seed.encode("utf-8")).hexdigest()
    return "66:" + ":".join(digest[i : i + 2] for i in range(0, 10, 2))


def test_vtep_mac_matches_the_seed_cluster():
    # `ip n` / `bridge fdb` on the seed's cluster: node-172-29-236-164's vxlan.calico has this MAC.
    assert vtep_mac("node-172-29-236-164") == "66:1e:13:c0:bc:a9"


@pytest.mark.parametrize("name", ["node-1", "worker-b.example.com", "k8s-master-0", "a"])
def test_vtep_mac_is_0x66_then_sha1_of_name(name):
    assert vtep_mac(name) == expected_mac(name)
    assert vtep_mac(name, ipv6=True) == expected_mac(name + "-v6")
    assert vtep_mac(name) != vtep_mac(name, ipv6=True)
    first = int(vtep_mac(name).split(":")[0], 16)
    assert first & 0x02, "locally administered"
    assert not first & 0x01, "unicast"


def test_vtep_mac_differs_between_nodes():
    macs = {vtep_mac(f"node-{i}") for i in range(200)}
    assert len(macs) == 200


def test_node_effective_vtep_mac():
    assert Node(name="node-1").effective_vtep_mac == expected_mac("node-1")
    assert Node(name="node-1", vtep_mac="66:AA:BB:CC:DD:EE").effective_vtep_mac == "66:aa:bb:cc:dd:ee"


def test_node_address_keeps_its_prefix():
    node = Node(name="node-1", address="172.31.0.2/24", interface="eth0")
    assert node.address == "172.31.0.2/24"
    assert node.ip == "172.31.0.2"
    assert Node(name="n6", address="fd00:1::2/64").ip == "fd00:1::2"


@pytest.mark.parametrize("address", ["172.31.0.2", "172.31.0.2/33", "node-1/24", "fd00::1"])
def test_node_address_without_valid_prefix_rejected(address):
    with pytest.raises(ValidationError) as caught:
        Node(name="node-1", address=address)
    assert caught.value.field == "spec.bgp.ipv4Address"


@pytest.mark.parametrize("mac", ["66:1e:13:c0:bc", "66:1e:13:c0:bc:a9:00", "661e13c0bca9", "66-1e-13-c0-bc-a9", "zz:1e:13:c0:bc:a9", ""])
def test_node_bad_vtep_mac_rejected(mac):
    with pytest.raises(ValidationError) as caught:
        Node(name="node-1", vtep_mac=mac)
    assert caught.value.field == "spec.vxlanTunnelMACAddr"


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"name": "Node_1"}, "metadata.name"),
        ({"name": ""}, "metadata.name"),
        ({"name": "n", "interface": "an-interface-name-too-long"}, "metadata.annotations.podnet.io/underlay-interface"),
        ({"name": "n", "interface": "eth/0"}, "metadata.annotations.podnet.io/underlay-interface"),
        ({"name": "n", "tunnel_address": "100.76.131.3/32"}, "spec.ipv4VXLANTunnelAddr"),
        ({"name": "n", "labels": {"zone": 1}}, "metadata.labels"),
    ],
)
def test_node_other_fields_rejected(kwargs, field):
    with pytest.raises(ValidationError) as caught:
        Node(**kwargs)
    assert caught.value.field == field


def test_node_manifest_round_trip():
    node = Node(
        name="node-172-29-236-164",
        address="172.29.236.164/20",
        interface="bond0",
        tunnel_address="100.76.131.3",
        labels={"zone": "a"},
    )
    manifest = node.to_manifest()
    assert "vtepMAC" not in manifest["spec"]  # derived, not stored
    assert Node.from_manifest(manifest) == node
    assert Node.from_manifest(yaml.safe_load(yaml.safe_dump(manifest))) == node


# Host veth names -------------------------------------------------------------------


def test_host_veth_name_from_namespace_and_pod():
    name = host_veth_name("default", "pod-b-646756645c-4qhss", "f00dcafe")
    assert name == "cali" + hashlib.sha1(b"default.pod-b-646756645c-4qhss").hexdigest()[:11]
    assert len(name) == 15


def test_host_veth_name_survives_a_sandbox_restart():
    assert host_veth_name("kube-system", "coredns-0", "aaaa") == host_veth_name("kube-system", "coredns-0", "bbbb")
    assert host_veth_name("kube-system", "coredns-0", "aaaa") != host_veth_name("kube-system", "coredns-1", "aaaa")
    assert host_veth_name("ns-a", "pod", "c") != host_veth_name("ns-b", "pod", "c")


@pytest.mark.parametrize("namespace, pod", [(None, None), ("", ""), ("default", None), (None, "pod-a")])
def test_host_veth_name_falls_back_to_container_id(namespace, pod):
    cid = "3f8e5c0a9d1b" * 5
    name = host_veth_name(namespace, pod, cid)
    assert name == "cali" + hashlib.sha1(cid.encode()).hexdigest()[:11]
    assert len(name) == 15


def test_workload_endpoint_manifest_round_trip():
    ep = WorkloadEndpoint(
        node="node-1",
        container_id="abc123",
        interface="eth0",
        host_interface=host_veth_name("default", "pod-a", "abc123"),
        ips=("10.244.0.5/32",),
        mac="0a:58:0a:f4:00:05",
        netns="/var/run/netns/cni-1",
        pod_namespace="default",
        pod_name="pod-a",
        network="k8s-pod-network",
    )
    assert WorkloadEndpoint.from_manifest(ep.to_manifest()) == ep
    assert ep.key_name == "abc123:eth0" == endpoint_name("abc123", "eth0")
    assert ep.handle == ipam_handle("abc123") == "k8s-pod-network.abc123"
    assert tunnel_handle("node-1") == "vxlan-tunnel-addr-node-1"


# Endpoint identity: names, handles, host veths ------------------------------------------

AWKWARD_PAIRS = [("k1-eth0", "x"), ("k1", "eth0-x"), ("k1", "eth0"), ("k1-", "eth0"), ("k1", "-eth0"),
                 ("a.eth1", "eth0"), ("a", "eth1"), ("a", "eth0"), ("a", "e%3Ath"), ("a", "e:th"), ("a:e", "th"),
                 ("a", "\u00e9" * 7), ("a", "x/y"), ("a", "x%2Fy")]


def test_endpoint_names_never_collide():
    names = [endpoint_name(c, i) for c, i in AWKWARD_PAIRS]
    assert len(set(names)) == len(names)
    assert endpoint_name("k1-eth0", "x") == "k1-eth0:x" and endpoint_name("k1", "eth0-x") == "k1:eth0-x"
    assert all(n.count(":") == 1 and "/" not in n for n in names)


@given(st.tuples(st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=15)),
       st.tuples(st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=15)))
def test_endpoint_name_is_injective(a, b):
    assert (endpoint_name(*a) == endpoint_name(*b)) == (a == b)
    assert (ipam_handle(*a) == ipam_handle(*b)) == (a == b)


def test_handles_keep_calicos_form_for_eth0_and_never_collide():
    assert ipam_handle("abc", "eth0") == ipam_handle("abc") == "k8s-pod-network.abc"
    assert ipam_handle("abc", "eth1") == "k8s-pod-network.abc:eth1"
    handles = [ipam_handle(c, i) for c, i in AWKWARD_PAIRS]
    assert len(set(handles)) == len(handles)


def test_host_veth_names_keep_calicos_form_and_stay_unique():
    first = host_veth_name("default", "web", "c1")
    assert first == "cali" + hashlib.sha1(b"default.web").hexdigest()[:11]
    old = list(host_veth_names("default", "web", "c1"))
    new = list(host_veth_names("default", "web", "c2"))
    eth1 = list(host_veth_names("default", "web", "c1", "eth1"))
    assert old[0] == new[0] == first  # Calico's name: the first choice of every sandbox of the pod
    assert eth1[0] != first
    every = old + new[1:] + eth1
    assert len(set(every)) == len(every)  # past the first, each sandbox and interface has names of its own
    assert all(n.startswith("cali") and len(n.encode()) == 15 for n in every)


def test_owner_mark_fits_the_kernels_alias_limit():
    assert owner_mark("abc", "eth0") == "podnet abc:eth0"
    long = owner_mark("a" * 300, "eth0")
    assert len(long.encode()) <= 255 and long != owner_mark("a" * 301, "eth0")


def test_legacy_records_are_read_under_their_own_name():
    ep = WorkloadEndpoint(node="n", container_id="k1", interface="eth0", host_interface="cali0", ips=(), mac="")
    legacy = WorkloadEndpoint.from_manifest(ep.to_manifest(), stored_name="k1-eth0")
    assert legacy.legacy and legacy.key_name == "k1-eth0"
    assert not WorkloadEndpoint.from_manifest(ep.to_manifest()).legacy
    eth1 = dataclasses.replace(ep, interface="eth1")
    assert explained_handles([ep, eth1]) == {ipam_handle("k1"), ipam_handle("k1", "eth1")}
    old_eth1 = WorkloadEndpoint.from_manifest(eth1.to_manifest(), stored_name="k1-eth1")
    assert explained_handles([old_eth1]) == {ipam_handle("k1", "eth1"), ipam_handle("k1")}


# IPAM blocks -------------------------------------------------------------------------


def test_new_block():
    block = Block.new("10.244.0.64/26", "node-1")
    assert block.affinity == "host:node-1"
    assert block.node == "node-1"
    assert (block.size, block.free, block.empty) == (64, 64, True)
    assert block.unallocated == list(range(64))
    assert Block.new("10.244.0.0/26", None).node is None


def test_assign_takes_addresses_in_order():
    block = Block.new("10.244.0.0/26", "node-1")
    assert block.assign("h1") == ["10.244.0.0"]
    assert block.assign("h2", count=2) == ["10.244.0.1", "10.244.0.2"]
    assert block.assign("h3", {"pod": "p3"}) == ["10.244.0.3"]
    assert block.free == 60
    assert block.ips_of("h2") == ["10.244.0.1", "10.244.0.2"]
    assert block.in_use()["10.244.0.3"].attrs == {"pod": "p3"}
    assert block.ordinal("10.244.0.3") == 3
    assert block.address(63) == "10.244.0.63"


def test_assign_copies_attrs():
    attrs = {"pod": "p"}
    block = Block.new("10.244.0.0/26", "node-1")
    block.assign("h", attrs)
    attrs["pod"] = "changed"
    assert block.in_use()["10.244.0.0"].attrs == {"pod": "p"}


def test_release_puts_ordinals_at_the_back():
    block = Block.new("10.244.0.0/29", "node-1")
    for h in ("a", "b", "c"):
        block.assign(h)
    assert block.release_handle("a") == ["10.244.0.0"]
    assert block.unallocated == [3, 4, 5, 6, 7, 0]
    # The released address comes back only after every never-used one.
    assert block.assign("d", count=5) == ["10.244.0.3", "10.244.0.4", "10.244.0.5", "10.244.0.6", "10.244.0.7"]
    assert block.assign("e") == ["10.244.0.0"]


def test_release_handle_takes_only_that_handle():
    block = Block.new("10.244.0.0/26", "node-1")
    block.assign("a", count=2)
    block.assign("b")
    block.assign("a")
    assert block.release_handle("a") == ["10.244.0.0", "10.244.0.1", "10.244.0.3"]
    assert list(block.in_use()) == ["10.244.0.2"]
    assert block.in_use()["10.244.0.2"].handle == "b"
    assert block.unallocated[-3:] == [0, 1, 3]
    assert block.release_handle("a") == []
    assert block.release_handle("nobody") == []


def test_release_ip():
    block = Block.new("10.244.0.0/26", "node-1")
    block.assign("a", count=3)
    assert block.release_ip("10.244.0.1") == ["10.244.0.1"]
    assert block.release_ip("10.244.0.1") == []
    assert block.ips_of("a") == ["10.244.0.0", "10.244.0.2"]
    with pytest.raises(ValueError):
        block.release_ip("10.244.1.1")


def test_assign_ip():
    block = Block.new("10.244.0.0/26", "node-1")
    assert block.assign_ip("10.244.0.1", "tunnel", {"type": "vxlanTunnelAddress"}) is True
    assert block.assign_ip("10.244.0.1", "other") is False
    assert block.in_use()["10.244.0.1"].handle == "tunnel"
    assert 1 not in block.unallocated
    # assign() skips the address taken by hand.
    assert block.assign("h", count=2) == ["10.244.0.0", "10.244.0.2"]
    with pytest.raises(ValueError):
        block.assign_ip("10.244.0.64", "h")


def test_sequence_moves_only_on_change():
    block = Block.new("10.244.0.0/30", "node-1")
    seq = block.sequence
    block.assign("a")
    assert block.sequence == seq + 1
    block.release_handle("nobody")
    block.release_ip("10.244.0.3")
    assert block.sequence == seq + 1
    block.release_handle("a")
    assert block.sequence == seq + 2


def test_full_block_returns_nothing():
    block = Block.new("10.244.0.0/30", "node-1")
    assert block.assign("a", count=10) == ["10.244.0.0", "10.244.0.1", "10.244.0.2", "10.244.0.3"]
    seq = block.sequence
    assert block.assign("b") == []
    assert block.free == 0
    assert block.sequence == seq
    assert block.ips_of("b") == []


def test_block_json_round_trip():
    block = Block.new("10.244.0.0/26", "node-1")
    block.assign("k8s-pod-network.abc", {"namespace": "default", "pod": "pod-a", "node": "node-1"})
    block.assign("vxlan-tunnel-addr-node-1", {"type": "vxlanTunnelAddress"})
    block.assign("k8s-pod-network.def", count=3)
    block.release_handle("k8s-pod-network.abc")
    copy_ = Block.from_json(block.to_json())
    assert copy_ == block
    assert copy_.unallocated[-1] == 0  # free-list order survives
    assert copy_.in_use()["10.244.0.1"].attrs == {"type": "vxlanTunnelAddress"}
    assert Block.from_json(copy_.to_json()).to_json() == block.to_json()


def test_ipv6_block():
    block = Block.new("fd00:10:244::40/122", "node-1")
    assert block.size == 64
    assert block.assign("h", count=2) == ["fd00:10:244::40", "fd00:10:244::41"]
    assert Block.from_json(block.to_json()) == block


CALICOCTL_NODE_YAML = """\
apiVersion: projectcalico.org/v3
kind: Node
metadata:
  name: node-1
  labels: {kubernetes.io/hostname: node-1}
  annotations: {podnet.io/underlay-interface: ens5}
  resourceVersion: "1234"
  uid: 5c0c7f3e-0d5b-4b5e-9b0a-1a2b3c4d5e6f
spec:
  addresses:
  - address: 172.31.0.11/24
    type: CalicoNodeIP
  bgp:
    ipv4Address: 172.31.0.11/24
    ipv6Address: fd00:31::11/64
  ipv4VXLANTunnelAddr: 10.244.0.0
  ipv6VXLANTunnelAddr: "fd00:244::"
  vxlanTunnelMACAddr: 66:aa:bb:cc:dd:ee
  orchRefs:
  - nodeName: node-1
    orchestrator: k8s
status:
  podCIDRs: [10.244.0.0/24]
"""


def test_node_reads_calicoctl_output():
    node = Node.from_manifest(yaml.safe_load(CALICOCTL_NODE_YAML))
    assert (node.address, node.interface, node.tunnel_address, node.vtep_mac) == \
        ("172.31.0.11/24", "ens5", "10.244.0.0", "66:aa:bb:cc:dd:ee")
    assert (node.address6, node.tunnel_address6) == ("fd00:31::11/64", "fd00:244::")


def test_node_writes_calicos_shape_and_round_trips():
    node = Node("node-1", address="172.31.0.11/24", interface="eth0", tunnel_address="10.244.0.0",
                address6="fd00:31::11/64", tunnel_address6="fd00:244::")
    doc = node.to_manifest()
    assert doc["spec"]["bgp"] == {"ipv4Address": "172.31.0.11/24", "ipv6Address": "fd00:31::11/64"}
    assert doc["spec"]["ipv4VXLANTunnelAddr"] == "10.244.0.0"
    assert doc["spec"]["vxlanTunnelMACAddr"] == vtep_mac("node-1")
    assert doc["spec"]["vxlanTunnelMACAddrV6"] == vtep_mac("node-1", ipv6=True)
    assert Node.from_manifest(doc) == node  # the derived MAC is not read back as an explicit one


def test_node_reads_podnets_earlier_shape():
    old = {"apiVersion": "projectcalico.org/v3", "kind": "Node", "metadata": {"name": "n", "labels": {}},
           "spec": {"address": "172.31.0.2/24", "interface": "eth0", "tunnelAddress": "10.244.0.64"}}
    assert Node.from_manifest(old) == Node("n", address="172.31.0.2/24", interface="eth0",
                                           tunnel_address="10.244.0.64")
