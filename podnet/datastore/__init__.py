"""Datastore layer: an etcd-shaped key-value contract and its backends.

`open_datastore(url)` picks the backend:
  sqlite:///var/lib/podnet/podnet.db  (or a bare path)  the embedded store, the default;
      ?durable=false skips the fsync of every commit (for throwaway stores such as a lab's)
  etcd://host:2379[,host:2379...]                         etcd v3
`create=False` (what every read-only command passes): a missing embedded store is DatastoreMissing,
never a new, empty store.
"""

from __future__ import annotations

import os

from podnet.datastore.api import (
    CompactedError,
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
    Liveness,
    ModRevisionIs,
    Put,
    TxnResult,
    Watch,
)

DEFAULT_URL = "sqlite:///var/lib/podnet/podnet.db"


def __getattr__(name):
    # The etcd backend loads only when used; its one public error is reachable from here all the same.
    if name == "TxnOutcomeUnknown":
        from podnet.datastore.etcd import TxnOutcomeUnknown

        return TxnOutcomeUnknown
    raise AttributeError(name)


def default_url() -> str:
    return os.environ.get("PODNET_DATASTORE", DEFAULT_URL)


def open_datastore(url: str | None = None, create: bool = True, **options) -> Datastore:
    url = url or default_url()
    if url.startswith("sqlite://"):
        from podnet.datastore.sqlite import SqliteDatastore

        path, _, query = url[len("sqlite://"):].partition("?")
        for item in filter(None, query.split("&")):
            key, _, value = item.partition("=")
            if key != "durable" or value not in ("true", "false"):
                raise DatastoreError(f"unknown option {item!r} in {url}", "sqlite URLs take ?durable=true|false")
            options.setdefault("durable", value == "true")
        return SqliteDatastore(path, create=create, **options)
    if url.startswith(("etcd://", "etcds://", "http://", "https://")):
        from podnet.datastore.etcd import EtcdDatastore  # noqa: F401  (issue 3)

        return EtcdDatastore.from_url(url, **options)
    if "://" not in url:
        from podnet.datastore.sqlite import SqliteDatastore

        return SqliteDatastore(url, create=create, **options)
    raise DatastoreError(f"unknown datastore {url!r}", "use sqlite:///path or etcd://host:2379")


__all__ = [
    "CompactedError",
    "Datastore",
    "DatastoreCorrupt",
    "DatastoreError",
    "DatastoreGone",
    "DatastoreMissing",
    "DatastoreReadOnly",
    "DatastoreUnavailable",
    "Delete",
    "Event",
    "Get",
    "KeyValue",
    "Liveness",
    "ModRevisionIs",
    "Put",
    "TxnResult",
    "Watch",
    "TxnOutcomeUnknown",
    "open_datastore",
    "default_url",
    "DEFAULT_URL",
]
