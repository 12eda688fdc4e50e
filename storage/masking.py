"""Masking phone numbers by role (DESIGN.md, "Roles": agents and QA see numbers masked).

The catalog stores numbers whole (search needs them); masking happens on output. A masked
number keeps a prefix (country / area code) and the last digits and hides the middle digits:
``+4930123456789`` → ``+4930*****6789``. Shorter numbers keep less, so a masked number never
shows more than a third of its digits at either end: ``2502`` → ``2**2``, ``123`` → ``***``.
Characters other than digits (``+``, spaces, dashes) stay where they are.

Roles that see numbers in full: ``auditor`` and ``admin``. Every other role, including an
unknown one, gets masked numbers (fail closed).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, TypeVar

UNMASKED_ROLES = frozenset({"auditor", "admin"})
NUMBER_FIELDS = ("caller", "callee")
URI_FIELDS = ("caller_uri", "callee_uri")
MASK = "*"
MAX_KEPT = 4  # digits kept at each end of a long number

# sip:user@host, sips:, tel: (RFC 3261 §19.1, RFC 3966): the user part is the number
_URI = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*:)(?P<user>[^@;?]*)(?P<rest>.*)$", re.S)

Row = TypeVar("Row")


def kept_digits(count: int) -> int:
    """Digits shown at each end of a number of ``count`` digits."""
    return min(MAX_KEPT, (count - 1) // 3) if count > 0 else 0


def mask_number(number: str) -> str:
    """The number with its middle digits replaced by ``*`` (non-digits kept in place)."""
    positions = [i for i, ch in enumerate(number) if ch.isdigit()]
    keep = kept_digits(len(positions))
    hidden = set(positions[keep:len(positions) - keep])
    return "".join(MASK if i in hidden else ch for i, ch in enumerate(number))


def mask_uri(uri: str) -> str:
    """A SIP/tel URI with the digits of its user part masked; the host is left alone."""
    match = _URI.match(uri)
    if match is None:
        return mask_number(uri)
    return match["scheme"] + mask_number(match["user"]) + match["rest"]


def needs_masking(role: str) -> bool:
    return role not in UNMASKED_ROLES


def _masked_fields(row: Any) -> dict[str, Any]:
    get = row.get if isinstance(row, dict) else lambda name, default=None: getattr(row, name, default)
    changes: dict[str, Any] = {}
    for name in NUMBER_FIELDS:
        value = get(name, None)
        if isinstance(value, str):
            changes[name] = mask_number(value)
    for name in URI_FIELDS:
        value = get(name, None)
        if isinstance(value, str):
            changes[name] = mask_uri(value)
    metadata = get("metadata", None)
    if isinstance(metadata, dict):
        changes["metadata"] = {**metadata, **_masked_fields(metadata)}
    return changes


def mask_row(row: Row, role: str) -> Row:
    """A copy of ``row`` (a dict, or a dataclass such as catalog.RecordingRow) with caller,
    callee and their URIs masked for ``role`` — also inside a ``metadata`` dict and a nested
    ``recording`` row. Unmasked roles get the row itself back."""
    if not needs_masking(role):
        return row
    changes = _masked_fields(row)
    nested = row.get("recording") if isinstance(row, dict) else getattr(row, "recording", None)
    if nested is not None and (isinstance(nested, dict) or dataclasses.is_dataclass(nested)):
        changes["recording"] = mask_row(nested, role)
    if isinstance(row, dict):
        return {**row, **changes}  # type: ignore[return-value]
    if dataclasses.is_dataclass(row) and not isinstance(row, type):
        return dataclasses.replace(row, **changes)
    raise TypeError(f"mask_row needs a dict or a dataclass, not {type(row).__name__}")
