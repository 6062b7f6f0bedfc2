"""Fixtures for tests that build real namespaces, devices and agents. They need root."""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid

import pytest

from podnet.dataplane import topology
from podnet.lab.lab import Lab, LabSpec


def pytest_collection_modifyitems(items):
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.root)


@pytest.fixture(autouse=True)
def _need_root():
    if os.geteuid() != 0:
        # Not a skip: CI runs as root, and a silent skip would hide a broken suite.
        pytest.fail("integration tests need root (network namespaces and kernel devices)")


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"


@contextlib.contextmanager
def scratch_netns(prefix: str):
    """An empty network namespace with a unique name, deleted when the block ends, also on failure."""
    name = unique(prefix)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@contextlib.contextmanager
def built_lab(prefix: str, pod_names: list[str] | None = None, **spec):
    """A lab with a unique name, torn down when the block ends, also when building it failed."""
    lab = Lab(unique(prefix))
    try:
        lab.up(LabSpec(**spec), pod_names=pod_names)
        yield lab
    finally:
        lab.down()


class LabFixture:
    """Build a lab and always tear it down, also when the test or the build fails."""

    def __init__(self, prefix: str):
        self.name = unique(prefix)
        self.lab = Lab(self.name)

    def up(self, **spec) -> Lab:
        pod_names = spec.pop("pod_names", None)
        self.lab.up(LabSpec(**spec), pod_names=pod_names)
        return self.lab

    def down(self) -> None:
        self.lab.down()


@pytest.fixture
def lab_factory():
    made: list[LabFixture] = []

    def make(prefix: str = "pnt-", **spec) -> Lab:
        fx = LabFixture(prefix)
        made.append(fx)
        return fx.up(**spec)

    yield make
    for fx in made:
        fx.down()


@pytest.fixture
def sandbox(lab):
    """make() -> the path of a fresh pod namespace of the module's `lab`; all removed afterwards."""
    made = []

    def make() -> str:
        name = f"{lab.name}-sb{uuid.uuid4().hex[:6]}"
        topology.create_netns(name)
        made.append(name)
        return f"/run/netns/{name}"

    yield make
    for name in made:
        topology.delete_netns(name)
