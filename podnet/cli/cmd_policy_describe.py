"""`podnet describe pod NS/NAME` (or a workload endpoint): the policies that select it, in the order
they are evaluated, their rules, and what happens when none decides."""

from __future__ import annotations

from podnet.errors import PodnetError


def describe_workload(store, ref: str, namespace: str | None = None) -> None:
    from podnet.calc.policy import effective_rules, endpoint_chain, ordered, policy_endpoint, policy_selects
    from podnet.datastore.resources import Resources
    from podnet.model.kinds import lookup

    res = Resources(store)
    ns, _, name = ref.rpartition("/")
    ns = ns or namespace or "default"
    eps = [e for e in res.endpoints() if (e.pod_namespace or "default") == ns and e.pod_name == name]
    eps = eps or [e for e in res.endpoints() if e.key_name == ref]
    if not eps:
        raise PodnetError(f"no workload endpoint of pod {ns}/{name}", "podnet get workloadendpoints -A lists them")
    pod = res.get(lookup("Pod"), name, ns)
    namespace_rec = res.get(lookup("Namespace"), ns)
    policies = ordered(res.list(lookup("NetworkPolicy")) + res.list(lookup("GlobalNetworkPolicy")))
    for wep in eps:
        ep = policy_endpoint(wep, pod, namespace_rec)
        rows = [("Pod", ep.key), ("Node", ep.node), ("Interface", f"{ep.interface} (pod side {wep.interface})"),
                ("Addresses", ", ".join(ep.ips)),
                ("Labels", ", ".join(f"{k}={v}" for k, v in sorted(ep.labels.items()))),
                ("Namespace labels", ", ".join(f"{k}={v}" for k, v in sorted(ep.namespace_labels.items()))),
                ("Named ports", ", ".join(f"{p.name}={p.port}/{p.protocol}" for p in ep.ports) or "-")]
        width = max(len(k) for k, _ in rows)
        for k, v in rows:
            print(f"{k + ':':<{width + 1}} {v}")
        effective = effective_rules(ep, policies)
        by_display = {p.display: p for p in policies if policy_selects(p, ep)}
        for direction in ("Ingress", "Egress"):
            chain = endpoint_chain(ep.interface, direction)
            selected = effective[direction]
            print(f"\n{direction} (chain {chain}), evaluated in this order:")
            if not selected:
                print("  no policy selects it: the namespace profile allows everything")
                continue
            for i, (display, rules) in enumerate(selected, 1):
                p = by_display[display]
                order = "unset (last)" if p.order is None else f"{p.order:g}"
                print(f"  {i}. {display} ({p.kind}, order {order})")
                for j, text in enumerate(rules):
                    print(f"       [{j}] {text}")
                if not rules:
                    print("       (no rules: selects, allows nothing)")
            print("  then: drop (a policy of tier default selected it and none allowed)")
