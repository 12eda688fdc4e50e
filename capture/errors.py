"""The one exception family for bad input on the capture path.

Every parser raises ParseError with a short, stable `reason` key (used as a counter
label, e.g. "ipv4.truncated") and a human-readable detail. The pipeline counts errors by
reason and carries on: bad bytes never stop it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class ParseError(ValueError):
    """Input bytes that cannot be parsed; `reason` is a stable counter key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class UnsupportedCodec(ParseError):
    """An RTP payload format we have no decoder for."""


def never_leaks(reason: str) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Decorator for parser entry points: whatever a parser trips over on hostile input
    (ValueError, IndexError, KeyError, UnicodeError) surfaces as ParseError(reason), so the
    pipeline can count it; a ParseError raised inside passes through unchanged."""

    def wrap(parse: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(parse)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
            try:
                return parse(*args, **kwargs)
            except ParseError:
                raise
            except (ValueError, IndexError, KeyError, UnicodeError) as exc:
                raise ParseError(reason, f"{type(exc).__name__}: {exc}") from exc

        return guarded

    return wrap
