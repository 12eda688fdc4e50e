"""Phone numbers masked for roles that must not see them whole (DESIGN.md: Roles).

The middle digits of every run of digits long enough to be a number are replaced by '*';
a prefix (country / area) and the last digits stay, so a reviewer can still tell calls
apart. Everything that is not part of a digit run (scheme, host, '+') is kept.
"""

from __future__ import annotations

import re
from typing import Any

MASKED_ROLES = frozenset({"agent", "qa"})
NUMBER_FIELDS = ("caller", "callee", "caller_uri", "callee_uri")
_DIGIT_RUN = re.compile(r"\d{3,}")


def _mask_run(digits: str) -> str:
    keep = min(4, len(digits) // 3)
    hidden = len(digits) - 2 * keep
    return digits[:keep] + "*" * hidden + digits[len(digits) - keep:]


def mask_number(value: str) -> str:
    """"+4930123456789" -> "+4930*****6789"; "7001" -> "7**1"; "sip:2002@pbx" -> "sip:2**2@pbx"."""
    return _DIGIT_RUN.sub(lambda m: _mask_run(m.group(0)), value)


def mask_row(row: dict[str, Any], role: str) -> dict[str, Any]:
    """A copy of a catalog row with the number fields masked for the masked roles."""
    if role not in MASKED_ROLES:
        return dict(row)
    return {k: mask_number(v) if k in NUMBER_FIELDS and isinstance(v, str) else v for k, v in row.items()}
