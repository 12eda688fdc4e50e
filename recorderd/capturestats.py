"""The kernel's capture counters, per minute and as news for the engine.

AF_PACKET reports cumulative packets and drops per socket (capture/afpacket.py accumulates
the kernel's reset-on-read counters). Every second the daemon hands the totals per interface
to :class:`CaptureMinutes`, which returns the drops that are new since the previous reading
(every recording active now is marked with them: which call a dropped packet belonged to is
unknowable) and, once a minute has passed, that minute's rows for the catalog
(``capture_minutes``). Pure: the time comes in with the totals.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MinuteRow = tuple[int, str, int, int]     # (minute start, interface, packets, drops)


@dataclass
class CaptureMinutes:
    last: dict[str, tuple[int, int]] = field(default_factory=dict)     # totals at the last reading
    minute: int | None = None                                           # the minute being counted
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)   # its packets and drops so far

    def update(self, now: float, totals: dict[str, tuple[int, int]]) -> tuple[int, list[MinuteRow]]:
        """(drops new since the last reading, rows of the minute that just ended if one did).
        What arrived between two readings counts in the minute of the later one."""
        minute = int(now // 60) * 60
        ended = self.flush() if self.minute is not None and minute != self.minute else []
        self.minute = minute
        new_drops = 0
        for interface, (packets, drops) in totals.items():
            seen_packets, seen_drops = self.last.get(interface, (0, 0))
            more_packets, more_drops = max(0, packets - seen_packets), max(0, drops - seen_drops)
            self.last[interface] = (packets, drops)
            had_packets, had_drops = self.counts.get(interface, (0, 0))
            self.counts[interface] = (had_packets + more_packets, had_drops + more_drops)
            new_drops += more_drops
        return new_drops, ended

    def flush(self) -> list[MinuteRow]:
        """The rows of the minute being counted (at the end of a minute, and when stopping)."""
        if self.minute is None:
            return []
        rows = [(self.minute, interface, packets, drops) for interface, (packets, drops) in sorted(self.counts.items())]
        self.counts = {}
        return rows
