"""The embedded datastore: etcd's model on one SQLite file.

One row per key plus a change log keyed by revision, both written in the same
SQLite transaction, so a watcher that reads the log never misses or reorders a
change. Many processes may share the file (agents and CNI requests of a lab's
nodes do); SQLite's write lock serialises their transactions and WAL mode lets
readers proceed meanwhile. Watchers poll a counter SQLite bumps on every
commit by another connection, which costs microseconds, and read the log only
when it moved.

The store notices when its file is removed or replaced under it (every request compares the path's
device and inode with the file it opened) and then fails every request with DatastoreGone instead of
writing on into a file no one else sees; `check()` also finds a damaged or read-only file. Only a
store opened with `create=True` (the agent's, the lab's) may create the file, once, when it opens.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
import urllib.parse
from typing import Sequence

from podnet.datastore.api import (
    CompactedError,
    Compare,
    Datastore,
    DatastoreCorrupt,
    DatastoreError,
    DatastoreGone,
    DatastoreMissing,
    DatastoreReadOnly,
    DatastoreUnavailable,
    Delete,
    Event,
    Get,
    KeyValue,
    Op,
    Put,
    TxnResult,
    Watch,
    prefix_end,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY, value BLOB NOT NULL,
    create_rev INTEGER NOT NULL, mod_rev INTEGER NOT NULL, version INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log (
    rev INTEGER NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY (rev, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta VALUES ('revision', 0), ('compacted', 0);
"""

WATCH_POLL_SECONDS = 0.01
_PUTS_PER_STATEMENT = 200  # 4 parameters each: below the 999 of SQLite builds before 3.32
# Checkpoint the WAL back into the database every this many pages (SQLite's default: 1000). The WAL
# is written from its start again after each checkpoint, so a small one is soon overwritten in place
# rather than appended to; on ext4 an fdatasync after an append also commits the new file size to
# the journal, which costs about twice as much (measured 0.26 against 0.12-0.15 ms on the test VM).
# SQLite deletes the WAL when its last connection closes, so every store that is reopened starts
# over with an empty one.
IDLE_CONNECTIONS = 4  # kept open between requests; a burst may open more, closed after it
WAL_AUTOCHECKPOINT_PAGES = 256
# Truncate the WAL back to this size when a checkpoint resets it (SQLite's default, -1, never does).
# Far above what WAL_AUTOCHECKPOINT_PAGES needs, so in steady state it is never truncated (and then
# appended to again); it only bounds the file after a long reader held checkpoints back.
WAL_SIZE_LIMIT_BYTES = 8 << 20
# check() reads every page (PRAGMA quick_check, on a connection of its own) at most this often; its cheap
# checks run every call.
DEEP_CHECK_SECONDS = 5.0
_GONE_HINT = ("the agents keep the kernel as it is; put the file back, or restart the agents and commands "
              "that use it so they open the store again")
_CORRUPT_HINT = ("restore it from a backup (the agents keep the kernel as it is meanwhile) and restart the "
                 "agents; `sqlite3 FILE .recover` may save what is left")


class SqliteDatastore(Datastore):
    def __init__(
        self,
        path: str,
        busy_timeout: float = 5.0,
        history: int = 10000,
        durable: bool = True,
        create: bool = True,
    ):
        """`history`: revisions of change log kept for watchers that fall behind.
        `durable`: fsync every commit (SQLite synchronous=FULL); off trades the
        last transactions before a power loss for speed.
        `create`: make the store if it does not exist (else DatastoreMissing)."""
        self.path = path
        self.busy_timeout = busy_timeout
        self.history = history
        self.durable = durable
        self._local = threading.local()  # each thread's writer-queue descriptor (_writer_turn)
        self._conns: list[sqlite3.Connection] = []  # every connection made, to close them all
        self._idle: list[sqlite3.Connection] = []  # connections no request holds now
        self._waits: dict[int, bool] = {}  # id(connection) -> whether its busy handler is on
        self._conns_lock = threading.Lock()
        self._failed: DatastoreError | None = None  # once set, every request raises it again
        self._deep_problem: DatastoreError | None = None  # what the last quick_check found
        self._next_deep_check = 0.0
        # Every connection opens the file as it exists (mode=rw): none can make a new, empty store
        # at the path after the file was removed.
        self._uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=rw"
        if create and not os.path.exists(path):
            _create_file(path)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise DatastoreMissing(f"there is no embedded datastore at {path}",
                                   "the podnet agent creates it when it starts; name another store with "
                                   "--datastore or $PODNET_DATASTORE") from None
        except OSError as e:
            raise DatastoreUnavailable(f"cannot open the embedded datastore {path}: {e.strerror}") from None
        self._identity = (st.st_dev, st.st_ino)
        with self._conn() as conn, _translate_errors(path):
            if not conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'meta'").fetchone()[0]:
                if not create:
                    raise DatastoreMissing(f"{path} is not a podnet datastore (it has no podnet tables)",
                                           "name the store with --datastore or $PODNET_DATASTORE")
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")

    def __repr__(self):
        return f"SqliteDatastore({self.path!r})"

    def _connect(self) -> sqlite3.Connection:
        with _translate_errors(self.path):
            conn = sqlite3.connect(
                self._uri, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False, uri=True
            )
            try:
                conn.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
                conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
                conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
            except BaseException:
                conn.close()
                raise
        with self._conns_lock:
            self._conns.append(conn)
        return conn

    @contextlib.contextmanager
    def _conn(self, wait: bool = True):
        """A connection for one request, returned to the idle pool after it. Not one per thread: the
        agent serves CNI requests from 64 threads, and a connection each costs memory for nothing
        when requests come one after another. `wait`: with SQLite's busy handler on (readers) or off
        (writers, which poll for the lock themselves, see _begin_write), switched only when a
        connection serves the other kind of request than its last."""
        with self._conns_lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._connect()
        try:
            if self._waits.get(id(conn), True) != wait:
                with _translate_errors(self.path):
                    conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000) if wait else 0}")
                self._waits[id(conn)] = wait
            yield conn
        finally:
            if conn.in_transaction:  # a request that failed between BEGIN and its end
                _rollback(conn)
            with self._conns_lock:
                if conn in self._conns and len(self._idle) < IDLE_CONNECTIONS:
                    self._idle.append(conn)
                    conn = None
            if conn is not None:  # more idle than worth keeping after a burst, or the store was closed
                self._forget(conn)

    def _forget(self, conn: sqlite3.Connection) -> None:
        with self._conns_lock:
            if conn in self._conns:
                self._conns.remove(conn)
            self._waits.pop(id(conn), None)
        try:
            conn.close()
        except sqlite3.Error:
            pass

    def _guard(self) -> None:
        """Refuse to go on when the path no longer names the file this store opened: requests would
        read and write a file that is gone, or that others no longer use (a split brain). One stat,
        about a microsecond."""
        if self._failed is not None:
            raise type(self._failed)(self._failed.message, self._failed.hint)
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._fail(f"the embedded datastore {self.path} was removed while it was open")
        except OSError:
            return  # e.g. a directory made unreadable: the requests themselves say what is wrong
        else:
            if (st.st_dev, st.st_ino) != self._identity:
                self._fail(f"the embedded datastore {self.path} was replaced by another file while it was open")

    def _fail(self, message: str) -> None:
        self._failed = DatastoreGone(message, _GONE_HINT)
        raise DatastoreGone(message, _GONE_HINT)

    def check(self) -> None:
        """Raise what is wrong with the store: its file removed or replaced, damaged, or not writable.

        The pages are all read (PRAGMA quick_check) at most every DEEP_CHECK_SECONDS, by a connection
        of its own: the others' page caches would not see a file changed behind SQLite's back. Never
        open the file here other than through SQLite: closing any descriptor of it drops every POSIX
        lock this process holds on it, SQLite's included, and other processes could then checkpoint
        under this one's readers."""
        self._guard()
        blocker = write_blocker(self.path)
        if blocker:
            raise DatastoreReadOnly(f"the embedded datastore {self.path} is read-only: {blocker}",
                                    "make it writable again; the agents keep the kernel as it is meanwhile")
        if time.monotonic() >= self._next_deep_check:
            self._next_deep_check = time.monotonic() + DEEP_CHECK_SECONDS
            self._deep_problem = None
            try:
                conn = self._connect()
                try:
                    with _translate_errors(self.path):
                        rows = conn.execute("PRAGMA quick_check").fetchall()
                finally:
                    with self._conns_lock:
                        self._conns.remove(conn)
                    conn.close()
                if rows != [("ok",)]:
                    raise DatastoreCorrupt(f"the embedded datastore {self.path} is damaged: {rows[0][0]}",
                                           _CORRUPT_HINT)
            except DatastoreCorrupt as e:
                self._deep_problem = e
        if self._deep_problem is not None:
            raise DatastoreCorrupt(self._deep_problem.message, self._deep_problem.hint)

    def close(self) -> None:
        with self._conns_lock:
            conns, self._conns, self._idle = self._conns, [], []
            self._waits.clear()
        for c in conns:
            try:
                c.close()
            except sqlite3.Error:
                pass
        self._local = threading.local()

    # Reads -------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        self._guard()
        with self._conn() as conn, _translate_errors(self.path):
            row = conn.execute(
                "SELECT key, value, create_rev, mod_rev, version FROM kv WHERE key = ?", (key,)
            ).fetchone()
        return KeyValue(*row) if row else None

    def get_many(self, keys: Sequence[str]) -> list[KeyValue | None]:
        self._guard()
        with self._conn() as conn, _translate_errors(self.path):
            conn.execute("BEGIN")  # one read transaction: every key at one revision
            try:
                rows = [conn.execute("SELECT key, value, create_rev, mod_rev, version FROM kv WHERE key = ?",
                                     (k,)).fetchone() for k in keys]
            except BaseException:
                _rollback(conn)
                raise
            conn.execute("COMMIT")
        return [KeyValue(*r) if r else None for r in rows]

    def list(self, prefix: str, keys_only: bool = False) -> tuple[list[KeyValue], int]:
        cols = "key, x'', create_rev, mod_rev, version" if keys_only else "key, value, create_rev, mod_rev, version"
        self._guard()
        with self._conn() as conn, _translate_errors(self.path):
            # One read transaction so the rows and the revision agree.
            conn.execute("BEGIN")
            try:
                rows = conn.execute(
                    f"SELECT {cols} FROM kv WHERE key >= ? AND key < ? ORDER BY key",
                    (prefix, prefix_end(prefix)),
                ).fetchall()
                rev = conn.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0]
            except BaseException:
                _rollback(conn)
                raise
            conn.execute("COMMIT")
        return [KeyValue(*r) for r in rows], rev

    def revision(self) -> int:
        self._guard()
        with self._conn() as conn, _translate_errors(self.path):
            return conn.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0]

    # Writes ------------------------------------------------------------

    def _begin_write(self, conn: sqlite3.Connection) -> None:
        """Take the write lock (on a connection without busy handler), polling in sub-millisecond
        steps: SQLite's own busy handler sleeps in steps that grow to 100 ms, which puts that much
        latency on a writer that lost a race for a lock held for a fraction of a millisecond. The
        steps stop growing at 1 ms: longer ones let the other writers take the lock over and over
        meanwhile (measured with 4 writer processes: p99 20-30 ms with a 4 ms cap, 9-16 ms with 1 ms)."""
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.0002
        self._writer_turn()
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e) or time.monotonic() >= deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 1.5, 0.001)

    def _writer_turn(self) -> None:
        """Queue for the write lock in the kernel: podnet's writers (any thread or process) flock a
        file beside the store before BEGIN IMMEDIATE, so a waiting writer is woken the moment the
        previous one commits instead of polling for it. The flock is dropped after COMMIT/ROLLBACK
        (_writer_done); SQLite's own lock still guards against writers that do not take it."""
        local = self._local
        fd = getattr(local, "turn_fd", None)
        if fd is None:
            try:
                fd = os.open(self.path + "-writers", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as e:
                raise DatastoreReadOnly(f"the embedded datastore {self.path} cannot be written: cannot open its "
                                        f"lock file {self.path}-writers: {e.strerror}",
                                        "podnet needs to write the store's directory") from None
            local.turn_fd = fd
        fcntl.flock(fd, fcntl.LOCK_EX)

    def _writer_done(self) -> None:
        fd = getattr(self._local, "turn_fd", None)
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def txn(self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> TxnResult:
        read_only = not any(isinstance(op, (Put, Delete)) for op in (*success, *failure))
        self._guard()
        with self._conn(wait=read_only) as conn, _translate_errors(self.path):
            if read_only:  # a snapshot is enough: no write lock, so writers are not held up
                conn.execute("BEGIN")
            else:
                try:
                    self._begin_write(conn)
                except BaseException:
                    self._writer_done()
                    raise
            try:
                rev = conn.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0]
                ok = self._compares_hold(conn, compares)
                changed, reads = self._apply(conn, rev + 1, success if ok else failure)
                if changed:
                    rev += 1
                    conn.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (rev,))
                    if rev % 1000 == 0:
                        self._compact(conn, rev - self.history)
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
            finally:
                if not read_only:
                    self._writer_done()
        return TxnResult(ok, rev, reads)

    @staticmethod
    def _compares_hold(conn, compares: Sequence[Compare]) -> bool:
        if not compares:
            return True
        wanted = tuple({c.key for c in compares})  # one statement for all: the write lock is held
        revs = dict(conn.execute(f"SELECT key, mod_rev FROM kv WHERE key IN ({','.join('?' * len(wanted))})",
                                 wanted).fetchall())
        return all(revs.get(c.key, 0) == c.revision for c in compares)

    @staticmethod
    def _apply(conn, rev: int, ops: Sequence[Op]) -> tuple[bool, tuple[tuple[KeyValue, ...], ...]]:
        """Apply ops at revision `rev`: whether anything changed, and what each Get read."""
        seq = 0
        reads: list[tuple[KeyValue, ...]] = []
        i = 0
        while i < len(ops):
            op = ops[i]
            if isinstance(op, Put):
                # A run of puts in two statements (rows apply in order, so a key put twice still
                # ends with the later value): fewer statements while the write lock is held.
                run = [op]
                while (i + len(run) < len(ops) and isinstance(ops[i + len(run)], Put)
                       and len(run) < _PUTS_PER_STATEMENT):
                    run.append(ops[i + len(run)])
                i += len(run)
                conn.execute(
                    "INSERT INTO kv VALUES " + ", ".join(["(?, ?, ?, ?, 1)"] * len(run))
                    + " ON CONFLICT(key) DO UPDATE SET "
                    "value = excluded.value, mod_rev = excluded.mod_rev, version = version + 1",
                    [x for p in run for x in (p.key, p.value, rev, rev)],
                )
                conn.execute("INSERT INTO log VALUES " + ", ".join(["(?, ?, 'put', ?, ?)"] * len(run)),
                             [x for k, p in enumerate(run, seq) for x in (rev, k, p.key, p.value)])
                seq += len(run)
                continue
            i += 1
            if isinstance(op, Delete):
                if conn.execute("DELETE FROM kv WHERE key = ?", (op.key,)).rowcount:
                    conn.execute("INSERT INTO log VALUES (?, ?, 'delete', ?, x'')", (rev, seq, op.key))
                    seq += 1
            elif isinstance(op, Get):
                if op.prefix:
                    rows = conn.execute(
                        "SELECT key, value, create_rev, mod_rev, version FROM kv WHERE key >= ? AND key < ? "
                        "ORDER BY key", (op.key, prefix_end(op.key))).fetchall()
                else:
                    rows = conn.execute("SELECT key, value, create_rev, mod_rev, version FROM kv WHERE key = ?",
                                        (op.key,)).fetchall()
                reads.append(tuple(KeyValue(*r) for r in rows))
            else:
                raise TypeError(f"not a datastore operation: {op!r}")
        return seq > 0, tuple(reads)

    def _compact(self, conn, upto: int) -> None:
        if upto <= 0:
            return
        conn.execute("DELETE FROM log WHERE rev <= ?", (upto,))
        conn.execute("UPDATE meta SET value = ? WHERE name = 'compacted'", (upto,))

    def compact(self, upto: int) -> None:
        """Drop change history up to and including revision `upto`."""
        self._guard()
        with self._conn() as conn, _translate_errors(self.path):
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._compact(conn, upto)
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise

    # Watches -----------------------------------------------------------

    def watch(self, prefix: str, start_revision: int) -> Watch:
        self._guard()
        return _SqliteWatch(self, prefix, start_revision)


class _SqliteWatch(Watch):
    def __init__(self, store: SqliteDatastore, prefix: str, start_revision: int):
        self._store = store
        self._prefix = prefix
        self._end = prefix_end(prefix)
        self._next = max(1, start_revision)
        self._conn = store._connect()
        self._seen_version = None
        self._closed = False

    def next_events(self, timeout: float | None = None) -> list[Event]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._closed:
            self._store._guard()
            with _translate_errors(self._store.path):
                version = self._conn.execute("PRAGMA data_version").fetchone()[0]
                if version != self._seen_version:
                    self._seen_version = version
                    events = self._read()
                    if events:
                        return events
            if deadline is not None and time.monotonic() >= deadline:
                return []
            time.sleep(WATCH_POLL_SECONDS)
        return []

    def _read(self) -> list[Event]:
        conn = self._conn
        conn.execute("BEGIN")
        try:
            compacted = conn.execute("SELECT value FROM meta WHERE name = 'compacted'").fetchone()[0]
            if self._next <= compacted:
                raise CompactedError(self._next, compacted)
            rows = conn.execute(
                "SELECT rev, kind, key, value FROM log WHERE rev >= ? AND key >= ? AND key < ? ORDER BY rev, seq",
                (self._next, self._prefix, self._end),
            ).fetchall()
            head = conn.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0]
        except BaseException:
            _rollback(conn)
            raise
        conn.execute("COMMIT")
        self._next = head + 1
        return [Event(kind, key, bytes(value), rev) for rev, kind, key, value in rows]

    def close(self) -> None:
        self._closed = True
        try:
            self._conn.close()
        except sqlite3.Error:
            pass


def _rollback(conn: sqlite3.Connection) -> None:
    """End a failed transaction without hiding why it failed: SQLite has already rolled back after
    some errors (a read-only or damaged file), and a ROLLBACK then only says "no transaction is active"."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass


def _create_file(path: str) -> None:
    """Make the store's (empty) file and its directory; SQLite writes its header on the first commit."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
    except OSError as e:
        raise DatastoreReadOnly(f"cannot create the embedded datastore {path}: {e.strerror}") from None


def write_blocker(path: str) -> str:
    """Why the store at `path` cannot be written, as far as the file system says; "" if it can.

    access(2), never open(2): closing a descriptor of the database would drop this process's SQLite locks."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        if os.statvfs(parent).f_flag & os.ST_RDONLY:
            return f"{parent} is on a read-only file system"
    except OSError:
        pass
    for name in (path, path + "-wal", path + "-shm"):
        if os.path.exists(name) and not os.access(name, os.W_OK):
            return f"{name} is not writable" + (" (for root that means immutable: see lsattr)"
                                                if os.geteuid() == 0 else "")
    # SQLite creates the -wal and -shm files beside the database when the first connection opens it.
    if not (os.path.exists(path + "-wal") and os.path.exists(path + "-shm")) and not os.access(parent, os.W_OK):
        return f"its directory {parent} is not writable"
    return ""


# SQLite's primary result codes (sqlite3.h)
_BUSY, _LOCKED, _READONLY, _IOERR, _CORRUPT, _CANTOPEN, _FULL, _NOTADB = 5, 6, 8, 10, 11, 14, 13, 26
_READONLY_DBMOVED = _READONLY | (4 << 8)


def translate(path: str, exc: sqlite3.Error) -> DatastoreError:
    """sqlite3's error as the datastore's typed one, naming the cause."""
    code = getattr(exc, "sqlite_errorcode", None) or 0
    primary = code & 0xFF
    text = str(exc)
    if primary in (_CORRUPT, _NOTADB) or "malformed" in text or "not a database" in text:
        return DatastoreCorrupt(f"the embedded datastore {path} is damaged: {text}", _CORRUPT_HINT)
    if code == _READONLY_DBMOVED:
        return DatastoreGone(f"the embedded datastore {path} was moved or removed while it was open", _GONE_HINT)
    if primary in (_READONLY, _IOERR, _CANTOPEN) or "readonly" in text:
        blocker = write_blocker(path) if os.path.exists(path) else ""
        if blocker or primary == _READONLY:
            return DatastoreReadOnly(f"the embedded datastore {path} cannot be written: "
                                     f"{blocker or text}", "make the file and its directory writable")
        what = "cannot open" if primary == _CANTOPEN else "I/O error on"
        name = getattr(exc, "sqlite_errorname", "")
        return DatastoreUnavailable(f"{what} the embedded datastore {path}: {text}" + (f" ({name})" if name else ""))
    if primary == _FULL:
        return DatastoreUnavailable(f"the embedded datastore {path} cannot grow: {text}",
                                    "free space on its file system")
    if primary in (_BUSY, _LOCKED) or "locked" in text or "busy" in text:
        return DatastoreUnavailable(f"embedded datastore {path}: {text}",
                                    "another process holds it locked for too long")
    return DatastoreUnavailable(f"embedded datastore {path}: {text}")


class _translate_errors:
    """Turn sqlite3's errors into the datastore's typed ones."""

    def __init__(self, path: str):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and issubclass(exc_type, sqlite3.DatabaseError):
            raise translate(self.path, exc) from None
        return False
