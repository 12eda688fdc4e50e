"""The stereo timeline of one call, held in memory only as long as the jitter window.

Sample 0 is the arrival of the call's first media packet. Packets are written at their
sample position (from their RTP timestamp, anchored on arrival time), so loss, silence
suppression and hold leave zeros of the right length and both channels stay aligned. The
engine periodically `take`s everything older than the jitter window and hands it to the sink:
a call's audio is never held whole in memory.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

MAX_SPAN_S = 120.0   # a write further ahead than this from what was flushed is refused


class CallTimeline:
    def __init__(self, t0: float, rate: int) -> None:
        self.t0 = t0
        self.rate = rate
        self.base = 0                  # absolute sample index of buf[0]; before it: with the sink
        self.end = 0                   # one past the last sample any packet wrote
        # planar (channel, frame): a packet's samples are one contiguous copy
        self.buf = np.zeros((2, rate // 2), np.int16)
        self.late_samples = 0          # samples that arrived after their place was flushed
        self.refused_samples = 0       # samples placed absurdly far ahead (bad timestamps)

    def sample_at(self, when: float) -> int:
        """The sample index of capture time `when` on this call's timeline."""
        return int(round((when - self.t0) * self.rate))

    def _reserve(self, upto: int) -> bool:
        needed = upto - self.base
        if needed > MAX_SPAN_S * self.rate:
            return False
        held = self.buf.shape[1]
        if needed > held:
            # grow in quarter seconds, not by doubling: memory per call is a product target
            grown = np.zeros((2, needed + self.rate // 4), np.int16)
            grown[:, :held] = self.buf
            self.buf = grown
        return True

    def write_block(self, channel: int, positions: np.ndarray, block: np.ndarray) -> None:
        """Write row i of `block` (n x L samples) at absolute sample positions[i].

        Consecutive packets usually sit back to back (position step == L): such runs are
        copied as one slice; anything else (late, overlapping) goes through a scatter."""
        n = len(positions)
        if not n:
            return
        width = block.shape[1]
        top = int(positions.max()) + width
        if not self._reserve(top):
            self.refused_samples += block.size
            return
        breaks = np.flatnonzero(np.diff(positions) != width) + 1
        bounds = np.concatenate(([0], breaks, [n])).tolist()
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            start = int(positions[lo]) - self.base
            if start >= 0:
                self.buf[channel, start:start + (hi - lo) * width] = block[lo:hi].reshape(-1)
            else:
                self._scatter(channel, positions[lo:hi], block[lo:hi])
        self.end = max(self.end, top)

    def extend_end(self, sample: int) -> None:
        """Media that is not audio (RFC 4733 events, comfort noise) still lasts until here."""
        if sample > self.end and self._reserve(sample):
            self.end = sample

    def write_run(self, channel: int, start: int, rows: np.ndarray) -> None:
        """Write packets that follow each other without a gap, starting at sample `start`."""
        top = start + rows.size
        if start < self.base or not self._reserve(top):
            width = rows.shape[1]
            self.write_block(channel, start + width * np.arange(len(rows), dtype=np.int64), rows)
            return
        self.buf[channel, start - self.base:top - self.base] = rows.reshape(-1)
        if top > self.end:
            self.end = top

    def _scatter(self, channel: int, positions: np.ndarray, block: np.ndarray) -> None:
        index = positions[:, None] + np.arange(block.shape[1]) - self.base
        keep = index >= 0
        self.late_samples += int(index.size - np.count_nonzero(keep))
        self.buf[channel, index[keep]] = block[keep]

    def write(self, channel: int, position: int, samples: np.ndarray) -> None:
        """Write one packet's samples starting at an absolute sample position."""
        if len(samples):
            self.write_block(channel, np.array([position], np.int64), samples.reshape(1, -1))

    def take(self, upto: int) -> np.ndarray:
        """Hand over samples [base, upto) as an (n, 2) int16 array and forget them.

        Past what the buffer holds the answer is silence (a hold, or a gap in the capture);
        callers take long spans in pieces (see `chunks`)."""
        count = upto - self.base
        if count <= 0:
            return np.zeros((0, 2), np.int16)
        size = self.buf.shape[1]
        held = min(count, size)
        out = np.empty((count, 2), np.int16)
        out[:held, 0] = self.buf[0, :held]
        out[:held, 1] = self.buf[1, :held]
        out[held:] = 0
        rest = min(size - held, max(self.end - self.base - held, 0))   # only what was written
        self.buf[:, :rest] = self.buf[:, held:held + rest]
        self.buf[:, rest:min(size, self.end - self.base)] = 0
        self.base += count
        return out

    def chunks(self, upto: int, max_frames: int) -> Iterator[np.ndarray]:
        """`take` in pieces of at most max_frames, so a long silence never becomes one array."""
        while self.base < upto:
            yield self.take(min(upto, self.base + max_frames))

    def take_rest(self) -> np.ndarray:
        """At the end of the call: everything up to the last written sample."""
        return self.take(max(self.end, self.base))

    def double_rate(self) -> None:
        """Switch to twice the sample rate (a wideband leg joined a narrowband call).

        Held samples are upsampled by linear interpolation; positions double."""
        held = self.buf
        up = np.zeros((2, 2 * held.shape[1]), np.int16)
        up[:, 0::2] = held
        nxt = np.concatenate([held[:, 1:], held[:, -1:]], axis=1).astype(np.int32)
        up[:, 1::2] = ((held.astype(np.int32) + nxt) // 2).astype(np.int16)
        self.buf = up
        self.base *= 2
        self.end *= 2
        self.rate *= 2
