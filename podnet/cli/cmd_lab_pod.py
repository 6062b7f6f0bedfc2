"""`podnet lab pod add|delete`: a pod with a namespace, labels and named ports, for experiments and tests."""

from __future__ import annotations

from podnet.errors import PodnetError


def _split(ref: str) -> tuple[str, str]:
    namespace, sep, name = ref.rpartition("/")
    if not sep:
        namespace = "default"
    if not name:
        raise PodnetError(f"{ref!r} is not NAMESPACE/NAME")
    return namespace, name


def cmd_pod_add(args) -> int:
    from podnet.lab.lab import Lab
    from podnet.model.errors import ValidationError
    from podnet.model.kube import parse_port_flag

    namespace, name = _split(args.pod)
    try:
        labels = dict(kv.split("=", 1) for kv in args.label)
    except ValueError:
        raise PodnetError("--label takes KEY=VALUE") from None
    try:
        ports = tuple(parse_port_flag(p) for p in args.port)
    except ValidationError as e:
        raise PodnetError(str(e)) from None
    lab = Lab(args.name)
    lab.load()
    if args.node not in [n["name"] for n in lab.state["nodes"]]:
        raise PodnetError(f"lab {args.name} has no node {args.node}")
    entry = lab.add_pod(args.node, name, namespace, labels=labels, ports=ports, wait_filter=not args.no_wait)
    print(f"pod {namespace}/{name} on {args.node}: {', '.join(entry['ips'])} in netns {entry['netns']}")
    return 0


def cmd_pod_delete(args) -> int:
    from podnet.lab.lab import Lab

    namespace, name = _split(args.pod)
    lab = Lab(args.name)
    lab.load()
    lab.delete_pod(name, namespace)
    print(f"pod {namespace}/{name} deleted")
    return 0


def register(lab_parser) -> None:
    """`lab_parser(name, help)` makes a lab subcommand with --name."""
    add = lab_parser("pod", "add or delete a pod (namespace, labels, named ports)")
    pod_sub = add.add_subparsers(dest="pod_command", required=True)
    a = pod_sub.add_parser("add", help="attach a pod to a node by CNI ADD")
    a.add_argument("--name", default=None, help="the lab (default: podnet)")
    a.add_argument("--node", required=True)
    a.add_argument("pod", metavar="NAMESPACE/NAME")
    a.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    a.add_argument("--port", action="append", default=[], metavar="NAME=NUMBER/PROTOCOL",
                   help="a named container port, e.g. serve-80-tcp=80/TCP")
    a.add_argument("--no-wait", action="store_true", help="do not wait for the node's filter table to hold it")
    a.set_defaults(func=cmd_pod_add)
    d = pod_sub.add_parser("delete", help="detach a pod by CNI DEL and remove its namespace")
    d.add_argument("--name", default=None, help="the lab (default: podnet)")
    d.add_argument("pod", metavar="NAMESPACE/NAME")
    d.set_defaults(func=cmd_pod_delete)
