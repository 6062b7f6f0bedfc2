"""EtcdDatastore against real etcd when things go wrong: members die, all of them stop, TLS.

Store level only: no kernel state, no root needed.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from podnet.datastore import keys, open_datastore
from podnet.datastore.api import DatastoreError, DatastoreUnavailable, Get, ModRevisionIs, Put
from podnet.datastore.etcd import EtcdDatastore, Endpoint, TxnOutcomeUnknown
from podnet.datastore.resources import Resources
from podnet.ipam import Ipam
from podnet.model import Block, IPPool
from tests.nodes import register_nodes
from tests.contract.events import collect

COUNTER = "/test/counter"


# Members die -----------------------------------------------------------------


def test_cas_increments_stay_exact_when_the_leader_is_killed(etcd_cluster):
    """Every increment either succeeded exactly once or raised DatastoreUnavailable, and nothing else.

    The clients talk to the leader first, so the kill catches transactions in
    flight whose answers are lost; the store must settle each of them. Every
    increment writes a value unique to it ("<count> <writer>-<seq>"), so the
    key's history shows which increments were applied, and how often."""
    leader = etcd_cluster.leader()
    others = [m for m in etcd_cluster.members if m is not leader]
    store = EtcdDatastore([leader.endpoint] + [m.endpoint for m in others], timeout=6.0)
    start = store.put(COUNTER, b"0 init")

    stop = threading.Event()
    succeeded: list[str] = []
    unavailable: list[tuple[str, DatastoreUnavailable]] = []
    after_kill: list[str] = []
    killed = threading.Event()

    def writer(name: str) -> None:
        seq = 0
        while not stop.is_set():
            seq += 1
            tag = f"{name}-{seq}"
            try:
                while True:
                    kv = store.get(COUNTER)
                    n = int(kv.value.split()[0])
                    if store.compare_and_swap(COUNTER, f"{n + 1} {tag}".encode(), kv.mod_revision):
                        succeeded.append(tag)
                        if killed.is_set():
                            after_kill.append(tag)
                        break
            except DatastoreUnavailable as e:
                unavailable.append((tag, e))

    threads = [threading.Thread(target=writer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 10
        while len(succeeded) < 50 and time.monotonic() < deadline:
            time.sleep(0.02)
        leader.kill()
        killed.set()
        time.sleep(2.5)  # re-election and settling happen in here
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert len(after_kill) >= 5, "the cluster did not keep taking writes after losing its leader"

    final = store.get(COUNTER)
    count = int(final.value.split()[0])
    with store.watch(COUNTER, start + 1) as w:
        history = [e.value.decode().split()[1] for e in collect(w, count, timeout=15)]
    store.close()

    unknown = [(tag, str(e)) for tag, e in unavailable if isinstance(e, TxnOutcomeUnknown)]
    assert not unknown, f"transactions whose outcome the store could not settle: {unknown}"
    assert len(history) == len(set(history)), "an increment was applied twice"
    assert sorted(history) == sorted(succeeded), "applied increments differ from those reported as succeeded"
    assert count == len(succeeded)
    assert not {tag for tag, _ in unavailable} & set(history)


def test_ipam_cycles_stay_exact_when_the_leader_is_killed(etcd_cluster):
    """Allocate-and-release cycles from three allocators (one per node) while the leader dies.

    The allocators start from remembered records and retry from what a failed compare read back,
    so a transaction whose answer the kill lost is settled by the store, and one that is sent
    again after that meets records that changed under it. Afterwards every address handed out
    was released exactly once, for its own handle, and the blocks and handle records agree."""
    leader = etcd_cluster.leader()
    others = [m for m in etcd_cluster.members if m is not leader]
    store = EtcdDatastore([leader.endpoint] + [m.endpoint for m in others], timeout=6.0)
    Resources(store).apply_pool(IPPool("fault-pool", "10.91.0.0/24", block_size=28))
    register_nodes(store, "node-0", "node-1", "node-2")
    stop, killed = threading.Event(), threading.Event()
    cycles: list[tuple[str, str, list[str]]] = []  # handle, address, what its release returned
    uncertain: list[str] = []  # handles whose allocation or release raised DatastoreUnavailable
    after_kill: list[str] = []
    errors: list[str] = []

    def cycle(node: str) -> None:
        ipam, seq = Ipam(store), 0
        while not stop.is_set():
            seq += 1
            handle = f"{node}-{seq}"
            try:
                ip = ipam.auto_assign(node, handle)
                cycles.append((handle, ip, ipam.release_handle(handle)))
                if killed.is_set():
                    after_kill.append(handle)
            except TxnOutcomeUnknown as e:
                errors.append(f"{handle}: {e}")
            except DatastoreUnavailable:
                uncertain.append(handle)
            except Exception as e:  # noqa: BLE001  (reported below)
                errors.append(f"{handle}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=cycle, args=(f"node-{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 10
        while len(cycles) < 30 and time.monotonic() < deadline:
            time.sleep(0.02)
        leader.kill()
        killed.set()
        time.sleep(2.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    assert len(after_kill) >= 5, "the cluster did not keep taking allocations after losing its leader"
    assert all(released == [ip] for _, ip, released in cycles), [c for c in cycles if c[2] != [c[1]]]

    # What is left belongs to handles whose operation raised, and is consistent.
    blocks = [Block.from_json(kv.value) for kv in store.list(keys.blocks(4))[0]]
    in_blocks: dict[tuple[str, str], int] = {}
    for b in blocks:
        assert sorted(b.unallocated + list(b.allocations)) == list(range(b.size)), b.cidr
        for alloc in b.allocations.values():
            in_blocks[(alloc.handle, b.cidr)] = in_blocks.get((alloc.handle, b.cidr), 0) + 1
    handles = {kv.key[len(keys.HANDLES):]: json.loads(kv.value) for kv in store.list(keys.HANDLES)[0]}
    assert {(h, c): n for h, doc in handles.items() for c, n in doc["blocks"].items()} == in_blocks
    assert set(handles) <= set(uncertain)
    cleaner = Ipam(store)
    for handle in uncertain:
        cleaner.release_handle(handle)
    assert store.list(keys.HANDLES)[0] == []
    assert all(not Block.from_json(kv.value).allocations for kv in store.list(keys.blocks(4))[0])
    store.close()


def test_lost_answer_of_a_txn_with_reads_is_settled_with_them(etcd_server):
    """When a transaction's answer is lost, the store settles it by looking at the keys. If it
    was applied, the reads of its branch are read again as of the revision it was applied at."""
    store = EtcdDatastore.from_url(etcd_server.url, timeout=5.0)
    try:
        r1 = store.put("/test/settle/k", b"v1")
        store.put("/test/settle/other", b"o")
        compares = [ModRevisionIs("/test/settle/k", r1)]
        success = [Put("/test/settle/k", b"v2"), Get("/test/settle/", prefix=True)]
        failure = [Get("/test/settle/k")]
        applied = store.txn(compares, success, failure)
        assert applied.succeeded
        store.put("/test/settle/other", b"changed later")
        # As if the answer of `applied` had been lost:
        settled = store._settle(compares, success, failure, r1, time.monotonic() + 5, "a test")
        assert settled == applied
        assert [(kv.key, kv.value) for kv in settled.reads[0]] == [
            ("/test/settle/k", b"v2"), ("/test/settle/other", b"o")]
        # A transaction that was not applied and whose failure branch only reads is simply sent
        # again: nothing can have been applied twice.
        stale = [ModRevisionIs("/test/settle/k", r1)]
        assert store._settle(stale, [Put("/test/settle/k", b"v3")], failure, applied.revision,
                             time.monotonic() + 5, "a test") is None
        assert store.get("/test/settle/k").value == b"v2"
    finally:
        store.close()


def test_watch_survives_the_death_of_its_member(etcd_cluster):
    """The watch streams from m0; m0 is killed mid-stream; the watch carries on from
    another member and delivers every event exactly once, in order."""
    m0, m1, m2 = etcd_cluster.members
    watcher = EtcdDatastore([m0.endpoint, m1.endpoint, m2.endpoint])
    writer = EtcdDatastore([m1.endpoint, m2.endpoint], timeout=6.0)
    start = writer.revision() + 1
    n = 200
    w = watcher.watch("/test/w/", start)

    def write() -> None:
        for i in range(n):
            writer.put(f"/test/w/{i % 5}", str(i).encode())
            if i < 100:
                time.sleep(0.002)

    t = threading.Thread(target=write)
    t.start()
    try:
        first = collect(w, 60, timeout=15)
        m0.kill()
        rest = collect(w, n - len(first), timeout=20)
        t.join(timeout=30)
        assert w.next_events(timeout=0.3) == []  # and nothing more
    finally:
        w.close()
        watcher.close()
        writer.close()
    events = first + rest
    assert [e.value for e in events] == [str(i).encode() for i in range(n)]
    revisions = [e.mod_revision for e in events]
    assert revisions == sorted(set(revisions))


def test_all_members_stopped_then_restarted(etcd_cluster):
    store = EtcdDatastore.from_url(etcd_cluster.url)  # default budget: 3 s per operation
    r1 = store.put("/test/persist", b"before")
    watch = store.watch("/test/", r1 + 1)
    etcd_cluster.stop_all()

    ops = {
        "get": lambda: store.get("/test/persist"),
        "put": lambda: store.put("/test/persist", b"during"),
        "create": lambda: store.create("/test/new", b"x"),
        "list": lambda: store.list("/test/"),
        "revision": store.revision,
        "watch": lambda: [watch.next_events(timeout=1.0) for _ in range(10)],
    }
    outcomes: dict[str, tuple[BaseException | None, float]] = {}

    def run(name: str) -> None:  # concurrently, so the test waits one budget, not six
        t0 = time.monotonic()
        try:
            ops[name]()
            outcomes[name] = (None, time.monotonic() - t0)
        except BaseException as e:
            outcomes[name] = (e, time.monotonic() - t0)

    threads = [threading.Thread(target=run, args=(name,)) for name in ops]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=15)
    for name in ops:
        error, took = outcomes[name]
        assert isinstance(error, DatastoreUnavailable), f"{name}: {error!r}"
        assert not isinstance(error, TxnOutcomeUnknown), f"{name}: nothing was sent, yet {error}"
        assert took < 5.0, f"{name} took {took:.1f}s to give up"
        for ep in etcd_cluster.endpoints:  # the message names every endpoint
            assert ep in str(error)
    watch.close()

    etcd_cluster.start_all()
    assert store.get("/test/persist").value == b"before"
    r2 = store.put("/test/persist", b"after")
    assert r2 > r1
    with store.watch("/test/", r1 + 1) as w:
        assert [e.value for e in collect(w, 1, timeout=10)] == [b"after"]
    store.close()


def test_quorum_lost_then_regained(etcd_cluster):
    """Two of three members die: the survivor has no leader. Requests and the open
    watch give up with DatastoreUnavailable instead of hanging or going silently
    stale; with one member back, quorum and service return."""
    m0, m1, m2 = etcd_cluster.members
    store = EtcdDatastore.from_url(etcd_cluster.url)
    r1 = store.put("/test/q", b"before")
    watch = store.watch("/test/", r1 + 1)
    t_kill = time.monotonic()
    m1.kill()
    m2.kill()
    deadline = time.monotonic() + 10
    while m0.status().get("leader", "0") != "0":  # wait until the survivor knows it is alone
        assert time.monotonic() < deadline, "the surviving member still believes it has a leader"
        time.sleep(0.05)

    for name, op in [("get", lambda: store.get("/test/q")), ("create", lambda: store.create("/test/q2", b"x"))]:
        t0 = time.monotonic()
        with pytest.raises(DatastoreUnavailable) as info:
            op()
        assert time.monotonic() - t0 < 5.0, f"{name} took {time.monotonic() - t0:.1f}s"
        assert "no leader" in str(info.value)
        assert not isinstance(info.value, TxnOutcomeUnknown)  # etcd refused before proposing
    with pytest.raises(DatastoreUnavailable):
        while time.monotonic() - t_kill < 15:
            watch.next_events(timeout=1.0)
    watch.close()

    m1.start()
    etcd_cluster.wait_ready()
    assert store.get("/test/q").value == b"before"
    r2 = store.put("/test/q", b"after")
    with store.watch("/test/", r1 + 1) as w:
        assert [(e.value, e.mod_revision) for e in collect(w, 1, timeout=10)] == [(b"after", r2)]
    store.close()


# Endpoints and TLS -------------------------------------------------------------


def test_fails_over_from_a_dead_endpoint(etcd_server, unused_port):
    store = open_datastore(f"etcd://127.0.0.1:{unused_port},{etcd_server.endpoint}")
    try:
        t0 = time.monotonic()
        rev = store.put("/test/failover", b"x")
        assert time.monotonic() - t0 < 2.0  # a refused connection costs next to nothing
        assert store.get("/test/failover").mod_revision == rev
        with store.watch("/test/failover", rev) as w:
            assert [e.value for e in collect(w, 1, timeout=5)] == [b"x"]
    finally:
        store.close()


def test_tls_with_client_certificates(etcd_tls_server):
    tls = etcd_tls_server.tls
    store = open_datastore(etcd_tls_server.url, cert_file=tls.client_cert, key_file=tls.client_key,
                           ca_file=tls.ca_file)
    try:
        assert store.endpoints[0].startswith("https://")
        rev = store.put("/test/tls", b"secret")
        assert store.create("/test/tls2", b"x")
        assert [kv.key for kv in store.list("/test/")[0]] == ["/test/tls", "/test/tls2"]
        with store.watch("/test/", rev) as w:
            assert [e.value for e in collect(w, 2, timeout=5)] == [b"secret", b"x"]
    finally:
        store.close()
    # etcd:// with certificate options means TLS as well.
    port = etcd_tls_server.member.client_port
    store = EtcdDatastore.from_url(f"etcd://127.0.0.1:{port}?ca_file={tls.ca_file}&cert_file={tls.client_cert}"
                                   f"&key_file={tls.client_key}")
    try:
        assert store.get("/test/tls").value == b"secret"
    finally:
        store.close()


def test_tls_without_client_certificate_or_with_the_wrong_ca(etcd_tls_server, tmp_path):
    tls = etcd_tls_server.tls
    no_cert = EtcdDatastore.from_url(etcd_tls_server.url, ca_file=tls.ca_file, timeout=1.0)
    with pytest.raises(DatastoreUnavailable, match="client certificate"):
        no_cert.get("/test/tls")
    no_cert.close()
    system_cas = EtcdDatastore.from_url(etcd_tls_server.url, cert_file=tls.client_cert, key_file=tls.client_key,
                                        timeout=1.0)
    with pytest.raises(DatastoreUnavailable, match="certificate verify failed"):
        system_cas.get("/test/tls")
    system_cas.close()
    with pytest.raises(DatastoreError, match="TLS files"):
        EtcdDatastore.from_url(etcd_tls_server.url, cert_file=str(tmp_path / "missing.crt"))


def test_url_forms():
    parse = EtcdDatastore.from_url
    assert parse("etcd://h1:2379,h2:2380").endpoints == ["http://h1:2379", "http://h2:2380"]
    assert parse("etcd://h1").endpoints == ["http://h1:2379"]
    assert parse("etcds://h1:1,h2").endpoints == ["https://h1:1", "https://h2:2379"]
    assert parse("http://a:1,https://b:2/").endpoints == ["http://a:1", "https://b:2"]
    assert parse("etcd://[::1]:2379").endpoints == ["http://[::1]:2379"]
    assert parse("etcd://h:1?timeout=0.5").timeout == 0.5
    assert parse("etcd://h:1", timeout=7).timeout == 7.0
    assert EtcdDatastore([Endpoint("http", "h", 1)]).endpoints == ["http://h:1"]
    for bad in ("etcd://", "etcd://h:notaport", "etcd://h:1?colour=blue", "mysql://h:1"):
        with pytest.raises(DatastoreError):
            parse(bad)


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
