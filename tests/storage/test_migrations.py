"""Released migrations never change: an appliance that applied migration 1 must get the same
schema as one that applies it today. Migration 1's SQL is built from shared pieces
(storage/migrations.py: search_docs_view, _PARTIES, _NUMBER_GRAMS ...), so a change to one of
them for a later migration could change it unnoticed; its text is pinned here."""

from __future__ import annotations

import hashlib

from storage.migrations import MIGRATIONS

# sha256 of Migration 1's SQL as released; never update this to make the test pass
RELEASED = {1: "57247c77b34d93e8b0cbe80ed46b942a21abbf3379fea1ff2644935ec3b0e810"}


def test_released_migrations_are_byte_identical() -> None:
    texts = {m.version: m.sql for m in MIGRATIONS}
    changed = [version for version, digest in RELEASED.items()
               if hashlib.sha256(texts[version].encode()).hexdigest() != digest]
    assert not changed, f"released migration(s) {changed} changed: add a new migration instead"
