"""`podnet trace`, `podnet capture`, `podnet doctor`: looking at a running cluster.

Each works on a lab (`--lab NAME`: every node is a namespace on this machine)
or on a real host (the datastore from `--datastore`, this host being the node
whose address is configured here, or `--node`).
"""

from __future__ import annotations

import contextlib

import json
import sys
import time

from podnet.errors import PodnetError


def register(sub) -> None:
    t = sub.add_parser("trace", help="follow a packet from one pod to another, hop by hop, checking the kernel")
    t.add_argument("src", help="source pod: name, namespace/name or IP (IPv4 or IPv6)")
    t.add_argument("dst", help="destination pod (name, namespace/name or IP) or a pod address")
    t.add_argument("-6", "--ipv6", action="store_true",
                   help="trace IPv6 between pods given by name (default: IPv4, or IPv6 for pods that have only "
                        "IPv6; an address given chooses its family)")
    _where(t, node_help="this host's node name (default: the node whose address is configured here)")
    t.add_argument("-o", "--output", choices=("text", "json"), default="text")
    t.add_argument("--svg", metavar="FILE", help="also draw the path as an SVG picture")
    t.add_argument("--brief", action="store_true", help="leave out the explanation of each hop")
    t.add_argument("--protocol", choices=("icmp", "tcp", "udp", "sctp"), default="icmp",
                   help="the packet the filter hops judge (default: an ICMP echo request)")
    t.add_argument("--port", type=int, default=None, help="its destination port (tcp, udp, sctp)")
    t.set_defaults(func=cmd_trace)

    c = sub.add_parser("capture", help="print VXLAN packets on a node's underlay interface, layer by layer")
    _where(c, node_help="the node to capture on", node_required=True)
    c.add_argument("--count", type=int, default=10, help="stop after this many packets (default 10)")
    c.add_argument("--timeout", type=float, default=10.0, help="stop after this many seconds (default 10)")
    c.add_argument("-w", "--write", metavar="FILE", help="also write the packets to a pcap file")
    c.add_argument("--port", type=int, default=None, help="VXLAN UDP port (default: vxlan.calico's)")
    c.set_defaults(func=cmd_capture)

    d = sub.add_parser("doctor", help="check nodes for the problems VXLAN networking is known for")
    _where(d, node_help="check only this node (on a real host: this host's node name)")
    d.add_argument("-o", "--output", choices=("text", "json"), default="text")
    d.set_defaults(func=cmd_doctor)


def _where(p, node_help: str, node_required: bool = False) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--lab", metavar="NAME", help="a lab on this machine (`podnet lab status`)")
    # Its own dest: the top-level --datastore must survive the subcommand's default.
    g.add_argument("--datastore", dest="observe_datastore", metavar="URL", help="datastore URL (real hosts)")
    p.add_argument("--node", required=node_required, help=node_help)


def _default_lab(args) -> str | None:
    """With no datastore named anywhere, the lab `podnet lab up` builds by default, if it is up:
    the README's first steps need no flags."""
    import os

    if args.observe_datastore or args.datastore or os.environ.get("PODNET_DATASTORE"):
        return None
    from podnet.lab.lab import Lab

    return "podnet" if Lab("podnet").exists() else None


class _Target:
    """The datastore and where each node's kernel is, from --lab or from this host."""

    def __init__(self, args):
        from podnet.datastore import open_datastore
        from podnet.observe.facts import NodeAccess

        lab_name = args.lab or getattr(args, "global_lab", None) or _default_lab(args)
        if lab_name:
            from podnet.lab.lab import Lab

            lab = Lab(lab_name)
            status = lab.status()
            # A lab's etcd listens in its underlay namespace; a store opened there keeps talking
            # from there, whichever thread or namespace uses it later.
            from podnet.netns import entered

            with entered(lab.underlay_netns) if status["datastore"].startswith("etcd") else contextlib.nullcontext():
                self.store = open_datastore(status["datastore"], create=False)
            self.access = NodeAccess.for_lab(status)
        else:
            from podnet.datastore.resources import Resources

            self.store = open_datastore(args.observe_datastore or args.datastore, create=False)
            try:
                node = _this_host(Resources(self.store), args.node)
            except BaseException:
                self.store.close()
                raise
            self.access = NodeAccess.this_host(node)

    def close(self) -> None:
        self.store.close()


def _this_host(res, named: str | None) -> str:
    """The node this host is: --node if its address is configured here, else the one whose address is."""
    from podnet.observe.facts import local_addresses, local_node

    if named is None:
        node = local_node(res.nodes())
        if node is None:
            raise PodnetError("cannot tell which node this host is", "pass --node NAME, or --lab NAME for a lab")
        return node
    record = res.node(named)
    if record is None:
        raise PodnetError(f"no node named {named} in the datastore", "`podnet get nodes` lists them")
    if record.ip and record.ip not in local_addresses():
        raise PodnetError(f"{named} is not this host: its address {record.ip} is not configured here",
                          f"run this on {named}, or pass --lab NAME for a lab")
    return named


def cmd_trace(args) -> int:
    from podnet.observe import facts as F
    from podnet.observe.trace import format_trace, resolve, trace

    from podnet.observe.policy_trace import add_filter_hops, read_policy_inputs

    target = _Target(args)
    try:
        facts = F.from_datastore(target.store, target.access)
        policy_inputs = read_policy_inputs(target.store)
    finally:
        target.close()
    family = 6 if args.ipv6 else None
    src, dst, dst_pod = resolve(facts, args.src, args.dst, family)
    F.read_kernels(facts, target.access, nodes={src.node, dst.node},
                   pods={src.container_id} | ({dst_pod.container_id} if dst_pod else set()))
    result = trace(facts, args.src, args.dst, family)
    add_filter_hops(result, facts, policy_inputs, args.protocol, args.port)
    if args.svg:
        from podnet.observe.svg import render_svg

        _write(args.svg, render_svg(result))
    if args.output == "json":
        print(json.dumps(result.to_dict(), indent=2))
    else:
        sys.stdout.write(format_trace(result, explain=not args.brief))
        if args.svg:
            print(f"picture: {args.svg}")
    return 0 if result.ok else 1


def cmd_doctor(args) -> int:
    from podnet.observe import facts as F
    from podnet.observe.doctor import diagnose, format_report

    target = _Target(args)
    try:
        facts = F.from_datastore(target.store, target.access)
    finally:
        target.close()
    if args.node and args.node not in facts.nodes:
        raise PodnetError(f"no node named {args.node} in the datastore", "`podnet get nodes` lists them")
    if args.lab:
        names = [args.node] if args.node else sorted(facts.nodes)
    else:
        names = list(target.access.netns)  # this host only: the others are not readable from here
    F.read_kernels(facts, target.access, nodes=names)
    report = diagnose(facts, names)
    if args.output == "json":
        print(json.dumps(report.to_dict(), indent=2))
    else:
        sys.stdout.write(format_report(report))
    return 0 if report.ok else 1


def cmd_capture(args) -> int:
    from podnet.observe import facts as F
    from podnet.observe.capture import CaptureSession
    from podnet.observe.packet import decode
    from podnet.observe.pcap import PcapWriter
    from podnet.observe.render import format_packet

    if args.count < 1 or args.timeout <= 0:
        raise PodnetError("--count must be at least 1 and --timeout positive")
    target = _Target(args)
    try:
        facts = F.from_datastore(target.store, target.access)
    finally:
        target.close()
    node = facts.nodes.get(args.node)
    if node is None:
        raise PodnetError(f"no node named {args.node} in the datastore", "`podnet get nodes` lists them")
    if not target.access.readable(node.name):
        raise PodnetError(f"{node.name} is not this host", f"run podnet capture on {node.name}, or use --lab")
    if not node.interface:
        raise PodnetError(f"the record of {node.name} names no underlay interface",
                          "its agent registers one when it starts")
    port = args.port
    if port is None:
        F.read_kernels(facts, target.access, nodes=[node.name], pods=[])
        link = node.kernel.links.get(facts.config.device) if node.kernel else None
        port = link.vxlan.port if link and link.vxlan and link.vxlan.port else facts.config.port
    where = f"namespace {node.netns}" if node.netns else "this host"
    writer = PcapWriter(args.write) if args.write else None
    seen = 0
    try:
        with CaptureSession(node.interface, node.netns, vxlan_port=port) as session:
            # Printed once the socket listens: what is sent from now on is seen.
            print(f"capturing VXLAN (UDP {port}) on {node.interface} of {node.name} ({where}): "
                  f"up to {args.count} packets or {args.timeout:g}s", flush=True)
            deadline = time.monotonic() + args.timeout
            while seen < args.count and time.monotonic() < deadline:
                for ts, frame in session.collect(count=1, timeout=max(deadline - time.monotonic(), 0.0)):
                    seen += 1
                    print(format_packet(decode(frame, vxlan_ports=(port,)), index=seen, timestamp=ts) + "\n",
                          flush=True)
                    if writer:
                        writer.write(ts, frame)
    finally:
        if writer:
            writer.close()
    print(f"{seen} packet{'s' if seen != 1 else ''} captured" + (f", written to {args.write}" if args.write else ""))
    return 0


def _write(path: str, text: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as e:
        raise PodnetError(f"cannot write {path}: {e.strerror}") from None
