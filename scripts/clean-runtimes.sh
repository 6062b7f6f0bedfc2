#!/usr/bin/env bash
# Removes what podnet's runtime tests (tests/runtimes) left behind when their process was killed
# before teardown: containerd/podman processes, runc containers, network namespaces, mounts, cgroups
# and temp dirs of dead test runs only (a live run's are left alone). Then the labs: make clean-lab.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m tests.runtimes.sweep
