"""CNI ADD, DEL and CHECK as the agent runs them for the plugin executable.

Every failure becomes the spec's error JSON with a code that tells the runtime
what to do: 11 (try again later) when the datastore is busy or away, 3 when
the container's namespace is gone, 4/6/7 for bad input, 100+ for podnet's own.
Whatever ADD took (an address, a veth pair, an endpoint record) is given back
when a later step fails.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from podnet.cni import protocol as p
from podnet.cni.protocol import CniError, Request
from podnet.dataplane import pod, rtnl
from podnet.dataplane.netns import NamespaceNotFound, open_netns
from podnet.datastore.api import DatastoreUnavailable
from podnet.datastore.resources import Resources
from podnet.errors import PodnetError
from podnet.ipam import Ipam, IpamConflict, NoUsablePool, PoolExhausted
from podnet.model import WorkloadEndpoint, host_veth_name
from podnet.model.endpoint import ipam_handle

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
    stats: dict | None = None  # result -> count, for observability


def handle(ctx: NodeContext, env: dict[str, str], stdin: bytes) -> tuple[int, bytes]:
    """Run one CNI request; returns (exit code, stdout)."""
    started = time.perf_counter()
    command = env.get("CNI_COMMAND", "?")
    try:
        req = p.parse_request(env, stdin)
        out = _dispatch(ctx, req)
        code, body = 0, (json.dumps(out).encode() if out is not None else b"")
    except CniError as e:
        code, body = 1, json.dumps(e.to_json(p.version_of(stdin))).encode()
        log.warning("CNI %s %s failed: %s", command, env.get("CNI_CONTAINERID", ""), e)
    except Exception as e:
        err = _as_cni_error(e)
        code, body = 1, json.dumps(err.to_json(p.version_of(stdin))).encode()
        if err.code == p.INTERNAL:
            log.exception("CNI %s %s failed unexpectedly", command, env.get("CNI_CONTAINERID", ""))
        else:
            log.warning("CNI %s %s failed: %s", command, env.get("CNI_CONTAINERID", ""), err)
    if ctx.stats is not None:
        key = (command, "ok" if code == 0 else "error")
        ctx.stats[key] = ctx.stats.get(key, 0) + 1
    log.debug("CNI %s %s took %.1f ms", command, env.get("CNI_CONTAINERID", ""), (time.perf_counter() - started) * 1e3)
    return code, body


def _as_cni_error(e: Exception) -> CniError:
    if isinstance(e, (DatastoreUnavailable, IpamConflict)):
        return CniError(p.TRY_AGAIN_LATER, str(e.message), "the datastore is busy or unreachable; retry")
    if isinstance(e, (PoolExhausted, NoUsablePool)):
        return CniError(p.IPAM_EXHAUSTED, e.message, e.hint or "")
    if isinstance(e, NamespaceNotFound):
        return CniError(p.CONTAINER_UNKNOWN, e.message)
    if isinstance(e, pod.InterfaceExists):
        return CniError(p.INTERFACE_EXISTS, e.message)
    if isinstance(e, (rtnl.NetlinkError, pod.AttachError)):
        return CniError(p.DATAPLANE_FAILURE, str(e))
    if isinstance(e, PodnetError):
        return CniError(p.INTERNAL, str(e))
    return CniError(p.INTERNAL, f"internal error: {type(e).__name__}: {e}", "see the podnet agent's log")


def _dispatch(ctx: NodeContext, req: Request):
    if req.command == "VERSION":
        return p.version_result(req.config.get("cniVersion") or p.SUPPORTED_VERSIONS[-1])
    if req.command == "ADD":
        return add(ctx, req)
    if req.command == "DEL":
        delete(ctx, req)
        return None
    if req.command == "CHECK":
        check(ctx, req)
        return None
    raise CniError(p.INVALID_ENVIRONMENT, f"{req.command} is not implemented yet")


def _pools(req: Request, key: str, arg: str) -> list[str] | None:
    if req.args.get(arg):
        return [x.strip() for x in req.args[arg].split(",") if x.strip()]
    return req.config.get("ipam", {}).get(key) or None


def add(ctx: NodeContext, req: Request) -> dict:
    if not ctx.ready():
        raise CniError(p.TRY_AGAIN_LATER, "the podnet agent on this node is still starting", "retry in a moment")
    try:
        open_netns(req.netns).__index__()  # fail early (code 3) when the sandbox is gone
    except NamespaceNotFound as e:
        raise CniError(p.CONTAINER_UNKNOWN, e.message) from None
    host_ifname = host_veth_name(req.pod_namespace, req.pod_name, req.container_id)
    handle = ipam_handle(req.container_id)
    mtu = req.config.get("mtu") or ctx.pod_mtu()
    attrs = {
        "node": ctx.node,
        "namespace": req.pod_namespace,
        "pod": req.pod_name,
        "container": req.container_id,
        "interface": req.ifname,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with ctx.ipam_lock:  # one allocator per node at a time; CAS still guards other processes
        ip = ctx.ipam.auto_assign(ctx.node, handle, attrs, 4, _pools(req, "ipv4_pools", "IPV4POOLS"))
    attached = None
    try:
        attached = pod.attach(ctx.host, req.netns, req.ifname, host_ifname, ip, mtu)
        ctx.resources.put_endpoint(WorkloadEndpoint(
            node=ctx.node,
            container_id=req.container_id,
            interface=req.ifname,
            host_interface=host_ifname,
            ips=attached.ips,
            mac=attached.pod_mac,
            netns=req.netns,
            pod_namespace=req.pod_namespace,
            pod_name=req.pod_name,
            network=req.config["name"],
        ))
    except BaseException:
        # Give back what this ADD took, whatever failed.
        if attached is not None:
            pod.detach(ctx.host, host_ifname, req.netns, req.ifname)
        _release_quietly(ctx, ip)
        raise
    result = p.Result(
        host_ifname=host_ifname,
        host_mac=pod.HOST_MAC,
        pod_ifname=req.ifname,
        pod_mac=attached.pod_mac,
        sandbox=req.netns,
        mtu=mtu,
        ips=list(attached.ips),
        routes=[{"dst": "0.0.0.0/0", "gw": pod.GATEWAY_V4}],
        dns=req.config.get("dns") or {},
    )
    return result.to_json(req.version)


def _release_quietly(ctx: NodeContext, ip: str) -> None:
    try:
        ctx.ipam.release_ip(ip)
    except Exception:
        log.exception("could not release %s after a failed ADD; `podnet ipam check` will find it", ip)


def delete(ctx: NodeContext, req: Request) -> None:
    """Undo ADD. Idempotent: what is already gone is success."""
    key = f"{req.container_id}-{req.ifname}"
    ep = ctx.resources.endpoint(ctx.node, key)
    netns = req.netns
    if netns:
        try:
            open_netns(netns).__index__()
        except NamespaceNotFound:
            netns = ""
    pod.detach(ctx.host, ep.host_interface if ep else None, netns or None, req.ifname)
    ctx.ipam.release_handle(ipam_handle(req.container_id))
    if ep:
        ctx.resources.delete_endpoint(ctx.node, key)


def check(ctx: NodeContext, req: Request) -> None:
    prev = req.config.get("prevResult")
    if not isinstance(prev, dict):
        raise CniError(p.INVALID_CONFIG, "CHECK needs prevResult in the network configuration")
    ep = ctx.resources.endpoint(ctx.node, f"{req.container_id}-{req.ifname}")
    if ep is None:
        raise CniError(p.CHECK_FAILED, f"podnet has no endpoint for container {req.container_id} {req.ifname}")
    prev_ips = sorted(ip.get("address") for ip in prev.get("ips", []) if isinstance(ip, dict))
    if prev_ips and prev_ips != sorted(ep.ips):
        raise CniError(p.CHECK_FAILED, f"prevResult has {prev_ips} but the endpoint holds {sorted(ep.ips)}")
    problems = pod.inspect(ctx.host, req.netns, ep.host_interface, req.ifname, ep.ips[0].split("/")[0])
    if problems:
        raise CniError(p.CHECK_FAILED, "; ".join(problems))
