"""Real container runtimes (containerd 1.6 over the CRI, podman 4.3 with CNI) running podnet in a lab."""
