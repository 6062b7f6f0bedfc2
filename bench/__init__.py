"""podnet benchmarks (issue 2): each figure measured beside a peer in the same run.

Run `python3 -m bench` (all nine, 4-6 minutes on 2 cores) or `python3 -m bench --quick`
(~3 minutes); `python3 -m bench add program drift join ipam join-etcd burst sandbox address`
picks some. Needs root;
everything happens inside network namespaces named `pnb-<tag>-...` that the
benchmark creates and deletes. See docs/benchmarks.md.
"""
