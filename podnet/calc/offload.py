"""Whether a VXLAN device keeps TX checksum offload: decided by evidence from the node, not its kernel version.

The kernel turns TX checksum offload on for every VXLAN device it creates, and with it segmentation
offload; turning it off costs most of the tunnel's TCP throughput (4.5x measured here). Some kernels
and NICs mangle the inner checksums of offloaded VXLAN traffic (Calico issues 3145 and 11435): there
it must go off. Which case a node is in shows in a self-test through a VXLAN tunnel (does a packet
arrive with a valid checksum?), so that result decides, unless the configuration says otherwise.
Pure: the agent gathers the evidence, this says what it means.
"""

from __future__ import annotations

from dataclasses import dataclass

PASSED, FAILED, NOT_RUN = "passed", "failed", "not-run"


@dataclass(frozen=True)
class ChecksumEvidence:
    """What the self-test through a VXLAN tunnel saw (podnet.dataplane.csum_selftest runs it)."""

    selftest: str  # PASSED | FAILED | NOT_RUN (it could not run: the kernel's default stands)
    detail: str  # what it sent and saw, or why it could not run

    def to_dict(self) -> dict:
        return {"selftest": self.selftest, "detail": self.detail}


@dataclass(frozen=True)
class OffloadDecision:
    tx_checksum: bool
    source: str  # "configuration" | "self-test" | "kernel default"
    reason: str  # one sentence for the log, `podnet describe node` and `podnet doctor`

    def to_dict(self) -> dict:
        return {"txChecksumOffload": self.tx_checksum, "source": self.source, "reason": self.reason}


def decide_tx_checksum(configured: bool | None, evidence: ChecksumEvidence | None) -> OffloadDecision:
    """An explicit setting wins; else off only where the self-test saw bad checksums; else the kernel's
    default for a VXLAN device (on)."""
    seen = f" (self-test: {evidence.selftest}: {evidence.detail})" if evidence else ""
    if configured is not None:
        return OffloadDecision(configured, "configuration",
                               f"vxlanTxChecksumOffload is {'true' if configured else 'false'} in the agent "
                               f"configuration{seen}")
    if evidence is not None and evidence.selftest == FAILED:
        return OffloadDecision(False, "self-test",
                               "turned off: a packet sent through a VXLAN tunnel with TX checksum offload on "
                               f"arrived with a bad checksum on this node (calico issues 3145, 11435): {evidence.detail}")
    if evidence is not None and evidence.selftest == PASSED:
        return OffloadDecision(True, "self-test",
                               f"kept on (the kernel's default): checksums through a VXLAN tunnel were valid: "
                               f"{evidence.detail}")
    why = f"the self-test could not run: {evidence.detail}" if evidence else "no self-test has run"
    return OffloadDecision(True, "kernel default", f"kept on (the kernel's default): {why}")
