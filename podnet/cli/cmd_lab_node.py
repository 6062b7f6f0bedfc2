"""`podnet lab node add` and `podnet lab node delete`: watch a node join and leave a lab."""

from __future__ import annotations


def cmd_lab_node_add(args) -> int:
    from podnet.lab.lab import Lab

    lab = Lab(args.name, progress=lambda msg: print(f"  {msg}", flush=True))
    lab.load()
    entry = lab.join_node()
    node = next(n for n in lab.status()["nodes"] if n["name"] == entry["name"])
    print(f"{node['name']} joined lab {args.name}: underlay {node['underlay_ip']}, tunnel {node['tunnel_ip']}, "
          f"blocks {', '.join(node['blocks']) or '(none yet)'}; every node now routes to it")
    return 0


def cmd_lab_node_delete(args) -> int:
    from podnet.lab.lab import Lab

    lab = Lab(args.name, progress=lambda msg: print(f"  {msg}", flush=True))
    lab.load()
    summary = lab.remove_node(args.node)
    print(f"{args.node} left lab {args.name}: agent stopped, namespaces removed, released "
          f"{len(summary['released'])} addresses and {len(summary['blocks_released'])} blocks; "
          "every other node dropped its route, ARP and FDB entry")
    return 0


def register(lab_sub) -> None:
    node = lab_sub.add_parser("node", help="add a node to a lab, or take one out")
    node_sub = node.add_subparsers(dest="lab_node_command", required=True)
    add = node_sub.add_parser("add", help="a new node joins: namespace, underlay link, agent")
    add.add_argument("--name", default=None, help="the lab (default: podnet; --lab NAME says the same)")
    add.set_defaults(func=cmd_lab_node_add)
    dele = node_sub.add_parser("delete", help="a node leaves: its agent stops, its namespaces and record go")
    dele.add_argument("--name", default=None, help="the lab (default: podnet; --lab NAME says the same)")
    dele.add_argument("node")
    dele.set_defaults(func=cmd_lab_node_delete)
