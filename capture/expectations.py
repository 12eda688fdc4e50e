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
from typing import Any

import numpy as np

from capture.codecs import CodecSpec

IPV6_KEY_BASE = 1 << 32
REBUILD_CHANGED_KEYS = 512     # see ExpectationTable.lookup_keys
REBUILD_DIRTY_PACKETS = 2000
REBUILD_AFTER_LOOKUPS = 64


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


@dataclass(slots=True)
class ExpectationTable:
    """The current claims, searchable one packet at a time or a whole array at once."""

    addresses: AddressBook = field(default_factory=AddressBook)
    _by_pair: dict[tuple[int, int], MediaExpectation] = field(default_factory=dict)
    _pair_calls: dict[tuple[int, int], set[str]] = field(default_factory=dict)   # every active claimant
    _by_dst: dict[int, MediaExpectation] = field(default_factory=dict)
    _by_src: dict[int, MediaExpectation] = field(default_factory=dict)
    _sorted: dict[str, Any] | None = None
    _next_ident: int = 0
    # keys whose claims changed since the sorted view was built: packets to or from them are
    # looked up one by one from the dicts; the view is rebuilt once enough have piled up
    _changed_dst: set[int] = field(default_factory=set)
    _changed_src: set[int] = field(default_factory=set)
    _lookups_since_build: int = 0
    # call -> the keys its claims were filed under (0 dst, 1 src, 2 pair): an ending call
    # forgets its claims without a scan of every table (thousands of calls end every hour)
    _filed: dict[str, list[tuple[int, Any]]] = field(default_factory=dict)

    def claim(self, ip: str, port: int, *, call_key: str, author_channel: int, kind: str,
              codecs: dict[int, CodecSpec], secure: bool) -> None:
        """Register an SDP author's media address (both directions)."""
        key = endpoint_key(self.addresses.key(ip), port)
        to_author = self._new(call_key, 1 - author_channel, kind, codecs, secure, via_source=False)
        from_author = self._new(call_key, author_channel, kind, codecs, secure, via_source=True)
        self._by_dst[key] = to_author     # the newer SDP's claim wins (port reuse, re-INVITE)
        self._by_src[key] = from_author
        self._filed.setdefault(call_key, []).extend(((0, key), (1, key)))
        self._changed(key, key)

    def claim_pair(self, src: tuple[str, int], dst: tuple[str, int], *, call_key: str, channel: int,
                   kind: str, codecs: dict[int, CodecSpec], secure: bool) -> None:
        """Both ends known (offer and answer): packets from `src` to `dst` carry `channel`'s voice.
        Checked before the one-sided claims, so calls that share one media address on one side
        (a media server answering every call on the same port) still come apart."""
        key = (endpoint_key(self.addresses.key(src[0]), src[1]), endpoint_key(self.addresses.key(dst[0]), dst[1]))
        self._by_pair[key] = self._new(call_key, channel, kind, codecs, secure, via_source=False)
        self._pair_calls.setdefault(key, set()).add(call_key)
        self._filed.setdefault(call_key, []).append((2, key))
        self._changed(*key)

    def _new(self, call_key: str, channel: int, kind: str, codecs: dict[int, CodecSpec],
             secure: bool, via_source: bool) -> MediaExpectation:
        self._next_ident += 1
        return MediaExpectation(self._next_ident, call_key, channel, kind, codecs, secure, via_source)

    def release_call(self, call_key: str) -> None:
        """Forget every claim of a call that ended, so its ports are free for later calls
        (a claim another call has since taken over stays with that call)."""
        tables: tuple[dict[Any, MediaExpectation], ...] = (self._by_dst, self._by_src, self._by_pair)
        for where, key in self._filed.pop(call_key, []):
            table = tables[where]
            claim = table.get(key)
            if claim is not None and claim.call_key == call_key:
                del table[key]
            if where == 2 and key in self._pair_calls:
                calls = self._pair_calls[key]
                calls.discard(call_key)
                if not calls:
                    del self._pair_calls[key]
            self._changed(*(key if where == 2 else (key, key)))

    def _changed(self, src_key: int, dst_key: int) -> None:
        """A claim on these keys was added, replaced or released (see `lookup_keys`)."""
        if self._sorted is not None:
            self._changed_src.add(src_key)
            self._changed_dst.add(dst_key)

    def lookup(self, src_ip: str, sport: int, dst_ip: str, dport: int) -> MediaExpectation | None:
        dst_key = endpoint_key(self.addresses.key(dst_ip), dport)
        src_key = endpoint_key(self.addresses.key(src_ip), sport)
        return self._lookup_key(src_key, dst_key)

    def _lookup_key(self, src_key: int, dst_key: int) -> MediaExpectation | None:
        return self._choose(src_key, dst_key, self._by_pair.get((src_key, dst_key)),
                            self._by_dst.get(dst_key)) or self._by_src.get(src_key)

    def _choose(self, src_key: int, dst_key: int, pair: MediaExpectation | None,
                dst: MediaExpectation | None) -> MediaExpectation | None:
        """The destination claim (the latest SDP that advertised this receive address, as
        tshark attributes streams) wins, unless its call expects packets there from another
        source while the (source, destination) pair belongs to another call: calls sharing one
        media address on one side (a media server answering all calls on one port)."""
        if dst is None or pair is None or pair.call_key == dst.call_key:
            return dst or pair
        return dst if dst.call_key in self._pair_calls.get((src_key, dst_key), ()) else pair

    def lookup_keys(self, src_keys: np.ndarray,
                    dst_keys: np.ndarray) -> tuple[np.ndarray, list[MediaExpectation], np.ndarray]:
        """Vectorised lookup: index into the returned list per packet, -1 where nothing matches;
        and the list's expectation idents as an array.

        Destination claims, with (source, destination) pair claims deciding contested
        destinations (see `_choose`), then source claims (symmetric RTP).

        The sorted view is not rebuilt for every change (a rebuild costs milliseconds at
        thousands of calls, and a burst of call set-ups changes the claims between every two
        packets): a packet to or from a key whose claims changed since the build is looked up
        in the dicts instead (`_lookup_key`, the same rules), every other packet's answer in
        the view is still exact. The view is rebuilt once REBUILD_CHANGED_KEYS keys changed,
        a lookup found REBUILD_DIRTY_PACKETS packets that needed the dicts, or changes have
        waited REBUILD_AFTER_LOOKUPS lookups (so the calls set up last do not stay on the
        slow path once the burst is over)."""
        self._lookups_since_build += 1
        dirty = self._dirty_packets(src_keys, dst_keys)
        changed = len(self._changed_dst) + len(self._changed_src)
        if changed and (changed > REBUILD_CHANGED_KEYS or len(dirty) > REBUILD_DIRTY_PACKETS
                        or self._lookups_since_build > REBUILD_AFTER_LOOKUPS):
            self._sorted = None           # rebuilt below, with every change in it
            dirty = dirty[:0]
        view = self._sorted_view()
        local, table = self._lookup_view(view, src_keys, dst_keys)
        if not len(dirty):
            return local, table, view["idents"]
        table = list(table)
        added: dict[int, int] = {}      # ident -> index in `table` of claims the view lacks
        for i, src_key, dst_key in zip(dirty.tolist(), src_keys[dirty].tolist(), dst_keys[dirty].tolist(),
                                       strict=True):
            claim = self._lookup_key(src_key, dst_key)
            if claim is None:
                local[i] = -1
                continue
            at = added.get(claim.ident)
            if at is None:
                at = added[claim.ident] = len(table)
                table.append(claim)
            local[i] = at
        idents = np.concatenate([view["idents"], np.array([table[k].ident for k in added.values()], np.int64)])
        return local, table, idents

    def _dirty_packets(self, src_keys: np.ndarray, dst_keys: np.ndarray) -> np.ndarray:
        """Indices of the packets to or from a key whose claims changed since the view was built."""
        if not (self._changed_dst or self._changed_src):
            return np.zeros(0, np.int64)
        changed_dst = np.fromiter(self._changed_dst, np.int64, len(self._changed_dst))
        changed_src = np.fromiter(self._changed_src, np.int64, len(self._changed_src))
        return np.flatnonzero(np.isin(dst_keys, changed_dst) | np.isin(src_keys, changed_src))

    def _lookup_view(self, view: dict[str, Any], src_keys: np.ndarray,
                     dst_keys: np.ndarray) -> tuple[np.ndarray, list[MediaExpectation]]:
        """`lookup_keys` in the sorted view alone."""
        table = view["table"]
        pair_hit = np.full(len(dst_keys), -1, np.int64)
        pair_hash, pair_src, pair_dst, pair_index = view["pairs"]
        if len(pair_hash) and len(dst_keys):
            wanted = _pair_hash(src_keys, dst_keys)
            pos = np.minimum(np.searchsorted(pair_hash, wanted), len(pair_hash) - 1)
            hit = (pair_hash[pos] == wanted) & (pair_src[pos] == src_keys) & (pair_dst[pos] == dst_keys)
            pair_hit[hit] = pair_index[pos[hit]]
        dst_hit = np.full(len(dst_keys), -1, np.int64)
        keys, index = view["dst"]
        if len(keys) and len(dst_keys):
            pos = np.minimum(np.searchsorted(keys, dst_keys), len(keys) - 1)
            hit = keys[pos] == dst_keys
            dst_hit[hit] = index[pos[hit]]
        result = np.where(dst_hit >= 0, dst_hit, pair_hit)
        call_of = view["call_of"]
        both = np.flatnonzero((dst_hit >= 0) & (pair_hit >= 0))
        both = both[call_of[dst_hit[both]] != call_of[pair_hit[both]]]
        if len(both):   # the rare contested case: decide once per distinct (pair, destination claim)
            combos, first, inverse = np.unique(np.stack([pair_hit[both], dst_hit[both]]), axis=1,
                                               return_index=True, return_inverse=True)
            chosen = []
            for j, (p, d) in enumerate(combos.T.tolist()):
                at = int(both[first[j]])
                pick = self._choose(int(src_keys[at]), int(dst_keys[at]), table[p], table[d])
                chosen.append(p if pick is table[p] else d)
            result[both] = np.array(chosen, np.int64)[inverse.reshape(-1)]
        keys, index = view["src"]
        open_ = result < 0
        if len(keys) and open_.any():
            pos = np.minimum(np.searchsorted(keys, src_keys), len(keys) - 1)
            hit = open_ & (keys[pos] == src_keys)
            result[hit] = index[pos[hit]]
        return result, table

    def _sorted_view(self) -> dict[str, Any]:
        if self._sorted is None:
            table: list[MediaExpectation] = []
            view: dict[str, Any] = {"table": table}
            for name, source in (("dst", self._by_dst), ("src", self._by_src)):
                keys = np.array(list(source), np.int64)
                index = np.arange(len(table), len(table) + len(keys), dtype=np.int64)
                table.extend(source.values())
                order = np.argsort(keys, kind="stable")
                view[name] = (keys[order], index[order])
            pairs = list(self._by_pair)
            src = np.array([p[0] for p in pairs], np.int64)
            dst = np.array([p[1] for p in pairs], np.int64)
            index = np.arange(len(table), len(table) + len(pairs), dtype=np.int64)
            table.extend(self._by_pair.values())
            hashes = _pair_hash(src, dst)
            order = np.argsort(hashes, kind="stable")
            view["pairs"] = (hashes[order], src[order], dst[order], index[order])
            calls: dict[str, int] = {}
            view["call_of"] = np.array([calls.setdefault(e.call_key, len(calls)) for e in table], np.int64)
            view["idents"] = np.array([e.ident for e in table], np.int64)
            self._sorted = view
            self._changed_dst.clear()
            self._changed_src.clear()
            self._lookups_since_build = 0
        return self._sorted


def _pair_hash(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """One int64 per (source, destination) pair for searchsorted; equality is re-checked on
    both keys, so collisions cost nothing but a miss-then-fallback."""
    return (src * 0x9E3779B1) ^ dst
