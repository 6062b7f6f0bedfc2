"""Unit tests of IPAM on the embedded SQLite datastore, including several processes allocating at once."""

import collections
import ipaddress
import multiprocessing
import traceback

import pytest

from podnet.datastore import keys
from podnet.datastore.resources import Resources
from podnet.datastore.sqlite import SqliteDatastore
from podnet.ipam import Ipam, IpamConfig, NoUsablePool, PoolExhausted
from podnet.model import IPPool
from podnet.model.endpoint import ipam_handle, tunnel_handle
from tests.nodes import register_nodes

TEST_NODES = [f"node-{i}" for i in range(10)] + ["node-a", "node-b"]


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "podnet.db")


@pytest.fixture
def store(db_path):
    s = SqliteDatastore(db_path)
    register_nodes(s, *TEST_NODES)
    yield s
    s.close()


@pytest.fixture
def ipam(store):
    return Ipam(store)


def add_pool(store, name="default-ipv4-ippool", cidr="10.244.0.0/16", **kwargs) -> IPPool:
    pool = IPPool(name=name, cidr=cidr, **kwargs)
    Resources(store).apply_pool(pool)
    return pool


def block_of(ipam, ip):
    """The block that holds ip, from the datastore."""
    for block in ipam.blocks():
        if ipaddress.ip_address(ip) in block.network:
            return block
    raise AssertionError(f"no block holds {ip}")


def assert_consistent(ipam):
    """The blocks and the handle records describe the same allocations.

    Every allocation is reachable from its handle (the handle lists the block
    with the right count), no handle lists an allocation that is not there,
    every block's free list and allocations partition it, and every block is
    affine to a node that has the matching affinity record.
    """
    in_blocks = collections.Counter()
    for block in ipam.blocks():
        assert sorted(block.unallocated + list(block.allocations)) == list(range(block.size)), block.cidr
        assert len(set(block.unallocated)) == len(block.unallocated), block.cidr
        for alloc in block.allocations.values():
            in_blocks[(alloc.handle, block.cidr)] += 1
        assert block.node is not None
        assert block.cidr in ipam.node_block_cidrs(block.node, block.network.version)
    in_handles = {(h, cidr): n for h, doc in ipam.handles().items() for cidr, n in doc["blocks"].items()}
    assert in_handles == dict(in_blocks)
    for handle in ipam.handles():
        assert ipam.ips_by_handle(handle), f"handle {handle} lists no address"


# Allocation ----------------------------------------------------------------------


def test_first_allocation_claims_the_nodes_first_block(store, ipam):
    add_pool(store)
    ip = ipam.auto_assign("node-1", ipam_handle("c1"), {"pod": "pod-a", "namespace": "default"})
    assert ip == "10.244.0.0"
    assert ipam.node_block_cidrs("node-1", 4) == ["10.244.0.0/26"]
    [block] = ipam.blocks()
    assert (block.cidr, block.affinity) == ("10.244.0.0/26", "host:node-1")
    assert block.in_use()[ip].handle == "k8s-pod-network.c1"
    # The allocator records which node uses the address (it may be borrowed from another node's block).
    assert block.in_use()[ip].attrs == {"pod": "pod-a", "namespace": "default", "node": "node-1"}
    assert ipam.ips_by_handle("k8s-pod-network.c1") == [ip]
    assert store.get(keys.affinity("node-1", "10.244.0.0/26")) is not None
    assert_consistent(ipam)


def test_65th_allocation_claims_a_second_block(store, ipam):
    add_pool(store)
    ips = [ipam.auto_assign("node-1", f"h{i}") for i in range(64)]
    assert ips == [str(a) for a in ipaddress.ip_network("10.244.0.0/26")]
    assert ipam.node_block_cidrs("node-1", 4) == ["10.244.0.0/26"]
    assert ipam.auto_assign("node-1", "h64") == "10.244.0.64"
    assert ipam.node_block_cidrs("node-1", 4) == ["10.244.0.0/26", "10.244.0.64/26"]
    assert [b.free for b in ipam.blocks()] == [0, 63]
    assert_consistent(ipam)


def test_two_nodes_get_different_blocks(store, ipam):
    add_pool(store)
    a = ipam.auto_assign("node-a", "ha")
    b = ipam.auto_assign("node-b", "hb")
    a2 = ipam.auto_assign("node-a", "ha2")
    assert (a, b, a2) == ("10.244.0.0", "10.244.0.64", "10.244.0.1")
    assert ipam.node_block_cidrs("node-a", 4) == ["10.244.0.0/26"]
    assert ipam.node_block_cidrs("node-b", 4) == ["10.244.0.64/26"]
    assert block_of(ipam, b).node == "node-b"
    assert_consistent(ipam)


def test_release_frees_and_address_is_reused_last(store, ipam):
    add_pool(store)
    first, second, third = (ipam.auto_assign("node-1", h) for h in ("h0", "h1", "h2"))
    assert ipam.release_handle("h0") == [first]
    assert ipam.ips_by_handle("h0") == []
    assert "h0" not in ipam.handles()
    assert store.get(keys.handle("h0")) is None
    assert_consistent(ipam)
    # The 61 never-used addresses of the block come first, the released one after them.
    later = [ipam.auto_assign("node-1", f"n{i}") for i in range(61)]
    assert first not in later
    assert later[0] == "10.244.0.3" and later[-1] == "10.244.0.63"
    assert ipam.auto_assign("node-1", "reuse") == first
    assert ipam.node_block_cidrs("node-1", 4) == ["10.244.0.0/26"]  # no second block needed
    assert_consistent(ipam)


def test_release_of_unknown_handle_is_a_no_op(store, ipam):
    add_pool(store)
    ip = ipam.auto_assign("node-1", "h")
    revision = store.revision()
    assert ipam.release_handle("never-allocated") == []
    assert ipam.release_handle("never-allocated") == []
    assert store.revision() == revision  # nothing was written
    assert ipam.ips_by_handle("h") == [ip]


def test_release_twice_is_harmless(store, ipam):
    add_pool(store)
    ip = ipam.auto_assign("node-1", "h")
    assert ipam.release_handle("h") == [ip]
    assert ipam.release_handle("h") == []
    assert ipam.blocks()[0].empty


def test_release_when_the_block_was_deleted_by_hand(store, ipam):
    add_pool(store)
    ipam.auto_assign("node-1", "h")
    other = ipam.auto_assign("node-2", "h")  # the same handle in a second block
    assert store.delete(keys.block("10.244.0.0/26"))
    assert ipam.release_handle("h") == [other]
    assert ipam.handles() == {}
    assert store.get(keys.handle("h")) is None


def test_ips_by_handle(store, ipam):
    add_pool(store)
    a1 = ipam.auto_assign("node-1", "a")
    b1 = ipam.auto_assign("node-1", "b")
    a2 = ipam.auto_assign("node-1", "a")
    assert ipam.ips_by_handle("a") == [a1, a2]
    assert ipam.ips_by_handle("b") == [b1]
    assert ipam.ips_by_handle("nobody") == []
    assert ipam.handles()["a"]["blocks"] == {"10.244.0.0/26": 2}
    assert_consistent(ipam)


def test_handle_spanning_two_blocks(store, ipam):
    add_pool(store, cidr="10.9.0.0/28", block_size=30)
    ips = [ipam.auto_assign("node-1", "multi") for _ in range(5)]
    assert ips == ["10.9.0.0", "10.9.0.1", "10.9.0.2", "10.9.0.3", "10.9.0.4"]
    assert ipam.handles()["multi"]["blocks"] == {"10.9.0.0/30": 4, "10.9.0.4/30": 1}
    assert sorted(ipam.ips_by_handle("multi")) == ips
    assert_consistent(ipam)
    assert sorted(ipam.release_handle("multi")) == ips
    assert ipam.handles() == {}
    assert all(b.empty for b in ipam.blocks())
    assert_consistent(ipam)


def test_ipv6_allocation(store, ipam):
    add_pool(store, name="default-ipv6-ippool", cidr="fd00:10:244::/64")
    add_pool(store)
    ip6 = ipam.auto_assign("node-1", "h", version=6)
    ip4 = ipam.auto_assign("node-1", "h", version=4)
    assert (ip6, ip4) == ("fd00:10:244::", "10.244.0.0")
    assert ipam.node_block_cidrs("node-1", 6) == ["fd00:10:244::/122"]
    assert sorted(ipam.ips_by_handle("h")) == sorted([ip4, ip6])
    assert_consistent(ipam)
    assert sorted(ipam.release_handle("h")) == sorted([ip4, ip6])
    assert ipam.handles() == {}


# Pool choice and errors ------------------------------------------------------------


def test_named_pool_by_name_or_cidr(store, ipam):
    add_pool(store, name="pool-a", cidr="10.1.0.0/16")
    add_pool(store, name="pool-b", cidr="10.2.0.0/16")
    assert ipam.auto_assign("node-1", "x", pools=["pool-b"]) == "10.2.0.0"
    assert ipam.auto_assign("node-1", "y", pools=["10.1.0.0/16"]) == "10.1.0.0"
    assert ipam.auto_assign("node-1", "z", pools=["pool-b"]) == "10.2.0.1"
    assert ipam.node_block_cidrs("node-1", 4) == ["10.1.0.0/26", "10.2.0.0/26"]
    assert_consistent(ipam)


def test_no_pool_at_all(ipam):
    with pytest.raises(NoUsablePool) as caught:
        ipam.auto_assign("node-1", "h")
    assert "no enabled IPv4 pool" in caught.value.message
    assert caught.value.hint
    assert ipam.handles() == {} and ipam.blocks() == []


def test_all_pools_disabled(store, ipam):
    add_pool(store, name="pool-a", cidr="10.1.0.0/16", disabled=True)
    add_pool(store, name="pool-b", cidr="10.2.0.0/16", disabled=True)
    with pytest.raises(NoUsablePool):
        ipam.auto_assign("node-1", "h")
    assert ipam.blocks() == []


def test_unknown_named_pool(store, ipam):
    add_pool(store, name="pool-a")
    with pytest.raises(NoUsablePool, match="'pool-z' does not exist"):
        ipam.auto_assign("node-1", "h", pools=["pool-z"])
    with pytest.raises(NoUsablePool):
        ipam.auto_assign("node-1", "h", pools=["10.99.0.0/16"])
    assert ipam.blocks() == []


def test_only_the_other_family_exists(store, ipam):
    add_pool(store)
    with pytest.raises(NoUsablePool, match="IPv6"):
        ipam.auto_assign("node-1", "h", version=6)


def test_disabled_pool_blocks_are_not_used(store, ipam):
    add_pool(store, name="pool-a", cidr="10.1.0.0/16")
    add_pool(store, name="pool-b", cidr="10.2.0.0/16")
    assert ipam.auto_assign("node-1", "h1") == "10.1.0.0"
    add_pool(store, name="pool-a", cidr="10.1.0.0/16", disabled=True)
    assert ipam.auto_assign("node-1", "h2") == "10.2.0.0"
    assert_consistent(ipam)


def test_pool_exhausted_when_every_block_is_full(store, ipam):
    add_pool(store, name="tiny", cidr="10.9.0.0/28", block_size=30)  # 4 blocks of 4
    ips = [ipam.auto_assign("node-1", f"h{i}") for i in range(16)]
    assert ips == [str(a) for a in ipaddress.ip_network("10.9.0.0/28")]
    with pytest.raises(PoolExhausted) as caught:
        ipam.auto_assign("node-1", "h16")
    assert "tiny" in caught.value.message
    assert ipam.ips_by_handle("h16") == []
    assert_consistent(ipam)
    # Freeing one address makes room again, in the node's own block.
    ipam.release_handle("h5")
    assert ipam.auto_assign("node-1", "h17") == "10.9.0.5"
    assert_consistent(ipam)


def test_a_node_without_a_free_block_borrows(store, ipam):
    add_pool(store, name="tiny", cidr="10.9.0.0/28", block_size=30)
    for n in range(4):
        ipam.auto_assign(f"node-{n}", f"h{n}")
    assert len(ipam.blocks()) == 4
    ip = ipam.auto_assign("node-4", "h4")
    rec = ipam.block_of(ip)
    assert rec.block.node != "node-4"
    assert rec.block.in_use()[ip].attrs["node"] == "node-4"
    assert ipam.node_block_cidrs("node-4", 4) == []
    assert_consistent(ipam)


def test_strict_affinity_never_borrows(store, ipam):
    from podnet.ipam.allocator import IpamConfig

    add_pool(store, name="tiny", cidr="10.9.0.0/28", block_size=30)
    ipam.set_config(IpamConfig(strict_affinity=True))
    for n in range(4):
        ipam.auto_assign(f"node-{n}", f"h{n}")
    with pytest.raises(PoolExhausted, match="strict affinity"):
        ipam.auto_assign("node-4", "h4")
    assert ipam.node_block_cidrs("node-4", 4) == []
    assert_consistent(ipam)


def test_pool_exhausted_when_every_address_is_taken(store, ipam):
    add_pool(store, name="tiny", cidr="10.9.0.0/29", block_size=30)
    for i in range(8):
        ipam.auto_assign(f"node-{i % 3}", f"h{i}")
    with pytest.raises(PoolExhausted, match="no free address"):
        ipam.auto_assign("node-9", "h9")
    assert_consistent(ipam)


def test_empty_block_is_released_with_its_affinity(store, ipam):
    add_pool(store)
    ip = ipam.auto_assign("node-1", "h1")
    cidr = ipam.node_block_cidrs("node-1", 4)[0]
    assert ipam.release_block(cidr) is False  # still in use
    ipam.release_handle("h1")
    assert ipam.release_block(cidr) is True
    assert ipam.node_block_cidrs("node-1", 4) == [] and ipam.blocks() == []
    assert ipam.block_of(ip) is None


def test_pool_exhausted_at_max_blocks_per_host(store):
    add_pool(store, cidr="10.244.0.0/16", block_size=28)  # 16 addresses a block
    ipam = Ipam(store, max_blocks_per_host=2)
    for i in range(32):
        ipam.auto_assign("node-1", f"h{i}")
    with pytest.raises(PoolExhausted, match="2 blocks"):
        ipam.auto_assign("node-1", "h32")
    assert ipam.node_block_cidrs("node-1", 4) == ["10.244.0.0/28", "10.244.0.16/28"]
    # The limit is per host: another node still gets a block.
    assert ipam.auto_assign("node-2", "other") == "10.244.0.32"
    assert_consistent(ipam)


def test_two_allocators_of_one_node_cannot_both_claim_the_last_block(store):
    """Both saw room for one more block (their views were read before either claimed): only the
    first claim may pass, or the node would end up above its limit."""
    add_pool(store, cidr="10.244.0.0/16", block_size=28)
    first, second = Ipam(store, max_blocks_per_host=1), Ipam(store, max_blocks_per_host=1)
    first._read_view("node-1", 4, keys.handle("h1"))
    second._read_view("node-1", 4, keys.handle("h2"))
    assert first._claim("node-1", 4, "10.244.0.0/28")
    assert not second._claim("node-1", 4, "10.244.0.16/28")
    assert first.node_block_cidrs("node-1", 4) == ["10.244.0.0/28"]


def _allocate_until_full(path, node, handles, barrier, results):
    try:
        store = SqliteDatastore(path)
        ipam = Ipam(store, max_blocks_per_host=2)
        barrier.wait(timeout=30)
        out = []
        for h in handles:
            try:
                out.append(ipam.auto_assign(node, h, {"node": node}))
            except PoolExhausted:
                pass
        store.close()
        results.put(("ok", out))
    except BaseException:
        results.put(("error", traceback.format_exc()))


def test_racing_allocators_of_one_node_keep_to_its_block_limit(db_path):
    """Four processes (an agent's pods, its tunnel address, a restarted agent...) fill one node
    past what two /28 blocks hold, with strict affinity: never a third block."""
    with SqliteDatastore(db_path) as setup:
        add_pool(setup, cidr="10.244.0.0/16", block_size=28)
        register_nodes(setup, *TEST_NODES)
        Ipam(setup).set_config(IpamConfig(strict_affinity=True, max_blocks_per_host=2))
    jobs = [(db_path, "node-a", [f"w{w}-{i}" for i in range(12)]) for w in range(4)]
    ips = _run_all(_allocate_until_full, jobs)
    assert len(ips) == len(set(ips)) == 32  # both blocks full, nothing twice
    with SqliteDatastore(db_path) as store:
        assert len(Ipam(store).node_block_cidrs("node-a", 4)) == 2


# The VXLAN tunnel address ------------------------------------------------------------


def test_tunnel_address_handle(store, ipam):
    add_pool(store)
    handle = tunnel_handle("node-1")
    assert handle == "vxlan-tunnel-addr-node-1"
    attrs = {"type": "vxlanTunnelAddress", "node": "node-1"}
    tunnel_ip = ipam.auto_assign("node-1", handle, attrs, use="Tunnel")
    assert tunnel_ip == "10.244.0.0"
    block = block_of(ipam, tunnel_ip)
    assert block.node == "node-1"
    assert block.in_use()[tunnel_ip].handle == "vxlan-tunnel-addr-node-1"
    assert block.in_use()[tunnel_ip].attrs == attrs
    assert ipam.ips_by_handle(handle) == [tunnel_ip]
    # Pods of the node share the block with the tunnel address.
    assert ipam.auto_assign("node-1", ipam_handle("c1")) == "10.244.0.1"
    assert_consistent(ipam)
    # Turning VXLAN off releases it by handle; pod addresses stay.
    assert ipam.release_handle(handle) == [tunnel_ip]
    assert ipam.ips_by_handle(ipam_handle("c1")) == ["10.244.0.1"]
    assert_consistent(ipam)


def test_allowed_uses_decide_tunnel_and_workload(store, ipam):
    add_pool(store, name="pods", cidr="10.1.0.0/16", allowed_uses=("Workload",))
    with pytest.raises(NoUsablePool):
        ipam.auto_assign("node-1", tunnel_handle("node-1"), use="Tunnel")
    add_pool(store, name="tunnels", cidr="10.2.0.0/16", allowed_uses=("Tunnel",))
    assert ipam.auto_assign("node-1", tunnel_handle("node-1"), use="Tunnel") == "10.2.0.0"
    assert ipam.auto_assign("node-1", ipam_handle("c1")) == "10.1.0.0"
    assert_consistent(ipam)


# Several processes at once -----------------------------------------------------------

WORKERS = 4
PER_WORKER = 40


def _allocate(path, node, handles, barrier, results):
    try:
        store = SqliteDatastore(path)
        ipam = Ipam(store)
        barrier.wait(timeout=30)
        out = [(node, h, ipam.auto_assign(node, h, {"node": node})) for h in handles]
        store.close()
        results.put(("ok", out))
    except BaseException:
        results.put(("error", traceback.format_exc()))


def _release(path, handles, barrier, results):
    try:
        store = SqliteDatastore(path)
        ipam = Ipam(store)
        barrier.wait(timeout=30)
        out = [ip for h in handles for ip in ipam.release_handle(h)]
        store.close()
        results.put(("ok", out))
    except BaseException:
        results.put(("error", traceback.format_exc()))


def _run_all(target, args_per_worker):
    """Run one process per argument tuple, all released at once by a barrier; collect their results."""
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(len(args_per_worker))
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, barrier, results)) for args in args_per_worker]
    for p in procs:
        p.start()
    collected = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    errors = [detail for status, detail in collected if status == "error"]
    assert not errors, "\n".join(errors)
    return [item for _, items in collected for item in items]


@pytest.mark.parametrize("layout", ["same-node", "four-nodes"])
def test_concurrent_allocation_and_release(db_path, layout):
    with SqliteDatastore(db_path) as setup:
        add_pool(setup)
        register_nodes(setup, *TEST_NODES)
    # No SQLite connection of this process may live across fork(): every worker opens its own.
    jobs = []
    for w in range(WORKERS):
        node = "node-a" if layout == "same-node" else f"node-{w}"
        jobs.append((db_path, node, [ipam_handle(f"w{w}-{i}") for i in range(PER_WORKER)]))

    allocated = _run_all(_allocate, jobs)

    ips = [ip for _, _, ip in allocated]
    assert len(ips) == WORKERS * PER_WORKER
    assert len(set(ips)) == len(ips), "an address was handed out twice"
    expected = {ip: (node, handle) for node, handle, ip in allocated}
    with SqliteDatastore(db_path) as store:
        ipam = Ipam(store)
        # Every block holds exactly the allocations the workers were told about, on the right node.
        actual = {
            ip: (block.node, alloc.handle) for block in ipam.blocks() for ip, alloc in block.in_use().items()
        }
        assert actual == expected
        for node, handle, ip in allocated:
            assert ipam.ips_by_handle(handle) == [ip]
        assert set(ipam.handles()) == {h for _, h, _ in allocated}
        assert_consistent(ipam)
        if layout == "four-nodes":
            for w in range(WORKERS):
                assert len(ipam.node_block_cidrs(f"node-{w}", 4)) == 1  # 40 fit one /26
        else:
            assert len(ipam.node_block_cidrs("node-a", 4)) >= 3  # 160 need three /26
            assert {b.node for b in ipam.blocks()} == {"node-a"}

    released = _run_all(_release, [(db_path, handles) for _, _, handles in jobs])

    assert sorted(released) == sorted(ips)
    with SqliteDatastore(db_path) as store:
        ipam = Ipam(store)
        assert ipam.handles() == {}
        blocks = ipam.blocks()
        assert blocks and all(b.empty and b.free == b.size for b in blocks)
        assert_consistent(ipam)


def test_a_remembered_block_is_never_changed_by_its_users(store, ipam):
    """Blocks decoded once are handed out as copies: what one allocation assigns in its copy must
    not show in the next one's, or a failed compare-and-swap would leave a phantom allocation."""
    add_pool(store)
    ip = ipam.auto_assign("node-a", "h1")
    kv = store.get(keys.block(block_of(ipam, ip).cidr))
    first, second = ipam._decoded(kv), ipam._decoded(kv)
    first.assign("h2", {})
    assert second.allocations == ipam._decoded(kv).allocations
    assert len(second.allocations) == 1


# IPReservation ------------------------------------------------------------------------------------


def reserve(store, name: str, *cidrs: str) -> None:
    from podnet.model.ipreservation import IPReservation
    from podnet.model.kinds import lookup

    Resources(store).write(lookup("IPReservation"), IPReservation(name, tuple(cidrs)))


def test_reserved_addresses_are_never_assigned_automatically(store, ipam):
    add_pool(store)
    reserve(store, "gateways", "10.244.0.0/30", "10.244.0.9")
    ips = [ipam.auto_assign("node-a", f"h{i}") for i in range(10)]
    reserved = {"10.244.0.0", "10.244.0.1", "10.244.0.2", "10.244.0.3", "10.244.0.9"}
    assert not reserved & set(ips) and len(set(ips)) == 10
    assert block_of(ipam, ips[0]).cidr == "10.244.0.0/26"


def test_a_block_whose_free_addresses_are_all_reserved_counts_as_full(store, ipam):
    add_pool(store)
    reserve(store, "all-of-the-first-block", "10.244.0.0/26")
    ip = ipam.auto_assign("node-a", "h")
    assert ipaddress.ip_address(ip) not in ipaddress.ip_network("10.244.0.0/26")


def test_a_reservation_made_after_an_allocators_last_read_is_still_honoured(store, ipam):
    add_pool(store)
    first = ipam.auto_assign("node-a", "h0")  # the allocator now remembers pools, block and reservations
    assert first == "10.244.0.0"
    reserve(store, "next", "10.244.0.1/32")  # written by someone else, after that read
    assert ipam.auto_assign("node-a", "h1") == "10.244.0.2"


def test_deleting_a_reservation_frees_its_addresses_for_assignment(store, ipam):
    from podnet.model.kinds import lookup

    add_pool(store)
    reserve(store, "r", "10.244.0.0/31")
    assert ipam.auto_assign("node-a", "h0") == "10.244.0.2"
    assert Resources(store).remove(lookup("IPReservation"), "r")
    assert ipam.auto_assign("node-a", "h1") == "10.244.0.0"


def test_a_reserved_address_can_still_be_asked_for_by_name(store, ipam):
    add_pool(store)
    reserve(store, "r", "10.244.0.5/32")
    assert ipam.assign_ip("10.244.0.5", "node-a", "fixed") == "10.244.0.5"


def test_whose_address_is_one_answer_the_named_node_else_the_blocks():
    from podnet.model.block import Block

    b = Block.new("10.244.0.0/26", "node-1")
    own, tunnel, lent, unnamed = (b.assign(h, attrs)[0] for h, attrs in (
        ("k8s-pod-network.a", {"node": "node-1"}), ("vxlan-tunnel-addr-node-1", {}),
        ("k8s-pod-network.b", {"node": "node-2"}), ("k8s-pod-network.c", {"node": ""})))
    users = {ip: b.user_of(a) for ip, a in b.in_use().items()}
    assert users == {own: "node-1", tunnel: "node-1", lent: "node-2", unnamed: "node-1"}
    assert b.borrowed() == {lent: "node-2"}
    floating = Block.new("10.244.0.64/26", None)  # no affinity: only a named node uses an address
    ip = floating.assign("k8s-pod-network.d", {"node": "node-3"})[0]
    none = floating.assign("k8s-pod-network.e", {})[0]
    assert floating.borrowed() == {ip: "node-3"} and floating.user_of(floating.in_use()[none]) is None
