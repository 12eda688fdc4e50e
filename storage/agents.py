"""Which agent a recording belongs to (the catalog's ``agent_id``), as configured.

The console gives an agent only the recordings where they are the agent (DESIGN.md, "Roles"),
so the mapping from a call to its agent decides what each agent may hear. Two sources:

* ``header``: the PBX names the agent in a SIP header of the INVITE (``storage.agent_header``,
  e.g. ``X-Agent-ID``; it must also be in ``capture.extra_headers`` to be copied into the
  recording's ``sip_headers``). Header names compare case-insensitively (RFC 3261 §7.3.1).
* ``extension``: the agent is whoever sits at an extension (``storage.agent_extensions``, a list
  of ``"EXTENSION=AGENT_ID"`` entries). The extension is looked for on the bank's side of the
  call: the callee of an inbound call, the caller of an outbound one; when the direction is
  ``internal`` or ``unknown`` (the default until the daemon knows the bank's numbers) the callee
  first, then the caller. Extensions compare on their digits and letters only, so
  ``"+49 30 1234"`` and ``"+49301234"`` are the same number.

The mapping is applied when a recording is catalogued (``begin_recording`` and
``finish_recording``); changing it later does not re-assign recordings already in the catalog.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_AGENT_HEADER = "X-Agent-ID"
AGENT_SOURCES = ("header", "extension")
# what people and PBXs put between digits (the same set storage.migrations.digits_sql drops)
_SEPARATORS = re.compile(r"[+\-. ()]")


def normalise_extension(number: str) -> str:
    """An extension or number as compared by the mapping: separators dropped, case folded."""
    return _SEPARATORS.sub("", number).casefold()


def sip_header(headers: Mapping[str, Any] | None, name: str) -> str | None:
    """A SIP header's value by case-insensitive name (RFC 3261 §7.3.1); None when absent."""
    wanted = name.lower()
    for key, value in (headers or {}).items():
        if key.lower() == wanted:
            return None if value is None else str(value)
    return None


def parse_extension_map(entries: Iterable[str]) -> dict[str, str]:
    """``["1001=alice", ...]`` → ``{"1001": "alice"}``; ValueError naming the bad entry.

    An extension listed twice with different agents is an error (which agent would hear the
    calls?); the same pair twice is harmless.
    """
    mapping: dict[str, str] = {}
    for entry in entries:
        extension, sep, agent = entry.partition("=")
        extension, agent = extension.strip(), agent.strip()
        key = normalise_extension(extension)
        if not sep or not key or not agent:
            raise ValueError(f"{entry!r} is not EXTENSION=AGENT_ID")
        if mapping.get(key, agent) != agent:
            raise ValueError(f"extension {extension!r} is mapped to both {mapping[key]!r} and {agent!r}")
        mapping[key] = agent
    return mapping


@dataclass(frozen=True, slots=True)
class AgentMapping:
    """How a call's agent is found: ``source`` is ``header`` or ``extension``."""

    source: str = "header"
    header: str = DEFAULT_AGENT_HEADER
    extensions: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.source not in AGENT_SOURCES:
            raise ValueError(f"agent source must be one of {', '.join(AGENT_SOURCES)}, not {self.source!r}")
        if self.source == "header" and not self.header:
            raise ValueError("agent source 'header' needs a header name")

    @classmethod
    def from_settings(cls, source: str, header: str, extensions: Iterable[str]) -> AgentMapping:
        """From the ``[storage]`` settings; ValueError (for the caller to name the setting)."""
        return cls(source=source, header=header, extensions=parse_extension_map(extensions))

    def agent_of(self, identity: Mapping[str, Any]) -> str | None:
        """The agent of a call from its identity or metadata dict (capture.recording)."""
        if self.source == "header":
            return sip_header(identity.get("sip_headers"), self.header)
        return self._by_extension(identity)

    def _by_extension(self, identity: Mapping[str, Any]) -> str | None:
        direction = identity.get("direction") or "unknown"
        sides = {"inbound": ("callee",), "outbound": ("caller",)}.get(direction, ("callee", "caller"))
        for side in sides:
            party = identity.get(side)
            if isinstance(party, str) and party:
                agent = self.extensions.get(normalise_extension(party))
                if agent is not None:
                    return agent
        return None
