"""The embedded store when its file is missing, removed, replaced, damaged or read-only: typed errors that
name the cause, never a new empty store behind the caller's back, never SQLite's "cannot rollback"."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading

import pytest

from podnet.datastore import open_datastore
from podnet.datastore.api import (DatastoreCorrupt, DatastoreGone, DatastoreMissing, DatastoreReadOnly, Put)
from podnet.datastore.sqlite import SqliteDatastore


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "store.db")


@pytest.fixture
def store(path):
    s = SqliteDatastore(path)
    s.put("/podnet/a", b"1")
    yield s
    s.close()


def test_a_reader_never_creates_a_store(path):
    with pytest.raises(DatastoreMissing) as e:
        open_datastore(f"sqlite://{path}", create=False)
    assert path in str(e.value)
    assert not os.path.exists(path)
    assert not os.listdir(os.path.dirname(path))


def test_a_file_that_is_no_podnet_store_is_not_taken_for_one(path):
    open(path, "w").close()
    with pytest.raises(DatastoreMissing, match="not a podnet datastore"):
        open_datastore(path, create=False)


def test_a_removed_file_fails_every_request_and_no_new_file_appears(store, path):
    os.unlink(path)
    for request in (lambda: store.get("/podnet/a"), lambda: store.put("/podnet/b", b"2"),
                    lambda: store.list("/podnet/"), store.revision, lambda: store.watch("/podnet/", 1), store.check):
        with pytest.raises(DatastoreGone, match="was removed while it was open"):
            request()
    # A thread that never used the store before must not create a new one at the path either.
    errors = []
    t = threading.Thread(target=lambda: errors.append(_raised(lambda: store.put("/podnet/c", b"3"))))
    t.start()
    t.join()
    assert isinstance(errors[0], DatastoreGone)
    assert not os.path.exists(path)


def test_a_watch_notices_the_removal(store, path):
    watch = store.watch("/podnet/", store.revision() + 1)
    os.unlink(path)
    with pytest.raises(DatastoreGone):
        watch.next_events(timeout=1.0)
    watch.close()


def test_a_replaced_file_is_refused_even_after_the_original_comes_back(store, path, tmp_path):
    other = SqliteDatastore(str(tmp_path / "other.db"))
    other.put("/podnet/z", b"9")
    other.close()
    backup = str(tmp_path / "backup.db")
    shutil.copy(path, backup)
    os.replace(str(tmp_path / "other.db"), path)
    with pytest.raises(DatastoreGone, match="replaced by another file"):
        store.get("/podnet/a")
    os.replace(backup, path)  # a new inode again: still not the file this store opened
    with pytest.raises(DatastoreGone):
        store.put("/podnet/b", b"2")
    # Opened afresh, the store at the path works.
    with SqliteDatastore(path, create=False) as fresh:
        assert fresh.get("/podnet/a").value == b"1"


def test_a_damaged_file_is_a_typed_error(store, path):
    for i in range(50):
        store.put(f"/podnet/k{i}", b"x" * 200)
    store.close()
    with open(path, "r+b") as f:
        f.seek(0)
        f.write(os.urandom(os.path.getsize(path)))
    with pytest.raises(DatastoreCorrupt, match="is damaged"):
        SqliteDatastore(path, create=False).list("/podnet/")


def test_check_finds_damage_under_open_connections(store, path, monkeypatch):
    monkeypatch.setattr("podnet.datastore.sqlite.DEEP_CHECK_SECONDS", 0.0)
    store.check()
    store.get("/podnet/a")  # this thread's connection has the pages cached
    with store._conn() as conn:  # every page in the file, none only in the WAL
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with open(path, "r+b") as f:
        f.write(b"garbage" * 4)
    with pytest.raises(DatastoreCorrupt, match="is damaged"):
        store.check()


@contextlib.contextmanager
def _read_only(path: str):
    """The file cannot be written: immutable for root (who ignores modes), mode 0444 for anyone else."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", path], check=True)
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", path], check=True)
    else:
        directory = os.path.isdir(path)
        os.chmod(path, 0o555 if directory else 0o444)
        try:
            yield
        finally:
            os.chmod(path, 0o755 if directory else 0o644)


def test_a_read_only_file_names_the_cause(store, path):
    store.close()
    with _read_only(path):
        reader = SqliteDatastore(path, create=False)
        assert reader.get("/podnet/a").value == b"1"  # reads still work
        with pytest.raises(DatastoreReadOnly) as e:
            reader.txn((), (Put("/podnet/b", b"2"),))
        assert f"{path} is not writable" in str(e.value)
        assert "rollback" not in str(e.value)
        with pytest.raises(DatastoreReadOnly):
            reader.check()
        reader.close()
    with SqliteDatastore(path, create=False) as writable:
        writable.put("/podnet/b", b"2")
        writable.check()


def _raised(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        return e
    return None


READ_AND_CLOSE = ("import sys; from podnet.datastore.sqlite import SqliteDatastore as S; "
                  "s = S(sys.argv[1]); print(s.get('/podnet/a').value.decode()); s.close()")


def _read_in_another_process(path: str) -> str:
    return subprocess.run([sys.executable, "-c", READ_AND_CLOSE, path], capture_output=True, text=True, check=True,
                          env=dict(os.environ, PYTHONPATH=os.getcwd())).stdout.strip()


def test_checking_the_store_keeps_sqlites_locks_so_no_write_is_lost(store, path):
    """check() must never close a descriptor of the file: that drops this process's POSIX locks, another
    process's last close then deletes the WAL under our connections, and later commits vanish."""
    store.check()
    assert _read_in_another_process(path) == "1"
    store.put("/podnet/a", b"2")
    assert _read_in_another_process(path) == "2"
    assert os.path.exists(path + "-wal")


def test_a_read_only_directory_names_the_directory(store, path):
    store.close()  # the last connection: SQLite removes the -wal and -shm files
    parent = os.path.dirname(path)
    assert not os.path.exists(path + "-wal")
    with _read_only(parent):
        with pytest.raises(DatastoreReadOnly) as e:
            SqliteDatastore(path, create=False).get("/podnet/a")
        assert f"its directory {parent} is not writable" in str(e.value), e.value
    with SqliteDatastore(path, create=False) as writable:
        assert writable.get("/podnet/a").value == b"1"
