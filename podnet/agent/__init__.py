"""The per-node agent: registers the node, keeps its kernel state converged, serves CNI requests."""
