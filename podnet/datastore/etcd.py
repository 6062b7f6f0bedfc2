"""The etcd v3 datastore, spoken over etcd's JSON gateway.

Every operation is one HTTP POST to the gateway that etcd serves on its client
port (`/v3/kv/range`, `/v3/kv/txn`, `/v3/kv/compaction`, streaming
`/v3/watch`), made with the standard library's http.client so that each
failure can be classified exactly:

* The connection could not be made (refused, TLS handshake failed): the request
  never left, so it is tried on the next endpoint.
* The request left but no usable answer came back (connection reset, timeout,
  or an etcd error such as "request timed out" that may come after the write
  was proposed): the outcome is unknown. Reads are simply repeated. A
  transaction is *settled* before anything else happens (see `_settle`): podnet
  writes are compare-and-swaps, and sending one twice after a lost answer could
  apply it twice.

Requests go to a preferred endpoint; one that fails is demoted and the next
one is tried. Every request carries etcd's "hasleader" metadata, so a member
cut off from its cluster refuses at once ("no leader") and ends its watches
instead of hanging or streaming stale data. When a whole round fails the client backs off (50 ms doubling
up to 500 ms) and tries again until the operation's time budget (`timeout`,
3 s by default, fail-over and retries included) is spent; then it raises
DatastoreUnavailable naming every endpoint and what went wrong with each.

Watches stream `/v3/watch` in a background thread per watch. Events are
queued in revision order and handed out by `next_events`. When the stream
breaks the thread reconnects, to the next endpoint if need be, and resumes at
the revision after the last event it delivered, so nothing is lost or
repeated. If no endpoint lets it back in within `timeout`, or etcd reports the
requested revision was compacted, the watch ends with DatastoreUnavailable or
CompactedError and the caller lists again.

Semantics match the embedded SQLite store: ModRevisionIs(key, 0) holds exactly
when the key is absent (etcd compares a missing key as all-zero revisions); a
transaction that changes nothing does not bump the revision; `compact(upto)`
drops history up to and including `upto`. Differences that cannot be hidden:
etcd refuses a transaction that writes the same key twice (DatastoreError),
limits operations per transaction (`--max-txn-ops`, 128 by default), and a
fresh etcd starts at revision 1 rather than 0.
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import queue
import random
import select
import socket
import ssl
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Iterator, List, Sequence
from urllib.parse import parse_qs, urlsplit

from podnet import netns
from podnet.datastore.api import (
    CompactedError,
    Compare,
    Datastore,
    DatastoreError,
    DatastoreUnavailable,
    Delete,
    Event,
    Get,
    KeyValue,
    Liveness,
    Op,
    Put,
    TxnResult,
    Watch,
    prefix_end,
    writes,
)

DEFAULT_PORT = 2379
DEFAULT_TIMEOUT = 3.0
LIST_PAGE_SIZE = 1000  # keys per range request when listing a prefix

_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 0.5
_CONNECT_TIMEOUT_MAX = 1.0
_ATTEMPT_TIMEOUT_MIN = 1.0

# gRPC status codes etcd reports in its JSON errors that mean "not now": the
# same request may succeed later or on another member.
_RETRYABLE_CODES = frozenset({
    2,   # Unknown, e.g. "raft proposal dropped" while a member has no leader
    4,   # DeadlineExceeded
    8,   # ResourceExhausted: "too many requests"
    13,  # Internal
    14,  # Unavailable: "no leader", "leader changed", "request timed out", "server stopped"
})

# Errors etcd gives before proposing anything: safe to send again, even a write.
_NOT_PROPOSED = ("etcdserver: no leader", "etcdserver: too many requests", "raft proposal dropped")

# Asks etcd (via the gateway, as gRPC metadata) to refuse requests and end watches on a
# member that has lost its leader, rather than hang or serve a stale stream.
_HEADERS = {"Content-Type": "application/json", "Grpc-Metadata-hasleader": "true"}

_SCHEMES = {"etcd": "http", "etcds": "https", "http": "http", "https": "https"}


class TxnOutcomeUnknown(DatastoreUnavailable):
    """etcd lost the answer to a transaction and podnet could not find out whether it was applied.

    Rare: it needs a lost answer *and* a failure to read the keys back within
    the time budget, or a transaction whose effect leaves no trace to look
    for. Read the keys again before deciding what to do.
    """


@dataclass(frozen=True)
class Endpoint:
    scheme: str  # "http" or "https"
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


# Internal outcomes of one attempt ----------------------------------------


class _NotSent(Exception):
    """No connection: the request never reached etcd."""


class _NoAnswer(Exception):
    """The request left, but no usable answer came back."""


class _Unsettled(Exception):
    """A write's answer was lost; whether etcd applied it is not known yet."""


class _EtcdError(Exception):
    """etcd answered with an error."""

    def __init__(self, endpoint: Endpoint, code: int, message: str):
        super().__init__(f"{endpoint}: {message}")
        self.code = code
        self.message = message

    @property
    def retryable(self) -> bool:
        return self.code in _RETRYABLE_CODES

    @property
    def not_proposed(self) -> bool:
        return any(m in self.message for m in _NOT_PROPOSED)

    @property
    def compacted(self) -> bool:
        return "required revision has been compacted" in self.message


# Encoding ------------------------------------------------------------------


def _b64key(key: str) -> str:
    return base64.b64encode(key.encode("utf-8", "surrogateescape")).decode("ascii")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unkey(data: str) -> str:
    return base64.b64decode(data).decode("utf-8", "surrogateescape")


def _int(doc: dict, name: str) -> int:
    """etcd's JSON has int64 as strings and omits fields that are zero."""
    return int(doc.get(name, 0))


def _header_revision(doc: dict) -> int:
    return _int(doc.get("header", {}), "revision")


def _kv(raw: dict) -> KeyValue:
    return KeyValue(
        key=_unkey(raw["key"]),
        value=base64.b64decode(raw.get("value", "")),
        create_revision=_int(raw, "create_revision"),
        mod_revision=_int(raw, "mod_revision"),
        version=_int(raw, "version"),
    )


def _event(raw: dict) -> tuple[Event, int]:
    """An etcd watch event as the contract's Event, plus the key's create_revision (0 for deletes)."""
    kv = raw["kv"]
    if raw.get("type") == "DELETE":  # PUT is the default and therefore omitted
        return Event("delete", _unkey(kv["key"]), b"", _int(kv, "mod_revision")), 0
    return (
        Event("put", _unkey(kv["key"]), base64.b64decode(kv.get("value", "")), _int(kv, "mod_revision")),
        _int(kv, "create_revision"),
    )


def _compare(c: Compare) -> dict:
    # A missing key compares as if all its revisions were 0, so MOD == 0 is "absent".
    return {"key": _b64key(c.key), "target": "MOD", "result": "EQUAL", "mod_revision": str(c.revision)}


def _range(get: Get) -> dict:
    if get.prefix:
        return {"key": _b64key(get.key or "\0"), "range_end": _b64key(prefix_end(get.key))}
    return {"key": _b64key(get.key)}


def _op(op: Op) -> dict:
    if isinstance(op, Put):
        return {"request_put": {"key": _b64key(op.key), "value": _b64(op.value)}}
    if isinstance(op, Delete):
        return {"request_delete_range": {"key": _b64key(op.key)}}
    if isinstance(op, Get):
        return {"request_range": _range(op)}
    raise TypeError(f"not a datastore operation: {op!r}")


def _txn_reads(doc: dict, branch: Sequence[Op]) -> tuple[tuple[KeyValue, ...], ...]:
    """What the Gets of the branch that ran read, from a txn answer (one response per op, in order)."""
    responses = doc.get("responses") or []
    if len(responses) != len(branch):
        raise DatastoreError(f"etcd answered {len(responses)} operations of a transaction of {len(branch)}")
    return tuple(tuple(_kv(raw) for raw in (resp.get("response_range") or {}).get("kvs") or [])
                 for op, resp in zip(branch, responses) if isinstance(op, Get))


def _describe(e: BaseException) -> str:
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(e, OSError) and e.strerror and not isinstance(e, ssl.SSLError):
        return e.strerror.lower()
    return str(e) or type(e).__name__


# Transport -----------------------------------------------------------------


def _closed_by_peer(sock: socket.socket) -> bool:
    """An idle keep-alive connection has nothing to read; if it is readable, the peer hung up."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class _Transport:
    """Keep-alive HTTP connections (one per thread and endpoint) and the endpoint preference."""

    def __init__(self, endpoints: Sequence[Endpoint], ssl_context: ssl.SSLContext | None, client_cert: bool):
        self.endpoints = tuple(endpoints)
        self._ssl = ssl_context
        self._client_cert = client_cert
        self._preferred = 0
        self._lock = threading.Lock()
        self._local = threading.local()
        self._open: set[http.client.HTTPConnection] = set()
        # Every connection is made from the network namespace this store was opened in, whatever
        # thread asks: a thread elsewhere (e.g. still in the host's namespace while the store
        # belongs to a lab's underlay) must never reach an address of the same name outside.
        self._netns = netns.current()

    def order(self) -> list[int]:
        """Endpoint indexes, the preferred one first."""
        n = len(self.endpoints)
        start = self._preferred
        return [(start + k) % n for k in range(n)]

    def demote(self, index: int) -> None:
        with self._lock:
            if self._preferred == index:
                self._preferred = (index + 1) % len(self.endpoints)

    def _describe(self, e: BaseException) -> str:
        text = _describe(e)
        if isinstance(e, ssl.SSLError) and not isinstance(e, ssl.SSLCertVerificationError) and not self._client_cert:
            # With TLS 1.3 a server that wants a client certificate just hangs up.
            text += " (etcd may require a client certificate: give cert_file and key_file)"
        return text

    def connect(self, index: int, timeout: float) -> http.client.HTTPConnection:
        ep = self.endpoints[index]
        conn: http.client.HTTPConnection
        if ep.scheme == "https":
            conn = _HTTPSConnection(self._netns, ep.host, ep.port, timeout=timeout, context=self._ssl)
        else:
            conn = _HTTPConnection(self._netns, ep.host, ep.port, timeout=timeout)
        try:
            conn.connect()
        except OSError as e:  # refused, unreachable, timed out, TLS handshake failed
            conn.close()
            raise _NotSent(f"{ep}: {self._describe(e)}") from None
        sock = conn.sock
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Notice a peer that vanished (host down, cable cut) on long-idle watch streams.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for opt, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
            if hasattr(socket, opt):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)
        with self._lock:
            self._open.add(conn)
        return conn

    def forget(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._open.discard(conn)
        conns = getattr(self._local, "conns", {})
        for k, v in list(conns.items()):
            if v is conn:
                del conns[k]
        conn.close()

    def post(self, index: int, path: str, payload: bytes, timeout: float) -> dict:
        """One attempt against one endpoint. Raises _NotSent, _NoAnswer or _EtcdError."""
        ep = self.endpoints[index]
        conns: dict[int, http.client.HTTPConnection] = self._local.__dict__.setdefault("conns", {})
        conn = conns.get(index)
        if conn is not None and (conn.sock is None or _closed_by_peer(conn.sock)):
            # The member closed this idle connection (it stopped or restarted): sending on it
            # would make the request look lost. Start afresh, so "down" reads as not sent.
            self.forget(conn)
            conn = None
        if conn is None:
            conn = conns[index] = self.connect(index, min(timeout, _CONNECT_TIMEOUT_MAX))
        try:
            conn.sock.settimeout(timeout)
            conn.request("POST", path, body=payload, headers=_HEADERS)
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as e:
            self.forget(conn)
            raise _NoAnswer(f"{ep}: {self._describe(e)}") from None
        if resp.will_close:
            self.forget(conn)
        try:
            doc = json.loads(data) if data else {}
        except ValueError:
            raise _NoAnswer(f"{ep}: HTTP {resp.status} with a body that is not JSON: {data[:200]!r}") from None
        if resp.status != 200:
            message = str(doc.get("message") or doc.get("error") or f"HTTP {resp.status}")
            code = int(doc.get("code", 14 if resp.status >= 500 else 3))
            raise _EtcdError(ep, code, message)
        return doc

    def close(self) -> None:
        with self._lock:
            conns, self._open = self._open, set()
        for conn in conns:
            # Shut the socket down first: a thread blocked reading a response on it holds the
            # response's lock, and close() alone would wait for that read to end.
            if conn.sock is not None:
                try:
                    conn.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            conn.close()
        self._local = threading.local()


class _WatchStream:
    """One open `/v3/watch` request; its messages as parsed JSON objects."""

    def __init__(self, transport: _Transport, index: int, create_request: dict, timeout: float):
        self.endpoint = transport.endpoints[index]
        self._transport = transport
        self._conn = transport.connect(index, min(timeout, _CONNECT_TIMEOUT_MAX))
        self._buf = b""
        try:
            self._conn.sock.settimeout(timeout)
            body = json.dumps({"create_request": create_request}).encode()
            self._conn.request("POST", "/v3/watch", body=body, headers=_HEADERS)
            self._resp = self._conn.getresponse()
            if self._resp.status != 200:
                data = self._resp.read()
                raise _NoAnswer(f"{self.endpoint}: watch refused with HTTP {self._resp.status}: {data[:200]!r}")
        except (OSError, http.client.HTTPException) as e:
            self.close()
            raise _NoAnswer(f"{self.endpoint}: {transport._describe(e)}") from None
        except _NoAnswer:
            self.close()
            raise

    def set_timeout(self, timeout: float | None) -> None:
        self._conn.sock.settimeout(timeout)

    def messages(self) -> Iterator[dict]:
        """Messages until the stream breaks (then _NoAnswer)."""
        while True:
            nl = self._buf.find(b"\n")
            while nl < 0:
                try:
                    chunk = self._resp.read1(65536)
                except (OSError, http.client.HTTPException, ValueError, AttributeError) as e:
                    # ValueError/AttributeError: the response was closed under us by close().
                    raise _NoAnswer(f"{self.endpoint}: watch stream broke: {self._transport._describe(e)}") from None
                if not chunk:
                    if self._buf.strip():  # the gateway's last word (an error) has no newline
                        self._buf += b"\n"
                        nl = len(self._buf) - 1
                        break
                    raise _NoAnswer(f"{self.endpoint}: watch stream ended")
                self._buf += chunk
                nl = self._buf.find(b"\n")
            line, self._buf = self._buf[:nl], self._buf[nl + 1:]
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError:
                    raise _NoAnswer(f"{self.endpoint}: unreadable watch message {line[:200]!r}") from None

    def close(self) -> None:
        """Safe from any thread: unblocks a reader stuck in messages()."""
        sock = self._conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._transport.forget(self._conn)


class _InNetns:
    """http.client connections whose socket lives in a given network namespace."""

    def __init__(self, ns, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._ns = ns
        # http.client connects through this instance attribute (set in its __init__).
        self._create_connection = self._create_in_netns

    def _create_in_netns(self, address, timeout, source_address=None):
        with netns.staying_in(self._ns):
            return socket.create_connection(address, timeout, source_address)


class _HTTPConnection(_InNetns, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_InNetns, http.client.HTTPSConnection):
    pass


# The datastore -------------------------------------------------------------


class EtcdDatastore(Datastore):
    def __init__(
        self,
        endpoints: Sequence[str | Endpoint],
        *,
        cert_file: str | None = None,
        key_file: str | None = None,
        ca_file: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ):
        """`endpoints`: "http(s)://host:port" of several members of one cluster.
        `cert_file`/`key_file`: client certificate for etcd's --client-cert-auth;
        `ca_file`: CA that signed the members' certificates (default: system CAs).
        `timeout`: seconds one operation may take, retries and fail-over included."""
        eps = [e if isinstance(e, Endpoint) else _parse_endpoint(e, "http") for e in endpoints]
        if not eps:
            raise DatastoreError("no etcd endpoints given", "use etcd://host:2379[,host:2379...]")
        if timeout <= 0:
            raise DatastoreError(f"etcd timeout must be positive, not {timeout}")
        if key_file and not cert_file:
            raise DatastoreError("an etcd client key was given without its certificate", "pass cert_file too")
        self.timeout = float(timeout)
        tls = any(e.scheme == "https" for e in eps)
        self._transport = _Transport(eps, _ssl_context(cert_file, key_file, ca_file) if tls else None,
                                     client_cert=bool(cert_file))
        # The highest revision any answer has shown: a lower bound for the revision a
        # transaction sent later is applied at (used to settle lost answers).
        self._seen_revision = 0
        self._leases: dict[str, int] = {}  # liveness key -> the lease it is attached to
        self._watches: weakref.WeakSet[_EtcdWatch] = weakref.WeakSet()
        self._closed = False

    @classmethod
    def from_url(cls, url: str, **options: Any) -> "EtcdDatastore":
        """etcd://h1:2379,h2:2379 (TLS when certificate options are given), etcds://...,
        or http(s)://h1:2379,http(s)://h2:2379. Options may also come as a query:
        ?cert_file=...&key_file=...&ca_file=...&timeout=..."""
        scheme, sep, rest = url.partition("://")
        if not sep or scheme not in _SCHEMES:
            raise DatastoreError(f"not an etcd URL: {url!r}", "use etcd://host:2379[,host:2379...]")
        rest, _, query = rest.partition("?")
        for name, values in parse_qs(query).items():
            if name not in ("cert_file", "key_file", "ca_file", "timeout"):
                raise DatastoreError(f"unknown etcd option {name!r} in {url!r}")
            options.setdefault(name, float(values[-1]) if name == "timeout" else values[-1])
        default_scheme = _SCHEMES[scheme]
        if scheme == "etcd" and any(options.get(k) for k in ("cert_file", "ca_file")):
            default_scheme = "https"
        items = [item.strip().rstrip("/") for item in rest.split(",") if item.strip()]
        return cls([_parse_endpoint(item, default_scheme) for item in items], **options)

    @property
    def endpoints(self) -> list[str]:
        return [str(e) for e in self._transport.endpoints]

    @property
    def client_certificate(self) -> bool:
        """Whether this client presents a certificate to etcd (cert_file given)."""
        return self._transport._client_cert

    def __repr__(self) -> str:
        return f"EtcdDatastore({','.join(self.endpoints)!r})"

    def close(self) -> None:
        self._closed = True
        for w in list(self._watches):
            w.close()
        self._transport.close()

    def reconnect(self) -> None:
        for w in list(self._watches):
            w.drop_stream()
        self._transport.close()

    # Requests ------------------------------------------------------------

    def _attempt_timeout(self, remaining: float) -> float:
        """Leave time for another attempt when one hangs: on another endpoint, or on a fresh
        connection to the same one (a kept-alive connection can be dead without knowing it,
        e.g. when its source address was removed from the host)."""
        return min(remaining, max(_ATTEMPT_TIMEOUT_MIN, self.timeout / 2))

    def _unavailable(self, errors: dict[str, str], what: str = "did not answer") -> DatastoreUnavailable:
        detail = "; ".join(f"{ep}: {err}" for ep, err in errors.items()) or "no attempt finished in time"
        return DatastoreUnavailable(
            f"etcd at {', '.join(self.endpoints)} {what} within {self.timeout:g}s ({detail})",
            "check that etcd is running and reachable at these endpoints; the operation can be retried",
        )

    def _call(self, path: str, body: dict, deadline: float | None = None, *, idempotent: bool = True) -> dict:
        """POST to the first endpoint that answers, retrying with backoff until the deadline.

        Raises DatastoreUnavailable when time runs out, _EtcdError when etcd refuses
        the request for good, and, when not `idempotent`, _Unsettled as soon as a
        request may have reached etcd without its answer coming back."""
        if self._closed:
            raise DatastoreError("the etcd datastore was closed")
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        payload = json.dumps(body).encode()
        errors: dict[str, str] = {}
        delay = _BACKOFF_FIRST
        while True:
            for index in self._transport.order():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._unavailable(errors)
                ep = str(self._transport.endpoints[index])
                try:
                    doc = self._transport.post(index, path, payload, self._attempt_timeout(remaining))
                except _NotSent as e:
                    errors[ep] = str(e).removeprefix(ep + ": ")
                    self._transport.demote(index)
                    continue
                except (_NoAnswer, _EtcdError) as e:
                    if isinstance(e, _EtcdError) and not e.retryable:
                        raise
                    self._transport.demote(index)
                    if not idempotent and not (isinstance(e, _EtcdError) and e.not_proposed):
                        raise _Unsettled(str(e)) from None
                    errors[ep] = str(e).removeprefix(ep + ": ")
                    continue
                rev = _header_revision(doc)
                if rev > self._seen_revision:
                    self._seen_revision = rev
                return doc
            pause = delay * random.uniform(0.5, 1.0)
            if time.monotonic() + pause >= deadline:
                raise self._unavailable(errors)
            time.sleep(pause)
            delay = min(delay * 2, _BACKOFF_MAX)

    def _request(self, path: str, body: dict, deadline: float | None = None) -> dict:
        """_call for reads and other requests that are safe to repeat, with etcd's refusals typed."""
        try:
            return self._call(path, body, deadline)
        except _EtcdError as e:
            raise DatastoreError(f"etcd refused the request: {e}") from None

    # Reads -------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        doc = self._request("/v3/kv/range", {"key": _b64key(key)})
        kvs = doc.get("kvs") or []
        return _kv(kvs[0]) if kvs else None

    def get_many(self, keys: Sequence[str]) -> List[KeyValue | None]:
        """One read-only transaction: every key at one revision, one round trip."""
        if not keys:
            return []
        doc = self._request("/v3/kv/txn", {
            "compare": [], "success": [{"request_range": {"key": _b64key(k)}} for k in keys], "failure": []})
        out: List[KeyValue | None] = []
        for response in doc.get("responses") or []:
            kvs = (response.get("response_range") or {}).get("kvs") or []
            out.append(_kv(kvs[0]) if kvs else None)
        if len(out) != len(keys):
            raise DatastoreError(f"etcd answered {len(out)} reads for {len(keys)} keys")
        return out

    def list(self, prefix: str, keys_only: bool = False) -> tuple[List[KeyValue], int]:
        end = _b64key(prefix_end(prefix))
        while True:
            try:
                return self._list_pages(prefix or "\0", end, keys_only)
            except _EtcdError as e:
                if not e.compacted:  # else the pinned revision was compacted between pages: start over
                    raise DatastoreError(f"etcd refused to list {prefix!r}: {e}") from None

    def _list_pages(self, start: str, end: str, keys_only: bool) -> tuple[List[KeyValue], int]:
        out: List[KeyValue] = []
        revision = 0
        key = _b64key(start)
        while True:
            body: dict[str, Any] = {"key": key, "range_end": end, "limit": str(LIST_PAGE_SIZE)}
            if keys_only:
                body["keys_only"] = True
            if revision:
                body["revision"] = str(revision)  # every page from the first page's snapshot
            doc = self._call("/v3/kv/range", body)
            if not revision:
                revision = _header_revision(doc)
            page = [_kv(raw) for raw in doc.get("kvs") or []]
            out.extend(page)
            if not doc.get("more") or not page:
                return out, revision
            key = _b64key(page[-1].key + "\0")

    def revision(self) -> int:
        return _header_revision(self._request("/v3/kv/range", {"key": _b64key("\0"), "count_only": True}))

    # Writes ------------------------------------------------------------

    def txn(self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> TxnResult:
        body = {
            "compare": [_compare(c) for c in compares],
            "success": [_op(op) for op in success],
            "failure": [_op(op) for op in failure],
        }
        deadline = time.monotonic() + self.timeout
        delay = _BACKOFF_FIRST
        while True:
            floor = self._seen_revision
            try:
                doc = self._call("/v3/kv/txn", body, deadline, idempotent=False)
            except _EtcdError as e:
                raise DatastoreError(f"etcd refused the transaction: {e}") from None
            except _Unsettled as e:
                settled = self._settle(compares, success, failure, floor, deadline, str(e))
                if settled is not None:
                    return settled
                # Provably not applied: send it again, after a pause, if time is left.
                pause = delay * random.uniform(0.5, 1.0)
                if time.monotonic() + pause >= deadline:
                    raise self._unavailable({"last attempt": str(e)}, "could not apply a transaction") from None
                time.sleep(pause)
                delay = min(delay * 2, _BACKOFF_MAX)
                continue
            ok = bool(doc.get("succeeded", False))
            reads = _txn_reads(doc, success if ok else failure) if any(
                isinstance(op, Get) for op in (*success, *failure)) else ()
            return TxnResult(ok, _header_revision(doc), reads)

    def _settle(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op],
        floor: int,
        deadline: float,
        why: str,
    ) -> TxnResult | None:
        """After a transaction's answer was lost: its result if it was applied or is
        decided, None if sending it again is safe, else TxnOutcomeUnknown.

        The reasoning: a transaction that compares `key` at revision r and writes
        `key` can only have been applied as the first change of `key` after r
        (for r = 0: as a creation of `key` after `floor`, a revision reached
        before it was sent). So: if every compare still holds, it was not
        applied. Otherwise read that change from the key's history: if it wrote
        exactly our value, it was ours; if not, our compare has failed for good.

        Limits: two writers racing to write byte-identical values from the same
        base cannot be told apart (podnet's records carry what makes them
        unique: handles, sequence numbers). The reads are linearizable, so an
        answer lost to a dead member or a leader change is decided by the time
        they return; a proposal still queued in a live but overloaded leader
        could apply after them, which no etcd client can see."""

        def unknown(reason: str) -> TxnOutcomeUnknown:
            return TxnOutcomeUnknown(
                f"etcd may or may not have applied a transaction ({why}); {reason}",
                "read the keys again before deciding what to do",
            )

        if not compares:
            return None  # unconditional writes: applying them again leaves the same state
        if not writes(success) and not writes(failure):
            return None  # reads only: nothing was changed, asking again is harmless
        try:
            current = {c.key: self._get_for_settle(c.key, deadline) for c in compares}
        except DatastoreUnavailable as e:
            raise unknown(f"reading the keys back failed: {e.message}") from None

        def mod(key: str) -> int:
            kv = current[key]
            return kv.mod_revision if kv else 0

        if all(mod(c.key) == c.revision for c in compares):
            return None
        written = {op.key: op for op in writes(success)}
        probe = next((c for c in compares if c.key in written and (c.revision or isinstance(written[c.key], Put))),
                     None)
        if probe is None:
            raise unknown("its writes leave no trace on the keys it compares")
        applied_as: int | None = None
        if mod(probe.key) != probe.revision:  # else the key our success branch writes never changed
            try:
                applied_as = self._find_our_write(probe, written[probe.key], current[probe.key], floor, deadline)
            except CompactedError:
                raise unknown("the key's history was compacted") from None
            except DatastoreUnavailable as e:
                raise unknown(f"reading the key's history failed: {e.message}") from None
        if applied_as is not None:
            return TxnResult(True, applied_as, self._reads_at(success, applied_as, deadline))
        # Our success branch did not apply, and never will: a compare now fails.
        if not failure:
            return TxnResult(False, self._seen_revision)
        return None  # sending it again applies the failure branch (its writes are idempotent)

    def _find_our_write(self, probe: Compare, op: Op, now: KeyValue | None, floor: int, deadline: float) -> int | None:
        """The revision at which `op` (guarded by `probe`) was applied, None if it was not."""
        if probe.revision:
            # Only the first change after the compared revision can be ours.
            candidates = [ev for ev, _ in self._key_history(probe.key, probe.revision + 1, None, deadline)[:1]]
        else:
            if now is None or now.create_revision <= floor:
                return None  # the key existed throughout: our create-if-absent lost
            # Any creation of the key since `floor` may be ours.
            history = self._key_history(probe.key, floor + 1, now.create_revision, deadline)
            candidates = [ev for ev, created in history if ev.kind == "put" and created == ev.mod_revision]
        for ev in candidates:
            if isinstance(op, Put) and ev.kind == "put" and ev.value == op.value:
                return ev.mod_revision
            if isinstance(op, Delete) and ev.kind == "delete":
                return ev.mod_revision
        return None

    def _reads_at(self, ops: Sequence[Op], revision: int, deadline: float) -> tuple[tuple[KeyValue, ...], ...]:
        """The Gets of a branch applied at `revision` whose answer was lost, read again at that
        revision (so they see exactly what the transaction saw)."""
        out = []
        for op in ops:
            if not isinstance(op, Get):
                continue
            try:
                doc = self._call("/v3/kv/range", dict(_range(op), revision=str(revision)), deadline)
            except _EtcdError as e:
                raise DatastoreError(
                    f"etcd applied a transaction at revision {revision} but its reads are lost: {e}",
                    "read the keys again") from None
            out.append(tuple(_kv(raw) for raw in doc.get("kvs") or []))
        return tuple(out)

    def _get_for_settle(self, key: str, deadline: float) -> KeyValue | None:
        try:
            doc = self._call("/v3/kv/range", {"key": _b64key(key)}, deadline)
        except _EtcdError as e:
            raise DatastoreUnavailable(str(e)) from None
        kvs = doc.get("kvs") or []
        return _kv(kvs[0]) if kvs else None

    def _key_history(self, key: str, start: int, until: int | None, deadline: float) -> List[tuple[Event, int]]:
        """Changes of one key from `start`: the first one (until=None) or all up to revision `until`."""
        errors: dict[str, str] = {}
        for index in self._transport.order() * 2:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            ep = str(self._transport.endpoints[index])
            try:
                stream = _WatchStream(self._transport, index, {"key": _b64key(key), "start_revision": str(start)},
                                      self._attempt_timeout(remaining))
            except (_NotSent, _NoAnswer) as e:
                errors[ep] = str(e)
                continue
            out: List[tuple[Event, int]] = []
            try:
                for msg in stream.messages():
                    result = msg.get("result") or {}
                    if _int(result, "compact_revision"):
                        raise CompactedError(start, _int(result, "compact_revision") - 1)
                    for raw in result.get("events") or []:
                        out.append(_event(raw))
                    if out and (until is None or out[-1][0].mod_revision >= until):
                        return out
                    if "error" in msg or result.get("canceled"):
                        raise _NoAnswer(f"{ep}: watch ended: {msg}")
            except _NoAnswer as e:
                errors[ep] = str(e)
            finally:
                stream.close()
        raise self._unavailable(errors)

    # Liveness: an etcd lease, renewed by keep_alive; etcd deletes the key when it runs out. ---------

    def keep_alive(self, key: str, value: bytes, ttl: float) -> None:
        lease = self._leases.get(key)
        if lease is not None:
            answer = self._lease_request("/v3/lease/keepalive", {"ID": str(lease)})
            if _int(answer.get("result", answer), "TTL") <= 0:
                lease = None  # it ran out (we were cut off too long): the key is gone, start over
            else:
                kv = (self._request("/v3/kv/range", {"key": _b64key(key)}).get("kvs") or [None])[0]
                if kv and _int(kv, "lease") == lease and base64.b64decode(kv.get("value", "")) == value:
                    return
        if lease is None:
            lease = _int(self._lease_request("/v3/lease/grant", {"TTL": str(max(2, math.ceil(ttl)))}), "ID")
        self._request("/v3/kv/put", {"key": _b64key(key), "value": _b64(value), "lease": str(lease)})
        self._leases[key] = lease

    def end_liveness(self, key: str) -> None:
        lease = self._leases.pop(key, None)
        if lease is not None:
            try:
                self._lease_request("/v3/lease/revoke", {"ID": str(lease)})  # deletes the key with it
            except DatastoreError:
                pass  # expired already
        self.delete(key)

    def live(self, prefix: str) -> dict[str, Liveness]:
        out = {}
        for raw in self._request("/v3/kv/range", {"key": _b64key(prefix), "range_end": _b64key(prefix_end(prefix))}
                                 ).get("kvs") or []:
            lease = _int(raw, "lease")
            if not lease:
                continue  # written without a lease: not a liveness record
            left = _int(self._lease_request("/v3/lease/timetolive", {"ID": str(lease)}), "TTL")
            if left > 0:
                kv = _kv(raw)
                out[kv.key] = Liveness(kv.key, kv.value, float(left))
        return out

    def _lease_request(self, path: str, body: dict) -> dict:
        try:
            return self._request(path, body)
        except DatastoreError as e:
            if "lease not found" in str(e):
                return {"TTL": "0"}
            raise

    def compact(self, upto: int) -> None:
        """Drop change history up to and including revision `upto` (as SqliteDatastore.compact).

        etcd's compaction at revision R keeps R, so this compacts at upto + 1, or at
        the current revision if that is lower (etcd cannot compact the future)."""
        if upto < 1:
            return
        target = min(upto + 1, self.revision())
        try:
            self._call("/v3/kv/compaction", {"revision": str(target), "physical": True})
        except _EtcdError as e:
            if not e.compacted:  # compacted already (at least that far): nothing to do
                raise DatastoreError(f"etcd refused to compact at {target}: {e}") from None

    # Watches -----------------------------------------------------------

    def watch(self, prefix: str, start_revision: int) -> Watch:
        if self._closed:
            raise DatastoreError("the etcd datastore was closed")
        w = _EtcdWatch(self, prefix, start_revision)
        self._watches.add(w)
        return w


_CLOSED = object()  # wakes next_events() when the watch is closed


class _EtcdWatch(Watch):
    def __init__(self, store: EtcdDatastore, prefix: str, start_revision: int):
        self._store = store
        self._prefix = prefix
        self._request = {"key": _b64key(prefix or "\0"), "range_end": _b64key(prefix_end(prefix))}
        self._next = max(1, start_revision)  # etcd reads start 0 as "from now"; the contract means "from the start"
        self._queue: queue.Queue[Any] = queue.Queue()
        self._closed = threading.Event()
        self._stream: _WatchStream | None = None
        self._stream_lock = threading.Lock()
        self._error: DatastoreError | None = None
        self._connected = False  # the current stream was accepted ("created")
        self._thread = threading.Thread(target=self._run, name=f"etcd watch {prefix}", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"<etcd watch {self._prefix!r} from revision {self._next}>"

    def next_events(self, timeout: float | None = None) -> list[Event]:
        if self._error is not None:
            raise self._error
        if self._closed.is_set():
            return []
        try:
            item = self._queue.get(timeout=None if timeout is None else max(0.0, timeout))
        except queue.Empty:
            return []
        events: list[Event] = []
        while item is not _CLOSED:
            if isinstance(item, DatastoreError):
                self._error = item  # raised now if nothing came before it, else on the next call
                break
            events.extend(item)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
        if not events and self._error is not None:
            raise self._error
        return events

    def drop_stream(self) -> None:
        """Break the current stream; the watch thread reconnects and resumes from the next revision."""
        with self._stream_lock:
            stream = self._stream
        if stream is not None:
            stream.close()

    def close(self) -> None:
        self._closed.set()
        with self._stream_lock:
            stream = self._stream
        if stream is not None:
            stream.close()
        self._queue.put(_CLOSED)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)

    # The background thread -------------------------------------------------

    def _run(self) -> None:
        try:
            self._follow()
        except DatastoreError as e:
            if not self._closed.is_set():
                self._queue.put(e)
        except Exception as e:  # a bug: report it instead of hanging the reader forever
            self._queue.put(DatastoreError(f"the etcd watch of {self._prefix!r} failed: {e!r}"))

    def _follow(self) -> None:
        transport = self._store._transport
        n = len(transport.endpoints)
        errors: dict[str, str] = {}
        failures = 0
        down_since: float | None = None
        delay = _BACKOFF_FIRST
        order = transport.order()
        while not self._closed.is_set():
            index = order[failures % n]
            ep = str(transport.endpoints[index])
            try:
                self._stream_once(index)  # returns only when closed
                return
            except (_NotSent, _NoAnswer) as e:
                if self._closed.is_set():
                    return
                if self._connected:
                    # The stream had worked: start a fresh round of endpoints, from the next one.
                    self._connected = False
                    failures, delay, errors = 0, _BACKOFF_FIRST, {}
                    down_since = time.monotonic()
                    transport.demote(index)
                    order = transport.order()
                    continue
                errors[ep] = str(e).removeprefix(ep + ": ")
                transport.demote(index)
                down_since = down_since or time.monotonic()
                if time.monotonic() - down_since >= self._store.timeout:
                    what = f"lost the watch of {self._prefix!r} and could not resume it"
                    raise self._store._unavailable(errors, what) from None
                failures += 1
                if failures % n == 0:
                    self._closed.wait(delay * random.uniform(0.5, 1.0))
                    delay = min(delay * 2, _BACKOFF_MAX)
                    order = transport.order()

    def _stream_once(self, index: int) -> None:
        request = dict(self._request, start_revision=str(self._next))
        stream = _WatchStream(self._store._transport, index, request, self._store.timeout)
        with self._stream_lock:
            if self._closed.is_set():
                stream.close()
                return
            self._stream = stream
        try:
            stream.set_timeout(None)  # an idle watch is silent for as long as nothing changes
            for msg in stream.messages():
                if self._closed.is_set():
                    return
                self._handle(msg, stream.endpoint)
        finally:
            with self._stream_lock:
                self._stream = None
            stream.close()

    def _handle(self, msg: dict, endpoint: Endpoint) -> None:
        if "error" in msg:  # the gateway's report of a broken stream
            raise _NoAnswer(f"{endpoint}: watch failed: {msg['error']}")
        result = msg.get("result") or {}
        compacted = _int(result, "compact_revision")
        if compacted:
            raise CompactedError(self._next, compacted - 1)
        if result.get("canceled"):
            reason = result.get("cancel_reason") or "no reason given"
            raise DatastoreError(f"etcd at {endpoint} cancelled the watch of {self._prefix!r}: {reason}")
        if result.get("created"):
            self._connected = True
        events = [ev for ev, _ in map(_event, result.get("events") or [])]
        # After a reconnect etcd starts at self._next; never hand out a revision twice.
        events = [ev for ev in events if ev.mod_revision >= self._next]
        if events:
            self._next = events[-1].mod_revision + 1
            self._queue.put(events)


# Configuration helpers -----------------------------------------------------


def _parse_endpoint(item: str, default_scheme: str) -> Endpoint:
    text = item if "://" in item else f"{default_scheme}://{item}"
    try:
        parts = urlsplit(text)
        port = parts.port or DEFAULT_PORT
    except ValueError as e:
        raise DatastoreError(f"bad etcd endpoint {item!r}: {e}") from None
    scheme = _SCHEMES.get(parts.scheme)
    if scheme is None or not parts.hostname:
        raise DatastoreError(f"bad etcd endpoint {item!r}", "use host:port, http://host:port or https://host:port")
    return Endpoint(scheme, parts.hostname, port)


def _ssl_context(cert_file: str | None, key_file: str | None, ca_file: str | None) -> ssl.SSLContext:
    try:
        ctx = ssl.create_default_context(cafile=ca_file)
        if cert_file:
            ctx.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as e:
        raise DatastoreError(
            f"cannot load the etcd TLS files (cert {cert_file}, key {key_file}, CA {ca_file}): {_describe(e)}",
            "check the paths and that the key matches the certificate",
        ) from None
    return ctx
