"""SIP over TCP: rebuild each direction's byte stream and cut it into SIP messages.

RFC 3261 §18.3: on a stream transport a message is its header block (ending with an empty
line) followed by exactly Content-Length body bytes, and Content-Length is mandatory.

Per TCP flow (one direction of a connection) the reassembler keeps the bytes in sequence
order: out-of-order segments wait until the gap before them fills, retransmitted and
overlapping bytes are dropped, and sequence numbers wrap modulo 2**32.  A capture that starts
mid-connection (no SYN seen) resynchronises on the first thing that looks like a SIP start
line followed by header lines.  A gap that never fills (a segment the capture lost) is given
up once the segment that reveals it is `gap_timeout_s` old (packet time, checked whenever
the flow gets another segment, bare ACKs included) or once more than `max_buffer` bytes wait
behind it: the message it cut is dropped, "tcp.gap" is counted, and framing resynchronises
after it.  A segment more than `max_buffer` away from the expected sequence number restarts
the stream there (also a "tcp.gap").  RFC 5626 §3.5.1 CRLF keep-alives between messages are
skipped.

Memory is bounded: per flow by `max_buffer` (plus one header block), and overall by
`MAX_FLOWS` and `MAX_TOTAL_BYTES` (the least recently used flows are dropped first; idle ones
are dropped by `expire`).

Streams that are not SIP at all (any TCP the caller feeds) are skipped quietly: framing
errors are only counted in `errors` once a flow has shown a SIP start line; the rest goes
to `stats`.
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass, field

from capture.netdecode import PROTO_TCP, Segment

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04

MAX_FLOWS = 65536
MAX_TOTAL_BYTES = 64 << 20  # buffered bytes over all flows
MAX_HEADER_BYTES = 64 * 1024  # a header block longer than this is not SIP
MAX_HELD_SEGMENTS = 4096  # out-of-order segments waiting behind one gap
_MAX_PARTIAL_LINE = 8 * 1024  # while resynchronising, bytes kept of an unfinished line

_SEQ_MOD = 1 << 32
_SEQ_HALF = 1 << 31

# A request line ("INVITE sip:bob@example.com SIP/2.0") or a status line ("SIP/2.0 200 OK").
_START_LINE = (
    rb"(?:[A-Z][A-Z0-9_.!%*+`'~-]* [A-Za-z][A-Za-z0-9+.-]*:[^ \r\n]* SIP/2\.0"
    rb"|SIP/2\.0 [1-6][0-9][0-9](?: [^\r\n]*)?)\r?\n"
)
_START_LINE_AT = re.compile(_START_LINE)
# Resynchronisation looks for a start line anywhere, not only at a line start: a body need
# not end with CRLF, so the next message may begin in the middle of a "line".  To find where
# it begins, the search is stricter than framing: RFC 3261/3262/3311/3428/3515/3903/6086/6665
# methods only, and a reason phrase may not run into another "SIP/2.0".  False starts (a
# message/sipfrag body) are weeded out by the header-block check that follows.
_METHODS = rb"INVITE|ACK|BYE|CANCEL|OPTIONS|REGISTER|PRACK|UPDATE|INFO|REFER|NOTIFY|SUBSCRIBE|MESSAGE|PUBLISH"
_START_LINE_SEARCH = re.compile(
    rb"(?:(?:" + _METHODS + rb") [A-Za-z][A-Za-z0-9+.-]*:[^ \r\n]* SIP/2\.0"
    rb"|SIP/2\.0 [1-6][0-9][0-9](?: (?:(?!SIP/2\.0)[^\r\n])*)?)\r?\n"
)
_START_LINE_PREFIX = re.compile(rb"[A-Z][A-Z0-9_.!%*+`'~-]* [A-Za-z][A-Za-z0-9+.-]*:|SIP/2\.0 ")
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_LEADING_CRLF = re.compile(rb"[\r\n]+")
# RFC 3261 §7.3.3: "l" is the compact form; HCOLON allows whitespace before the colon.
_CONTENT_LENGTH = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*([0-9]{1,10})[ \t]*\r?$", re.I | re.M)
# A header line ("Name: value") or a folded continuation line (RFC 3261 §7.3.1).
_HEADER_LINE = re.compile(rb"(?:[!-9;-~]+[ \t]*:|[ \t])")


def seq_delta(a: int, b: int) -> int:
    """a - b in TCP sequence space (RFC 9293 §3.4): signed, wrapping modulo 2**32."""
    return (a - b + _SEQ_HALF) % _SEQ_MOD - _SEQ_HALF


@dataclass(slots=True)
class _Flow:
    """One direction of one TCP connection."""

    next_seq: int  # sequence number of the next in-order byte
    synced: bool  # buf starts at a message boundary
    trusted: bool  # a message was framed since the last (re)synchronisation
    last_ts: float
    buf: bytearray = field(default_factory=bytearray)  # in-order bytes not yet framed
    base: int = 0  # stream position (bytes appended so far, not seq) of buf[0]
    marks: collections.deque[tuple[int, float]] = field(default_factory=collections.deque)
    held: dict[int, tuple[float, bytes]] = field(default_factory=dict)  # seq -> (ts, data)
    held_bytes: int = 0
    gap_since: float | None = None  # packet time the oldest held segment arrived
    pending_len: int = 0  # length of the message at buf[0] once its header is parsed
    closed: bool = False  # FIN seen: late data is a retransmission

    def size(self) -> int:
        """Bytes this flow holds."""
        return len(self.buf) + self.held_bytes


class SipTcpReassembler:
    """Turns TCP `Segment`s into complete SIP messages, per flow."""

    def __init__(
        self, max_buffer: int = 1 << 20, gap_timeout_s: float = 5.0, idle_timeout_s: float = 600.0
    ) -> None:
        self.max_buffer = max_buffer
        self.gap_timeout_s = gap_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.errors: collections.Counter[str] = collections.Counter()
        self.stats: collections.Counter[str] = collections.Counter()  # benign events
        self._flows: dict[tuple[str, int, str, int], _Flow] = {}
        self._total_bytes = 0  # sum of size() over all flows

    def __len__(self) -> int:
        """Number of flows tracked."""
        return len(self._flows)

    def feed(self, seg: Segment) -> list[tuple[float, bytes]]:
        """Add one TCP segment; returns the SIP messages it completed, as (ts, raw bytes).

        The timestamp of a message is that of the segment that delivered its last byte.
        """
        if seg.proto != PROTO_TCP:
            return []
        key = (seg.src, seg.sport, seg.dst, seg.dport)
        if seg.flags & TCP_RST:
            self._forget(key)
            return []
        flow = self._flow_for(key, seg)
        if flow is None:
            return []
        out: list[tuple[float, bytes]] = []
        if flow.closed:
            if seg.payload:
                self.stats["tcp.after_fin"] += 1
            return out
        size_before = flow.size()
        seq = (seg.seq + 1) % _SEQ_MOD if seg.flags & TCP_SYN else seg.seq
        if seg.payload:
            self._accept(flow, seq, seg.ts, seg.payload, out)
        if flow.held and self._gap_expired(flow, seg.ts):
            self._skip_gap(flow, out)
        if seg.flags & TCP_FIN:
            while flow.held:  # the peer sends nothing more: give up on any hole now
                self._skip_gap(flow, out)
            self._close(flow)
        flow.last_ts = seg.ts
        self._total_bytes += flow.size() - size_before
        self._enforce_memory_budget()
        return out

    def expire(self, now: float) -> None:
        """Forget flows idle (by packet time) for longer than idle_timeout_s.

        Whatever they still buffer is lost (and counted); gaps in live flows are resolved by
        `feed`, which is where their messages can be returned.
        """
        deadline = now - self.idle_timeout_s
        for key in [k for k, f in self._flows.items() if f.last_ts < deadline]:
            self._forget(key)

    @property
    def buffered_bytes(self) -> int:
        """Bytes held over all flows (in-order data awaiting framing plus held segments)."""
        return self._total_bytes

    # -- flows --------------------------------------------------------------------------

    def _flow_for(self, key: tuple[str, int, str, int], seg: Segment) -> _Flow | None:
        """The flow a segment belongs to, created on SYN or on the first data segment."""
        flow = self._flows.pop(key, None)  # re-inserted below: dict order = LRU order
        if seg.flags & TCP_SYN:
            if flow is not None:
                self._total_bytes -= flow.size()
                self._close(flow)
            # At a SYN the stream starts at a message boundary, but whether it carries SIP
            # at all is only known once a start line shows up.
            flow = _Flow(next_seq=(seg.seq + 1) % _SEQ_MOD, synced=True, trusted=False, last_ts=seg.ts)
        elif flow is None:
            if not seg.payload:
                return None  # a bare ACK/FIN of a connection we never saw data on
            # Mid-stream start: take this segment as the beginning and resync on a start line.
            flow = _Flow(next_seq=seg.seq, synced=False, trusted=False, last_ts=seg.ts)
        self._flows[key] = flow
        if len(self._flows) > MAX_FLOWS:
            self._forget(next(iter(self._flows)))
            self.errors["tcp.flow_evicted"] += 1
        return flow

    def _enforce_memory_budget(self) -> None:
        while self._total_bytes > MAX_TOTAL_BYTES and self._flows:
            self._forget(next(iter(self._flows)))  # least recently used first
            self.errors["tcp.flow_evicted"] += 1

    def _forget(self, key: tuple[str, int, str, int]) -> None:
        flow = self._flows.pop(key, None)
        if flow is not None:
            self._total_bytes -= flow.size()
            self._close(flow)

    def _close(self, flow: _Flow) -> None:
        """Mark a flow finished (its buffers freed), counting what could not be delivered."""
        if flow.closed:
            return
        if flow.held:
            self.errors["tcp.gap"] += 1
        if self._holds_partial_sip(flow):
            self.errors["sip_tcp.incomplete_message"] += 1
        flow.closed = True
        flow.buf = bytearray()
        flow.marks.clear()
        flow.held.clear()
        flow.held_bytes = 0

    @staticmethod
    def _holds_partial_sip(flow: _Flow) -> bool:
        """The buffer holds the beginning of a SIP message (not just keep-alives or noise)."""
        crlf = _LEADING_CRLF.match(flow.buf)
        start = crlf.end() if crlf else 0
        return flow.synced and _START_LINE_PREFIX.match(flow.buf, start) is not None

    # -- byte stream --------------------------------------------------------------------

    def _accept(self, flow: _Flow, seq: int, ts: float, data: bytes, out: list[tuple[float, bytes]]) -> None:
        """Place one segment's bytes in the stream (or hold them until the gap fills)."""
        delta = seq_delta(seq, flow.next_seq)
        if abs(delta) > self.max_buffer:  # far outside any window we would buffer
            self.errors["tcp.gap"] += 1
            self._restart_at(flow, seq, keep_held=False)
            delta = 0
        if delta < 0:
            if delta + len(data) <= 0:
                self.stats["tcp.retransmission"] += 1
                return
            self.stats["tcp.overlap"] += 1
            data, delta = data[-delta:], 0
        if delta > 0:
            self._hold(flow, seq, ts, data)
            if flow.held_bytes + len(flow.buf) > self.max_buffer or len(flow.held) > MAX_HELD_SEGMENTS:
                self._skip_gap(flow, out)
            return
        self._append(flow, ts, data)
        self._drain_held(flow)
        self._frame(flow, out)

    def _hold(self, flow: _Flow, seq: int, ts: float, data: bytes) -> None:
        previous = flow.held.get(seq)
        if previous is not None:
            self.stats["tcp.retransmission"] += 1
            if len(previous[1]) >= len(data):
                return
            flow.held_bytes -= len(previous[1])
        else:
            self.stats["tcp.out_of_order"] += 1
        flow.held[seq] = (ts, data)
        flow.held_bytes += len(data)
        if flow.gap_since is None:
            flow.gap_since = ts

    def _append(self, flow: _Flow, ts: float, data: bytes) -> None:
        flow.buf += data
        flow.next_seq = (flow.next_seq + len(data)) % _SEQ_MOD
        flow.marks.append((flow.base + len(flow.buf), ts))

    def _drain_held(self, flow: _Flow) -> None:
        """Move held segments that have become contiguous into the stream."""
        while flow.held:
            item = flow.held.pop(flow.next_seq, None)
            if item is None:
                item = self._pop_overlapping_held(flow)
                if item is None:
                    break
            else:
                flow.held_bytes -= len(item[1])
            self._append(flow, *item)
        flow.gap_since = min((ts for ts, _ in flow.held.values()), default=None)

    def _pop_overlapping_held(self, flow: _Flow) -> tuple[float, bytes] | None:
        """A held segment starting before next_seq (overlap): its new tail, if it has one."""
        for seq in list(flow.held):
            delta = seq_delta(seq, flow.next_seq)
            if delta >= 0:
                continue
            ts, data = flow.held.pop(seq)
            flow.held_bytes -= len(data)
            if delta + len(data) > 0:
                self.stats["tcp.overlap"] += 1
                return ts, data[-delta:]
            self.stats["tcp.retransmission"] += 1
        return None

    def _gap_expired(self, flow: _Flow, now: float) -> bool:
        return flow.gap_since is not None and now - flow.gap_since > self.gap_timeout_s

    def _skip_gap(self, flow: _Flow, out: list[tuple[float, bytes]]) -> None:
        """Give up on the missing bytes: drop the message they cut, jump to the held data."""
        self.errors["tcp.gap"] += 1
        self._restart_at(flow, min(flow.held, key=lambda s: seq_delta(s, flow.next_seq)), keep_held=True)
        self._drain_held(flow)
        self._frame(flow, out)

    def _restart_at(self, flow: _Flow, seq: int, keep_held: bool) -> None:
        """Continue the stream from `seq`, dropping the buffered partial message."""
        self._consume(flow, len(flow.buf))
        if not keep_held:
            flow.held.clear()
            flow.held_bytes = 0
            flow.gap_since = None
        flow.next_seq = seq
        flow.synced = flow.trusted = False
        flow.pending_len = 0

    def _consume(self, flow: _Flow, n: int) -> None:
        del flow.buf[:n]
        flow.base += n
        marks = flow.marks
        while marks and marks[0][0] <= flow.base:
            marks.popleft()

    def _ts_at(self, flow: _Flow, position: int) -> float:
        """Packet time of the segment that delivered the byte just before `position`."""
        for end, ts in flow.marks:
            if end >= position:
                return ts
        return flow.last_ts

    # -- SIP framing --------------------------------------------------------------------

    def _frame(self, flow: _Flow, out: list[tuple[float, bytes]]) -> None:
        """Cut every complete message off the front of the flow's buffer."""
        while flow.buf:
            if not flow.synced and not self._resync(flow):
                return
            self._skip_keepalives(flow)
            message_len = self._message_length(flow)
            if message_len is None:
                return  # incomplete: wait for more bytes
            if message_len == 0:
                continue  # framing lost and resync requested
            ts = self._ts_at(flow, flow.base + message_len)
            out.append((ts, bytes(flow.buf[:message_len])))
            self._consume(flow, message_len)
            flow.trusted = True
            flow.pending_len = 0

    def _resync(self, flow: _Flow) -> bool:
        """Discard bytes up to the next start line; False if none is in the buffer yet."""
        match = _START_LINE_SEARCH.search(flow.buf)
        if match is None:
            keep_from = flow.buf.rfind(b"\n") + 1  # an unfinished line may become a start line
            if len(flow.buf) - keep_from > _MAX_PARTIAL_LINE:
                keep_from = len(flow.buf)
            self._consume(flow, keep_from)
            return False
        if match.start():
            self.stats["sip_tcp.resync_skipped_bytes"] += match.start()
        self._consume(flow, match.start())
        flow.synced = True
        return True

    def _skip_keepalives(self, flow: _Flow) -> None:
        """RFC 5626 §3.5.1: CRLFCRLF pings and CRLF pongs between messages."""
        if flow.pending_len:
            return
        crlf = _LEADING_CRLF.match(flow.buf)
        if crlf is not None:
            self._consume(flow, crlf.end())

    def _message_length(self, flow: _Flow) -> int | None:
        """Length of the message at the front of buf; None if incomplete, 0 if unframeable.

        Unframeable messages are dropped (with their error counted) and resync is requested.
        """
        buf = flow.buf
        if flow.pending_len:
            return flow.pending_len if len(buf) >= flow.pending_len else None
        if not buf:
            return None
        header_end = _HEADER_END.search(buf)
        if header_end is None:
            if len(buf) > MAX_HEADER_BYTES:
                return self._lose_framing(flow, "sip_tcp.header_too_long", len(buf))
            return None
        if not _START_LINE_AT.match(buf):
            return self._lose_framing(flow, "sip_tcp.bad_start_line", self._first_line_len(buf))
        head = bytes(buf[: header_end.start()])
        if not flow.trusted and not self._plausible_headers(head):
            # A start-line look-alike (e.g. a message/sipfrag body) is not a message.
            return self._lose_framing(flow, "sip_tcp.bad_header_block", self._first_line_len(buf), benign=True)
        lengths = {int(v) for v in _CONTENT_LENGTH.findall(head)}
        if len(lengths) != 1:
            reason = "sip_tcp.missing_content_length" if not lengths else "sip_tcp.conflicting_content_length"
            return self._lose_framing(flow, reason, header_end.end(), benign=False)
        (body_len,) = lengths
        if body_len > self.max_buffer:
            return self._lose_framing(flow, "sip_tcp.bad_content_length", header_end.end(), benign=False)
        flow.pending_len = header_end.end() + body_len
        return flow.pending_len if len(buf) >= flow.pending_len else None

    @staticmethod
    def _first_line_len(buf: bytearray) -> int:
        return buf.find(b"\n") + 1 or len(buf)

    @staticmethod
    def _plausible_headers(head: bytes) -> bool:
        """Every line after the start line is a header or a folded continuation."""
        lines = head.split(b"\n")[1:]
        return all(_HEADER_LINE.match(line) for line in lines)

    def _lose_framing(self, flow: _Flow, reason: str, drop: int, benign: bool | None = None) -> int:
        """Drop `drop` bytes and resynchronise; count in errors if the flow is known SIP.

        benign=None decides by the flow: once a message was framed, losing framing is an error;
        before that the bytes are most likely just not SIP.
        """
        if benign is None:
            benign = not flow.trusted
        (self.stats if benign else self.errors)[reason] += 1
        self._consume(flow, drop)
        flow.synced = flow.trusted = False
        flow.pending_len = 0
        return 0
