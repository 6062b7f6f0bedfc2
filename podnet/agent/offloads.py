"""The agent's offload keeper: TX checksum offload of the VXLAN devices, as the node's evidence decides.

The self-test (podnet.dataplane.csum_selftest) runs once per agent process, at the first reconcile
that has a device: it is a fact about this kernel, not about the cluster. Each reconcile then keeps
every device as decided (podnet.calc.offload), logs a decision when it changes, and reports the
decisions, the evidence and the node's checksum error counters (InCsumErrors, written again only
when they change) in the node's status record, which `podnet describe node` and `podnet doctor` show.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable

from podnet.calc.config import VxlanConfig
from podnet.calc.offload import ChecksumEvidence, OffloadDecision, decide_tx_checksum
from podnet.dataplane import csum_selftest, ethtool

log = logging.getLogger(__name__)


class OffloadKeeper:
    def __init__(self, publish: Callable[[dict], None] | None = None,
                 selftest: Callable[[VxlanConfig], ChecksumEvidence] | None = None,
                 counters: Callable[[], dict] | None = None):
        self.publish = publish  # writes the node's status record; failures are retried next reconcile
        self._selftest = selftest or (lambda c: csum_selftest.run(c.vni, c.port, min(c.device_mtu(None), 1450)))
        self._counters = counters or csum_selftest.checksum_errors
        self.evidence: ChecksumEvidence | None = None
        self.decisions: dict[str, OffloadDecision] = {}
        self._published: dict | None = None

    def ensure(self, devices: Iterable[str], config: VxlanConfig) -> None:
        devices = list(devices)
        if devices and self.evidence is None:
            self.evidence = self._selftest(config)
            log.info("VXLAN checksum offload self-test %s: %s", self.evidence.selftest, self.evidence.detail)
        decision = decide_tx_checksum(config.tx_checksum_offload, self.evidence)
        for name in devices:
            if self.decisions.get(name) != decision:
                log.info("TX checksum offload of %s %s: %s", name, "on" if decision.tx_checksum else "off",
                         decision.reason)
            self.decisions[name] = decision
            if ethtool.tx_checksum(name) != decision.tx_checksum:
                ethtool.set_tx_checksum(name, decision.tx_checksum)
                log.info("turned TX checksum offload %s on %s", "on" if decision.tx_checksum else "off", name)
        for name in set(self.decisions) - set(devices):
            del self.decisions[name]
        self._report()

    def status(self) -> dict:
        try:  # what the real underlay delivers: a sender whose offload mangles checksums shows here
            errors = self._counters()
        except OSError:
            errors = None
        return {"offloads": {name: d.to_dict() for name, d in sorted(self.decisions.items())},
                "checksumSelfTest": self.evidence.to_dict() if self.evidence else None,
                "checksumErrors": errors}

    def _report(self) -> None:
        status = self.status()
        if self.publish is None or status == self._published:
            return
        try:
            self.publish(status)
            self._published = status
        except Exception as e:  # the datastore may be away; the dataplane must not wait for it
            log.warning("could not record the offload decisions in the node's status: %s", e)
