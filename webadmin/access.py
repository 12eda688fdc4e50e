"""Object-level access to recordings (DESIGN.md, "Roles"), checked on every request that names one.

* agent: only recordings whose catalog ``agent_id`` is the user's agent id (how a call maps to
  its agent is the ``[storage] agent_source`` setting: a SIP header or an extension mapping,
  storage/agents.py). An agent account without an agent id sees nothing.
* qa: only recordings they hold a review or cross-review assignment for (open or scored, not
  withdrawn; storage/review.py).
* auditor, admin: every recording.

An unknown recording id and someone else's recording look the same to an agent or reviewer
(both refused): the answer must not tell whether an id exists. Refusals are audited by the
caller through ``authz.deny``.
"""

from __future__ import annotations

from typing import Any

from storage import review
from storage.catalog import CatalogReader
from webadmin.authz import ConsoleUser
from webadmin.context import current_context

SEE_ALL_ROLES = frozenset({"auditor", "admin"})


def request_reader() -> CatalogReader:
    """A read-only catalog connection for this request: the serving thread's own, kept open
    between requests (opening one costs milliseconds; no transaction is held between reads, so
    each read sees what is committed)."""
    return current_context().catalog.thread_reader()


def _agent_of(reader: CatalogReader, recording_id: str) -> tuple[bool, str | None]:
    """(exists, agent_id) of a recording."""
    found: list[tuple[Any, ...]] = reader.conn.execute(
        "SELECT agent_id FROM recordings WHERE recording_id = ?", (recording_id,)).fetchall()
    return (True, found[0][0]) if found else (False, None)


def recording_visible(user: ConsoleUser, recording_id: str) -> bool:
    """Whether ``user`` may see this recording at all (metadata, audio, waveform, notes)."""
    reader = request_reader()
    exists, agent_id = _agent_of(reader, recording_id)
    if not exists:
        return False
    if user.role in SEE_ALL_ROLES:
        return True
    if user.role == "agent":
        return user.agent_id is not None and agent_id == user.agent_id
    if user.role == "qa":
        return review.is_assigned(reader, user.username, recording_id)
    return False   # an unknown role sees nothing (fail closed)


def search_scope(user: ConsoleUser) -> dict[str, Any] | None:
    """Filters every search by ``user`` is confined to (catalog.search keywords), or None when
    the user may see no recording at all."""
    if user.role in SEE_ALL_ROLES:
        return {}
    if user.role == "agent":
        return {"agent_id": user.agent_id} if user.agent_id else None
    if user.role == "qa":
        return {"assigned_to": user.username}
    return None
