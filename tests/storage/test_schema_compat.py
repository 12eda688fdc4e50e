"""The catalog stays readable by Debian 12's own SQLite (3.40: Python's sqlite3 module and the
sqlite3 command-line tool), which an operator or a forensic examiner reaches for first.

recorderd writes through apsw's newer SQLite; features that SQLite 3.40 cannot even parse
(an ORDER BY inside an aggregate, for one) would make the whole schema "malformed" there.
"""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

from storage.catalog import Catalog
from tests.storage.test_catalog import store


def test_debians_sqlite_parses_the_schema_and_reads_the_tables(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    with Catalog(path) as catalog:
        store(catalog, "r1")
        catalog.set_transcript("r1", "overdraft question")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT recording_id FROM recordings").fetchall() == [("r1",)]
        assert conn.execute("SELECT count(*) FROM audit").fetchone() is not None
    finally:
        conn.close()


def test_the_sqlite3_tool_reads_the_catalog(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    with Catalog(path) as catalog:
        store(catalog, "r1")
    shown = subprocess.run(["sqlite3", "-readonly", str(path), "SELECT recording_id FROM recordings;"],
                           capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == "r1"
