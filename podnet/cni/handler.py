"""CNI ADD, DEL, CHECK, GC and STATUS as the agent runs them for the plugin executable.

Every failure becomes the spec's error JSON with a code that tells the runtime
what to do: 11 (try again later) when the datastore is busy or away, 3 when
the container's namespace is gone, 4/6/7 for bad input, 50 when STATUS finds
the node cannot serve ADD, 100+ for podnet's own (codes: protocol.py).
Whatever ADD took (an address, a veth pair, an endpoint record) is given back
when a later step fails.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import threading
import time
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Callable

from podnet.cni import protocol as p
from podnet.cni import requestlog
from podnet.cni.protocol import CniError, Request
from podnet.dataplane import conntrack, pod, rtnl
from podnet import netns as ns
from podnet.netns import NamespaceError, NamespaceNotFound
from podnet.cni import wire
from podnet.datastore.api import DatastoreError, DatastoreUnavailable
from podnet.datastore.resources import Resources
from podnet.errors import PodnetError
from podnet.ipam import AddressUnavailable, Ipam, IpamConflict, NodeNotRegistered, NoUsablePool, PoolExhausted
from podnet.model import WorkloadEndpoint
from podnet.model.endpoint import POD_HANDLE_PREFIX, explained_handles, host_veth_names, ipam_handle

log = logging.getLogger(__name__)


@dataclass
class NodeContext:
    """What a CNI request needs from the agent: warm connections and node facts."""

    node: str
    resources: Resources
    ipam: Ipam
    host: rtnl.RtnlSocket
    pod_mtu: Callable[[], int]
    ready: Callable[[], bool]
    ipam_lock: threading.Lock
    metrics: object | None = None  # AgentMetrics: observe_cni(command, ok, seconds), observe_ipam(ok)
    workers: Executor | None = None  # overlaps an ADD's IPAM with its kernel work; None: one after the other
    fenced: Callable[[], str | None] | None = None  # why this node may serve no ADD (deleted), else None
    # The node's own network namespaces (st_dev, st_ino), never a pod's: see resolve_netns.
    node_netns: frozenset = dataclasses.field(default_factory=ns.node_namespaces)


def handle(ctx: NodeContext, env: dict[str, str], stdin: bytes, netns: "GivenNetns | None" = None,
           peer_pid: int | None = None, deadline: float | None = None) -> tuple[int, bytes]:
    """Run one CNI request; returns (exit code, stdout). Never raises.

    netns: CNI_NETNS as the plugin resolved it (wire.py); the descriptor stays the caller's. None (for
    callers in this process, such as tests): resolved here by the plugin's rule. peer_pid: the
    plugin's process, whose network namespace (the runtime's) is never a pod's. deadline: time.monotonic()
    by which the request should be answered (waits for other requests end there)."""
    started = time.perf_counter()
    command = env.get("CNI_COMMAND", "?")
    req = None
    opened = None
    try:
        req = p.parse_request(env, stdin)
        req.deadline = deadline
        if req.command in NETNS_COMMANDS:
            if netns is None:
                netns = opened = GivenNetns.resolve(req.netns)
            req.netns_fd = resolve_netns(ctx, req, netns, peer_pid)
        out = _dispatch(ctx, req)
        code, body = 0, (json.dumps(out).encode() if out is not None else b"")
    except Exception as e:
        err = e if isinstance(e, CniError) else _as_cni_error(e)
        code, body = 1, json.dumps(err.to_json(p.version_of(stdin))).encode()
        if err.code == p.INTERNAL:
            log.exception("CNI %s %s failed unexpectedly", command, env.get("CNI_CONTAINERID", ""))
        else:
            log.warning("CNI %s %s failed: %s", command, env.get("CNI_CONTAINERID", ""), err)
    finally:
        if opened is not None:
            opened.close()
    if req is not None and req.config.get("log_file_path"):
        _record(req, code, body, time.perf_counter() - started)
    if ctx.metrics is not None:
        ctx.metrics.observe_cni(command, code == 0, time.perf_counter() - started)
    log.debug("CNI %s %s took %.1f ms", command, env.get("CNI_CONTAINERID", ""),
              (time.perf_counter() - started) * 1e3)
    return code, body


def _record(req: Request, code: int, body: bytes, seconds: float) -> None:
    """The request in the config's log file (Calico's log_file_path), at its log_level."""
    who = f"{req.command} {req.container_id} {req.pod_namespace}/{req.pod_name} {req.ifname}".rstrip(" /")
    if requestlog.wants(req.config, logging.DEBUG):
        requestlog.record(req.config, logging.DEBUG, f"{who}: network configuration {req.raw_config.decode(errors='replace')}")
    level = logging.INFO if code == 0 else logging.ERROR
    requestlog.record(req.config, level, f"{who}: {'ok' if code == 0 else 'failed'} in {seconds * 1e3:.1f} ms: "
                                         f"{body.decode(errors='replace') or '(no output)'}")


def _as_cni_error(e: Exception) -> CniError:
    if isinstance(e, (DatastoreUnavailable, IpamConflict)):
        return CniError(p.TRY_AGAIN_LATER, str(e.message), "the datastore is busy or unreachable; retry")
    if isinstance(e, NodeNotRegistered):
        return CniError(p.NODE_NOT_REGISTERED, e.message, e.hint or "")
    if isinstance(e, AddressUnavailable):
        return CniError(p.IPAM_EXHAUSTED, e.message, e.hint or "")
    if isinstance(e, (PoolExhausted, NoUsablePool)):
        return CniError(p.IPAM_EXHAUSTED, e.message, e.hint or "")
    if isinstance(e, NamespaceNotFound):
        return CniError(p.CONTAINER_UNKNOWN, e.message)
    if isinstance(e, pod.InterfaceExists):
        return CniError(p.INTERFACE_EXISTS, e.message)
    if isinstance(e, (rtnl.NetlinkError, pod.AttachError, NamespaceError)):
        return CniError(p.DATAPLANE_FAILURE, str(e))
    if isinstance(e, PodnetError):
        return CniError(p.INTERNAL, str(e))
    return CniError(p.INTERNAL, f"internal error: {type(e).__name__}: {e}", "see the podnet agent's log")


def _dispatch(ctx: NodeContext, req: Request):
    if req.command == "VERSION":
        return p.version_result(req.config.get("cniVersion") or p.LATEST)
    _check_agreement(ctx, req)
    if req.command == "ADD":
        return add(ctx, req)
    if req.command == "DEL":
        delete(ctx, req)
    elif req.command == "CHECK":
        check(ctx, req)
    elif req.command == "GC":
        gc(ctx, req)
    elif req.command == "STATUS":
        status(ctx, req)
    return None


# What the config says about the node and the datastore ------------------------------------------------

_warned: set[tuple[str, str]] = set()


def _check_agreement(ctx: NodeContext, req: Request) -> None:
    """The config's node and datastore (Calico's nodename, nodename_file, datastore_type, etcd_*; podnet's
    datastore) must be this agent's: the agent, not the plugin, decides both. A disagreement fails ADD,
    CHECK and STATUS (the pod would be recorded where the config's owner does not look); DEL and GC go on,
    as they must, and it is logged. Warnings go to the agent's log once per network, and to the config's
    log file."""
    problem = None
    named = req.nodename() or _nodename_from_file(req.config)
    if named and named != ctx.node:
        problem = (f"the config's nodename {named!r} is not this node's agent's node {ctx.node!r}",
                   "set nodename to the name the agent registered (podnet get nodes)")
    if problem is None:
        disagreement, warnings = p.datastore_disagreement(req.config, store_facts(ctx.resources.store))
        if disagreement:
            problem = (disagreement, "the plugin's requests are served by this node's agent and its datastore; "
                                     "make the config name the same datastore, or remove the datastore fields")
        for w in warnings:
            requestlog.record(req.config, logging.WARNING, w)
            if (req.network, w) not in _warned:
                _warned.add((req.network, w))
                log.warning("network %s: %s", req.network, w)
    if problem is None:
        return
    if req.command in ("ADD", "CHECK", "STATUS"):
        raise CniError(p.INVALID_CONFIG, *problem)
    log.warning("CNI %s %s: %s", req.command, req.container_id, problem[0])


def _nodename_from_file(config: dict) -> str | None:
    """Calico's nodename_file (written by calico/node): its contents name the node when nodename is absent.
    A missing file is an error unless nodename_file_optional is true."""
    path = config.get("nodename_file")
    if not path:
        return None
    try:
        with open(path) as f:
            return f.read().strip() or None
    except OSError as e:
        if config.get("nodename_file_optional"):
            return None
        raise CniError(p.INVALID_CONFIG, f"cannot read nodename_file {path}: {e.strerror}",
                       "set nodename_file_optional to true, or name the node with nodename") from None


def store_facts(store) -> p.StoreFacts:
    """What the agent's datastore is, in the terms a network configuration names one."""
    endpoints = getattr(store, "endpoints", None)
    if endpoints is not None:
        return p.StoreFacts("etcd", endpoints=tuple(endpoints),
                            client_cert=bool(getattr(store, "client_certificate", False)))
    return p.StoreFacts("sqlite", path=str(getattr(store, "path", "")))
# The pod's namespace ------------------------------------------------------------------------------------

NETNS_COMMANDS = ("ADD", "DEL", "CHECK")


@dataclass
class GivenNetns:
    """CNI_NETNS as the plugin resolved it in the runtime's mount namespace: a wire.py token and, for
    "fd", the descriptor it sent."""

    token: str
    fd: int | None = None

    @classmethod
    def resolve(cls, path: str) -> "GivenNetns":
        """The plugin's rule (wire.py, steps 1-5), applied in this process: for callers that run
        requests in-process (tests). close() the result."""
        if not path:
            return cls(wire.NETNS_UNSET)
        if not path.startswith("/"):
            return cls(wire.NETNS_RELATIVE)
        try:
            return cls(wire.NETNS_FD, ns.open_namespace_file(path))
        except ns.NotANamespace as e:
            return cls(wire.NETNS_NOT_NSFS + e.kind)
        except NamespaceNotFound:
            return cls(f"{wire.NETNS_ERRNO}{errno.ENOENT}")
        except NamespaceError:
            return cls(f"{wire.NETNS_ERRNO}{errno.EACCES}")

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def resolve_netns(ctx: NodeContext, req: Request, given: GivenNetns, peer_pid: int | None = None) -> ns.NetnsFd | None:
    """The pod's network namespace for ADD, DEL and CHECK alike, or the spec error that refuses it.

    One rule for the three commands: CNI_NETNS is an absolute path (the spec says a path; a bare
    name is not looked up in /run/netns, by any command). The descriptor the plugin opened is used,
    never the path. DEL is best effort: an unset CNI_NETNS, or a path that no longer holds a
    namespace (gone, or the file left where it was mounted), gives None, and DEL cleans the host side.

    Code 4 (invalid environment variables), not 7, for every namespace refused here: what is wrong is
    the value of the variable CNI_NETNS, not the network configuration, and the spec's 4 names the
    variable in its message. That includes a namespace of the node itself (the agent's own, the
    runtime's, PID 1's): ADD would turn the node into the pod (its default route, its addresses) and
    DEL would delete the node's CNI_IFNAME, so the request is refused before anything is looked at.
    3 (container unknown) only when the path does not exist for ADD and CHECK: nothing to clean up.
    """
    path, token, delete = req.netns, given.token, req.command == "DEL"
    if token == wire.NETNS_UNSET:
        if delete:
            return None
        raise CniError(p.INVALID_ENVIRONMENT, f"CNI_NETNS is required for {req.command} but is not set")
    if token == wire.NETNS_RELATIVE:
        raise CniError(p.INVALID_ENVIRONMENT, f"CNI_NETNS {path!r} is not an absolute path",
                       "give the path of the network namespace, e.g. /run/netns/<name>; names are not looked up")
    if token.startswith(wire.NETNS_ERRNO):
        number = token[len(wire.NETNS_ERRNO):]
        code = int(number) if number.isdigit() else 0
        if code in (errno.ENOENT, errno.ENOTDIR):
            if delete:
                return None
            raise CniError(p.CONTAINER_UNKNOWN, f"CNI_NETNS: network namespace {path} does not exist",
                           "the sandbox's network namespace is gone")
        raise CniError(p.INVALID_ENVIRONMENT, f"CNI_NETNS {path} cannot be opened: "
                                              f"{os.strerror(code) if code else token}")
    if token.startswith(wire.NETNS_NOT_NSFS):
        if delete:
            return None
        kind = token[len(wire.NETNS_NOT_NSFS):]
        raise CniError(p.INVALID_ENVIRONMENT, f"CNI_NETNS {path} is not a network namespace",
                       f"it is a {_FILE_KINDS.get(kind, kind)}; give the path of a network namespace, "
                       "e.g. /run/netns/<name> or /proc/<pid>/ns/net")
    if token != wire.NETNS_FD or given.fd is None:
        raise CniError(p.INVALID_ENVIRONMENT, f"the plugin resolved CNI_NETNS {path} as {token!r}, which "
                                              "this agent does not understand", "run `podnet install-cni` again")
    kind = ns.namespace_type(given.fd)
    if kind != "network":
        raise CniError(p.INVALID_ENVIRONMENT, f"CNI_NETNS {path} is not a network namespace",
                       f"it is a {kind} namespace" if kind else "it is not a namespace file")
    node_netns = ctx.node_netns
    if peer_pid:
        node_netns = node_netns | {ns.identity(f"/proc/{peer_pid}/ns/net")}
    if ns.identity(given.fd) in node_netns:
        raise CniError(p.INVALID_ENVIRONMENT, f"CNI_NETNS {path} is the node's own network namespace",
                       f"podnet never {'deletes' if delete else 'configures'} anything in the node's namespace; "
                       "give the pod sandbox's namespace")
    return ns.NetnsFd(given.fd, path)


_FILE_KINDS = {"regular": "regular file", "char": "character device", "block": "block device",
               "fifo": "FIFO", "other": "special file"}


# ADD --------------------------------------------------------------------------------------------------


def add(ctx: NodeContext, req: Request) -> dict:
    if not ctx.ready():
        raise CniError(p.TRY_AGAIN_LATER, "the podnet agent on this node is still starting", "retry in a moment")
    _refuse_if_fenced(ctx, p.NODE_NOT_REGISTERED)
    return _add(ctx, req, req.netns_fd)


def _add(ctx: NodeContext, req: Request, netns_fd: int) -> dict:
    # The host end's name: the first free one of the candidates (Calico's name first, unless an older
    # sandbox of the pod still holds it). The record is written with it before the pair exists (they
    # are made at the same time), and corrected in the rare case that a racing ADD took it meanwhile.
    host_ifnames = pod.free_names_first(
        ctx.host, list(host_veth_names(req.pod_namespace, req.pod_name, req.container_id, req.ifname)))
    handle = ipam_handle(req.container_id, req.ifname)
    mtu = req.config.get("mtu") or ctx.pod_mtu()
    attrs = {
        "node": ctx.node,
        "namespace": req.pod_namespace,
        "pod": req.pod_name,
        "container": req.container_id,
        "interface": req.ifname,
        "network": req.network,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    # The datastore work (addresses, then the endpoint record) runs on a worker while this
    # thread creates the veth pair, which needs no address; they meet at pair.address().
    pod_mac = pod.random_mac()
    endpoint = WorkloadEndpoint(
        node=ctx.node,
        container_id=req.container_id,
        interface=req.ifname,
        host_interface=host_ifnames[0],
        ips=(),
        mac=pod_mac,
        netns=req.netns,
        pod_namespace=req.pod_namespace,
        pod_name=req.pod_name,
        network=req.network,
    )
    booked = _submit(ctx, _allocate_and_record, ctx, req, handle, attrs, endpoint)
    pair = None
    try:
        pair = pod.create_pair(ctx.host, netns_fd, req.ifname, host_ifnames, mtu, req.assigns(4), req.assigns(6),
                               pod_mac=pod_mac, owner=endpoint.owner_mark)
        recorded = booked.result()
        if pair.host_ifname != recorded.endpoint.host_interface:
            _rename_recorded(ctx, recorded, pair.host_ifname)
        ipv4 = next((ip for ip in recorded.ips if ":" not in ip), None)
        ipv6 = next((ip for ip in recorded.ips if ":" in ip), None)
        attached = pair.address(ipv4, ipv6)
    except BaseException:
        # Give back what this ADD took, and only that, whatever failed: the pair by its index,
        # the addresses it was given, the record it created (if still the one it wrote).
        if pair is not None:
            pair.remove()
        recorded = _settled_value(booked)
        if recorded is not None:
            _forget_endpoint_quietly(ctx, recorded)
            for ip in recorded.ips:
                _release_quietly(ctx, ip)
        raise
    finally:
        if pair is not None:
            pair.close()
    result = p.Result(
        host_ifname=pair.host_ifname,
        host_mac=pod.HOST_MAC,
        pod_ifname=req.ifname,
        pod_mac=attached.pod_mac,
        sandbox=req.netns,
        mtu=mtu,
        ips=list(attached.ips),
        routes=([{"dst": "0.0.0.0/0", "gw": pod.GATEWAY_V4}] if ipv4 else [])
        + ([{"dst": "::/0", "gw": pod.GATEWAY_V6}] if ipv6 else []),
        dns=req.config.get("dns") or {},
    )
    return result.to_json(req.version)


@dataclass
class _Recorded:
    """What an ADD's worker took: its addresses and the endpoint record it created (at revision)."""

    ips: list[str]
    endpoint: WorkloadEndpoint
    revision: int


def _rename_recorded(ctx: NodeContext, recorded: _Recorded, host_ifname: str) -> None:
    """The host end got another name than the record's first guess: record the one it has."""
    renamed = dataclasses.replace(recorded.endpoint, host_interface=host_ifname)
    revision = ctx.resources.replace_endpoint(renamed, recorded.revision)
    if not revision:
        raise CniError(p.TRY_AGAIN_LATER, f"the endpoint of {renamed.container_id} {renamed.interface} "
                                          "changed while it was being added", "a DEL ran at the same time; retry")
    recorded.endpoint, recorded.revision = renamed, revision


def _duplicate(req: Request) -> CniError:
    return CniError(p.INTERFACE_EXISTS,
                    f"container {req.container_id} already has interface {req.ifname} attached by podnet",
                    "an attachment is added once; DEL it before adding it again")


@contextlib.contextmanager
def _within_deadline(lock: threading.Lock, req: Request):
    """Hold lock, waiting no later than the request's deadline (wire.REQUEST_DEADLINE): behind allocators
    stuck on a slow datastore, a request answers 11 in time rather than wait on past the plugin's timeout."""
    wait = -1 if req.deadline is None else max(0.0, req.deadline - time.monotonic())
    if not lock.acquire(timeout=wait):
        raise CniError(p.TRY_AGAIN_LATER, "the podnet agent could not start this request's address allocation "
                                          "in time", "other allocations on this node are slow (the datastore?); retry")
    try:
        yield
    finally:
        lock.release()


def _allocate(ctx: NodeContext, req: Request, handle: str, attrs: dict) -> list[str]:
    """The ADD's addresses, one per family asked for. A failure releases what was taken before it."""
    taken: list[str] = []
    try:
        with _within_deadline(ctx.ipam_lock, req):  # one allocator per node at a time; CAS guards others
            fixed = req.fixed_ips()  # asked-for addresses replace automatic assignment, as in Calico
            for version, pools in ((4, req.ipv4_pools), (6, req.ipv6_pools)):
                if version in fixed:
                    taken.append(ctx.ipam.assign_ip(fixed[version], ctx.node, handle, attrs))
                elif req.assigns(version):
                    taken.append(ctx.ipam.auto_assign(ctx.node, handle, attrs, version, pools()))
    except BaseException:
        if ctx.metrics is not None:
            ctx.metrics.observe_ipam(False)
        for ip in taken:
            _release_quietly(ctx, ip)
        raise
    if ctx.metrics is not None:
        ctx.metrics.observe_ipam(True)
    return taken


def _allocate_and_record(ctx: NodeContext, req: Request, handle: str, attrs: dict,
                         endpoint: WorkloadEndpoint) -> _Recorded:
    """The ADD's addresses, then its endpoint record holding them; all or nothing. An attachment
    that is already recorded is refused before anything is taken; the record is only created
    where none exists, so two ADDs of one attachment cannot both succeed."""
    if ctx.resources.endpoint_of(ctx.node, req.container_id, req.ifname) is not None:
        raise _duplicate(req)
    taken = _allocate(ctx, req, handle, attrs)
    recorded = dataclasses.replace(endpoint, ips=tuple(f"{ip}/{128 if ':' in ip else 32}" for ip in taken))
    try:
        revision = ctx.resources.create_endpoint(recorded)
        if not revision:
            raise _duplicate(req)
    except BaseException:
        for ip in taken:
            _release_quietly(ctx, ip)
        raise
    return _Recorded(taken, recorded, revision)


def _submit(ctx: NodeContext, fn: Callable, *args) -> Future:
    """Run fn on the context's workers, or here and now when it has none."""
    if ctx.workers is not None:
        return ctx.workers.submit(fn, *args)
    done: Future = Future()
    try:
        done.set_result(fn(*args))
    except BaseException as e:  # noqa: BLE001 - handed to whoever reads the future
        done.set_exception(e)
    return done


def _settled_value(future: Future):
    """Wait for future; its value, or None when it failed."""
    try:
        return future.result()
    except BaseException:  # noqa: BLE001
        return None


def _forget_endpoint_quietly(ctx: NodeContext, recorded: _Recorded) -> None:
    """Delete the record this ADD created, if it is still the one it wrote."""
    key_name = recorded.endpoint.key_name
    try:
        ctx.resources.delete_endpoint(ctx.node, key_name, recorded.revision)
    except Exception:
        log.exception("could not delete endpoint %s after a failed ADD; CNI GC will", key_name)


def _release_quietly(ctx: NodeContext, ip: str) -> None:
    try:
        ctx.ipam.release_ip(ip)
    except Exception:
        log.exception("could not release %s after a failed ADD; `podnet ipam check` will find it", ip)


# DEL --------------------------------------------------------------------------------------------------


def delete(ctx: NodeContext, req: Request) -> None:
    """Undo ADD of (container, interface). Idempotent: what is already gone is success; prevResult
    is not needed. Only what that attachment's endpoint record names, verified in the kernel
    (pod.detach), is removed: never an interface because of its name, never another container's
    or another sandbox's, also when no record exists (a DEL after a failed ADD). The addresses go
    by the attachment's own IPAM handle."""
    ep = ctx.resources.endpoint_of(ctx.node, req.container_id, req.ifname)
    handle = ipam_handle(req.container_id, req.ifname)
    if ep is not None:
        # req.netns_fd is None when the sandbox is already gone: then only the host side is cleaned.
        pod.detach(ctx.host, ep.host_interface, ep.owner_mark, ep.mac, req.netns_fd, req.ifname)
    # The pod is gone from the wire; its flows' conntrack entries go before its addresses can be
    # another pod's (dataplane/conntrack.py). Never a reason for DEL to fail.
    try:
        addresses = [ip.split("/")[0] for ip in ep.ips] if ep is not None else ctx.ipam.ips_by_handle(handle)
        conntrack.forget(addresses)
    except Exception as e:  # noqa: BLE001 - logged: they time out (UDP in minutes, TCP in days)
        log.warning("CNI DEL %s: its conntrack entries stay until they time out: %s", req.container_id, e)
    ctx.ipam.release_handle(handle)
    if ep is not None:
        ctx.resources.delete_endpoint(ctx.node, ep.key_name, ep.revision)


# CHECK ------------------------------------------------------------------------------------------------


def check(ctx: NodeContext, req: Request) -> None:
    """Compare the attachment with prevResult (the chain's final result) and with what ADD programmed."""
    prev = req.prev_result
    ep = ctx.resources.endpoint_of(ctx.node, req.container_id, req.ifname)
    if ep is None:
        raise CniError(p.CHECK_FAILED, f"podnet has no endpoint for container {req.container_id} {req.ifname}")
    prev_ips = sorted(ip["address"] for ip in prev.get("ips", []))
    if prev_ips and prev_ips != sorted(ep.ips):
        raise CniError(p.CHECK_FAILED, f"prevResult has {prev_ips} but the endpoint holds {sorted(ep.ips)}")
    names = {i["name"] for i in prev.get("interfaces", [])}
    missing = [n for n in (ep.host_interface, req.ifname) if names and n not in names]
    if missing:
        raise CniError(p.CHECK_FAILED, f"prevResult does not list interface {', '.join(missing)}")
    if not ctx.ipam.ips_by_handle(ep.handle):
        raise CniError(p.CHECK_FAILED, f"the address of {req.container_id} is no longer reserved in IPAM",
                       "it was released behind the runtime's back; recreate the pod")
    ipv4 = next((c.split("/")[0] for c in ep.ips if ":" not in c), None)
    ipv6 = next((c.split("/")[0] for c in ep.ips if ":" in c), None)
    problems = pod.inspect(ctx.host, req.netns_fd, ep.host_interface, req.ifname, ipv4, ipv6,
                           owner=None if ep.legacy else ep.owner_mark, pod_mac=ep.mac or None)
    if problems:
        raise CniError(p.CHECK_FAILED, "; ".join(problems))


def _refuse_if_fenced(ctx: NodeContext, code: int) -> None:
    why = ctx.fenced() if ctx.fenced else None
    if why:
        raise CniError(code, why, "restart the node's podnet agent to join the cluster again")


# STATUS -----------------------------------------------------------------------------------------------


def status(ctx: NodeContext, req: Request) -> None:
    """Ready when the agent is in sync, the datastore answers and a pool this network uses has room."""
    if not ctx.ready():
        raise CniError(p.STATUS_NOT_READY, "the podnet agent on this node is still starting",
                       "it has not finished reading the datastore")
    _refuse_if_fenced(ctx, p.STATUS_NOT_READY_PERSISTENT)
    try:
        pools = ctx.ipam.usable_pools(4, req.ipv4_pools(), node=ctx.node)
        if not _has_room(ctx, pools):
            raise CniError(p.STATUS_NOT_READY,
                           f"no IPv4 address left for node {ctx.node} in pools {', '.join(x.name for x in pools)}",
                           "add a pool or release unused addresses (podnet ipam show)")
    except NoUsablePool as e:
        raise CniError(p.STATUS_NOT_READY, e.message, e.hint or "") from None
    except DatastoreUnavailable as e:
        raise CniError(p.STATUS_NOT_READY, "the datastore does not answer", str(e)) from None
    except DatastoreError as e:
        raise CniError(p.STATUS_NOT_READY, "the datastore refused a read", str(e)) from None


def _has_room(ctx: NodeContext, pools) -> bool:
    """Whether ADD could get an address, as auto_assign looks for one: a free address in the node's own
    blocks, else a block it may still claim, else (without strict affinity) one to borrow."""
    networks = [pool.network for pool in pools]
    config = ctx.ipam.config()
    blocks = ctx.ipam.blocks(4)
    in_pools = [b for b in blocks if any(b.network.subnet_of(n) for n in networks)]
    if any(b.free for b in in_pools if b.node == ctx.node):
        return True
    limit = config.max_blocks_per_host
    if not (limit and sum(b.node == ctx.node for b in blocks) >= limit):
        claimed = {b.cidr for b in blocks}
        if any(str(net) not in claimed for pool in pools for net in pool.blocks()):
            return True
    return not config.strict_affinity and any(b.free for b in in_pools)


# GC ---------------------------------------------------------------------------------------------------


def gc(ctx: NodeContext, req: Request) -> None:
    """Remove this node's attachments of this network that the runtime no longer holds.

    For each stale workload endpoint (this node, endpoint.network == the config's name, not in
    cni.dev/valid-attachments): its veth pair (only the one carrying its owner mark), its addresses, its
    record. Then reservations with a pod handle (k8s-pod-network.…) on this node that neither an endpoint
    nor a valid attachment explains (an ADD that died halfway).
    Other handles, such as the node's tunnel address, are never touched. The spec guarantees no ADD or
    DEL runs while the runtime calls GC. Errors do not stop the sweep; they are reported at the end.
    """
    valid = req.valid_attachments
    endpoints = ctx.resources.endpoints(ctx.node)
    stale = [ep for ep in endpoints if ep.network == req.network and (ep.container_id, ep.interface) not in valid]
    failures: list[tuple[str, Exception]] = []
    removed = 0
    for ep in stale:
        try:
            # Only the veth that carries this endpoint's owner mark: a name alone proves nothing.
            pod.detach(ctx.host, ep.host_interface, ep.owner_mark)
            ctx.ipam.release_handle(ep.handle)
            ctx.resources.delete_endpoint(ctx.node, ep.key_name, ep.revision)
            removed += 1
            log.info("GC removed %s (%s, %s)", ep.key_name, ep.host_interface, ", ".join(ep.ips))
        except Exception as e:
            failures.append((ep.key_name, e))
    explained = explained_handles(endpoints) | {ipam_handle(cid, ifname) for cid, ifname in valid}
    try:
        orphans = _orphan_handles(ctx, req.network, explained)
    except Exception as e:
        orphans = []
        failures.append(("IPAM scan", e))
    for handle in orphans:
        try:
            ips = ctx.ipam.release_handle(handle)
            log.info("GC released %s of %s, which no endpoint explains", ", ".join(ips), handle)
        except Exception as e:
            failures.append((handle, e))
    if failures:
        first = failures[0][1]
        err = first if isinstance(first, CniError) else _as_cni_error(first)
        raise CniError(err.code, f"GC could not remove {len(failures)} stale resources "
                                 f"(removed {removed} attachments)",
                       "; ".join(f"{what}: {e}" for what, e in failures))


def _orphan_handles(ctx: NodeContext, network: str, explained: set[str]) -> list[str]:
    """Pod handles of this node (and this network, when the allocation recorded one) that nothing explains."""
    handles = set()
    for block in ctx.ipam.blocks(4):
        for alloc in block.in_use().values():
            if (alloc.handle.startswith(POD_HANDLE_PREFIX)
                    and block.user_of(alloc) == ctx.node
                    and alloc.attrs.get("network", network) == network
                    and alloc.handle not in explained):
                handles.add(alloc.handle)
    return sorted(handles)
