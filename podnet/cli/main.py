"""`podnet`: the admin CLI. Subcommands import what they need, so each starts fast."""

from __future__ import annotations

import argparse
import sys

from podnet.errors import PodnetError


def _store(args):
    from podnet.datastore import open_datastore

    return open_datastore(args.datastore)


# get -----------------------------------------------------------------------


def cmd_get(args) -> int:
    from podnet.cli.output import emit, manifest_list, table
    from podnet.datastore.resources import Resources
    from podnet.ipam import Ipam

    store = _store(args)
    res, ipam = Resources(store), Ipam(store)
    kind = args.kind.rstrip("s") if args.kind != "ippools" else "ippool"
    if kind in ("node",):
        items = res.nodes()
        if args.output != "wide" and args.output != "table":
            emit(manifest_list([n.to_manifest() for n in items]) if items else
                 {"apiVersion": "projectcalico.org/v3", "kind": "NodeList", "items": []}, args.output)
            return 0
        blocks: dict[str, list[str]] = {}
        for b in ipam.blocks():
            if b.node:
                blocks.setdefault(b.node, []).append(b.cidr)
        table(["NAME", "ADDRESS", "INTERFACE", "TUNNEL-IP", "VTEP-MAC", "BLOCKS"],
              [[n.name, n.address, n.interface, n.tunnel_address, n.effective_vtep_mac,
                ",".join(blocks.get(n.name, []))] for n in items])
    elif kind == "ippool":
        items = res.pools()
        if args.output not in ("wide", "table"):
            emit(manifest_list([p.to_manifest() for p in items]), args.output)
            return 0
        table(["NAME", "CIDR", "BLOCK", "VXLAN", "NAT", "DISABLED", "SELECTOR"],
              [[p.name, p.cidr, p.block_size, p.vxlan_mode, p.nat_outgoing, p.disabled, p.node_selector]
               for p in items])
    elif kind == "block":
        items = ipam.blocks()
        if args.output not in ("wide", "table"):
            emit([{"cidr": b.cidr, "affinity": b.affinity, "allocated": len(b.allocations), "free": b.free,
                   "allocations": {ip: {"handle": a.handle, **a.attrs} for ip, a in b.in_use().items()}}
                  for b in items], args.output)
            return 0
        table(["CIDR", "AFFINITY", "IN-USE", "FREE"],
              [[b.cidr, b.affinity, len(b.allocations), b.free] for b in items])
    elif kind in ("agentconfiguration", "felixconfiguration"):
        items = res.agent_configs()
        if args.output not in ("wide", "table"):
            emit(manifest_list([c.to_manifest() for c in items]), args.output)
            return 0
        table(["NAME", "VNI", "PORT", "MTU", "MTU-IFACE-PATTERN", "TX-CHECKSUM"],
              [[c.name, c.vni, c.port, c.mtu, c.mtu_iface_pattern, c.tx_checksum_offload] for c in items])
    elif kind in ("workload", "workloadendpoint"):
        items = res.endpoints()
        if args.output not in ("wide", "table"):
            emit(manifest_list([e.to_manifest() for e in items]), args.output)
            return 0
        table(["NODE", "POD", "NAMESPACE", "INTERFACE", "HOST-IF", "IPS", "CONTAINER"],
              [[e.node, e.pod_name, e.pod_namespace, e.interface, e.host_interface, ",".join(e.ips),
                e.container_id[:12]] for e in items])
    else:
        raise PodnetError(f"unknown resource {args.kind!r}",
                          "use nodes, ippools, blocks, workloads or agentconfigurations")
    return 0


# apply / delete ---------------------------------------------------------------


def _documents(path: str) -> list[dict]:
    import yaml

    try:
        text = sys.stdin.read() if path == "-" else open(path).read()
    except OSError as e:
        raise PodnetError(f"cannot read {path}: {e.strerror}") from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as e:
        raise PodnetError(f"{path} is not valid YAML: {e}") from None
    out = []
    for d in docs:
        if isinstance(d, dict) and str(d.get("kind", "")).endswith("List") and "items" in d:
            out += d["items"]
        else:
            out.append(d)
    return out


def cmd_apply(args) -> int:
    from podnet.datastore.resources import Resources
    from podnet.model import IPPool, parse_resource
    from podnet.model.agentconfig import AgentConfiguration

    res = Resources(_store(args))
    # Validate every document before writing any, so a bad file changes nothing.
    resources = [parse_resource(doc) for doc in _documents(args.filename)]
    for resource in resources:
        if isinstance(resource, IPPool):
            print(f"ippool/{resource.name} {res.apply_pool(resource)}")
        elif isinstance(resource, AgentConfiguration):
            print(f"agentconfiguration/{resource.name} {res.apply_agent_config(resource)}")
    return 0


def cmd_delete(args) -> int:
    from podnet.datastore.resources import Resources

    res = Resources(_store(args))
    kind = args.kind.rstrip("s")
    if kind in ("agentconfiguration", "felixconfiguration"):
        if not res.delete_agent_config(args.name):
            raise PodnetError(f"agentconfiguration {args.name} does not exist")
        print(f"agentconfiguration/{args.name} deleted")
        return 0
    if kind != "ippool":
        raise PodnetError(f"cannot delete {args.kind}", "podnet delete supports ippool and agentconfiguration")
    if not res.delete_pool(args.name):
        raise PodnetError(f"ippool {args.name} does not exist")
    print(f"ippool/{args.name} deleted")
    return 0


# lab -------------------------------------------------------------------------------


class Progress:
    """A bar that redraws in place on a terminal; one plain line per step anywhere else (logs, CI)."""

    def __init__(self, total: int, stream=None):
        self.total, self.done = max(total, 1), 0
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()

    def __call__(self, msg: str) -> None:
        self.done = min(self.done + 1, self.total)
        if not self.tty:
            print(f"  [{self.done}/{self.total}] {msg}", file=self.stream, flush=True)
            return
        width = 24
        filled = width * self.done // self.total
        bar = "#" * filled + "-" * (width - filled)
        self.stream.write(f"\r\033[K  [{bar}] {self.done}/{self.total} {msg[:60]}")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def cmd_lab_up(args) -> int:
    from podnet.lab.lab import Lab, LabSpec

    spec = LabSpec(nodes=args.nodes, pods_per_node=args.pods_per_node, pool=args.pool, subnets=args.subnets,
                   vxlan_mode=args.vxlan_mode, nat_outgoing=args.nat_outgoing, ipv6=args.ipv6,
                   datastore=args.lab_datastore, etcd_members=args.etcd_members)
    progress = Progress(spec.subnets + spec.nodes + spec.nodes * spec.pods_per_node + (spec.datastore == "etcd"))
    lab = Lab(args.name, progress=progress)
    print(f"podnet lab {args.name}: {args.nodes} nodes, {args.pods_per_node} pods per node", flush=True)
    try:
        status = lab.up(spec)
    finally:
        progress.finish()
    print(f"lab {args.name} is up: {len(status['nodes'])} nodes, {len(status['pods'])} pods "
          f"(`podnet lab status --name {args.name}`)")
    return 0


def cmd_lab_status(args) -> int:
    from podnet.cli.output import emit, table
    from podnet.lab.lab import Lab

    status = Lab(args.name).status()
    if args.output in ("json", "yaml"):
        emit(status, args.output)
        return 0
    table(["NODE", "NETNS", "UNDERLAY-IP", "TUNNEL-IP", "BLOCKS", "AGENT"],
          [[n["name"], n["netns"], n["underlay_ip"], n["tunnel_ip"], ",".join(n["blocks"]),
            ("ready" if n["ready"] else "starting") if n["agent_running"] else "stopped"] for n in status["nodes"]])
    print()
    table(["POD", "NODE", "NETNS", "IP", "HOST-IF"],
          [[p["name"], p["node"], p["netns"], p["ip"], p["interface"]] for p in status["pods"]])
    return 0


def cmd_lab_down(args) -> int:
    from podnet.lab.lab import Lab, all_labs

    names = all_labs() if args.all else [args.name]
    for name in names:
        removed = Lab(name).down()
        print(f"lab {name}: removed {len(removed)} resources" + (f" ({', '.join(removed)})" if args.verbose else ""))
    return 0


# install-cni ---------------------------------------------------------------------


def cmd_install_cni(args) -> int:
    from podnet.cni.install import default_conflist, install_conflist, install_plugin

    plugin = install_plugin(args.bin_dir)
    print(f"installed {plugin}")
    if args.conf_dir:
        extra = {}
        if args.datastore:
            extra["datastore"] = args.datastore
        path = install_conflist(args.conf_dir, default_conflist(extra=extra, chain_portmap=not args.no_portmap))
        print(f"installed {path}")
    return 0


# parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from podnet.datastore import DEFAULT_URL

    p = argparse.ArgumentParser(prog="podnet", description="Calico-style VXLAN pod networking on the Linux kernel")
    p.add_argument("--datastore", default=None, help=f"datastore URL (default $PODNET_DATASTORE or {DEFAULT_URL})")
    p.add_argument("--lab", dest="global_lab", metavar="NAME",
                   help="use this lab's datastore (where it listens, for an etcd lab)")
    p.add_argument("--version", action="version", version="podnet " + __import__("podnet").__version__)
    sub = p.add_subparsers(dest="command", required=True)

    from podnet.agent import main as agent_main

    a = sub.add_parser("agent", help="run the per-node agent")
    agent_main.add_arguments(a)
    a.set_defaults(func=lambda args: agent_main.run(args))

    g = sub.add_parser("get", help="list resources")
    g.add_argument("kind", help="nodes | ippools | blocks | workloads")
    g.add_argument("-o", "--output", choices=("table", "wide", "json", "yaml"), default="table")
    g.set_defaults(func=cmd_get)

    ap = sub.add_parser("apply", help="create or update resources from calicoctl-style YAML")
    ap.add_argument("-f", "--filename", required=True)
    ap.set_defaults(func=cmd_apply)

    d = sub.add_parser("delete", help="delete a resource")
    d.add_argument("kind")
    d.add_argument("name")
    d.set_defaults(func=cmd_delete)

    lab = sub.add_parser("lab", help="a cluster of network namespaces on this machine")
    lab_sub = lab.add_subparsers(dest="lab_command", required=True)
    up = lab_sub.add_parser("up", help="build the lab")
    up.add_argument("--name", default="podnet")
    up.add_argument("--nodes", type=int, default=2)
    up.add_argument("--pods-per-node", type=int, default=1)
    up.add_argument("--pool", default="10.244.0.0/16")
    up.add_argument("--subnets", type=int, default=1, help="underlay subnets joined by a router (CrossSubnet labs)")
    up.add_argument("--vxlan-mode", choices=("Always", "CrossSubnet", "Never"), default="Always")
    up.add_argument("--nat-outgoing", action="store_true", help="masquerade pod traffic leaving the pools")
    up.add_argument("--ipv6", action="store_true", help="dual stack: IPv6 underlay, IPv6 pool, two addresses per pod")
    up.add_argument("--datastore", dest="lab_datastore", choices=("sqlite", "etcd"), default="sqlite",
                    help="the embedded store, or etcd started in the underlay namespace")
    up.add_argument("--etcd-members", type=int, default=1, choices=(1, 3, 5))
    up.set_defaults(func=cmd_lab_up)
    st = lab_sub.add_parser("status", help="nodes and pods of the lab")
    st.add_argument("--name", default="podnet")
    st.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    st.set_defaults(func=cmd_lab_status)
    dn = lab_sub.add_parser("down", help="remove everything the lab created")
    dn.add_argument("--name", default="podnet")
    dn.add_argument("--all", action="store_true", help="every lab on this machine")
    dn.add_argument("-v", "--verbose", action="store_true")
    dn.set_defaults(func=cmd_lab_down)

    ic = sub.add_parser("install-cni", help="install the CNI plugin and a conflist")
    ic.add_argument("--bin-dir", default="/opt/cni/bin")
    ic.add_argument("--conf-dir", default=None)
    ic.add_argument("--no-portmap", action="store_true")
    ic.set_defaults(func=cmd_install_cni)

    # Further commands live in their own modules, each with register(subparsers).
    import importlib

    for module in EXTRA_COMMANDS:
        importlib.import_module(module).register(sub)
    return p


# Modules that add subcommands (each defines `register(subparsers)`); imported only to build the parser.
EXTRA_COMMANDS: list[str] = ["podnet.cli.cmd_ipam", "podnet.cli.cmd_describe", "podnet.cli.cmd_observe"]


def _lab_context(args):
    """With --lab, point --datastore at the lab's store and run inside the namespace where it listens."""
    import contextlib

    if not args.global_lab or args.command in ("lab", "agent", "trace", "doctor", "capture"):
        return contextlib.nullcontext()  # these know labs themselves
    from podnet.netns import entered
    from podnet.lab.lab import Lab

    lab = Lab(args.global_lab)
    lab.load()
    args.datastore = args.datastore or lab.datastore_url
    return entered(lab.underlay_netns) if args.datastore.startswith("etcd") else contextlib.nullcontext()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with _lab_context(args):
            return args.func(args) or 0
    except PodnetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
