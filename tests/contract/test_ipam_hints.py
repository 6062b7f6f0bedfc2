"""IPAM's remembered records (hints), on every datastore backend (sqlite and etcd).

An allocator remembers the pools, blocks and handles it last read or wrote, and
starts its next compare-and-swap from them instead of reading first. These
tests make those records stale with a second allocator (another agent, as far
as the store can tell) or by hand, and check that the outcome is exactly what
a fresh read would have given: no address twice, nothing leaked, no allocation
from a pool that no longer serves the node. They also pin down the round trips
of the common case, which is what the hints are for.

The store is never mocked: `Counting` only counts the requests on the way to
the real backend.
"""

from __future__ import annotations

import collections
import threading
import time
import traceback

import pytest

from podnet.datastore import keys
from podnet.datastore.api import Datastore
from podnet.datastore.resources import Resources
from podnet.ipam.allocator import Ipam, NoUsablePool
from podnet.model import IPPool, Node
from test_ipam_model import BLOCKS, POOL, Snapshot, by_address, setup_store


class Counting(Datastore):
    """The real store, with a count of each kind of request made through it."""

    def __init__(self, store: Datastore):
        self.inner = store
        self.calls: collections.Counter = collections.Counter()

    def _count(self, name: str):
        self.calls[name] += 1
        return getattr(self.inner, name)

    def get(self, key):
        return self._count("get")(key)

    def get_many(self, keys_):
        return self._count("get_many")(keys_)

    def list(self, prefix, keys_only=False):
        return self._count("list")(prefix, keys_only)

    def txn(self, compares, success, failure=()):
        return self._count("txn")(compares, success, failure)

    def watch(self, prefix, start_revision):
        return self.inner.watch(prefix, start_revision)

    def revision(self):
        return self._count("revision")()

    def take(self) -> dict:
        out, self.calls = dict(self.calls), collections.Counter()
        return out


def held(store) -> dict[str, str]:
    """ip -> handle of every allocation, after checking the whole IPAM state is consistent."""
    return {ip: handle for ip, (handle, _) in Snapshot(store).allocations.items()}


def test_warm_allocation_and_release_are_one_transaction_each(datastore):
    setup_store(datastore)
    counting = Counting(datastore)
    ipam = Ipam(counting)
    ipam.auto_assign("node-a", "warm")  # claims the block: reads and writes
    ipam.release_handle("warm")
    counting.take()
    ip = ipam.auto_assign("node-a", "h1")
    assert counting.take() == {"txn": 1}
    assert held(datastore) == {ip: "h1"}
    assert ipam.release_handle("h1") == [ip]
    assert counting.take() == {"txn": 1}
    assert held(datastore) == {}


def test_block_changed_by_another_allocator(datastore):
    """The remembered block is stale: the compare fails, its failure branch returns the block as it
    is now, and the retry takes the next free address, with no read of its own in between."""
    setup_store(datastore)
    counting = Counting(datastore)
    a, b = Ipam(counting), Ipam(datastore)
    ip1 = a.auto_assign("node-a", "h1")
    ip2 = b.auto_assign("node-a", "h2")  # same node, same block
    counting.take()
    ip3 = a.auto_assign("node-a", "h3")
    assert counting.take() == {"txn": 2}
    assert len({ip1, ip2, ip3}) == 3
    assert held(datastore) == {ip1: "h1", ip2: "h2", ip3: "h3"}
    # And the other way round, through a release: b's block is stale now.
    assert a.release_handle("h1") == [ip1]
    assert b.release_handle("h2") == [ip2]
    assert held(datastore) == {ip3: "h3"}


def test_release_with_a_stale_handle_record_releases_everything(datastore):
    """a remembers handle h with one address; b adds a second one (in another node's block)."""
    setup_store(datastore)
    a, b = Ipam(datastore), Ipam(datastore)
    ip1 = a.auto_assign("node-a", "h")
    ip2 = b.auto_assign("node-b", "h")
    assert held(datastore) == {ip1: "h", ip2: "h"}
    assert by_address(a.release_handle("h")) == by_address([ip1, ip2])
    assert held(datastore) == {}
    assert Snapshot(datastore).handles == {}


def test_release_after_the_handle_moved_elsewhere(datastore):
    """a remembers h in node-a's block; meanwhile h was released and allocated again on node-b."""
    setup_store(datastore)
    a, b = Ipam(datastore), Ipam(datastore)
    ip1 = a.auto_assign("node-a", "h")
    assert b.release_handle("h") == [ip1]
    ip2 = b.auto_assign("node-b", "h")
    assert a.release_handle("h") == [ip2]
    assert held(datastore) == {}


def test_a_forgotten_handle_is_read_not_assumed_absent(datastore):
    """a released h itself (so it remembers nothing of it); b allocated h again. a's release must
    find it: concluding "no such handle" from memory would leak the address."""
    setup_store(datastore)
    a, b = Ipam(datastore), Ipam(datastore)
    ip1 = a.auto_assign("node-a", "h")
    assert a.release_handle("h") == [ip1]
    ip2 = b.auto_assign("node-b", "h")
    assert a.release_handle("h") == [ip2]
    assert a.release_handle("h") == []
    assert held(datastore) == {}


def test_allocation_for_a_handle_another_allocator_created(datastore):
    """a assumes a handle it has not seen is absent; b created it. The compare on the handle fails
    and a adds its address to b's record instead of overwriting it."""
    setup_store(datastore)
    a, b = Ipam(datastore), Ipam(datastore)
    ip0 = a.auto_assign("node-a", "warm")  # a now remembers node-a's block
    ip1 = b.auto_assign("node-b", "h")
    ip2 = a.auto_assign("node-a", "h")
    assert held(datastore) == {ip0: "warm", ip1: "h", ip2: "h"}
    assert by_address(b.ips_by_handle("h")) == by_address([ip1, ip2])
    assert Snapshot(datastore).handles["h"]["blocks"] == {BLOCKS[0]: 1, BLOCKS[1]: 1}


def test_pool_disabled_after_it_was_remembered(datastore):
    setup_store(datastore)
    a = Ipam(datastore)
    ip1 = a.auto_assign("node-a", "h1")
    Resources(datastore).apply_pool(IPPool(POOL.name, POOL.cidr, block_size=POOL.block_size, disabled=True))
    with pytest.raises(NoUsablePool):
        a.auto_assign("node-a", "h2")
    assert held(datastore) == {ip1: "h1"}
    Resources(datastore).apply_pool(POOL)
    ip2 = a.auto_assign("node-a", "h2")
    assert held(datastore) == {ip1: "h1", ip2: "h2"}


def test_pool_deleted_after_it_was_remembered(datastore):
    setup_store(datastore)
    a = Ipam(datastore)
    a.auto_assign("node-a", "h1")
    a.release_handle("h1")
    assert Resources(datastore).delete_pool(POOL.name)
    with pytest.raises(NoUsablePool):
        a.auto_assign("node-a", "h2")
    assert datastore.get(keys.handle("h2")) is None


def test_node_labels_changed_after_they_were_remembered(datastore):
    """The pool selects the node by label; the node's record is part of what the allocation
    compares, so a relabelled node gets nothing from that pool any more."""
    setup_store(datastore)
    res = Resources(datastore)
    res.apply_pool(IPPool(POOL.name, POOL.cidr, block_size=POOL.block_size, node_selector="zone == 'a'"))
    res.put_node(Node("node-a", labels={"zone": "a"}))
    a = Ipam(datastore)
    ip1 = a.auto_assign("node-a", "h1")
    res.put_node(Node("node-a", labels={"zone": "b"}))
    with pytest.raises(NoUsablePool):
        a.auto_assign("node-a", "h2")
    assert {ip: alloc.handle for blk in a.blocks() for ip, alloc in blk.in_use().items()} == {ip1: "h1"}
    assert set(a.handles()) == {"h1"}


def test_block_given_back_meanwhile(datastore):
    """a remembers node-a's (empty) block, which b then gives back to the pool."""
    setup_store(datastore)
    a, b = Ipam(datastore), Ipam(datastore)
    ip1 = a.auto_assign("node-a", "h1")
    a.release_handle("h1")
    assert b.release_block(BLOCKS[0])
    assert Snapshot(datastore).blocks == {}
    ip2 = a.auto_assign("node-a", "h2")
    snap = Snapshot(datastore)
    assert {ip: h for ip, (h, _) in snap.allocations.items()} == {ip2: "h2"}
    assert snap.affinities == {("node-a", cidr) for cidr in snap.blocks}
    assert ip1 != ip2 or list(snap.blocks) == [BLOCKS[0]]


def test_release_racing_allocation_of_the_same_handles(datastore):
    """One allocator hands out addresses to handles race-0, race-1, ... while another releases the
    same handles, each as soon as it exists (so the release often meets the handle absent, or
    the block mid-change). Every address is released exactly once, for its own handle."""
    setup_store(datastore)
    n = 25
    allocated: dict[str, str] = {}
    released: dict[str, list[str]] = {}
    errors: list[str] = []
    lead = threading.Semaphore(6)  # the allocator may not run further ahead: the pool has 16 addresses

    def allocate():
        try:
            a = Ipam(datastore)
            for i in range(n):
                assert lead.acquire(timeout=30), "the releaser is stuck"
                allocated[f"race-{i}"] = a.auto_assign(f"node-{'ab'[i % 2]}", f"race-{i}")
        except BaseException:
            errors.append(traceback.format_exc())

    def release():
        try:
            r = Ipam(datastore)
            for i in range(n):
                deadline = time.monotonic() + 30
                while not (got := r.release_handle(f"race-{i}")):
                    assert time.monotonic() < deadline, f"race-{i} never appeared"
                released[f"race-{i}"] = got
                lead.release()
        except BaseException:
            errors.append(traceback.format_exc())

    threads = [threading.Thread(target=allocate), threading.Thread(target=release)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive()
    assert not errors, "\n".join(errors)
    assert {h: [ip] for h, ip in allocated.items()} == released
    snap = Snapshot(datastore)
    assert snap.allocations == {} and snap.handles == {}
