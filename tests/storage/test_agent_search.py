"""Text + agent searches through the agent markers of the search index (migration 8).

What an agent's own search looks like: words of the transcript (or notes, tags, parties) AND
their agent id. The catalog answers it with one FTS5 query that intersects the agent's marker
doclist with the text's; these tests check the answers against a brute-force filter, through
single writes, agent changes, bulk imports and a migration of a catalog that already holds
recordings.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import apsw

from storage.catalog import IMPORT_COLUMNS, Catalog, agent_marker
from storage.migrations import MIGRATIONS, apply_migrations
from tests.storage.test_catalog import T0, ids, store

WORDS = ["overdraft", "mortgage", "transfer", "fraud", "pension", "savings", "card", "loan"]
AGENTS = ["A1", "A2", "A3", "B17", None]


def fill(catalog: Catalog, count: int, seed: int) -> dict[str, tuple[str | None, str]]:
    """`count` recordings with a random agent and a random two-word transcript."""
    rng = random.Random(seed)
    truth: dict[str, tuple[str | None, str]] = {}
    for i in range(count):
        rid, agent = f"r{i:03d}", rng.choice(AGENTS)
        store(catalog, rid, started=T0 + i * 7.0, agent=agent)
        text = " ".join(rng.sample(WORDS, 2))
        catalog.set_transcript(rid, text)
        truth[rid] = (agent, text)
    return truth


def expected(truth: dict[str, tuple[str | None, str]], word: str, agent: str) -> list[str]:
    """Newest first, as search() orders by default."""
    return sorted((rid for rid, (a, text) in truth.items() if a == agent and word in text), reverse=True)


def marker_rows(catalog: Catalog, agent: str) -> set[int]:
    """The recordings whose index document carries the agent's marker."""
    def query(conn: apsw.Connection) -> set[int]:
        found = conn.execute("SELECT n FROM agent_markers WHERE agent_id = ?", (agent,)).fetchall()
        if not found:
            return set()
        phrase = '"' + agent_marker(int(found[0][0])) + '"'
        return {int(r[0]) for r in conn.execute("SELECT rowid FROM search_fts WHERE search_fts MATCH ?",
                                                (f"parties : {phrase}",))}
    return catalog.writer.call(query)


def agent_rows(catalog: Catalog, agent: str) -> set[int]:
    return catalog.writer.call(lambda c: {int(r[0]) for r in c.execute(
        "SELECT id FROM recordings WHERE agent_id = ?", (agent,))})


def test_text_and_agent_equal_the_brute_force_answer(tmp_path: Path) -> None:
    with Catalog(tmp_path / "c.db") as catalog:
        truth = fill(catalog, 120, seed=1)
        for agent in ("A1", "A2", "B17"):
            assert marker_rows(catalog, agent) == agent_rows(catalog, agent) != set()
            for word in WORDS:
                result = catalog.search(word, agent_id=agent, limit=500)
                assert ids(result) == expected(truth, word, agent), (word, agent)
                assert result.total == len(expected(truth, word, agent))
        # a page of a text + agent search, and an agent nobody has
        full = expected(truth, "loan", "A1")
        assert ids(catalog.search("loan", agent_id="A1", limit=2, offset=1)) == full[1:3]
        assert catalog.search("loan", agent_id="nobody").total == 0


def test_a_changed_agent_moves_the_recording_in_the_index(tmp_path: Path) -> None:
    with Catalog(tmp_path / "c.db") as catalog:
        store(catalog, "x1", started=T0, agent="A1")
        catalog.set_transcript("x1", "mortgage question")
        assert ids(catalog.search("mortgage", agent_id="A1")) == ["x1"]
        catalog.writer.call(lambda c: c.execute("UPDATE recordings SET agent_id = 'Z9' WHERE recording_id = 'x1'"))
        assert ids(catalog.search("mortgage", agent_id="A1")) == []
        assert ids(catalog.search("mortgage", agent_id="Z9")) == ["x1"]
        assert marker_rows(catalog, "A1") == set()


def test_bulk_imports_mark_their_agents(tmp_path: Path) -> None:
    columns = ("recording_id", "call_id", "caller", "callee", "agent_id", "started_at", "duration_s",
               "state", "created_at", "updated_at")
    assert set(columns) <= set(IMPORT_COLUMNS)
    rows = [(f"b{i}", f"call-{i}@x", f"+4940555{i:04d}", "2502", "A5" if i % 2 else "A6", T0 + i,
             10.0, "complete", T0, T0) for i in range(10)]
    transcripts = [(f"b{i}", "pension fraud" if i % 3 == 0 else "card limit") for i in range(10)]
    with Catalog(tmp_path / "c.db") as catalog:
        assert catalog.import_recordings(rows, columns=columns, transcripts=transcripts) == 10
        assert ids(catalog.search("fraud", agent_id="A5")) == ["b9", "b3"]
        assert ids(catalog.search("fraud", agent_id="A6")) == ["b6", "b0"]
        assert marker_rows(catalog, "A5") == agent_rows(catalog, "A5")


def test_migration_marks_the_recordings_already_there(tmp_path: Path) -> None:
    """A catalog at version 7 with recordings: migration 8 indexes their agents."""
    path = tmp_path / "c.db"
    conn = apsw.Connection(str(path))
    apply_migrations(conn, MIGRATIONS[:7])
    conn.close()
    seeded: dict[str, Any] = {}

    # write rows with the version-7 schema: the migration must pick them up
    conn = apsw.Connection(str(path))
    for i, agent in enumerate(["A1", "A2", "A1"]):
        conn.execute("INSERT INTO recordings (id, recording_id, call_id, agent_id, started_at, state, "
                     "created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'complete', ?, ?)",
                     (int((T0 + i) * 1000), f"m{i}", f"c{i}@x", agent, T0 + i, T0, T0))
        conn.execute("INSERT INTO transcripts (recording_id, text) VALUES (?, 'savings account')", (f"m{i}",))
        seeded[f"m{i}"] = agent
    conn.close()
    with Catalog(path) as catalog:
        assert ids(catalog.search("savings", agent_id="A1")) == ["m2", "m0"]
        assert marker_rows(catalog, "A1") == agent_rows(catalog, "A1")
        assert catalog.integrity_check() == "ok"
