"""The filter table (`inet podnet`) as a dataplane manager: nft transactions of only what changed.

Programming goes through podnet.dataplane.nftables (libnftables in-process) in nft's text syntax: one
transaction for the whole change per apply cycle (docs/filter.md has the measurement that chose text
over JSON).
The manager believes what it last applied; at start, after a failure and on its periodic resync it
reads the table back as JSON and recognises its own rules by the hash at the head of each rule's
comment, so an agent restart changes nothing in a table that is already right. A failed apply is
followed by a read-back; a second failure in a row replaces the whole table in one transaction.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from dataclasses import dataclass

from podnet.calc.policy import FAMILY, TABLE, FilterRuleset, NftSet, diff_filter
from podnet.dataplane.manager import ApplyError, Manager
from podnet.dataplane.nftables import NftError, run as run_nft  # noqa: F401 (NftError: callers catch it)

log = logging.getLogger(__name__)

_PROTO = {"tcp": "6", "udp": "17", "icmp": "1", "ipv6-icmp": "58", "icmpv6": "58", "sctp": "132", "udplite": "136"}


@dataclass(frozen=True)
class _ChainSeen:
    """A chain as read back: its rules' hashes (from their comments) and whether it is a base chain."""
    name: str
    hashes: tuple[str, ...]
    hook: str | None = None


def _element(e) -> str:
    """An element of nft's JSON as calc/policy.py writes it."""
    if isinstance(e, dict) and "concat" in e:
        return " . ".join(_element(x) for x in e["concat"])
    if isinstance(e, dict) and "elem" in e:
        return _element(e["elem"]["val"])
    if isinstance(e, int):
        return str(e)
    if isinstance(e, str):
        if e in _PROTO:
            return _PROTO[e]
        try:
            return str(ipaddress.ip_address(e))
        except ValueError:
            return e
    return json.dumps(e)


def read_table(listing: str) -> FilterRuleset | None:
    """What `nft -j list table inet podnet` shows, as a ruleset diff_filter can start from.
    None when the table is absent."""
    objs = json.loads(listing).get("nftables", [])
    rs = FilterRuleset()
    rules: dict[str, list[str]] = {}
    hooks: dict[str, str | None] = {}
    for obj in objs:
        kind, body = next(iter(obj.items()))
        if kind in ("set", "map"):
            elements = set()
            for e in body.get("elem") or []:
                if kind == "map":
                    key, verdict = e
                    (verb, target), = verdict.items()
                    elements.add(f'"{key}" : {verb} {target["target"]}')
                else:
                    elements.add(_element(e))
            typ = body["type"] if isinstance(body["type"], str) else " . ".join(body["type"])
            rs.sets[body["name"]] = NftSet(body["name"], typ, frozenset(elements), is_map=kind == "map")
        elif kind == "chain":
            hooks[body["name"]] = body.get("hook")
            rules.setdefault(body["name"], [])
        elif kind == "rule":
            comment = body.get("comment") or ""
            rules.setdefault(body["chain"], []).append(comment.split(" ", 1)[0] if comment else "?")
    for name, hashes in rules.items():
        rs.chains[name] = _ChainSeen(name, tuple(hashes), hooks.get(name))
    return rs


class FilterManager(Manager):
    """Keeps `inet podnet` equal to the desired FilterRuleset the agent computes."""

    name = "filter"

    def __init__(self, nft=run_nft):
        self._nft = nft
        self.desired: FilterRuleset | None = None
        self.believed: FilterRuleset | None = None  # None: unknown, replace the table whole
        self._failures = 0
        self.last_commands = 0  # nft commands the last apply sent (0: nothing to do)

    def set_desired(self, ruleset: FilterRuleset) -> None:
        self.desired = ruleset

    @property
    def pending(self) -> int:
        if self.desired is None:
            return 0
        return 1 if self.believed is None or diff_filter(self.believed, self.desired) else 0

    def resync(self) -> None:
        try:
            listing = self._nft(None, "-j", "list", "table", FAMILY, TABLE)
        except NftError as e:
            if "No such file or directory" in str(e):
                self.believed = None
                return
            raise
        self.believed = read_table(listing)
        # Base chains' hooks are recognised by name; a different hook means a different table.
        if self.desired is not None:
            for name, c in self.desired.chains.items():
                seen = self.believed.chains.get(name)
                if c.hook and seen is not None:
                    if seen.hook is None:
                        self.believed = None
                        return
                    self.believed.chains[name] = _ChainSeen(name, seen.hashes, c.hook)

    def apply_updates(self) -> int:
        if self.desired is None:
            return 0
        full = self.believed is None or self._failures >= 2
        commands = diff_filter(None if full else self.believed, self.desired)
        self.last_commands = len(commands)
        if not commands:
            return 0
        try:
            self._nft("\n".join(commands) + "\n")
        except NftError as e:
            self._failures += 1
            self.believed = None if self._failures >= 2 else self.believed
            raise ApplyError(self.name, [("the filter table" + (" (whole)" if full else ""), e)]) from None
        self._failures = 0
        self.believed = self.desired
        if full:
            log.info("programmed the filter table %s %s whole", FAMILY, TABLE)
        return len(commands)

    def apply_deletes(self) -> int:
        return 0  # deletions travel in the same transaction as the rest

    def remove_table(self) -> None:
        try:
            self._nft(None, "delete", "table", FAMILY, TABLE)
        except NftError:
            pass
        self.believed = None
