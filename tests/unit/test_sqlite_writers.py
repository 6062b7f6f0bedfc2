"""The embedded store's writer queue: podnet's writers flock a file beside the store before SQLite's
write lock, and SQLite's own lock still holds off writers that do not (an admin's sqlite3 shell)."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from podnet.datastore.api import ModRevisionIs, Put
from podnet.datastore.sqlite import SqliteDatastore


@pytest.fixture
def store(tmp_path):
    s = SqliteDatastore(str(tmp_path / "store.db"))
    yield s
    s.close()


def _put_in_thread(store, key: str) -> tuple[threading.Thread, list]:
    done: list = []
    t = threading.Thread(target=lambda: done.append(store.put(key, b"v")), daemon=True)
    t.start()
    return t, done


def test_a_writer_outside_podnet_still_holds_podnet_writers_off(store, tmp_path):
    store.put("/a", b"0")
    raw = sqlite3.connect(str(tmp_path / "store.db"), isolation_level=None)
    raw.execute("BEGIN IMMEDIATE")  # the write lock, without the queue
    t, done = _put_in_thread(store, "/b")
    t.join(0.3)
    assert not done, "a podnet write went through while another connection held SQLite's write lock"
    raw.execute("COMMIT")
    raw.close()
    t.join(10)
    assert done and store.get("/b").value == b"v"


def test_a_writer_holding_the_queue_holds_the_others(store):
    other = SqliteDatastore(store.path)  # another process's view of the same store
    try:
        other._writer_turn()  # as if `other` were inside a write transaction
        t, done = _put_in_thread(store, "/c")
        t.join(0.3)
        assert not done, "a podnet write did not wait for the writer ahead of it"
        other._writer_done()
        t.join(10)
        assert done and store.get("/c").value == b"v"
    finally:
        other.close()


def test_a_failed_transaction_gives_the_queue_back(store):
    # A value SQLite cannot bind makes the transaction fail after its first write.
    with pytest.raises(Exception):
        store.txn([ModRevisionIs("/d", 0)], [Put("/d", b"ok"), Put("/e", object())])
    assert store.get("/d") is None  # rolled back
    t, done = _put_in_thread(store, "/f")  # another thread: it must get its turn
    t.join(10)
    assert done, "the queue was not given back after a failed transaction"
