"""Unit tests of the pure desired-state calculation (podnet.calc): what one node's kernel should hold.

The expected entries are written out literally in the seed article's form:
  route      <remote block> via <remote tunnel IP> dev vxlan.calico onlink
  neighbour  <remote tunnel IP> dev vxlan.calico lladdr <remote VTEP MAC> PERMANENT
  fdb        <remote VTEP MAC> dev vxlan.calico dst <remote node IP> self permanent
"""

import pytest

from podnet.calc import (
    DesiredState,
    FdbEntry,
    Neighbour,
    Route,
    VxlanConfig,
    VxlanDevice,
    compute_desired,
)
from podnet.model import Node, vtep_mac

DEV = "vxlan.calico"

# The seed's remote node: block 100.76.131.0/26, tunnel IP 100.76.131.3 on vxlan.calico,
# MAC 66:1e:13:c0:bc:a9, node IP 172.29.236.164. The seed's local VTEP sits on bond0 at 172.30.209.42.
LOCAL = Node("node-a", address="172.30.209.42/16", interface="bond0", tunnel_address="100.79.126.193")
SEED_REMOTE = Node(
    "node-172-29-236-164",
    address="172.29.236.164/16",
    interface="bond0",
    vtep_mac="66:1e:13:c0:bc:a9",
    tunnel_address="100.76.131.3",
)
THIRD = Node("node-c", address="172.31.0.12/16", interface="eth0", tunnel_address="100.77.0.1")

AFFINITIES = [
    ("node-a", "100.79.126.192/26"),
    ("node-172-29-236-164", "100.76.131.0/26"),
    ("node-c", "100.77.0.0/26"),
]


def desired(local=LOCAL, nodes=(LOCAL, SEED_REMOTE, THIRD), affinities=AFFINITIES, config=None, underlay_mtu=1500):
    return compute_desired(local, list(nodes), list(affinities), config or VxlanConfig(), underlay_mtu)


def texts(entries) -> set[str]:
    return {str(e) for e in entries}


# The seed's form, on a three-node cluster ---------------------------------------


def test_three_node_cluster_matches_the_seed_exactly():
    state = desired()
    c_mac = vtep_mac("node-c")
    assert texts(state.routes) == {
        "100.76.131.0/26 via 100.76.131.3 dev vxlan.calico onlink",
        "100.77.0.0/26 via 100.77.0.1 dev vxlan.calico onlink",
        "blackhole 100.79.126.192/26",
    }
    assert texts(state.neighbours) == {
        "100.76.131.3 dev vxlan.calico lladdr 66:1e:13:c0:bc:a9 PERMANENT",
        f"100.77.0.1 dev vxlan.calico lladdr {c_mac} PERMANENT",
    }
    assert texts(state.fdb) == {
        "66:1e:13:c0:bc:a9 dev vxlan.calico dst 172.29.236.164 self permanent",
        f"{c_mac} dev vxlan.calico dst 172.31.0.12 self permanent",
    }
    assert state.remote_nodes == ("node-172-29-236-164", "node-c")


def test_entries_are_the_exact_value_objects():
    state = desired()
    assert Route("100.76.131.0/26", gateway="100.76.131.3", ifname=DEV, onlink=True) in state.routes
    assert Route("100.79.126.192/26", blackhole=True) in state.routes
    assert Neighbour("100.76.131.3", "66:1e:13:c0:bc:a9", DEV) in state.neighbours
    assert FdbEntry("66:1e:13:c0:bc:a9", "172.29.236.164", DEV) in state.fdb


def test_blackhole_has_no_gateway_or_device():
    (bh,) = [r for r in desired().routes if r.blackhole]
    assert bh == Route("100.79.126.192/26", gateway=None, ifname=None, onlink=False, blackhole=True)


def test_remote_vtep_mac_is_derived_from_the_name_when_not_set():
    state = desired()
    expected = vtep_mac("node-c")
    assert expected.startswith("66:")
    assert Neighbour("100.77.0.1", expected, DEV) in state.neighbours
    assert FdbEntry(expected, "172.31.0.12", DEV) in state.fdb


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_n_nodes_give_n_minus_1_remote_routes_and_one_blackhole(n):
    nodes = [
        Node(f"node-{i}", address=f"172.31.0.{i + 1}/24", interface="eth0", tunnel_address=f"10.244.{i}.1")
        for i in range(n)
    ]
    affinities = [(f"node-{i}", f"10.244.{i}.0/26") for i in range(n)]
    for local in nodes:
        state = compute_desired(local, nodes, affinities, VxlanConfig(), 1500)
        remote = [r for r in state.routes if not r.blackhole]
        assert len(remote) == n - 1
        assert len(state.neighbours) == n - 1
        assert len(state.fdb) == n - 1
        assert [r.dst for r in state.routes if r.blackhole] == [f"10.244.{nodes.index(local)}.0/26"]
        assert all(r.ifname == DEV and r.onlink for r in remote)


def test_remote_node_with_two_blocks_gets_two_routes_but_one_neighbour_and_fdb():
    affinities = AFFINITIES + [("node-c", "100.77.0.64/26")]
    state = desired(affinities=affinities)
    c_routes = {r for r in state.routes if r.gateway == "100.77.0.1"}
    assert c_routes == {
        Route("100.77.0.0/26", "100.77.0.1", DEV, True),
        Route("100.77.0.64/26", "100.77.0.1", DEV, True),
    }
    assert len([r for r in state.routes if not r.blackhole]) == 3
    assert len(state.neighbours) == 2
    assert len(state.fdb) == 2


def test_each_own_block_gets_a_blackhole():
    affinities = AFFINITIES + [("node-a", "100.79.127.0/26")]
    state = desired(affinities=affinities)
    assert {r for r in state.routes if r.blackhole} == {
        Route("100.79.126.192/26", blackhole=True),
        Route("100.79.127.0/26", blackhole=True),
    }


def test_no_entries_for_the_local_node_itself():
    state = desired()
    assert LOCAL.tunnel_address not in {n.ip for n in state.neighbours}
    assert LOCAL.ip not in {f.dst for f in state.fdb}
    assert "node-a" not in state.remote_nodes
    assert not any(r.gateway == LOCAL.tunnel_address for r in state.routes)


# The device ---------------------------------------------------------------------


def test_device_defaults_on_a_1500_underlay():
    state = desired()
    assert state.device == VxlanDevice(
        name="vxlan.calico",
        vni=4096,
        port=4789,
        local_ip="172.30.209.42",
        parent="bond0",
        mac=vtep_mac("node-a"),
        mtu=1450,
        address="100.79.126.193",
    )


def test_device_mac_from_the_nodes_vtep_mac_override():
    local = Node("node-a", address="172.30.209.42/16", interface="bond0", vtep_mac="66:4F:25:FB:E3:4F")
    state = desired(local=local, nodes=(local, SEED_REMOTE))
    assert state.device.mac == "66:4f:25:fb:e3:4f"


@pytest.mark.parametrize("underlay, mtu", [(1500, 1450), (9001, 8951), (1400, 1350), (None, 1410), (0, 1410)])
def test_device_mtu_is_underlay_minus_50_with_1460_fallback(underlay, mtu):
    assert desired(underlay_mtu=underlay).device.mtu == mtu


@pytest.mark.parametrize("underlay", [1500, 9001, None])
def test_explicit_mtu_overrides_the_underlay(underlay):
    assert desired(config=VxlanConfig(mtu=1300), underlay_mtu=underlay).device.mtu == 1300


def test_config_vni_port_and_device_name_reach_the_device_and_entries():
    config = VxlanConfig(vni=1, port=8472, device="flannel.1")
    state = desired(config=config)
    assert (state.device.name, state.device.vni, state.device.port) == ("flannel.1", 1, 8472)
    assert {r.ifname for r in state.routes if not r.blackhole} == {"flannel.1"}
    assert {n.ifname for n in state.neighbours} == {"flannel.1"}
    assert {f.ifname for f in state.fdb} == {"flannel.1"}


def test_device_without_tunnel_address_still_exists():
    local = Node("node-a", address="172.30.209.42/16", interface="bond0")
    state = desired(local=local, nodes=(local, SEED_REMOTE, THIRD))
    assert state.device is not None and state.device.address is None
    assert len(state.fdb) == 2


# Nodes coming and going -----------------------------------------------------------


def test_node_add_makes_its_entries_appear():
    before = desired(nodes=(LOCAL, SEED_REMOTE), affinities=AFFINITIES[:2])
    after = desired(nodes=(LOCAL, SEED_REMOTE, THIRD), affinities=AFFINITIES)
    c_mac = vtep_mac("node-c")
    assert after.routes - before.routes == {Route("100.77.0.0/26", "100.77.0.1", DEV, True)}
    assert after.neighbours - before.neighbours == {Neighbour("100.77.0.1", c_mac, DEV)}
    assert after.fdb - before.fdb == {FdbEntry(c_mac, "172.31.0.12", DEV)}
    assert before.routes <= after.routes and before.neighbours <= after.neighbours and before.fdb <= after.fdb
    assert "node-c" not in before.remote_nodes and "node-c" in after.remote_nodes


def test_node_remove_makes_its_entries_vanish_even_if_its_affinities_remain():
    after = desired(nodes=(LOCAL, SEED_REMOTE), affinities=AFFINITIES)  # node-c's block is still claimed
    assert texts(after.routes) == {
        "100.76.131.0/26 via 100.76.131.3 dev vxlan.calico onlink",
        "blackhole 100.79.126.192/26",
    }
    assert {n.ip for n in after.neighbours} == {"100.76.131.3"}
    assert {f.dst for f in after.fdb} == {"172.29.236.164"}
    assert after.remote_nodes == ("node-172-29-236-164",)


def test_block_without_a_known_owner_is_not_routed():
    state = desired(affinities=AFFINITIES + [("node-gone", "100.78.0.0/26")])
    assert not any(r.dst == "100.78.0.0/26" for r in state.routes)


@pytest.mark.parametrize(
    "remote",
    [
        Node("node-c", address="172.31.0.12/16", interface="eth0"),  # no tunnel address yet
        Node("node-c", interface="eth0", tunnel_address="100.77.0.1"),  # no underlay address
        Node("node-c"),
        Node("node-c", address="fd00::12/64", interface="eth0", tunnel_address="100.77.0.1"),  # v6 underlay
    ],
    ids=["no-tunnel", "no-address", "bare", "v6-underlay"],
)
def test_remote_node_that_is_not_ready_is_not_programmed(remote):
    state = desired(nodes=(LOCAL, SEED_REMOTE, remote))
    assert not any(r.dst == "100.77.0.0/26" for r in state.routes)
    assert {n.ip for n in state.neighbours} == {"100.76.131.3"}
    assert {f.dst for f in state.fdb} == {"172.29.236.164"}
    assert vtep_mac("node-c") not in {f.mac for f in state.fdb}
    assert state.remote_nodes == ("node-172-29-236-164",)


@pytest.mark.parametrize(
    "local",
    [
        Node("node-a", interface="bond0", tunnel_address="100.79.126.193"),
        Node("node-a", address="172.30.209.42/16", tunnel_address="100.79.126.193"),
        Node("node-a"),
    ],
    ids=["no-address", "no-interface", "bare"],
)
def test_local_node_not_ready_gets_no_device_and_no_remote_entries(local):
    state = desired(local=local, nodes=(local, SEED_REMOTE, THIRD))
    assert state.device is None
    assert state.neighbours == frozenset()
    assert state.fdb == frozenset()
    assert state.remote_nodes == ()
    # Its own blocks still black-hole: nothing may loop back out.
    assert state.routes == frozenset({Route("100.79.126.192/26", blackhole=True)})


def test_ipv6_blocks_without_an_ipv6_underlay():
    """Nodes with no IPv6 underlay get no vxlan-v6.calico and no IPv6 tunnel entries; the node's own
    IPv6 blocks are still black-holed (its pods' /128 routes are more specific)."""
    affinities = AFFINITIES + [
        ("node-a", "fd00:10:244::/122"),
        ("node-c", "fd00:10:244::40/122"),
    ]
    state = desired(affinities=affinities)
    v4_only = desired()
    assert state.device == v4_only.device and state.device6 is None
    assert state.neighbours == v4_only.neighbours and state.fdb == v4_only.fdb
    assert state.routes - v4_only.routes == {Route("fd00:10:244::/122", blackhole=True)}


def test_dual_stack_programs_vxlan_v6_with_the_v6_vtep():
    from podnet.model import vtep_mac

    local = Node("node-a", address="172.31.0.11/24", interface="eth0", tunnel_address="10.244.0.0",
                 address6="fd31::11/64", tunnel_address6="fd00:10:244::")
    remote = Node("node-b", address="172.31.0.12/24", interface="eth0", tunnel_address="10.244.0.64",
                  address6="fd31::12/64", tunnel_address6="fd00:10:244::40")
    affinities = [("node-a", "10.244.0.0/26"), ("node-b", "10.244.0.64/26"),
                  ("node-a", "fd00:10:244::/122"), ("node-b", "fd00:10:244::40/122")]
    state = compute_desired(local, [local, remote], affinities, VxlanConfig(), 1500)
    dev6 = state.device6
    assert (dev6.name, dev6.mtu, dev6.local_ip, dev6.mac, dev6.address) == \
        ("vxlan-v6.calico", 1430, "fd31::11", vtep_mac("node-a", ipv6=True), "fd00:10:244::")
    assert Route("fd00:10:244::40/122", "fd00:10:244::40", "vxlan-v6.calico", True) in state.routes
    assert Neighbour("fd00:10:244::40", vtep_mac("node-b", ipv6=True), "vxlan-v6.calico") in state.neighbours
    assert FdbEntry(vtep_mac("node-b", ipv6=True), "fd31::12", "vxlan-v6.calico") in state.fdb
    assert Route("fd00:10:244::/122", blackhole=True) in state.routes
    assert len(state.fdb) == 2 and state.remote_nodes == ("node-b",)


def test_result_is_independent_of_input_order():
    a = desired(nodes=(THIRD, LOCAL, SEED_REMOTE), affinities=list(reversed(AFFINITIES)))
    assert a == desired()
    assert isinstance(a, DesiredState)
    assert isinstance(a.routes, frozenset)


# VxlanConfig ------------------------------------------------------------------------


def test_config_defaults_are_calicos():
    c = VxlanConfig()
    assert (c.vni, c.port, c.mtu, c.device) == (4096, 4789, None, "vxlan.calico")


@pytest.mark.parametrize(
    "kwargs",
    [{"vni": 1}, {"vni": 16777215}, {"port": 1}, {"port": 65535}, {"mtu": 68}, {"mtu": 65535}, {"mtu": None}],
)
def test_config_bounds_are_inclusive(kwargs):
    VxlanConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"vni": 0}, "VNI"),
        ({"vni": -1}, "VNI"),
        ({"vni": 16777216}, "VNI"),
        ({"port": 0}, "port"),
        ({"port": 65536}, "port"),
        ({"mtu": 67}, "MTU"),
        ({"mtu": 0}, "MTU"),
        ({"mtu": 65536}, "MTU"),
    ],
)
def test_config_out_of_range_rejected(kwargs, words):
    with pytest.raises(ValueError, match=words):
        VxlanConfig(**kwargs)
