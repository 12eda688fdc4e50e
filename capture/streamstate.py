"""The per-stream state that every batch reads and updates, held as columns.

A live batch carries a few packets of each of thousands of streams. Keeping each stream's
counters in its own object meant a Python pass over all streams for every field read before a
batch and written after it (about 25 passes, tens of microseconds per stream and batch), which
cost more than the packets themselves at 2,000 calls. Here every field is a numpy column with
one row per live stream: a batch gathers its streams' rows with one fancy index and scatters
the results back with another (capture.mediabatch).

A MediaStream reads and writes its row through the Column descriptors below; when its call
ends the row is released and the values are copied into the stream object, which keeps them
for the recording's metadata.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Generic, TypeVar, overload

import numpy as np

UNSET = np.iinfo(np.int64).min      # an optional integer not known yet (None to a reader)
RING = 512                          # sequence numbers remembered per stream (duplicate check)
PAYLOAD_TYPES = 128                 # RTP payload types 0-127 (RFC 3550 §5.1: 7 bits)

# name -> its value in a new stream; None: optional (stored as UNSET, or NaN for floats)
INT_FIELDS: dict[str, int | None] = {
    "packets": 0, "unique": 0, "duplicates": 0, "out_of_order": 0, "undecodable": 0,
    "first_seq": None, "max_seq": None, "max_ts": None, "last_seq": None, "last_ts": None,
    "frame_ticks": 0, "clock": 0, "anchor_ts": 0,
}
FLOAT_FIELDS: dict[str, float | None] = {
    "first_arrival": 0.0, "last_arrival": 0.0, "jitter_s": 0.0, "max_jitter_s": 0.0,
    "jitter_transit": None, "anchor_arrival": 0.0, "t0": 0.0,
}


def _initial(name: str) -> int | float:
    if name in INT_FIELDS:
        value = INT_FIELDS[name]
        return UNSET if value is None else value
    fvalue = FLOAT_FIELDS[name]
    return np.nan if fvalue is None else fvalue


class StreamTable:
    """Rows of per-stream state; a stream holds a row from its first batch to its call's end."""

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = 0
        self.columns: dict[str, np.ndarray] = {}
        for name in INT_FIELDS:
            self.columns[name] = np.zeros(0, np.int64)
        for name in FLOAT_FIELDS:
            self.columns[name] = np.zeros(0, np.float64)
        self.ring = np.zeros((0, RING), np.int64)                       # seen extended seqs
        self.payload_types = np.zeros((0, PAYLOAD_TYPES), np.int64)     # packets per PT
        self.free: list[int] = []
        self._grow(capacity)

    def _grow(self, capacity: int) -> None:
        old = self.capacity
        for name, column in self.columns.items():
            grown = np.empty(capacity, column.dtype)
            grown[:old] = column
            self.columns[name] = grown
        ring = np.full((capacity, RING), -1, np.int64)
        ring[:old] = self.ring
        self.ring = ring
        counts = np.zeros((capacity, PAYLOAD_TYPES), np.int64)
        counts[:old] = self.payload_types
        self.payload_types = counts
        self.free.extend(range(capacity - 1, old - 1, -1))
        self.capacity = capacity

    def allocate(self, values: dict[str, Any]) -> int:
        """A fresh row holding `values` (every field, as MediaStream keeps them detached)."""
        if not self.free:
            self._grow(2 * self.capacity)
        row = self.free.pop()
        for name, column in self.columns.items():
            value = values[name]
            column[row] = _initial(name) if value is None else value
        self.ring[row] = -1
        self.payload_types[row] = 0
        return row

    def payload_counts(self, row: int) -> Counter[int]:
        """The row's packets per RTP payload type, the ones seen."""
        counts = self.payload_types[row]
        return Counter({int(pt): int(counts[pt]) for pt in np.flatnonzero(counts).tolist()})

    def release(self, row: int) -> tuple[dict[str, Any], Counter[int]]:
        """Free the row; returns its values and payload-type counts for the stream to keep."""
        values = {name: read_value(name, column[row]) for name, column in self.columns.items()}
        kept = self.payload_counts(row)
        self.free.append(row)
        return values, kept


def read_value(name: str, raw: Any) -> Any:
    """A column's entry as the stream's attribute: int or float, None for the unset marker."""
    if name in INT_FIELDS:
        value = int(raw)
        return None if value == UNSET else value
    fvalue = float(raw)
    return None if np.isnan(fvalue) else fvalue


def initial_values() -> dict[str, Any]:
    return {**INT_FIELDS, **FLOAT_FIELDS}


T = TypeVar("T")


class Column(Generic[T]):
    """A MediaStream attribute kept in its StreamTable row while it has one (see module doc)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> Column[T]: ...
    @overload
    def __get__(self, obj: object, objtype: type | None = None) -> T: ...

    def __get__(self, obj: object | None, objtype: type | None = None) -> Column[T] | T:
        if obj is None:
            return self
        stream: Any = obj      # a MediaStream (capture.streams imports this module)
        if stream.table is None:
            return stream.detached[self.name]
        return read_value(self.name, stream.table.columns[self.name][stream.row])

    def __set__(self, obj: object, value: T) -> None:
        stream: Any = obj
        if stream.table is None:
            stream.detached[self.name] = value
        else:
            stream.table.columns[self.name][stream.row] = _initial(self.name) if value is None else value
