"""HTTP range requests for playback (RFC 9110 §14): which bytes of the WAV to send.

Pure functions: header values and the representation's size in, a decision out.

* No ``Range`` (or one in a unit other than ``bytes``, which a server must ignore, §14.2):
  the whole representation, 200.
* One satisfiable range: 206 with ``Content-Range: bytes first-last/size`` (§14.4). ``a-b``
  is clamped to the end, ``a-`` runs to the end, ``-n`` is the last ``n`` bytes (§14.1.2).
* Several ranges: those that overlap or touch are coalesced (§14.2 allows it); if they make
  one range it is served as above, else the header is ignored and the whole representation
  sent (a server MAY ignore Range, §14.2) — browsers' media elements ask for one range at a
  time, and multipart/byteranges would only serve tools that can use plain GETs anyway.
  More than :data:`MAX_RANGES` ranges are refused (many tiny ranges are a known way to make a
  server work hard, §14.2 and RFC 7233 §6.1).
* No satisfiable range (a first byte at or past the end, an empty suffix) or a malformed
  byte-range set: 416 with ``Content-Range: bytes */size`` (§15.5.17). RFC 9110 lets a server
  ignore or reject a malformed one; rejecting tells a broken client what is wrong.
* ``If-Range`` (§13.1.5): the range applies only if the validator is a strong entity tag equal
  to the current one; a date or any other tag means "send everything".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_RANGES = 16
_SPEC = re.compile(r"^(\d*)-(\d*)$")


class RangeNotSatisfiable(Exception):
    """416: no byte of the requested ranges exists, or the header is malformed."""

    def __init__(self, size: int, why: str) -> None:
        super().__init__(why)
        self.size = size

    @property
    def content_range(self) -> str:
        return f"bytes */{self.size}"


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Bytes ``first`` .. ``last`` (both inclusive, as in Content-Range) of ``size``."""

    first: int
    last: int
    size: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    @property
    def content_range(self) -> str:
        return f"bytes {self.first}-{self.last}/{self.size}"


def _parse_spec(spec: str, size: int) -> ByteRange | None:
    """One range-spec; None when it is well formed but not satisfiable; ValueError if malformed."""
    match = _SPEC.match(spec.strip())
    if match is None or match.group(0) == "-":
        raise ValueError(f"malformed range {spec.strip()!r}")
    first_text, last_text = match.groups()
    if not first_text:                      # suffix-range: the last n bytes
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            return None
        return ByteRange(max(0, size - suffix), size - 1, size)
    first = int(first_text)
    if last_text and int(last_text) < first:
        raise ValueError(f"range {spec.strip()!r} ends before it starts")
    if first >= size:
        return None
    last = min(int(last_text), size - 1) if last_text else size - 1
    return ByteRange(first, last, size)


def _coalesce(ranges: list[ByteRange]) -> list[ByteRange]:
    merged: list[ByteRange] = []
    for r in sorted(ranges, key=lambda r: r.first):
        if merged and r.first <= merged[-1].last + 1:
            top = merged[-1]
            merged[-1] = ByteRange(top.first, max(top.last, r.last), top.size)
        else:
            merged.append(r)
    return merged


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The one range to send, or None for the whole representation; raises
    :class:`RangeNotSatisfiable` for a 416."""
    if not header or not header.strip():
        return None
    unit, sep, ranges_text = header.strip().partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None                         # unknown unit: ignored (RFC 9110 §14.2)
    specs = ranges_text.split(",")
    if len(specs) > MAX_RANGES:
        raise RangeNotSatisfiable(size, f"more than {MAX_RANGES} ranges")
    try:
        parsed = [_parse_spec(spec, size) for spec in specs]
    except ValueError as err:
        raise RangeNotSatisfiable(size, str(err)) from None
    satisfiable = [r for r in parsed if r is not None]
    if not satisfiable:
        raise RangeNotSatisfiable(size, f"no requested byte exists (size {size})")
    merged = _coalesce(satisfiable)
    return merged[0] if len(merged) == 1 else None


def if_range_allows(if_range: str | None, etag: str) -> bool:
    """Whether a Range may be honoured given the request's If-Range (RFC 9110 §13.1.5):
    only a strong entity tag equal to ``etag`` (weak tags and dates never match)."""
    if if_range is None:
        return True
    value = if_range.strip()
    return value.startswith('"') and value == etag
