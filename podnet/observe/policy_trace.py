"""The filter hops of `podnet trace`: the source pod's egress policy on its node, the destination pod's
ingress policy on its node; each names the policy and rule that allowed or denied the packet (as the
calculation layer evaluates it) and checks that the node's filter table holds the endpoint at all."""

from __future__ import annotations

from podnet.observe.trace import BROKEN, OK, Hop, Trace

PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17, "sctp": 132}


def read_policy_inputs(store) -> dict:
    """Endpoints (with labels), policies: what the hops judge from. Read while the store is open."""
    from podnet.calc.policy import policy_endpoint
    from podnet.datastore.resources import Resources
    from podnet.model.kinds import lookup

    res = Resources(store)
    pods = {(p.namespace, p.name): p for p in res.list(lookup("Pod"))}
    namespaces = {n.name: n for n in res.list(lookup("Namespace"))}
    eps = {}
    for w in res.endpoints():
        ns = w.pod_namespace or "default"
        eps[w.host_interface] = policy_endpoint(w, pods.get((ns, w.pod_name)), namespaces.get(ns))
    policies = res.list(lookup("NetworkPolicy")) + res.list(lookup("GlobalNetworkPolicy"))
    return {"endpoints": eps, "policies": policies}


def add_filter_hops(t: Trace, facts, inputs: dict, protocol: str = "icmp", port: int | None = None) -> None:
    from podnet.calc.policy import FROM_MAP, TO_MAP, Packet, endpoint_chain, evaluate

    eps = inputs["endpoints"]
    by_ip = {ip: ep for ep in eps.values() for ip in ep.ips}
    src = eps.get(t.src.host_interface) or by_ip.get(t.src.ip)
    dst = eps.get(t.dst.host_interface) if t.dst.host_interface else by_ip.get(t.dst.ip)
    pkt = Packet(t.src.ip, t.dst.ip, PROTOCOLS[protocol], port, src=src, dst=dst)
    what = protocol.upper() + (f" port {port}" if port else " echo request" if protocol == "icmp" else "")
    hops = []
    for direction, ep, node_name in (("Egress", src, t.src.node), ("Ingress", dst, t.dst.node)):
        if ep is None:
            continue
        chain = endpoint_chain(ep.interface, direction)
        title = f"filter: {direction.lower()} policy of {ep.key} (chain {chain})"
        verdict = evaluate(pkt, direction, inputs["policies"])
        node = facts.nodes.get(node_name)
        table = node.kernel.filter_table if node is not None and node.kernel is not None else None
        explain = (f"{what} from {t.src.ip} to {t.dst.ip}: the policies that select {ep.key} are evaluated in "
                   "order (Calico's by order, then Kubernetes' as knp.default.*); the node's forward chain "
                   + ("sends a new flow to this chain, whose allow goes on to the receiver's side (to-workload)"
                      if direction == "Egress" else "reaches this chain through to-workload, whose allow accepts")
                   + "; later packets of an allowed flow are accepted as established")
        where = node_name
        if table is not None and not table["present"]:
            hops.append(Hop(f"filter-{direction.lower()}", where, title, BROKEN,
                            "the filter table inet podnet is missing", explain, "the agent's table",
                            None, f"check the agent of {node_name}"))
            continue
        if table is not None and ep.interface not in table["endpoints"]:
            hops.append(Hop(f"filter-{direction.lower()}", where, title, BROKEN,
                            f"{ep.interface} has no programmed endpoint: it passes nothing (fail closed)", explain,
                            f'"{ep.interface}" in map {FROM_MAP if direction == "Egress" else TO_MAP}', None,
                            f"check the agent of {node_name}"))
            continue
        status = OK if verdict.allowed else BROKEN
        hint = None if verdict.allowed else "a policy decides this: change the policy if the packet should pass"
        hops.append(Hop(f"filter-{direction.lower()}", where, title, status, verdict.reason, explain,
                        "allowed" if not verdict.allowed else None, None, hint))
    if not hops:
        return
    egress = [h for h in hops if h.id == "filter-egress"]
    ingress = [h for h in hops if h.id == "filter-ingress"]
    after_gateway = next((i + 1 for i, h in enumerate(t.hops) if h.id == "gateway"), min(3, len(t.hops)))
    t.hops[after_gateway:after_gateway] = egress
    before_veth = next((i for i, h in enumerate(t.hops) if h.id == "dst-veth"), len(t.hops))
    t.hops[before_veth:before_veth] = ingress

