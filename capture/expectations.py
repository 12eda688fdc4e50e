"""Media expectations: which (address, port) carries which call's which voice.

An SDP body says "send my media to ip:port". Packets *to* that address carry the other
side's voice; with symmetric RTP (RFC 4961) packets *from* it carry the author's voice. Both
are registered; destination matches win. A later SDP claiming the same address replaces the
older claim, so a port reused by a new call belongs to the new call.

Lookups run vectorised: addresses become integer keys (IPv4: the 32-bit address; other
addresses: a small number above 2**32 handed out by AddressBook) combined with the port, and
a sorted key array is searched with numpy.searchsorted.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import numpy as np

from capture.codecs import CodecSpec

IPV6_KEY_BASE = 1 << 32


class AddressBook:
    """Maps IP address text to the integer keys the vectorised fast path computes."""

    def __init__(self) -> None:
        self._keys: dict[str, int] = {}
        self._next_other = IPV6_KEY_BASE

    def key(self, ip: str) -> int:
        found = self._keys.get(ip)
        if found is not None:
            return found
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            addr = None
        if isinstance(addr, ipaddress.IPv4Address):
            value = int(addr)
        else:
            value = self._next_other
            self._next_other += 1
        self._keys[ip] = value
        return value


def endpoint_key(ip_key: int, port: int) -> int:
    return (ip_key << 16) | port


@dataclass(slots=True, eq=False)
class MediaExpectation:
    """One direction of one m= line of one call, as the latest SDP describes it."""

    ident: int
    call_key: str
    channel: int                      # whose voice the packets carry: 0 caller, 1 callee
    kind: str                         # audio / video / image ...
    codecs: dict[int, CodecSpec]      # payload type -> codec, as the receiving side declared
    secure: bool                      # RTP/SAVP(F): payload is SRTP
    via_source: bool                  # matched on the source address (symmetric RTP)
    released: bool = False


@dataclass(slots=True)
class ExpectationTable:
    """The current claims, searchable one packet at a time or a whole array at once."""

    addresses: AddressBook = field(default_factory=AddressBook)
    _by_dst: dict[int, MediaExpectation] = field(default_factory=dict)
    _by_src: dict[int, MediaExpectation] = field(default_factory=dict)
    _sorted: tuple | None = None
    _next_ident: int = 0

    def claim(self, ip: str, port: int, *, call_key: str, author_channel: int, kind: str,
              codecs: dict[int, CodecSpec], secure: bool) -> None:
        """Register an SDP author's media address (both directions)."""
        key = endpoint_key(self.addresses.key(ip), port)
        to_author = self._new(call_key, 1 - author_channel, kind, codecs, secure, via_source=False)
        from_author = self._new(call_key, author_channel, kind, codecs, secure, via_source=True)
        self._replace(self._by_dst, key, to_author)
        self._replace(self._by_src, key, from_author)
        self._sorted = None

    def _new(self, call_key: str, channel: int, kind: str, codecs: dict[int, CodecSpec],
             secure: bool, via_source: bool) -> MediaExpectation:
        self._next_ident += 1
        return MediaExpectation(self._next_ident, call_key, channel, kind, codecs, secure, via_source)

    @staticmethod
    def _replace(table: dict[int, MediaExpectation], key: int, new: MediaExpectation) -> None:
        old = table.get(key)
        if old is not None:
            old.released = True
        table[key] = new

    def release_call(self, call_key: str) -> None:
        """Forget every claim of a call that ended, so its ports are free for later calls."""
        for table in (self._by_dst, self._by_src):
            for key in [k for k, e in table.items() if e.call_key == call_key]:
                table.pop(key).released = True
        self._sorted = None

    def lookup(self, src_ip: str, sport: int, dst_ip: str, dport: int) -> MediaExpectation | None:
        dst_key = endpoint_key(self.addresses.key(dst_ip), dport)
        found = self._by_dst.get(dst_key)
        if found is None:
            found = self._by_src.get(endpoint_key(self.addresses.key(src_ip), sport))
        return found

    def lookup_keys(self, src_keys: np.ndarray, dst_keys: np.ndarray) -> tuple[np.ndarray, list[MediaExpectation]]:
        """Vectorised lookup: index into the returned list per packet, -1 where nothing matches.

        Destination claims are tried first; packets left unmatched try the source claims.
        """
        (dst_sorted, dst_index), (src_sorted, src_index), table = self._sorted_view()
        result = np.full(len(dst_keys), -1, np.int64)
        for keys, index, wanted in ((dst_sorted, dst_index, dst_keys), (src_sorted, src_index, src_keys)):
            open_ = result < 0
            if not len(keys) or not open_.any():
                continue
            pos = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
            hit = open_ & (keys[pos] == wanted)
            result[hit] = index[pos[hit]]
        return result, table

    def _sorted_view(self) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], list[MediaExpectation]]:
        if self._sorted is None:
            table: list[MediaExpectation] = []
            views = []
            for source in (self._by_dst, self._by_src):
                keys = np.array(list(source), np.int64)
                index = np.arange(len(table), len(table) + len(keys), dtype=np.int64)
                table.extend(source.values())
                order = np.argsort(keys, kind="stable")
                views.append((keys[order], index[order]))
            self._sorted = (views[0], views[1], table)
        return self._sorted
