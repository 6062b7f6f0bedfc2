"""`podnet`: the admin CLI. Subcommands import what they need, so each starts fast."""

from __future__ import annotations

import argparse
import os
import sys

from podnet.errors import PodnetError


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
    progress = Progress(spec.subnets + spec.nodes + spec.nodes * spec.pods_per_node + (spec.datastore == "etcd")
                        + spec.nat_outgoing)
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
    dual = any(n.get("underlay_ip6") for n in status["nodes"])
    v6 = (["UNDERLAY-IP6", "TUNNEL-IP6", "VTEP-MAC6"], lambda n: [n["underlay_ip6"], n["tunnel_ip6"], n["vtep_mac6"]])
    table(["NODE", "NETNS", "UNDERLAY-IP", "TUNNEL-IP"] + (v6[0] if dual else []) + ["BLOCKS", "AGENT"],
          [[n["name"], n["netns"], n["underlay_ip"], n["tunnel_ip"]] + (v6[1](n) if dual else []) +
           [",".join(n["blocks"]), ("fenced" if n.get("fenced") else "ready" if n["ready"] else "starting")
            if n["agent_running"] else "stopped"]
           for n in status["nodes"]])
    print()
    if status.get("external"):
        ext = status["external"]
        print(f"external host (outside the pools, for natOutgoing): {ext['ip']} in namespace {ext['netns']}")
        print()
    table(["POD", "NODE", "NETNS", "IPS", "HOST-IF"],
          [[p["name"], p["node"], p["netns"], ",".join(p.get("ips") or []), p["interface"]]
           for p in status["pods"]])
    return 0


def cmd_lab_list(args) -> int:
    from podnet.cli.output import emit, table
    from podnet.lab.lab import Lab, all_labs

    rows = []
    for name in all_labs():
        lab = Lab(name)
        try:
            state = lab.load()
        except PodnetError:
            continue
        rows.append({"name": name, "nodes": len(state.get("nodes", [])), "pods": len(state.get("pods", [])),
                     "datastore": "etcd" if str(state.get("datastore_url", "")).startswith("etcd") else "sqlite",
                     "complete": bool(state.get("complete")) and not state.get("corrupt", False)})
    if args.output in ("json", "yaml"):
        emit(rows, args.output)
    else:
        table(["LAB", "NODES", "PODS", "DATASTORE"], [[r["name"], r["nodes"], r["pods"], r["datastore"]]
                                                      for r in rows])
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
    from podnet.cni.install import (PLUGIN_SOURCES, default_conflist, install_conflist, install_plugin, provide_chain,
                                    render_template)

    plugin = install_plugin(args.bin_dir, kind=args.plugin)
    print(f"installed {plugin}")
    if args.conf_dir:
        template = _conflist_template(args)
        if template is not None:
            conflist = render_template(template)
        else:
            extra = {}
            if args.datastore:
                extra["datastore"] = args.datastore
            conflist = default_conflist(extra=extra, chain_portmap=not args.no_portmap)
        conflist, done, warnings = provide_chain(conflist, args.bin_dir, args.plugin_dir or PLUGIN_SOURCES)
        for line in done:
            print(f"chained {line}")
        for line in warnings:
            print(f"warning: {line}", file=sys.stderr)
        path = install_conflist(args.conf_dir, conflist)
        print(f"installed {path}")
    return 0


def _conflist_template(args) -> str | None:
    """--conflist-template FILE, else $CNI_NETWORK_CONFIG (a DaemonSet passes its ConfigMap's template so)."""
    import os

    from podnet.cni.install import TEMPLATE_ENV

    if args.conflist_template:
        try:
            with open(args.conflist_template) as f:
                return f.read()
        except OSError as e:
            raise PodnetError(f"cannot read {args.conflist_template}: {e.strerror}") from None
    return os.environ.get(TEMPLATE_ENV) or None


# version -------------------------------------------------------------------------------


def cmd_version(args) -> int:
    """The client's version, and each running agent's from its liveness record (as calicoctl version
    reports the cluster's beside its own)."""
    import datetime

    import podnet
    from podnet.cli.output import table
    from podnet.datastore import keys, open_datastore
    from podnet.model.nodestatus import AgentLiveness

    print(f"Client Version:    {podnet.__version__}")
    try:
        store = open_datastore(args.datastore, create=False)
        try:
            live = store.live(keys.LIVENESS)
        finally:
            store.close()
    except PodnetError as e:
        print(f"Agents:            unknown ({e})")
        return 0
    agents = sorted((AgentLiveness.from_json(rec.value) for rec in live.values()), key=lambda a: a.node)
    print(f"Agents running:    {len(agents)}")
    if agents:
        print()
        table(["NODE", "VERSION", "HOST", "PID", "STARTED"],
              [[a.node, a.version or "(older than 0.1.0)", a.host, a.pid,
                datetime.datetime.fromtimestamp(a.started, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")]
               for a in agents])
    return 0


# parser --------------------------------------------------------------------------------


GLOBAL_FLAGS = (
    (("--datastore",), dict(dest="datastore", metavar="URL",
                            help="datastore URL (default $PODNET_DATASTORE or the embedded store)")),
    (("--lab",), dict(dest="global_lab", metavar="NAME",
                      help="use this lab's datastore (where it listens, for an etcd lab)")),
)


def _accept_global_flags(parser: argparse.ArgumentParser) -> None:
    """Let every subcommand take the global flags after its verb too (calicoctl and kubectl allow
    both places). Their default there is SUPPRESS, so a flag given before the verb is not reset;
    a subcommand with an option of the same spelling keeps its own."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                if child.add_help:  # the agent's parser is its own (built when it runs)
                    for flags, kw in GLOBAL_FLAGS:
                        if not any(f in child._option_string_actions for f in flags):
                            child.add_argument(*flags, default=argparse.SUPPRESS, **kw)
                _accept_global_flags(child)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="podnet", description="Calico-style VXLAN pod networking on the Linux kernel")
    for flags, kw in GLOBAL_FLAGS:
        p.add_argument(*flags, default=None, **kw)
    p.add_argument("--version", action="version", version="podnet " + __import__("podnet").__version__)
    sub = p.add_subparsers(dest="command", required=True)

    # The agent's own parser imports the agent (pyroute2 and all), so it is built only when the
    # agent runs: every other command starts without those imports.
    # main() hands `podnet agent ...` to the agent's parser before this one parses anything.
    sub.add_parser("agent", help="run the per-node agent (podnet agent --help for its flags)", add_help=False)

    from podnet.cli import cmd_resources

    cmd_resources.register(sub)

    v = sub.add_parser("version", help="podnet's version")
    v.set_defaults(func=cmd_version)

    lab = sub.add_parser("lab", help="a cluster of network namespaces on this machine")
    lab_sub = lab.add_subparsers(dest="lab_command", required=True)

    def lab_parser(name: str, text: str) -> argparse.ArgumentParser:
        lp = lab_sub.add_parser(name, help=text)
        lp.add_argument("--name", default=None, help="the lab (default: podnet; --lab NAME says the same)")
        return lp

    up = lab_parser("up", "build the lab")
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
    st = lab_parser("status", "nodes and pods of the lab")
    st.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    st.set_defaults(func=cmd_lab_status)
    ls = lab_sub.add_parser("list", help="the labs on this machine")
    ls.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    ls.set_defaults(func=cmd_lab_list)
    dn = lab_parser("down", "remove everything the lab created")
    dn.add_argument("--all", action="store_true", help="every lab on this machine")
    dn.add_argument("-v", "--verbose", action="store_true")
    dn.set_defaults(func=cmd_lab_down)
    from podnet.cli import cmd_lab_pod

    cmd_lab_pod.register(lab_parser)
    from podnet.cli.cmd_lab_node import register as register_lab_node

    register_lab_node(lab_sub)

    ic = sub.add_parser("install-cni", help="install the CNI plugin and a conflist")
    ic.add_argument("--bin-dir", default="/opt/cni/bin")
    ic.add_argument("--conf-dir", default=None)
    ic.add_argument("--no-portmap", action="store_true", help="do not chain portmap (hostPort)")
    ic.add_argument("--plugin", choices=("static", "python"), default=None,
                    help="the static executable (built by make; the default when built) or the Python shim")
    ic.add_argument("--plugin-dir", action="append", metavar="DIR",
                    help="where to find the plugins the conflist chains, to copy them into --bin-dir "
                         "(repeatable; default: /usr/lib/cni, /opt/cni/bin, /usr/libexec/cni)")
    ic.add_argument("--conflist-template", metavar="FILE",
                    help="write this conflist (default: $CNI_NETWORK_CONFIG, else podnet then portmap); it may "
                         "hold __KUBERNETES_NODE_NAME__, __CNI_MTU__, __LOG_LEVEL__ and __ETCD_ENDPOINTS__")
    ic.set_defaults(func=cmd_install_cni)

    # Further commands live in their own modules, each with register(subparsers).
    import importlib

    for module in EXTRA_COMMANDS:
        importlib.import_module(module).register(sub)
    _accept_global_flags(p)
    return p


def _agent_argv(argv: list[str]) -> list[str] | None:
    """The agent's flags when the verb is `agent` (global flags before it are passed on), else None."""
    i, passed = 0, []
    while i < len(argv):
        arg = argv[i]
        if arg in ("--datastore", "--lab") and i + 1 < len(argv):
            passed += argv[i:i + 2] if arg == "--datastore" else []
            i += 2
        elif arg.startswith("--datastore="):
            passed.append(arg)
            i += 1
        elif arg.startswith("--lab="):
            i += 1
        else:
            return passed + argv[i + 1:] if arg == "agent" else None
    return None


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


EXIT_ERROR = 1  # a PodnetError: the message says what is wrong and what to do
EXIT_INTERNAL = 3  # a defect in podnet: the message names the file holding the traceback


_WRITES = ("apply", "create", "replace", "delete", "label")


def _wait_enforced(lab_name: str) -> None:
    """In a lab, a write returns once every node's filter table reflects it, so what is sent next
    meets the policy just applied (a node whose agent is down is waited for a few seconds, no more)."""
    from podnet.lab.lab import Lab, LabError

    lab = Lab(lab_name)
    try:
        lab.load()
        lab.wait_filter(timeout=10.0)
    except LabError as e:
        print(f"warning: {e.message}", file=sys.stderr)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    agent_argv = _agent_argv(argv)
    if agent_argv is not None:
        from podnet.agent import main as agent_main

        return agent_main.main(agent_argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # `delete networkpolicy -n NS NAME`: names after an option are still names.
        if hasattr(args, "names") and not any(x.startswith("-") for x in extra):
            args.names = list(args.names) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "lab":
        # A lab is named by --name or by --lab, before or after the verb.
        args.name = getattr(args, "name", None) or args.global_lab or "podnet"
    try:
        with _lab_context(args):
            code = args.func(args) or 0
        if code == 0 and args.global_lab and args.command in _WRITES:
            _wait_enforced(args.global_lab)
        return code
    except PodnetError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # never a traceback on the terminal: it goes to a file the message names
        print(f"error: podnet failed unexpectedly: {type(e).__name__}: {e} ({_save_traceback(argv)})",
              file=sys.stderr)
        return EXIT_INTERNAL


def _save_traceback(argv: list[str]) -> str:
    import tempfile
    import time
    import traceback

    try:
        fd, path = tempfile.mkstemp(prefix=time.strftime("podnet-error-%Y%m%dT%H%M%S-"), suffix=".log")
        with os.fdopen(fd, "w") as f:
            f.write(f"podnet {' '.join(argv)}\n")
            traceback.print_exc(file=f)
        return f"the traceback is in {path}; please report it"
    except OSError as e:
        return f"the traceback could not be saved: {e.strerror}"


if __name__ == "__main__":
    sys.exit(main())
