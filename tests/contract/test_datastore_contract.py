"""The datastore contract (podnet/datastore/api.py), run unchanged against every backend.

Revisions are compared relative to each other: a fresh SQLite store starts at
0, etcd at 1 and the shared etcd has been written to by earlier tests.
"""

from __future__ import annotations

import threading
import time

import pytest

from podnet.datastore.api import (
    CompactedError,
    DatastoreUnavailable,
    Delete,
    Event,
    Get,
    ModRevisionIs,
    Put,
)
from tests.contract.events import collect

BATCH = 100  # operations per transaction when filling (etcd allows 128 by default)


def fill(store, items: dict[str, bytes]) -> int:
    rev = 0
    pairs = list(items.items())
    for i in range(0, len(pairs), BATCH):
        rev = store.txn((), [Put(k, v) for k, v in pairs[i:i + BATCH]]).revision
    return rev


# Reads and writes ----------------------------------------------------------


def test_put_get_and_revisions(datastore):
    assert datastore.get("/test/k") is None
    r1 = datastore.put("/test/k", b"one")
    assert r1 == datastore.revision()
    kv = datastore.get("/test/k")
    assert (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version) == ("/test/k", b"one", r1, r1, 1)

    r2 = datastore.put("/test/k", b"two")
    assert r2 == r1 + 1
    kv = datastore.get("/test/k")
    assert (kv.value, kv.create_revision, kv.mod_revision, kv.version) == (b"two", r1, r2, 2)

    r3 = datastore.put("/test/other", b"")
    assert r3 == r2 + 1
    assert datastore.get("/test/other").value == b""
    assert datastore.get("/test/k").mod_revision == r2  # untouched keys keep their revisions


def test_binary_and_unicode(datastore):
    value = bytes(range(256))
    datastore.put("/test/ü/ключ", value)
    assert datastore.get("/test/ü/ключ").value == value
    assert [kv.key for kv in datastore.list("/test/ü/")[0]] == ["/test/ü/ключ"]


def test_list_in_key_order_with_read_revision(datastore):
    for k in ["/test/l/b", "/test/l/a/2", "/test/l/c", "/test/l/a/1", "/test/l/a"]:
        datastore.put(k, k.encode())
    kvs, rev = datastore.list("/test/l/")
    assert [kv.key for kv in kvs] == ["/test/l/a", "/test/l/a/1", "/test/l/a/2", "/test/l/b", "/test/l/c"]
    assert [kv.value for kv in kvs] == [kv.key.encode() for kv in kvs]
    assert rev == datastore.revision()

    keys_only, rev2 = datastore.list("/test/l/", keys_only=True)
    assert rev2 == rev
    assert [(kv.key, kv.create_revision, kv.mod_revision, kv.version) for kv in keys_only] == [
        (kv.key, kv.create_revision, kv.mod_revision, kv.version) for kv in kvs
    ]
    assert all(kv.value == b"" for kv in keys_only)
    assert datastore.list("/test/nothing/") == ([], rev)


def test_list_revision_then_watch_misses_nothing(datastore):
    datastore.put("/test/s/1", b"a")
    kvs, rev = datastore.list("/test/s/")
    assert [kv.key for kv in kvs] == ["/test/s/1"]
    r2 = datastore.put("/test/s/2", b"b")
    assert r2 > rev
    with datastore.watch("/test/s/", rev + 1) as w:
        assert collect(w, 1) == [Event("put", "/test/s/2", b"b", r2)]
        assert w.next_events(timeout=0.2) == []


def test_prefix_isolation(datastore):
    datastore.put("/test/a", b"exact")
    datastore.put("/test/a/1", b"in")
    datastore.put("/test/a/2", b"in")
    datastore.put("/test/ab", b"out")
    datastore.put("/test/a0", b"out")
    datastore.put("/test/`", b"out")
    assert [kv.key for kv in datastore.list("/test/a/")[0]] == ["/test/a/1", "/test/a/2"]
    assert [kv.key for kv in datastore.list("/test/a")[0]] == [
        "/test/a", "/test/a/1", "/test/a/2", "/test/a0", "/test/ab"]


def test_large_prefix(datastore):
    items = {f"/test/big/{i:05d}": f"value-{i}".encode() for i in range(2000)}
    datastore.put("/test/bigger", b"not under the prefix")
    rev = fill(datastore, dict(reversed(items.items())))
    kvs, list_rev = datastore.list("/test/big/")
    assert list_rev == rev
    assert [kv.key for kv in kvs] == sorted(items)
    assert all(kv.value == items[kv.key] for kv in kvs)
    assert len(datastore.list("/test/big/", keys_only=True)[0]) == 2000


# Transactions ---------------------------------------------------------------


def test_compare_and_swap(datastore):
    r1 = datastore.put("/test/cas", b"v1")
    assert datastore.compare_and_swap("/test/cas", b"v2", r1)
    r2 = datastore.get("/test/cas").mod_revision
    assert r2 > r1
    assert not datastore.compare_and_swap("/test/cas", b"stale", r1)
    assert datastore.get("/test/cas").value == b"v2"
    assert not datastore.compare_and_swap("/test/missing", b"x", r1)
    assert datastore.get("/test/missing") is None


def test_txn_failure_branch(datastore):
    r1 = datastore.put("/test/t", b"v1")
    res = datastore.txn([ModRevisionIs("/test/t", r1 + 100)], [Put("/test/t", b"no")],
                        [Put("/test/t-failed", b"yes"), Delete("/test/t")])
    assert not res.succeeded
    assert res.revision == r1 + 1 == datastore.revision()
    assert datastore.get("/test/t") is None
    assert datastore.get("/test/t-failed").mod_revision == res.revision

    res = datastore.txn([ModRevisionIs("/test/t-failed", res.revision)], [Put("/test/t", b"again")],
                        [Put("/test/never", b"x")])
    assert res.succeeded
    assert datastore.get("/test/t").value == b"again"
    assert datastore.get("/test/never") is None


def test_txn_that_changes_nothing_keeps_the_revision(datastore):
    rev = datastore.put("/test/n", b"x")
    assert datastore.txn([ModRevisionIs("/test/n", rev + 5)], [Put("/test/n", b"y")]).revision == rev
    assert datastore.txn((), [Delete("/test/absent")]).revision == rev
    assert datastore.revision() == rev


def test_create_if_absent(datastore):
    assert datastore.create("/test/c", b"first")
    assert not datastore.create("/test/c", b"second")
    assert datastore.get("/test/c").value == b"first"
    assert datastore.delete("/test/c")
    # Deleted keys are absent again: ModRevisionIs(key, 0) holds.
    assert datastore.create("/test/c", b"third")
    kv = datastore.get("/test/c")
    assert (kv.value, kv.version) == (b"third", 1)
    assert kv.create_revision == kv.mod_revision


def test_compare_and_delete(datastore):
    r1 = datastore.put("/test/d", b"x")
    r2 = datastore.put("/test/d", b"y")
    assert not datastore.compare_and_delete("/test/d", r1)
    assert datastore.get("/test/d").value == b"y"
    assert datastore.compare_and_delete("/test/d", r2)
    assert datastore.get("/test/d") is None
    assert not datastore.compare_and_delete("/test/d", r2)


def test_delete_of_missing_key(datastore):
    rev = datastore.put("/test/x", b"x")
    assert datastore.delete("/test/missing") is False
    assert datastore.revision() == rev
    assert datastore.delete("/test/x") is True
    assert datastore.revision() == rev + 1
    assert datastore.delete("/test/x") is False


def test_multi_op_txn_is_atomic(datastore):
    rc = datastore.put("/test/m/c", b"old")
    ra = datastore.put("/test/m/a", b"old")
    # A failed compare applies none of the writes.
    res = datastore.txn([ModRevisionIs("/test/m/a", ra), ModRevisionIs("/test/m/c", ra)],
                        [Put("/test/m/a", b"new"), Put("/test/m/b", b"new"), Delete("/test/m/c")])
    assert not res.succeeded and res.revision == ra
    assert [(kv.key, kv.value) for kv in datastore.list("/test/m/")[0]] == [
        ("/test/m/a", b"old"), ("/test/m/c", b"old")]
    # Both compares hold: every write lands at one revision.
    res = datastore.txn([ModRevisionIs("/test/m/a", ra), ModRevisionIs("/test/m/c", rc)],
                        [Put("/test/m/a", b"new"), Put("/test/m/b", b"new"), Delete("/test/m/c")])
    assert res.succeeded and res.revision == ra + 1
    kvs, _ = datastore.list("/test/m/")
    assert [(kv.key, kv.value, kv.mod_revision) for kv in kvs] == [
        ("/test/m/a", b"new", res.revision), ("/test/m/b", b"new", res.revision)]
    with datastore.watch("/test/m/", res.revision) as w:
        assert collect(w, 3) == [
            Event("put", "/test/m/a", b"new", res.revision),
            Event("put", "/test/m/b", b"new", res.revision),
            Event("delete", "/test/m/c", b"", res.revision),
        ]


def test_txn_failure_branch_reads_what_failed_the_compare(datastore):
    r1 = datastore.put("/test/r/k", b"v1")
    datastore.put("/test/r/p/1", b"a")
    r3 = datastore.put("/test/r/p/2", b"b")
    res = datastore.txn([ModRevisionIs("/test/r/k", r1 - 1)], [Put("/test/r/k", b"lost")],
                        [Get("/test/r/k"), Get("/test/r/absent"), Get("/test/r/p/", prefix=True)])
    assert not res.succeeded and res.revision == r3  # reads alone change nothing
    assert len(res.reads) == 3
    kv = res.read(0)
    assert (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version) == ("/test/r/k", b"v1", r1, r1, 1)
    assert res.read(1) is None and res.reads[1] == ()
    assert [(kv.key, kv.value) for kv in res.reads[2]] == [("/test/r/p/1", b"a"), ("/test/r/p/2", b"b")]
    assert datastore.get("/test/r/k").value == b"v1"
    # The reads let the caller retry at once, without a read of its own that could race.
    res = datastore.txn([ModRevisionIs("/test/r/k", kv.mod_revision)], [Put("/test/r/k", b"v2")], [Get("/test/r/k")])
    assert res.succeeded and res.reads == () and res.revision == r3 + 1
    assert datastore.get("/test/r/k").mod_revision == res.revision


def test_txn_reads_see_earlier_writes_of_their_branch(datastore):
    rev = datastore.put("/test/s/old", b"x")
    res = datastore.txn([ModRevisionIs("/test/s/old", rev)],
                        [Get("/test/s/", prefix=True), Put("/test/s/new", b"y"), Delete("/test/s/old"),
                         Get("/test/s/", prefix=True), Get("/test/s/new")])
    assert res.succeeded and res.revision == rev + 1
    assert [kv.key for kv in res.reads[0]] == ["/test/s/old"]
    assert [(kv.key, kv.mod_revision) for kv in res.reads[1]] == [("/test/s/new", rev + 1)]
    assert res.read(2).value == b"y" and res.read(2).create_revision == rev + 1


def test_read_only_txn_is_a_consistent_multi_read(datastore):
    r1 = datastore.put("/test/q/a", b"1")
    r2 = datastore.put("/test/q/b", b"2")
    res = datastore.txn((), [Get("/test/q/a"), Get("/test/q/b"), Get("/test/q/c")])
    assert res.succeeded and res.revision == r2 == datastore.revision()
    assert [kv.mod_revision if kv else None for kv in res.reads[0] + res.reads[1]] == [r1, r2]
    assert res.read(2) is None
    # Compares decide which branch's reads come back; nothing is written either way.
    res = datastore.txn([ModRevisionIs("/test/q/a", r2)], [Get("/test/q/a")], [Get("/test/q/b")])
    assert not res.succeeded and res.read(0).value == b"2" and res.revision == r2


def test_concurrent_cas_increments_give_the_exact_total(datastore):
    datastore.put("/test/counter", b"0")
    threads, per_thread = 4, 25
    conflicts = []

    def work():
        done = lost = 0
        while done < per_thread:
            kv = datastore.get("/test/counter")
            if datastore.compare_and_swap("/test/counter", str(int(kv.value) + 1).encode(), kv.mod_revision):
                done += 1
            else:
                lost += 1
        conflicts.append(lost)

    ts = [threading.Thread(target=work) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in ts)
    assert int(datastore.get("/test/counter").value) == threads * per_thread
    assert datastore.get("/test/counter").version == threads * per_thread + 1


# Watches -------------------------------------------------------------------


def test_watch_replays_from_a_past_revision(datastore):
    r1 = datastore.put("/test/w/1", b"a")
    r2 = datastore.put("/test/w/2", b"b")
    r3 = datastore.put("/test/w/1", b"c")
    datastore.put("/test/wx", b"outside")
    with datastore.watch("/test/w/", r2) as w:
        assert collect(w, 2) == [Event("put", "/test/w/2", b"b", r2), Event("put", "/test/w/1", b"c", r3)]
        assert w.next_events(timeout=0.2) == []
    with datastore.watch("/test/w/", r1) as w:
        assert [e.mod_revision for e in collect(w, 3)] == [r1, r2, r3]


def test_live_watch(datastore):
    rev = datastore.revision()
    with datastore.watch("/test/live/", rev + 1) as w:
        assert w.next_events(timeout=0.3) == []
        got: list[Event] = []
        reader = threading.Thread(target=lambda: got.extend(collect(w, 1)))
        reader.start()
        time.sleep(0.2)
        r = datastore.put("/test/live/k", b"v")
        reader.join(timeout=10)
        assert got == [Event("put", "/test/live/k", b"v", r)]


def test_watch_order_across_many_writes(datastore):
    start = datastore.revision() + 1
    n = 300
    with datastore.watch("/test/o/", start) as w:
        def write():
            for i in range(n):
                datastore.put(f"/test/o/{i % 7}", str(i).encode())

        writer = threading.Thread(target=write)
        writer.start()
        events = collect(w, n, timeout=30)
        writer.join()
    assert [e.value for e in events] == [str(i).encode() for i in range(n)]
    revs = [e.mod_revision for e in events]
    assert revs == sorted(revs) and len(set(revs)) == n
    assert [e.key for e in events] == [f"/test/o/{i % 7}" for i in range(n)]


def test_watch_sees_deletes(datastore):
    r1 = datastore.put("/test/del/k", b"v")
    kv = datastore.get("/test/del/k")
    with datastore.watch("/test/del/", r1 + 1) as w:
        assert datastore.compare_and_delete("/test/del/k", kv.mod_revision)
        rev = datastore.revision()
        assert collect(w, 1) == [Event("delete", "/test/del/k", b"", rev)]
        datastore.delete("/test/del/k")  # already gone: no event
        datastore.put("/test/del/k2", b"x")
        assert [e.key for e in collect(w, 1)] == ["/test/del/k2"]


def test_watch_of_compacted_history_raises(datastore):
    r1 = datastore.put("/test/cmp/k", b"1")
    r2 = datastore.put("/test/cmp/k", b"2")
    r3 = datastore.put("/test/cmp/k", b"3")
    datastore.put("/test/cmp/k", b"4")
    datastore.compact(r2)  # history up to and including r2 is gone
    for start in (r1, r2):
        with datastore.watch("/test/cmp/", start) as w:
            with pytest.raises(CompactedError) as info:
                w.next_events(timeout=10)
            assert info.value.requested == start
            assert info.value.compacted == r2
    with datastore.watch("/test/cmp/", r3) as w:
        assert [e.value for e in collect(w, 2)] == [b"3", b"4"]
    # Listing still works and gives the latest state.
    kvs, rev = datastore.list("/test/cmp/")
    assert [kv.value for kv in kvs] == [b"4"] and rev == datastore.revision()


# Unavailability ----------------------------------------------------------------


def test_unavailable_store_fails_promptly(unavailable_datastore):
    t0 = time.monotonic()
    with pytest.raises(DatastoreUnavailable):
        unavailable_datastore.put("/test/k", b"v")
    assert time.monotonic() - t0 < 5.0


# Liveness (a lease on etcd, a heartbeat record with an expiry on SQLite) ----------------------


def test_liveness_record_lives_while_renewed(datastore):
    datastore.keep_alive("/test/live/a", b"agent a", ttl=3)
    datastore.put("/test/live/plain", b"not a liveness record")
    live = datastore.live("/test/live/")
    assert list(live) == ["/test/live/a"]
    assert live["/test/live/a"].value == b"agent a" and 0 < live["/test/live/a"].expires_in <= 3
    deadline = time.monotonic() + 4.5  # past the first ttl: only the renewals keep it
    while time.monotonic() < deadline:
        datastore.keep_alive("/test/live/a", b"agent a", ttl=3)
        assert "/test/live/a" in datastore.live("/test/live/")
        time.sleep(0.3)
    datastore.keep_alive("/test/live/a", b"agent a, renewed", ttl=3)
    assert datastore.live("/test/live/")["/test/live/a"].value == b"agent a, renewed"


def test_liveness_record_expires_without_renewal(datastore):
    datastore.keep_alive("/test/live/b", b"b", ttl=2)
    assert "/test/live/b" in datastore.live("/test/live/")
    deadline = time.monotonic() + 30
    while "/test/live/b" in datastore.live("/test/live/"):
        assert time.monotonic() < deadline, "a liveness record nobody renews never expired"
        time.sleep(0.2)
    datastore.keep_alive("/test/live/b", b"b again", ttl=3)  # after expiry: a new record
    assert datastore.live("/test/live/")["/test/live/b"].value == b"b again"


def test_liveness_ended_by_its_holder_or_deleted_by_others(datastore):
    datastore.keep_alive("/test/live/c", b"c", ttl=30)
    datastore.end_liveness("/test/live/c")
    assert datastore.live("/test/live/") == {}
    datastore.keep_alive("/test/live/c", b"c", ttl=30)
    assert datastore.delete("/test/live/c")
    assert datastore.live("/test/live/") == {}
    datastore.keep_alive("/test/live/c", b"c", ttl=30)  # the holder's next renewal brings it back
    assert list(datastore.live("/test/live/")) == ["/test/live/c"]
