"""`podnet describe ippool|node|agentconfiguration NAME`: one resource and what relates to it."""

from __future__ import annotations

from podnet.errors import PodnetError


def _kv(rows: list[tuple[str, object]]) -> None:
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k + ':':<{width + 1}} {v if v not in (None, '', []) else '-'}")


def _offload_rows(status: dict | None) -> list[tuple[str, object]]:
    """The agent's TX checksum offload decision per VXLAN device, and why (podnet.agent.offloads)."""
    offloads = (status or {}).get("offloads") or {}
    if not offloads:
        return [("TX checksum offload", "not reported (has the node's agent run?)")]
    rows = [(f"TX checksum offload {dev}", f"{'on' if d['txChecksumOffload'] else 'off'} ({d['source']}): {d['reason']}")
            for dev, d in sorted(offloads.items())]
    errors = status.get("checksumErrors")
    if errors:
        rows.append(("Checksum errors received", ", ".join(f"{k} InCsumErrors {v}" for k, v in sorted(errors.items()))))
    return rows


def cmd_describe(args) -> int:
    from podnet.cli.output import table
    from podnet.datastore import open_datastore
    from podnet.datastore.resources import NotFound, Resources
    from podnet.ipam import Ipam

    from podnet.model.kinds import lookup

    kind = lookup(args.kind).name
    if kind in ("Pod", "WorkloadEndpoint"):
        from podnet.cli.cmd_policy_describe import describe_workload

        describe_workload(open_datastore(args.datastore, create=False), args.name, getattr(args, "namespace", None))
        return 0
    if kind not in ("IPPool", "Node", "AgentConfiguration"):
        raise PodnetError(f"cannot describe {args.kind!r}", "use ippool, node or agentconfiguration")
    store = open_datastore(args.datastore, create=False)
    res, ipam = Resources(store), Ipam(store)
    if kind == "IPPool":
        try:
            pool = res.pool(args.name)
        except NotFound as e:
            raise PodnetError(str(e)) from None
        blocks = [b for b in ipam.blocks(pool.version) if b.network.subnet_of(pool.network)]
        used = sum(len(b.allocations) for b in blocks)
        selected = [n.name for n in res.nodes() if pool.selects(n.labels)]
        _kv([("Name", pool.name), ("CIDR", pool.cidr), ("Block size", f"/{pool.block_size}"),
             ("VXLAN mode", pool.vxlan_mode), ("NAT outgoing", pool.nat_outgoing), ("Disabled", pool.disabled),
             ("Node selector", pool.node_selector), ("Allowed uses", ", ".join(pool.allowed_uses)),
             ("Addresses in use", f"{used} of {pool.network.num_addresses}"),
             ("Nodes selected", ", ".join(selected))])
        if blocks:
            print()
            table(["BLOCK", "NODE", "IN USE", "FREE"], [[b.cidr, b.node, len(b.allocations), b.free] for b in blocks])
    elif kind == "Node":
        node = res.node(args.name)
        if node is None:
            raise PodnetError(f"node {args.name} does not exist")
        blocks = [b for b in ipam.blocks() if b.node == node.name]
        borrowed = [(ip, b.cidr) for b in ipam.blocks() for ip, user in b.borrowed().items() if user == node.name]
        _kv([("Name", node.name), ("Underlay address", node.address), ("Interface", node.interface),
             ("VTEP MAC", node.effective_vtep_mac), ("Tunnel address", node.tunnel_address),
             ("IPv6 underlay address", node.address6), ("IPv6 tunnel address", node.tunnel_address6),
             ("IPv6 VTEP MAC", node.vtep_mac6 if node.address6 else None),
             ("Labels", ", ".join(f"{k}={v}" for k, v in sorted(node.labels.items()))),
             ("Blocks", ", ".join(b.cidr for b in blocks)),
             ("Borrowed addresses", ", ".join(f"{ip} (from {c})" for ip, c in borrowed)),
             *_offload_rows(res.node_status(node.name))])
        eps = res.endpoints(node.name)
        if eps:
            print()
            table(["POD", "NAMESPACE", "IPS", "HOST-IF"],
                  [[e.pod_name, e.pod_namespace, ",".join(e.ips), e.host_interface] for e in eps])
    elif kind == "AgentConfiguration":
        config = next((c for c in res.agent_configs() if c.name == args.name), None)
        if config is None:
            raise PodnetError(f"agentconfiguration {args.name} does not exist")
        _kv([("Name", config.name), ("Applies to", config.node or "every node"), ("VXLAN VNI", config.vni),
             ("VXLAN port", config.port), ("VXLAN MTU", config.mtu), ("MTU interface pattern", config.mtu_iface_pattern),
             ("TX checksum offload", config.tx_checksum_offload)])
        ignored = config.not_applied()
        if ignored:
            print()
            print("Not applied by podnet (stored as given):")
            table(["FIELD", "VALUE", "WHY"], [[k, v, why] for k, v, why in ignored])
    return 0


def register(sub) -> None:
    d = sub.add_parser("describe", help="one resource in detail")
    d.add_argument("kind", help="ippool | node | agentconfiguration | pod (its policies and rules)")
    d.add_argument("name", help="for a pod: NAMESPACE/NAME")
    d.add_argument("-n", "--namespace", default=None, help="a pod's namespace (default: default)")
    d.set_defaults(func=cmd_describe)
