"""A cluster on one machine: nodes are network namespaces on a shared underlay, with real agents
and pods attached by the real CNI plugin, exactly as a container runtime would call it."""
