"""Apply the masquerade table through podnet.dataplane.nftables: the whole table in one atomic transaction.

The kernel's listing of the table right after applying is remembered; a later
listing that differs means someone changed it, and the table is applied again
(NatManager, on its periodic resync).
"""

from __future__ import annotations

import errno
import logging
import socket
import struct

from podnet.dataplane import nftables
from podnet.dataplane.manager import DeltaTracker, Manager
from podnet.errors import PodnetError

log = logging.getLogger(__name__)


class NatError(PodnetError):
    pass


# nf_tables over netlink (linux/netfilter/nfnetlink.h, nf_tables.h): enough to ask whether a table exists.
_NETLINK_NETFILTER = 12
_NFT_NEWTABLE, _NFT_GETTABLE = (10 << 8) | 0, (10 << 8) | 1  # NFNL_SUBSYS_NFTABLES
_NFTA_TABLE_NAME = 1
_NLM_F_REQUEST, _NLM_F_ACK, _NLMSG_ERROR = 1, 4, 2
_NFPROTO = {"inet": 1, "ip": 2, "arp": 3, "netdev": 5, "bridge": 7, "ip6": 10}


class NatTable:
    def __init__(self, table: str = "podnet", family: str = "ip"):
        self.table = table
        self.family = family
        self._applied: str | None = None  # the desired text we last applied
        self._listing: str | None = None  # what the kernel showed right after

    def exists(self) -> bool | None:
        """Whether the kernel holds the table, asked over netlink (no nft process: a start with
        nothing to masquerade costs one request); None when the kernel would not say."""
        family = _NFPROTO.get(self.family)
        if family is None:
            return None
        name = self.table.encode() + b"\0"
        attr = struct.pack("=HH", 4 + len(name), _NFTA_TABLE_NAME) + name + b"\0" * (-len(name) % 4)
        body = struct.pack("=BBH", family, 0, 0) + attr
        msg = struct.pack("=IHHII", 16 + len(body), _NFT_GETTABLE, _NLM_F_REQUEST | _NLM_F_ACK, 1, 0) + body
        try:
            with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER) as sock:
                sock.settimeout(5)
                sock.send(msg)
                found = False
                while True:
                    data = sock.recv(65536)
                    offset = 0
                    while offset + 16 <= len(data):
                        length, kind, _, seq, _ = struct.unpack_from("=IHHII", data, offset)
                        if length < 16:
                            return None
                        if seq == 1 and kind == _NFT_NEWTABLE:
                            found = True
                        elif seq == 1 and kind == _NLMSG_ERROR:
                            code = -struct.unpack_from("=i", data, offset + 16)[0]
                            if code == 0:
                                return found
                            return False if code == errno.ENOENT else None
                        offset += (length + 3) & ~3
        except OSError:
            return None

    def listing(self) -> str | None:
        """The kernel's listing of the table, None if there is none."""
        try:
            return nftables.run(None, "list", "table", self.family, self.table)
        except nftables.NftUnavailable as e:
            raise NatError(f"natOutgoing: {e.message}", e.hint) from None
        except nftables.NftError:
            return None

    @property
    def applied(self) -> str | None:
        return self._applied

    @property
    def applied_listing(self) -> str | None:
        return self._listing

    def replace(self, ruleset: str) -> None:
        """Make the table exactly `ruleset`, atomically."""
        # Create-then-delete makes the replace one transaction whether or not the table exists.
        text = f"table {self.family} {self.table} {{}}\ndelete table {self.family} {self.table}\n{ruleset}"
        try:
            nftables.run(text)
        except nftables.NftError as e:
            raise NatError(f"nft rejected the masquerade table: {e.detail or e.message}", e.hint) from None
        self._applied = ruleset
        self._listing = self.listing()
        log.info("applied nftables table %s %s", self.family, self.table)

    def delete(self) -> None:
        """Remove the table; removing a table that is not there is success."""
        if self.listing() is not None:
            try:
                nftables.run(None, "delete", "table", self.family, self.table)
            except nftables.NftError as e:
                raise NatError(f"nft could not remove table {self.family} {self.table}: {e.detail or e.message}") \
                    from None
            log.info("removed nftables table %s %s", self.family, self.table)
        self._applied = self._listing = None


class NatManager(Manager):
    """The natOutgoing table as a manager: desired ruleset in, applied whole when it differs.

    The kernel sends no netlink notification podnet listens to for nftables, so drift is found
    by the periodic resync: the table's listing is compared with the one seen right after the
    last apply."""

    name = "nat"
    KEY = "table"

    def __init__(self, table: NatTable | None = None):
        self.table = table or NatTable()
        self.tracker: DeltaTracker[str, str] = DeltaTracker()

    def set_desired(self, ruleset: str | None) -> None:
        if ruleset is None:
            self.tracker.desired_delete(self.KEY)
        else:
            self.tracker.desired_set(self.KEY, ruleset)

    def resync(self) -> None:
        if not nftables.available():
            self.tracker.replace_believed({})  # nothing can be there; apply says why if wanted
            return
        # No table (the usual case without natOutgoing pools): known without running nft.
        listing = None if self.table.exists() is False else self.table.listing()
        if listing is None:
            self.tracker.replace_believed({})
        elif self.table.applied is not None and listing == self.table.applied_listing:
            self.tracker.replace_believed({self.KEY: self.table.applied})
        else:
            self.tracker.replace_believed({self.KEY: ("changed outside podnet", listing)})

    def apply_updates(self) -> int:
        n = 0
        for key, ruleset in self.tracker.pending_updates():
            self.table.replace(ruleset)
            self.tracker.believed_set(key, ruleset)
            n += 1
        return n

    def apply_deletes(self) -> int:
        n = 0
        for key, _ in self.tracker.pending_deletes():
            self.table.delete()
            self.tracker.believed_delete(key)
            n += 1
        return n
