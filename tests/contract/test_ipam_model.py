"""IPAM against a reference model, on every datastore backend (sqlite and etcd).

A Hypothesis state machine drives random allocations and releases through
`Ipam` on a deliberately tiny pool (a /28 cut into four /30 blocks of four
addresses, four nodes), so that block claims, full blocks, borrowing, the
per-node block limit, strict affinity and exhaustion all happen within a few
steps. A plain-Python model says after every step which outcomes are legal
and what the datastore must hold:

* allocate: the address comes from one of the node's own blocks while any of
  them has room; otherwise from a newly claimed block while the node is below
  max blocks per host (0: no limit) and a block is unclaimed; otherwise,
  without strict affinity, from another node's block; only when none of these
  is possible may it raise PoolExhausted. Within a block it is the head of the
  free list (released addresses go to the back, so they are not reused at once).
* release_handle / release_ip / release_block return exactly what the model
  says was held (nothing for unknown handles, free or foreign addresses).

Invariants after every step, read from one snapshot of every key under
/podnet/: the blocks and affinity keys are the model's, each block's free list
and allocations partition it (no address is allocated twice), the ip ->
(handle, node) map and every free list equal the model's, the handle records
count exactly the allocations (and ips_by_handle finds them), nothing else is
stored; and once every handle is released at the end nothing is left.

The concurrency tests run several threads (both backends) and several
processes (sqlite) allocating and releasing at once against one store, then
check the same structure plus exact accounting of every address handed out
and given back.
"""

from __future__ import annotations

import collections
import ipaddress
import json
import multiprocessing
import random
import threading
import traceback

import pytest
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from podnet.datastore import keys
from podnet.datastore.api import Delete
from podnet.datastore.resources import Resources
from podnet.ipam.allocator import DEFAULT_MAX_BLOCKS_PER_HOST, Ipam, IpamConfig, PoolExhausted
from podnet.model import Block, IPPool
from tests.nodes import register_nodes

POOL = IPPool(name="model-pool", cidr="10.77.0.0/28", block_size=30)
BLOCKS = [str(n) for n in POOL.blocks()]  # four blocks of four addresses, in address order
BLOCK_SIZE = 4
POOL_ADDRESSES = [str(a) for a in POOL.network]
OUTSIDE_ADDRESSES = ["10.77.0.16", "10.78.0.1", "192.0.2.9"]  # in no block of the pool
NODES = ["node-a", "node-b", "node-c", "node-d"]
UNKNOWN_HANDLES = ["never-allocated", "h-0"]
MAX_BLOCKS_CHOICES = [0, 1, 2, 3]  # 0: no limit

MODEL_SETTINGS = settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
)
# A failing example takes minutes to shrink against etcd (a millisecond a request); the same
# rules run shrunk on sqlite, so etcd reports the failing example as generated.
ETCD_MODEL_SETTINGS = settings(MODEL_SETTINGS, phases=[Phase.explicit, Phase.generate])


# Helpers shared by every test ---------------------------------------------------------------


def wipe(store) -> None:
    """Delete every key under /podnet/ through the store's own API (the store stays open)."""
    kvs, _ = store.list(keys.ROOT, keys_only=True)
    for i in range(0, len(kvs), 64):  # etcd allows 128 operations per transaction
        store.txn((), [Delete(kv.key) for kv in kvs[i:i + 64]])
    left, _ = store.list(keys.ROOT, keys_only=True)
    assert left == [], f"wipe left {[kv.key for kv in left]}"


def setup_store(store, config: IpamConfig | None = None) -> Ipam:
    wipe(store)
    assert Resources(store).apply_pool(POOL) == "created"
    register_nodes(store, *NODES)
    ipam = Ipam(store)
    if config is not None:
        ipam.set_config(config)
    return ipam


def block_cidr_of(ip: str) -> str | None:
    addr = ipaddress.ip_address(ip)
    for cidr in BLOCKS:
        if addr in ipaddress.ip_network(cidr):
            return cidr
    return None


def ordinal_in(cidr: str, ip: str) -> int:
    return int(ipaddress.ip_address(ip)) - int(ipaddress.ip_network(cidr).network_address)


def address_in(cidr: str, ordinal: int) -> str:
    return str(ipaddress.ip_network(cidr).network_address + ordinal)


def by_address(ips) -> list[str]:
    return sorted(ips, key=ipaddress.ip_address)


class Snapshot:
    """Everything under /podnet/, read at one revision and checked for model-free consistency.

    Every block is one of the pool's, affine to a node, and partitioned by its
    free list and its allocations; every block has exactly one affinity key and
    every affinity key a block; the handle records count exactly the
    allocations in the blocks and list no block they have nothing in; nothing
    else is stored (the pool, the IPAM config and each node's claims stamp aside)."""

    def __init__(self, store):
        kvs, self.revision = store.list(keys.ROOT)
        self.blocks: dict[str, Block] = {}
        self.affinities: set[tuple[str, str]] = set()
        self.handles: dict[str, dict] = {}
        self.config: IpamConfig | None = None
        stray = []
        for kv in kvs:
            if kv.key.startswith(keys.blocks(4)):
                block = Block.from_json(kv.value)
                assert kv.key == keys.block(block.cidr), f"{kv.key} holds block {block.cidr}"
                self.blocks[block.cidr] = block
            elif kv.key.startswith(keys.HANDLES):
                self.handles[kv.key[len(keys.HANDLES):]] = json.loads(kv.value)
            elif keys.parse_affinity(kv.key):
                self.affinities.add(keys.parse_affinity(kv.key))
            elif kv.key == keys.IPAM_CONFIG:
                self.config = IpamConfig.from_json(kv.value)
            elif kv.key.startswith(keys.AFFINITY) and kv.key.endswith("/claims"):
                assert json.loads(kv.value)["claims"] >= 1  # a node's block-claim stamp
            elif kv.key.startswith(keys.NODES):
                pass  # the nodes' records (IPAM assigns only to registered nodes)
            elif kv.key != keys.pool(POOL.name):
                stray.append(kv.key)
        assert not stray, f"unexpected keys: {stray}"

        self.allocations: dict[str, tuple[str, str | None]] = {}  # ip -> (handle, node attribute)
        counts: collections.Counter = collections.Counter()
        for cidr, b in self.blocks.items():
            assert cidr in BLOCKS, f"block {cidr} is not a /{POOL.block_size} of {POOL.cidr}"
            assert len(b.unallocated) == len(set(b.unallocated)), f"{cidr}: free list repeats: {b.unallocated}"
            assert sorted(b.unallocated + list(b.allocations)) == list(range(BLOCK_SIZE)), (
                f"{cidr}: free {b.unallocated} and allocated {sorted(b.allocations)} do not partition the block"
            )
            assert b.node is not None, f"{cidr} has no affinity"
            for ip, alloc in b.in_use().items():
                assert ip not in self.allocations, f"{ip} allocated twice"
                self.allocations[ip] = (alloc.handle, alloc.attrs.get("node"))
                counts[(alloc.handle, cidr)] += 1
        assert self.affinities == {(b.node, cidr) for cidr, b in self.blocks.items()}, (
            f"affinity keys {sorted(self.affinities)} do not match the blocks"
        )
        listed = {}
        for handle, doc in self.handles.items():
            assert doc.get("handle") == handle, f"handle record {handle} names {doc.get('handle')}"
            assert doc["blocks"], f"handle record {handle} lists no block (it should be gone)"
            listed.update({(handle, cidr): n for cidr, n in doc["blocks"].items()})
        assert listed == dict(counts), f"handle records {listed} do not count the allocations {dict(counts)}"

    def ips_of(self, handle: str) -> list[str]:
        return by_address(ip for ip, (h, _) in self.allocations.items() if h == handle)


def release_all_and_check_no_leak(store, ipam: Ipam, handles) -> None:
    for h in sorted(handles):
        ipam.release_handle(h)
    left = Snapshot(store)
    assert left.allocations == {}, f"allocations left after releasing every handle: {left.allocations}"
    assert left.handles == {}, f"handle records left after releasing every handle: {sorted(left.handles)}"
    assert all(b.free == BLOCK_SIZE for b in left.blocks.values())


# The reference model -------------------------------------------------------------------------


class Model:
    def __init__(self):
        self.owner: dict[str, str] = {}  # block cidr -> node it is affine to
        self.free: dict[str, list[int]] = {}  # block cidr -> free ordinals, in the order they are handed out
        self.allocs: dict[str, tuple[str, str]] = {}  # ip -> (handle, node that allocated it)
        self.strict = False
        self.max_blocks = DEFAULT_MAX_BLOCKS_PER_HOST  # nothing stored yet: the defaults

    def own_blocks(self, node: str) -> list[str]:
        return [c for c in BLOCKS if self.owner.get(c) == node]

    def choices(self, node: str) -> tuple[str, list[str]]:
        """Where node's next address must come from: (how, candidate blocks); ('', []) if nowhere."""
        own = self.own_blocks(node)
        with_room = [c for c in own if self.free[c]]
        if with_room:
            return "own", with_room
        at_limit = self.max_blocks and len(own) >= self.max_blocks
        unclaimed = [c for c in BLOCKS if c not in self.owner]
        if unclaimed and not at_limit:
            return "claim", unclaimed
        if not self.strict:
            lendable = [c for c in BLOCKS if c in self.owner and self.owner[c] != node and self.free[c]]
            if lendable:
                return "borrow", lendable
        return "", []

    def ips_of(self, handle: str) -> list[str]:
        return by_address(ip for ip, (h, _) in self.allocs.items() if h == handle)

    def handles(self) -> set[str]:
        return {h for h, _ in self.allocs.values()}

    def release(self, ip: str) -> None:
        del self.allocs[ip]
        cidr = block_cidr_of(ip)
        self.free[cidr].append(ordinal_in(cidr, ip))


class IpamMachine(RuleBasedStateMachine):
    handles = Bundle("handles")

    def __init__(self, store):
        super().__init__()
        self.store = store
        self.ipam = setup_store(store)
        self.model = Model()
        self.counter = 0
        self.touched_handles: set[str] = set()  # the next check asks ips_by_handle about these
        self.touched_nodes: set[str] = set()  # ... and node_block_cidrs about these
        self.healthy = True  # False from the start of a step until its checks pass

    def _step(self) -> None:
        self.healthy = False

    # Allocation

    def _allocate(self, node: str, handle: str) -> None:
        self.touched_handles.add(handle)
        self.touched_nodes.add(node)
        how, allowed = self.model.choices(node)
        event(f"allocate: {how or 'PoolExhausted'}" + (" (strict)" if self.model.strict and not how else ""))
        try:
            ip = self.ipam.auto_assign(node, handle, {"pod": handle})
        except PoolExhausted:
            assert how == "", f"PoolExhausted for {node}, but the model could {how} from {allowed}"
            return
        assert how, f"{node} got {ip}, but the model has no usable address for it"
        assert ip not in self.model.allocs, f"{ip} handed out again while {self.model.allocs[ip]} holds it"
        cidr = block_cidr_of(ip)
        assert cidr in allowed, f"{node} got {ip} from {cidr}; the model says {how} from {allowed}"
        if how == "claim":
            self.model.owner[cidr] = node
            self.model.free[cidr] = list(range(BLOCK_SIZE))
        expected = address_in(cidr, self.model.free[cidr][0])
        assert ip == expected, f"{node} got {ip}; the head of {cidr}'s free list is {expected}"
        self.model.free[cidr].pop(0)
        self.model.allocs[ip] = (handle, node)

    def _allocate_new(self, node: str) -> str:
        self.counter += 1
        handle = f"h-{self.counter}"
        self._allocate(node, handle)
        return handle  # also when it got nothing: then an unknown handle

    @initialize(strict=st.booleans(), max_blocks=st.sampled_from([None] + MAX_BLOCKS_CHOICES))
    def initial_settings(self, strict, max_blocks):
        self._step()
        if max_blocks is not None:  # else the defaults, with no config record
            self.configure(strict, max_blocks)

    @initialize(target=handles, nodes=st.lists(st.sampled_from(NODES), max_size=20))
    def initial_pods(self, nodes):
        """Pods from the start, so that examples whose rules only release still release something."""
        self._step()
        return multiple(*(self._allocate_new(node) for node in nodes))

    @rule(target=handles, node=st.sampled_from(NODES), count=st.integers(1, 8))
    def allocate_new_handles(self, node, count):
        """`count` pods on node, one after the other."""
        self._step()
        return multiple(*(self._allocate_new(node) for _ in range(count)))

    @rule(node=st.sampled_from(NODES), handle=handles)
    def allocate_again_for_handle(self, node, handle):
        """One more address for a handle (maybe on another node): handles that span blocks."""
        self._step()
        self._allocate(node, handle)

    # Release

    def _release_handle(self, handle: str) -> None:
        self.touched_handles.add(handle)
        expected = self.model.ips_of(handle)
        got = self.ipam.release_handle(handle)
        event(f"release_handle: {min(len(expected), 2)}{'+' if len(expected) >= 2 else ''} addresses")
        assert by_address(got) == expected, f"release_handle({handle}) gave {got}, the model says {expected}"
        # Per block the ordinals go to the back of the free list in address order; the check
        # after the step compares the free lists, so follow the order they were returned in.
        for ip in got:
            self.model.release(ip)

    @rule(handle=handles | st.sampled_from(UNKNOWN_HANDLES))
    def release_handle(self, handle):
        self._step()
        self._release_handle(handle)

    @rule(node=st.sampled_from(NODES))
    def release_pods_of_node(self, node):
        """Release every handle that allocated on node (a drained node): empties its blocks."""
        self._step()
        for handle in sorted({h for h, n in self.model.allocs.values() if n == node}):
            self._release_handle(handle)

    @rule(data=st.data())
    def release_ip(self, data):
        """An allocated address, or any address in or near the pool."""
        self._step()
        allocated = by_address(self.model.allocs)
        anywhere = st.sampled_from(POOL_ADDRESSES + OUTSIDE_ADDRESSES)
        ip = data.draw(st.sampled_from(allocated) | anywhere if allocated else anywhere, label="ip")
        held = self.model.allocs.get(ip)
        got = self.ipam.release_ip(ip)
        event(f"release_ip: {'held' if held else 'free'}")
        assert got == (held[0] if held else None), f"release_ip({ip}) gave {got}, the model says {held}"
        if held:
            self.touched_handles.add(held[0])
            self.model.release(ip)

    @rule(data=st.data())
    def release_block(self, data):
        """A claimed block (empty or not), or any block of the pool."""
        self._step()
        claimed = sorted(self.model.owner, key=ipaddress.ip_network)
        anywhere = st.sampled_from(BLOCKS)
        cidr = data.draw(st.sampled_from(claimed) | anywhere if claimed else anywhere, label="cidr")
        in_use = any(block_cidr_of(ip) == cidr for ip in self.model.allocs)
        got = self.ipam.release_block(cidr)
        event(f"release_block: {'in use' if in_use else 'empty' if cidr in self.model.owner else 'unclaimed'}")
        assert got is (not in_use), f"release_block({cidr}) gave {got} with{'' if in_use else ' no'} addresses in use"
        if not in_use and cidr in self.model.owner:
            self.touched_nodes.add(self.model.owner.pop(cidr))
            del self.model.free[cidr]

    # Settings

    @rule(strict=st.booleans(), max_blocks=st.sampled_from(MAX_BLOCKS_CHOICES))
    def configure(self, strict, max_blocks):
        """Lowering the limit below what a node holds keeps its blocks; it only stops new claims."""
        self._step()
        self.ipam.set_config(IpamConfig(strict_affinity=strict, max_blocks_per_host=max_blocks))
        self.model.strict, self.model.max_blocks = strict, max_blocks
        assert self.ipam.config() == IpamConfig(strict, max_blocks)

    # Invariants

    @invariant()
    def store_matches_model(self):
        self.healthy = False
        snap = Snapshot(self.store)
        model = self.model
        assert snap.allocations == model.allocs, "the store's allocations differ from the model's"
        assert {c: b.node for c, b in snap.blocks.items()} == model.owner, "claimed blocks differ from the model's"
        for cidr, b in snap.blocks.items():
            assert b.unallocated == model.free[cidr], f"{cidr}: free list {b.unallocated}, model {model.free[cidr]}"
        assert set(snap.handles) == model.handles(), "handle records differ from the model's handles"
        if snap.config is not None:
            assert snap.config == IpamConfig(model.strict, model.max_blocks)
        for handle in self.touched_handles:
            assert by_address(self.ipam.ips_by_handle(handle)) == model.ips_of(handle), f"ips_by_handle({handle})"
        for node in self.touched_nodes:
            assert self.ipam.node_block_cidrs(node, 4) == model.own_blocks(node), f"node_block_cidrs({node})"
        self.touched_handles.clear()
        self.touched_nodes.clear()
        self.healthy = True

    def teardown(self):
        if not self.healthy:
            return  # a step failed: report that, not what follows from it
        for handle in self.model.handles():
            assert by_address(self.ipam.ips_by_handle(handle)) == self.model.ips_of(handle), f"ips_by_handle({handle})"
        release_all_and_check_no_leak(self.store, self.ipam, self.model.handles() | set(UNKNOWN_HANDLES))


def test_ipam_matches_reference_model(datastore):
    from podnet.datastore.sqlite import SqliteDatastore

    chosen = MODEL_SETTINGS if isinstance(datastore, SqliteDatastore) else ETCD_MODEL_SETTINGS
    run_state_machine_as_test(lambda: IpamMachine(datastore), settings=chosen)


# Concurrency --------------------------------------------------------------------------------

WORKERS = 4
OPS_PER_WORKER = 40
CONCURRENT_CONFIG = IpamConfig(strict_affinity=False, max_blocks_per_host=2)
# Two workers share node-a, so they race for the same blocks and the same free lists.
WORKER_NODES = ["node-a", "node-a", "node-b", "node-c"]
# Not checked here: max blocks per host. Two allocators of one node that both find its blocks
# full can both claim one (the claim compares only the claimed block's keys), so the limit is
# exact only when a node's allocations are serialised, as the agent's ipam_lock does for CNI ADDs.


class Ledger:
    """What the workers were told: every (handle, ip) handed out and every one given back."""

    def __init__(self):
        self.lock = threading.Lock()
        self.allocated: list[tuple[str, str]] = []
        self.released: list[tuple[str, str]] = []
        self.live: dict[str, set[str]] = {}  # handle -> ips believed held (to pick what to release)

    def on_alloc(self, handle: str, ip: str) -> None:
        with self.lock:
            self.allocated.append((handle, ip))
            self.live.setdefault(handle, set()).add(ip)

    def on_release(self, pairs) -> None:
        with self.lock:
            for handle, ip in pairs:
                self.released.append((handle, ip))
                self.live.get(handle, set()).discard(ip)

    def pick_handle(self, rng: random.Random, among=None) -> str | None:
        with self.lock:
            handles = sorted(h for h, ips in self.live.items() if ips and (among is None or h in among))
        return rng.choice(handles) if handles else None

    def pick_ip(self, rng: random.Random, among=None) -> str | None:
        with self.lock:
            ips = sorted(ip for h, held in self.live.items() if among is None or h in among for ip in held)
        return rng.choice(ips) if ips else None


def run_worker(ipam: Ipam, node: str, name: str, seed: int, ledger: Ledger, shared: bool) -> None:
    """A random mix of allocations and releases. `shared`: may release other workers' handles and ips."""
    rng = random.Random(seed)
    mine: set[str] = set()
    among = None if shared else mine
    for i in range(OPS_PER_WORKER):
        r = rng.random()
        if r < 0.5 or not mine:
            pick = rng.random()
            if pick < 0.6 or not mine:
                handle = f"{name}-{i}"
            elif pick < 0.8:
                handle = rng.choice(sorted(mine))
            else:  # handles several workers add to at once: concurrent updates of one handle record
                handle = f"shared-{rng.randrange(3)}"
            try:
                ip = ipam.auto_assign(node, handle, {"pod": handle})
            except PoolExhausted:
                continue
            mine.add(handle)
            ledger.on_alloc(handle, ip)
        elif r < 0.7:
            handle = ledger.pick_handle(rng, among)
            if handle is not None:
                ledger.on_release([(handle, ip) for ip in ipam.release_handle(handle)])
        elif r < 0.9:
            ip = ledger.pick_ip(rng, among)
            handle = ipam.release_ip(ip) if ip else None
            if handle is not None:
                ledger.on_release([(handle, ip)])
        elif r < 0.95:  # any address: maybe free, maybe another worker's
            ip = rng.choice(POOL_ADDRESSES)
            handle = ipam.release_ip(ip)
            if handle is not None:
                ledger.on_release([(handle, ip)])
        else:
            ipam.release_block(rng.choice(BLOCKS))


def check_ledger(store, ipam: Ipam, allocated, released) -> None:
    """Each (handle, ip) was given back at most as often as it was handed out, what is still out
    is exactly what the store holds, and nothing leaks once every handle is released."""
    net = collections.Counter(allocated)
    net.subtract(collections.Counter(released))
    bad = {pair: n for pair, n in net.items() if n not in (0, 1)}
    assert not bad, f"(handle, ip) released more often than allocated, or allocated twice at once: {bad}"
    out = [pair for pair, n in net.items() if n == 1]
    held = {ip: handle for handle, ip in out}
    assert len(held) == len(out), f"addresses held by two handles at once: {sorted(out, key=lambda p: p[1])}"
    snap = Snapshot(store)
    assert {ip: h for ip, (h, _) in snap.allocations.items()} == held, "the store and the workers' accounts differ"
    for handle in {h for h, _ in allocated}:
        assert by_address(ipam.ips_by_handle(handle)) == snap.ips_of(handle), f"ips_by_handle({handle})"
    release_all_and_check_no_leak(store, ipam, {h for h, _ in allocated})


@pytest.mark.parametrize("shared", [False, True], ids=["own-handles", "cross-release"])
@pytest.mark.parametrize("seed", [1, 2])
def test_concurrent_threads_keep_ipam_consistent(datastore, shared, seed):
    ipam = setup_store(datastore, CONCURRENT_CONFIG)
    ledger = Ledger()
    errors: list[str] = []
    barrier = threading.Barrier(WORKERS)

    def work(w: int) -> None:
        try:
            worker_ipam = Ipam(datastore)  # one allocator per worker, as with separate agents
            barrier.wait(timeout=30)
            run_worker(worker_ipam, WORKER_NODES[w], f"t{w}", 1000 * seed + w, ledger, shared)
        except BaseException:
            errors.append(traceback.format_exc())

    threads = [threading.Thread(target=work, args=(w,), name=f"ipam-worker-{w}") for w in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive(), f"{t.name} hangs"
    assert not errors, "\n".join(errors)
    assert ledger.allocated, "no worker allocated anything"
    check_ledger(datastore, ipam, ledger.allocated, ledger.released)


def test_concurrent_writers_of_one_handle(datastore):
    """Workers on four nodes (so four blocks) add addresses to one handle and release some at
    once: every write also rewrites that handle's record, which must not lose an update."""
    ipam = setup_store(datastore, IpamConfig(strict_affinity=True, max_blocks_per_host=1))
    ledger = Ledger()
    errors: list[str] = []
    barrier = threading.Barrier(len(NODES))

    def work(node: str) -> None:
        try:
            worker_ipam = Ipam(datastore)
            barrier.wait(timeout=30)
            held: list[str] = []
            for i in range(9):  # at most four held at once: one /30 block each
                if i % 3 == 2:
                    ip = held.pop(0)
                    assert worker_ipam.release_ip(ip) == "one-handle"
                    ledger.on_release([("one-handle", ip)])
                else:
                    held.append(worker_ipam.auto_assign(node, "one-handle", {"pod": node}))
                    ledger.on_alloc("one-handle", held[-1])
        except BaseException:
            errors.append(traceback.format_exc())

    threads = [threading.Thread(target=work, args=(n,), name=f"ipam-{n}") for n in NODES]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive(), f"{t.name} hangs"
    assert not errors, "\n".join(errors)
    check_ledger(datastore, ipam, ledger.allocated, ledger.released)


def _process_worker(path: str, node: str, name: str, seed: int, barrier, results) -> None:
    try:
        from podnet.datastore.sqlite import SqliteDatastore

        store = SqliteDatastore(path, durable=False)
        ledger = Ledger()
        barrier.wait(timeout=30)
        run_worker(Ipam(store), node, name, seed, ledger, shared=False)
        store.close()
        results.put(("ok", ledger.allocated, ledger.released))
    except BaseException:
        results.put(("error", traceback.format_exc(), None))


def test_concurrent_processes_keep_ipam_consistent_sqlite(tmp_path):
    from podnet.datastore.sqlite import SqliteDatastore

    path = str(tmp_path / "ipam.db")
    with SqliteDatastore(path, durable=False) as setup:
        setup_store(setup, CONCURRENT_CONFIG)
    # No SQLite connection of this process lives across fork(): each worker opens its own.
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(WORKERS)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_process_worker, args=(path, WORKER_NODES[w], f"p{w}", 7000 + w, barrier, results))
        for w in range(WORKERS)
    ]
    for p in procs:
        p.start()
    collected = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    errors = [detail for status, detail, _ in collected if status == "error"]
    assert not errors, "\n".join(errors)
    allocated = [pair for _, pairs, _ in collected for pair in pairs]
    released = [pair for _, _, pairs in collected for pair in pairs]
    assert allocated, "no worker allocated anything"
    with SqliteDatastore(path, durable=False) as store:
        check_ledger(store, Ipam(store), allocated, released)
