"""Network policy: how fast a change is enforced, how fast a big ruleset is programmed, what it costs.

All in a scratch network namespace, with the agent's own filter components (the datastore view, the
calculation, the FilterManager's nft transactions); the endpoints are workload endpoint records whose
interfaces need not exist (nftables keys its maps on interface names).

* change -> enforced: 100 local endpoints, 200 Kubernetes policies; one policy is changed in the
  datastore and the clock stops when the filter loop reports the table programmed for that revision
  (p50/p99; target p99 <= 100 ms). Peers: one `nft -f` process of the same commands, and the same
  through libnftables in-process as the agent runs it (the kernel's floor).
* from empty: 1000 policies x 200 endpoints, the agent's calculation + transaction vs `nft -f` of
  the same ruleset written by the benchmark, medians of 3 alternating rounds (target <= 1.5x); the
  same ruleset loaded as nft JSON
  (`nft -j -f`) is measured beside it (why podnet writes nft's text syntax).
* throughput: pod-to-pod TCP (iperf3) across two lab nodes with 200 policies selecting the pods vs
  none (target >= 0.95x), and the agent's RSS under that load (target <= 150 MiB). The peer is a
  second pair of pods on the same two nodes in a namespace no policy selects; the two pairs are
  measured back to back, the order alternating, and the verdict takes the median of the pairs'
  ratios (one sample of each, minutes apart, was at the mercy of the machine's load).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time

from bench.common import Cleanup, process_rss_mib, progress, ratio, summary_ms

NAME = "policy"
PREFIX = "pnb-"


def _endpoint(i: int, node: str = "bench"):
    from podnet.model.endpoint import WorkloadEndpoint

    return WorkloadEndpoint(node=node, container_id=f"c{i:06d}", interface="eth0", host_interface=f"calib{i:010d}",
                            ips=(f"10.{64 + i // 65536}.{(i // 256) % 256}.{i % 256}/32",), mac="",
                            pod_namespace=f"ns{i % 10}", pod_name=f"p{i}")


def _policy_doc(j: int, port: int = 80) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": f"pol{j}", "namespace": f"ns{j % 10}"},
            "spec": {"podSelector": {"matchLabels": {"app": f"a{j % 20}"}},
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": f"a{(j + 1) % 20}"}}},
                                           {"namespaceSelector": {"matchLabels": {"team": f"t{j % 3}"}}}],
                                  "ports": [{"port": port}, {"port": "http"}]}],
                     "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.9.0.0/16"]}}]}],
                     "policyTypes": ["Ingress", "Egress"]}}


def _fill(store, endpoints: int, policies: int) -> None:
    from podnet.datastore.resources import Resources
    from podnet.model.kinds import lookup
    from podnet.model.kube import ContainerPort, Namespace, Pod
    from podnet.model.policy import parse_policy

    res = Resources(store)
    for n in range(10):
        res.write(lookup("Namespace"), Namespace(f"ns{n}", {"team": f"t{n % 3}"}), "apply")
    for i in range(endpoints):
        ep = _endpoint(i)
        res.put_endpoint(ep)
        res.write(lookup("Pod"), Pod(ep.pod_namespace, ep.pod_name, {"app": f"a{i % 20}"},
                                      (ContainerPort("http", 8080),)), "apply")
    for j in range(policies):
        res.write(lookup("NetworkPolicy"), parse_policy(_policy_doc(j)), "apply")


def _change_latency(netns: str, reps: int) -> dict:
    from podnet.agent.filter_loop import FilterLoop
    from podnet.calc.policy import FilterConfig
    from podnet.dataplane.nftables import run, run_binary  # the peer: a bare `nft -f` process
    from podnet.datastore.resources import Resources
    from podnet.datastore.sqlite import SqliteDatastore
    from podnet.model.kinds import lookup
    from podnet.model.policy import parse_policy
    from podnet.netns import entered

    with tempfile.TemporaryDirectory(prefix="pnb-policy-") as tmp:
        store = SqliteDatastore(os.path.join(tmp, "store.db"), durable=False)
        _fill(store, 100, 200)
        with entered(netns):  # the loop's threads and their nft processes are born in the namespace
            loop = FilterLoop("bench", store, FilterConfig(), None, resync_interval=3600)
            loop.start()
        try:
            _, rev = store.list("/podnet/none/")
            deadline = time.monotonic() + 60
            while loop.status.revision < rev or not loop.status.ok:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the filter loop did not program the table: {loop.status.error}")
                time.sleep(0.005)
            res = Resources(store)
            times, floor, floor_lib = [], [], []
            for r in range(reps):
                doc = _policy_doc(r % 200, port=81 + r)
                t0 = time.perf_counter()
                res.write(lookup("NetworkPolicy"), parse_policy(doc), "apply")
                _, rev = store.list("/podnet/none/")
                while loop.status.revision < rev:
                    time.sleep(0.0005)
                times.append(time.perf_counter() - t0)
                # The floor: the same kind of change as one nft transaction written by hand.
                chain = f"pi-knp/ns{r % 10}/knp.default.pol{r % 200}"
                text = f"flush chain inet podnet {chain}\nadd rule inet podnet {chain} tcp dport {81 + r} accept\n"
                with entered(netns):
                    t1 = time.perf_counter()
                    run_binary(text)
                    floor.append(time.perf_counter() - t1)
                    t1 = time.perf_counter()
                    run(text)  # the same through libnftables in-process, as the agent runs it
                    floor_lib.append(time.perf_counter() - t1)
                # Put the agent's own content back, so the next change starts from its table.
                res.write(lookup("NetworkPolicy"), parse_policy(_policy_doc(r % 200)), "apply")
                _, rev = store.list("/podnet/none/")
                while loop.status.revision < rev:
                    time.sleep(0.0005)
            rss = process_rss_mib(os.getpid())
        finally:
            loop.shutdown()
            store.close()
    return {"agent": summary_ms(times), "nft_floor": summary_ms(floor), "libnftables_floor": summary_ms(floor_lib),
            "bench_process_rss_mib": rss}


REPS_FROM_EMPTY = 3


def _from_empty(netns: str, policies: int, endpoints: int) -> dict:
    from podnet.calc.filter_calc import compute_filter
    from podnet.calc.policy import policy_endpoint
    from podnet.dataplane.filter import FilterManager, run_nft
    from podnet.model.kube import ContainerPort, Namespace, Pod
    from podnet.model.policy import parse_policy
    from podnet.netns import entered

    namespaces = {f"ns{n}": Namespace(f"ns{n}", {"team": f"t{n % 3}"}) for n in range(10)}
    eps = []
    for i in range(endpoints):
        w = _endpoint(i)
        eps.append(policy_endpoint(w, Pod(w.pod_namespace, w.pod_name, {"app": f"a{i % 20}"},
                                          (ContainerPort("http", 8080),)), namespaces[w.pod_namespace]))
    pols = [parse_policy(_policy_doc(j)) for j in range(policies)]
    import statistics

    agent, calc, text_s = [], [], []
    with entered(netns):
        # Rounds alternate the agent and `nft -f` so that machine noise falls on both; medians.
        for _ in range(REPS_FROM_EMPTY):
            manager = FilterManager()
            t0 = time.perf_counter()
            ruleset = compute_filter("bench", eps, pols, ["172.31.0.11/24"])
            calc.append(time.perf_counter() - t0)
            manager.set_desired(ruleset)
            manager.apply_updates()
            agent.append(time.perf_counter() - t0)
            text = ruleset.render()
            listing = run_nft(None, "-j", "list", "table", "inet", "podnet")
            run_nft(None, "delete", "table", "inet", "podnet")
            with tempfile.NamedTemporaryFile("w", suffix=".nft", delete=False) as f:
                f.write(text)
            try:
                t1 = time.perf_counter()
                subprocess.run(["nft", "-f", f.name], check=True)
                text_s.append(time.perf_counter() - t1)
                subprocess.run(["nft", "delete", "table", "inet", "podnet"], check=True)
            finally:
                os.unlink(f.name)
        size = {"rules": text.count("\n"), "chains": len(ruleset.chains), "sets": len(ruleset.sets)}
        # nft's listing names maps before the chains their verdicts jump to; loading needs them after.
        order = {"metainfo": 0, "table": 1, "set": 2, "chain": 3, "map": 4, "rule": 5}
        doc = json.loads(listing)
        doc["nftables"].sort(key=lambda o: order.get(next(iter(o)), 9))
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as g:
            json.dump(doc, g)
        try:
            t2 = time.perf_counter()
            subprocess.run(["nft", "-j", "-f", g.name], check=True)
            t_json = time.perf_counter() - t2
        finally:
            os.unlink(g.name)
            subprocess.run(["nft", "delete", "table", "inet", "podnet"], capture_output=True)
    t_agent, t_calc, t_text = statistics.median(agent), statistics.median(calc), statistics.median(text_s)
    return {"size": size, "reps": REPS_FROM_EMPTY, "agent_s": round(t_agent, 3), "of_which_calculation_s": round(t_calc, 3),
            "nft_text_s": round(t_text, 3), "nft_json_s": round(t_json, 3),
            "agent_vs_nft_text": ratio(t_agent, t_text), "json_vs_text": ratio(t_json, t_text)}


def _throughput(tag: str, seconds: int, policies: int, reps: int) -> dict:
    import statistics

    from podnet.datastore.resources import Resources
    from podnet.lab.lab import Lab, LabSpec
    from podnet.model.kinds import lookup
    from podnet.model.policy import parse_policy

    lab = Lab(f"pnb-{tag[-6:]}-pol")
    iperfs = []
    try:
        lab.up(LabSpec(nodes=2, pods_per_node=0))
        pairs = {}
        for ns in ("perf", "free"):  # the policies select the pods of perf; none selects free's
            server = lab.add_pod("node-2", "server", ns, labels={"app": "server"}, wait_filter=True)
            client = lab.add_pod("node-1", "client", ns, labels={"app": "client"}, wait_filter=True)
            iperfs.append(subprocess.Popen(["ip", "netns", "exec", server["netns"], "iperf3", "-s"],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            pairs[ns] = (client, server)
        time.sleep(0.5)

        def measure(ns: str) -> float:
            client, server = pairs[ns]
            out = lab.exec(client["netns"], "iperf3", "-c", server["ip"], "-t", str(seconds), "-J", timeout=seconds + 30)
            return json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9

        with lab.datastore() as store:
            res = Resources(store)
            for j in range(policies):
                doc = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                       "metadata": {"name": f"allow{j}", "namespace": "perf"},
                       "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": f"x{j}"}}}],
                                             "ports": [{"port": 1000 + j}]}] + ([{}] if j == policies - 1 else []),
                                "egress": [{"ports": [{"port": 1000 + j}]}] + ([{}] if j == policies - 1 else [])}}
                res.write(lookup("NetworkPolicy"), parse_policy(doc), "apply")
        lab.wait_filter()
        runs = {"perf": [], "free": []}
        for i in range(reps):
            for ns in (("perf", "free") if i % 2 == 0 else ("free", "perf")):
                runs[ns].append(measure(ns))
        rss = [process_rss_mib(n["pid"]) for n in lab.state["nodes"]]
        pair_ratios = [ratio(w, n) for w, n in zip(runs["perf"], runs["free"])]
        return {"gbit_none": round(statistics.median(runs["free"]), 2),
                "gbit_with_policies": round(statistics.median(runs["perf"]), 2),
                "ratio": round(statistics.median([r for r in pair_ratios if r is not None]), 3) or None,
                "pair_ratios": pair_ratios, "gbit_none_all": [round(x, 2) for x in runs["free"]],
                "gbit_with_policies_all": [round(x, 2) for x in runs["perf"]], "agent_rss_mib": rss}
    finally:
        for p in iperfs:
            p.kill()
            p.wait()
        lab.down()


def run(tag: str, quick: bool) -> dict:
    with Cleanup() as c:
        netns = c.netns(f"{PREFIX}{tag}-policy")
        progress("policy: change -> enforced, 100 endpoints x 200 policies")
        change = _change_latency(netns, 20 if quick else 100)
        progress("policy: 1000 policies x 200 endpoints from empty, agent vs nft -f (text and JSON)")
        empty = _from_empty(netns, 1000, 200)
    progress("policy: iperf3 across two lab nodes, 200 policies vs none")
    tput = _throughput(tag, 2 if quick else 4, 200, 3 if quick else 5)
    checks = {
        "change_p99_ms<=100": change["agent"]["p99"] <= 100.0,
        "from_empty<=1.5x_nft": (empty["agent_vs_nft_text"] or 99) <= 1.5,
        "throughput>=0.95x": (tput["ratio"] or 0) >= 0.95,
        "agent_rss<=150MiB": all(r is not None and r <= 150 for r in tput["agent_rss_mib"]),
    }
    return {"params": {"quick": quick}, "change_to_enforced_ms": change, "from_empty": empty,
            "throughput": tput, "checks": checks, "pass": all(checks.values())}


if __name__ == "__main__":
    print(json.dumps(run("manual", "--quick" in sys.argv), indent=1))
