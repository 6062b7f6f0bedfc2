"""Real container runtimes (containerd over the CRI, podman with the CNI backend) on a podnet lab.

The runtimes run inside a lab node's network namespace, so the CNI plugin they execute reaches that
node's podnet agent. These tests run in CI (`make test` installs the runtimes): a missing binary or
Python module is a failure that names the package, never a skip.
"""

from __future__ import annotations

import os

import pytest

from tests.integration.conftest import built_lab

from tests.runtimes.cri import MissingDependency
from tests.runtimes.runtime_util import RuntimeSetupError, mount_cgroups_if_none, unmount_cgroups


def pytest_configure(config):
    config.addinivalue_line("markers", "runtimes: drives a real container runtime (containerd, podman); needs root")


def pytest_collection_modifyitems(items):
    for item in items:
        if "/runtimes/" in str(item.fspath):
            item.add_marker(pytest.mark.root)
            item.add_marker(pytest.mark.runtimes)


@pytest.fixture(autouse=True)
def _need_root():
    if os.geteuid() != 0:
        pytest.fail("runtime tests need root (network namespaces, containers)")


@pytest.fixture(scope="session", autouse=True)
def _cgroups():
    """runc needs the cgroup hierarchies at /sys/fs/cgroup: where nothing is mounted there (a chroot that
    binds /sys alone), they are mounted for the session and unmounted after it; a host that has them is
    left as it is."""
    if os.geteuid() != 0:
        yield
        return
    try:
        made = mount_cgroups_if_none()
    except RuntimeSetupError as e:
        _setup_failure(e)
    try:
        yield
    finally:
        unmount_cgroups(made)


@pytest.fixture(scope="module")
def runtime_lab():
    """Two nodes with one lab pod each; the runtime under test runs on node-1."""
    with built_lab("pnr-", nodes=2, pods_per_node=1) as lab:
        yield lab


def _setup_failure(e: Exception):
    pytest.fail(f"runtime setup failed: {e}", pytrace=False)


@pytest.fixture(scope="module")
def containerd(runtime_lab):
    """One containerd per module on node-1, with a recorder in front of the podnet plugin."""
    from tests.runtimes.containerd import Containerd

    runtime = Containerd(runtime_lab.node_netns("node-1"), record_calls=True)
    try:
        runtime.start()
    except (RuntimeSetupError, MissingDependency) as e:
        _setup_failure(e)
    try:
        yield runtime
    finally:
        forced = runtime.stop()
        if forced:
            print(f"containerd teardown had to force: {forced}")


@pytest.fixture(scope="module")
def podman(runtime_lab):
    """podman on node-1 (its own storage, config and CNI dirs), with a recorder in front of the plugin."""
    from tests.runtimes.podman import Podman

    runtime = Podman(runtime_lab.node_netns("node-1"), record_calls=True)
    try:
        runtime.setup()
    except RuntimeSetupError as e:
        _setup_failure(e)
    try:
        yield runtime
    finally:
        forced = runtime.teardown()
        if forced:
            print(f"podman teardown had to force: {forced}")
