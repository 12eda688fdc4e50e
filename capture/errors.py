"""The one exception family for bad input on the capture path.

Every parser raises ParseError with a short, stable `reason` key (used as a counter
label, e.g. "ipv4.truncated") and a human-readable detail. The pipeline counts errors by
reason and carries on: bad bytes never stop it.
"""


class ParseError(ValueError):
    """Input bytes that cannot be parsed; `reason` is a stable counter key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class UnsupportedCodec(ParseError):
    """An RTP payload format we have no decoder for."""
