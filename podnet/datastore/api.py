"""The datastore contract, shaped after etcd v3.

A flat, ordered key space of byte values. Every write transaction bumps one
global revision; each key remembers the revision that created it and the one
that last changed it. Writers that must not lose a race compare a key's
mod_revision in a transaction (0 means "the key must not exist"). Readers list
a prefix at a revision and then watch the prefix from the next one, so no
change slips between the two.

Both the embedded SQLite store and the etcd store implement this; code above
the datastore layer sees nothing else.
"""

from __future__ import annotations

import abc
import base64
import json
import time
from dataclasses import dataclass
from typing import Iterable, Sequence

from podnet.errors import PodnetError


class DatastoreError(PodnetError):
    """Base of the datastore's errors."""


class DatastoreUnavailable(DatastoreError):
    """The store cannot be reached or is too busy now; the caller may try again later."""


class DatastoreMissing(DatastoreError):
    """The store does not exist, and the caller only reads (it never creates one)."""


class DatastoreGone(DatastoreUnavailable):
    """The store's file was removed or replaced while it was open: writing on would split the cluster's
    state in two, so every later request fails until the process opens the store again."""


class DatastoreCorrupt(DatastoreError):
    """The store's content is damaged (SQLite: "database disk image is malformed")."""


class DatastoreReadOnly(DatastoreError):
    """The store cannot be written: the file, its directory or its filesystem is read-only."""


class CompactedError(DatastoreError):
    """A watch asked for a revision the store no longer keeps history for: list again."""

    def __init__(self, requested: int, compacted: int):
        super().__init__(
            f"revision {requested} was compacted (history starts after {compacted})",
            "list the prefix again and watch from the new revision",
        )
        self.requested = requested
        self.compacted = compacted


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int = 1


@dataclass(frozen=True)
class Event:
    kind: str  # "put" or "delete"
    key: str
    value: bytes  # empty for deletes
    mod_revision: int  # the revision of this change


# Transaction building blocks ------------------------------------------------


@dataclass(frozen=True)
class ModRevisionIs:
    """Compare: the key's mod_revision equals `revision` (0: the key is absent)."""

    key: str
    revision: int


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes


@dataclass(frozen=True)
class Delete:
    key: str


@dataclass(frozen=True)
class Get:
    """A read inside a transaction: the key (0 or 1 results), or with `prefix` every key under it
    in key order. It sees the writes that come before it in the same branch."""

    key: str
    prefix: bool = False


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int  # the store's revision after the transaction
    # One tuple per Get of the branch that ran, in order. Reads of a failed compare-and-swap come
    # from the same atomic step as the compare, so a retry needs no separate (racing) read.
    reads: tuple[tuple[KeyValue, ...], ...] = ()

    def read(self, index: int) -> KeyValue | None:
        """The single result of the `index`-th Get of a key (None: absent)."""
        kvs = self.reads[index]
        return kvs[0] if kvs else None


@dataclass(frozen=True)
class Liveness:
    """A liveness record as read: what its holder wrote, and how long it lives unless renewed."""

    key: str
    value: bytes
    expires_in: float  # seconds left before it expires if its holder stops renewing it


Compare = ModRevisionIs
Op = Put | Delete | Get


class Watch(abc.ABC):
    """A stream of changes under a prefix, starting at a given revision."""

    @abc.abstractmethod
    def next_events(self, timeout: float | None = None) -> list[Event]:
        """Block until changes arrive (or timeout: []). Raises CompactedError, DatastoreUnavailable."""

    @abc.abstractmethod
    def close(self) -> None:
        ...

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Datastore(abc.ABC):
    """An etcd-like store. Implementations must be safe to share between threads."""

    @abc.abstractmethod
    def get(self, key: str) -> KeyValue | None:
        ...

    @abc.abstractmethod
    def list(self, prefix: str, keys_only: bool = False) -> tuple[list[KeyValue], int]:
        """Every key under prefix, in key order, and the revision they were read at."""

    @abc.abstractmethod
    def txn(self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> TxnResult:
        """Atomically: if every compare holds apply `success`, else apply `failure`. Get ops in the
        branch that ran come back in TxnResult.reads; a branch of only Gets changes nothing (the
        revision stays), so `txn((), [Get(...), ...])` is a consistent multi-key read."""

    @abc.abstractmethod
    def watch(self, prefix: str, start_revision: int) -> Watch:
        """Changes under prefix with mod_revision >= start_revision."""

    @abc.abstractmethod
    def revision(self) -> int:
        ...

    def close(self) -> None:
        pass

    def check(self) -> None:
        """Raise a DatastoreError if the store is known to be unusable (its file removed, replaced,
        damaged or read-only). Cheap enough to call every second; a backend that cannot tell does nothing."""

    def reconnect(self) -> None:
        """Drop every network connection; later requests and open watches make new ones (watches
        resume where they were). For when this host's addresses changed under kept-alive
        connections, which then fail silently. A store without connections does nothing."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # Liveness: a record that lives only while its holder keeps renewing it. On etcd a lease
    # (etcd deletes the key when the lease runs out); here, for stores on one machine such as
    # SQLite, a heartbeat record that carries its own expiry time on this machine's clock.

    def keep_alive(self, key: str, value: bytes, ttl: float) -> None:
        """Create or renew the liveness record `key`: it reads as live for `ttl` seconds after this
        call, unless renewed again. A record deleted by someone else is created again."""
        envelope = {"expires": time.time() + ttl, "ttl": ttl, "value": base64.b64encode(value).decode()}
        self.put(key, json.dumps(envelope).encode())

    def end_liveness(self, key: str) -> None:
        """The holder leaves: the record is gone at once (not after its ttl)."""
        self.delete(key)

    def live(self, prefix: str) -> dict[str, Liveness]:
        """The liveness records under prefix that have not expired, by key."""
        now = time.time()
        out = {}
        for kv in self.list(prefix)[0]:
            try:
                doc = json.loads(kv.value)
                left, value = float(doc["expires"]) - now, base64.b64decode(doc["value"])
            except (ValueError, KeyError, TypeError):
                continue  # not a liveness record: never live
            if left > 0:
                out[kv.key] = Liveness(kv.key, value, left)
        return out

    def get_many(self, keys: Sequence[str]) -> list[KeyValue | None]:
        """Several keys read at one revision, in one round trip where the backend can."""
        return [self.get(k) for k in keys]

    # Conveniences, all expressed as transactions so every backend gets them.

    def put(self, key: str, value: bytes) -> int:
        return self.txn((), (Put(key, value),)).revision

    def delete(self, key: str) -> bool:
        kv = self.get(key)
        if kv is None:
            return False
        return self.txn((ModRevisionIs(key, kv.mod_revision),), (Delete(key),)).succeeded or self.delete(key)

    def create(self, key: str, value: bytes) -> bool:
        """Write only if the key does not exist."""
        return self.txn((ModRevisionIs(key, 0),), (Put(key, value),)).succeeded

    def compare_and_swap(self, key: str, value: bytes, mod_revision: int) -> bool:
        return self.txn((ModRevisionIs(key, mod_revision),), (Put(key, value),)).succeeded

    def compare_and_delete(self, key: str, mod_revision: int) -> bool:
        return self.txn((ModRevisionIs(key, mod_revision),), (Delete(key),)).succeeded


def prefix_end(prefix: str) -> str:
    """The first key after every key that starts with prefix (etcd's range_end)."""
    b = bytearray(prefix.encode())
    while b:
        if b[-1] < 0xFF:
            b[-1] += 1
            return bytes(b).decode("utf-8", "surrogateescape")
        b.pop()
    return "\0"


def ops_keys(ops: Iterable[Op]) -> list[str]:
    return [op.key for op in ops]


def writes(ops: Iterable[Op]) -> list[Put | Delete]:
    return [op for op in ops if not isinstance(op, Get)]
