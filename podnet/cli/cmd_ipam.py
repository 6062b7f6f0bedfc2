"""`podnet ipam show | check | gc | release | configure` and `podnet node delete`."""

from __future__ import annotations

import ipaddress
import json

from podnet.errors import PodnetError


def _clients(args):
    from podnet.datastore import open_datastore
    from podnet.datastore.resources import Resources
    from podnet.ipam import Ipam

    store = open_datastore(args.datastore, create=False)
    return Resources(store), Ipam(store)


def cmd_show(args) -> int:
    from podnet.cli.output import emit, table

    res, ipam = _clients(args)
    pools, blocks = res.pools(), ipam.blocks()
    if args.ip:
        try:
            addr = ipaddress.ip_address(args.ip)
        except ValueError:
            raise PodnetError(f"{args.ip!r} is not an IP address") from None
        rec = ipam.block_of(str(addr))
        alloc = rec.block.allocations.get(rec.block.ordinal(str(addr))) if rec else None
        if alloc is None:
            print(f"IP {addr} is not assigned")
        else:
            borrowed = rec.block.user_of(alloc) != rec.block.node
            print(f"IP {addr} is in use by handle {alloc.handle} (block {rec.block.cidr}, {rec.block.affinity}"
                  + (", borrowed" if borrowed else "") + ")")
            for k, v in sorted(alloc.attrs.items()):
                print(f"  {k}: {v}")
        return 0
    if args.show_borrowed:
        rows = [[ip, b.cidr, b.node, user, b.allocations[b.ordinal(ip)].handle] for b in blocks
                for ip, user in b.borrowed().items()]
        if args.output == "json":
            emit([dict(zip(("ip", "block", "block_node", "used_by", "handle"), r)) for r in rows], "json")
        else:
            table(["IP", "BORROWED FROM BLOCK", "BLOCK OWNER", "USED BY NODE", "HANDLE"], rows)
        return 0
    rows, data = [], []
    for p in pools:
        inside = [b for b in blocks if b.network.version == p.version and b.network.subnet_of(p.network)]
        used = sum(len(b.allocations) for b in inside)
        total = p.network.num_addresses
        rows.append(["IP Pool", p.cidr, total, f"{used} ({100 * used / total:.0f}%)", total - used])
        data.append({"pool": p.name, "cidr": p.cidr, "size": total, "in_use": used})
        if args.show_blocks:
            for b in inside:
                rows.append(["Block", b.cidr, b.size, f"{len(b.allocations)} ({100 * len(b.allocations) / b.size:.0f}%)",
                             b.free])
    if args.output == "json":
        emit(data, "json")
    else:
        table(["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"], rows)
    return 0


def _print_report(report) -> None:
    from podnet.cli.output import table

    print(f"{len(report.leaked)} leaked addresses, {len(report.endpoints_without_ips)} endpoints without addresses, "
          f"{len(report.orphan_blocks)} blocks without a live node, "
          f"{len(report.endpoints_gone)} endpoints whose sandbox or node is gone, "
          f"{len(report.kernel_conflicts)} addresses live in a kernel against IPAM")
    if report.leaked:
        print()
        table(["LEAKED IP", "HANDLE", "BLOCK", "NODE", "WHY", "ALLOCATED"],
              [[x["ip"], x["handle"], x["block"], x["node"], x["reason"], x["allocated"]] for x in report.leaked])
    if report.endpoints_gone:
        print()
        table(["NODE", "ENDPOINT", "IPS", "WHY"],
              [[x["node"], x["endpoint"], ",".join(x["ips"]), x["reason"]] for x in report.endpoints_gone])
    if report.endpoints_without_ips:
        print()
        table(["NODE", "ENDPOINT", "MISSING IPS"],
              [[x["node"], x["endpoint"], ",".join(x["ips"])] for x in report.endpoints_without_ips])
    if report.orphan_blocks:
        print()
        table(["BLOCK", "NODE (GONE)", "IN USE"], [[x["cidr"], x["node"], x["in_use"]] for x in report.orphan_blocks])
    if report.kernel_conflicts:
        print()
        table(["IP", "LIVE IN NODE", "HELD BY", "IPAM SAYS"],
              [[x["ip"], x["node"], x["holder"], x["reason"]] for x in report.kernel_conflicts])
    if report.unreported_nodes:
        print(f"\nnot yet reported by their agents (kernel not compared): {', '.join(report.unreported_nodes)}")


def cmd_check(args) -> int:
    from podnet.ipam.maintenance import check

    res, ipam = _clients(args)
    report = check(ipam, res)
    if args.report:
        with open(args.report, "w") as f:
            json.dump(report.to_dict(), f, indent=2)
    _print_report(report)
    if report.leaked or report.endpoints_gone or report.orphan_blocks:
        print("\nrelease them with: podnet ipam gc --yes (podnet ipam gc shows what it would do)")
    if report.kernel_conflicts:
        print("\nan address live against IPAM needs a decision: delete the pod (or node) that should not hold it")
    return 0 if report.clean else 1


def cmd_gc(args) -> int:
    from podnet.ipam.maintenance import gc

    res, ipam = _clients(args)
    report, done = gc(ipam, res, apply=args.yes)
    if not args.yes:
        _print_report(report)
        todo = len(report.leaked) + len(report.endpoints_gone) + len(report.orphan_blocks)
        print(f"\ndry run: nothing changed; `podnet ipam gc --yes` releases these {todo} findings"
              if todo else "\nnothing to collect")
        return 0
    print(f"removed {len(done['endpoints_removed'])} endpoints whose sandbox or node is gone, "
          f"released {len(set(done['released']))} addresses and {len(done['blocks_released'])} blocks")
    for what in ("endpoints_removed", "released", "blocks_released"):
        if done[what]:
            print(f"  {what.replace('_', ' ')}: {', '.join(sorted(set(done[what])))}")
    if done.get("kept_held"):
        print(f"left alone: {', '.join(done['kept_held'])}, leaked in IPAM but still live in a node's kernel "
              "(remove what holds it there first)")
    if report.kernel_conflicts:
        print(f"left alone: {len(report.kernel_conflicts)} addresses live in a kernel against IPAM "
              "(see podnet ipam check)")
    return 0


def cmd_release(args) -> int:
    from podnet.ipam.maintenance import IpamReport, release_address, release_reported

    res, ipam = _clients(args)
    if args.from_report:
        with open(args.from_report) as f:
            report = IpamReport.from_dict(json.load(f))
        released = release_reported(ipam, report)
        print(f"released {len(released)} of {len(report.leaked)} reported addresses")
        return 0
    if not args.ip:
        raise PodnetError("give --ip ADDRESS or --from-report FILE")
    try:
        ipaddress.ip_address(args.ip)
    except ValueError:
        raise PodnetError(f"{args.ip!r} is not an IP address") from None
    handle, broken = release_address(ipam, res, args.ip, force=args.force)
    if handle is None:
        raise PodnetError(f"{args.ip} is not assigned")
    print(f"released {args.ip} (handle {handle})")
    for what in broken:
        print(f"warning: {what}")
    return 0


def cmd_configure(args) -> int:
    from podnet.ipam.allocator import IpamConfig

    _, ipam = _clients(args)
    current = ipam.config()
    strict = current.strict_affinity if args.strictaffinity is None else args.strictaffinity == "true"
    limit = current.max_blocks_per_host if args.max_blocks_per_host is None else args.max_blocks_per_host
    ipam.set_config(IpamConfig(strict, limit))
    print(f"strictAffinity: {str(strict).lower()}, maxBlocksPerHost: {limit or 'unlimited'}")
    return 0


def cmd_node_delete(args) -> int:
    from podnet.ipam.maintenance import remove_node

    res, ipam = _clients(args)
    summary = remove_node(ipam, res, args.name, force=args.force, wait=args.wait, progress=print)
    if not summary["node_existed"] and not summary["released"] and not summary["blocks_released"] \
            and not summary["fenced"]:
        raise PodnetError(f"node {args.name} does not exist")
    if summary["fenced"] and not summary["withdrawn"]:
        print(f"node {args.name} deleted and fenced, but its agent has not withdrawn within {args.wait:.0f}s: "
              "its addresses and blocks stay reserved until it does or its liveness expires; then run "
              "`podnet ipam gc --yes` to release them")
        return 1
    if summary["fenced"]:
        print(f"node {args.name} deleted and fenced: its agent removed its pods' network and its tunnel from its "
              "kernel, released its addresses and blocks, and serves no more ADDs")
    else:
        print(f"node {args.name} deleted: released {len(summary['released'])} addresses, "
              f"{len(summary['blocks_released'])} blocks, {summary['endpoints_removed']} endpoints")
    if summary["blocks_kept"]:
        print(f"kept blocks still used by other nodes: {', '.join(summary['blocks_kept'])}")
    return 0


def register(sub) -> None:
    ipam = sub.add_parser("ipam", help="IP address management")
    ipam_sub = ipam.add_subparsers(dest="ipam_command", required=True)
    show = ipam_sub.add_parser("show", help="pool and block usage")
    show.add_argument("--ip")
    show.add_argument("--show-blocks", action="store_true")
    show.add_argument("--show-borrowed", action="store_true")
    show.add_argument("-o", "--output", choices=("table", "json"), default="table")
    show.set_defaults(func=cmd_show)
    chk = ipam_sub.add_parser("check", help="find leaked addresses, endpoints whose sandbox is gone, orphaned "
                                            "blocks, addresses live in a node's kernel against IPAM")
    chk.add_argument("-o", "--report", metavar="FILE", help="write the findings as JSON (for ipam release)")
    chk.set_defaults(func=cmd_check)
    gcp = ipam_sub.add_parser("gc", help="release what `ipam check` finds leaked (a dry run without --yes)")
    gcp.add_argument("--yes", action="store_true", help="release them (without it: only show what would go)")
    gcp.set_defaults(func=cmd_gc)
    rel = ipam_sub.add_parser("release", help="release an address, or every leaked one of a check report")
    rel.add_argument("--ip")
    rel.add_argument("--from-report", metavar="FILE")
    rel.add_argument("--force", action="store_true",
                     help="release an address a live pod or node tunnel uses (says what breaks)")
    rel.set_defaults(func=cmd_release)
    conf = ipam_sub.add_parser("configure", help="cluster-wide IPAM settings")
    conf.add_argument("--strictaffinity", choices=("true", "false"))
    conf.add_argument("--max-blocks-per-host", type=int)
    conf.set_defaults(func=cmd_configure)

    node = sub.add_parser("node", help="node operations")
    node_sub = node.add_subparsers(dest="node_command", required=True)
    dele = node_sub.add_parser("delete", help="remove a node, its routes everywhere, its addresses and blocks")
    dele.add_argument("name")
    dele.add_argument("--force", action="store_true",
                      help="delete a node whose agent is running: fence it (it withdraws and releases its addresses)")
    dele.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                      help="with --force: how long to wait for the agent to withdraw (default 60)")
    dele.set_defaults(func=cmd_node_delete)
