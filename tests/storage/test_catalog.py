"""The catalog (storage/catalog.py, storage/migrations.py) and masking (storage/masking.py)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import apsw
import pytest

from storage.catalog import (
    IMPORT_COLUMNS,
    Catalog,
    CatalogError,
    CatalogLocked,
    CatalogReader,
    RecordingRow,
    SchemaTooNew,
    UnknownRecording,
    number_grams_query,
    storage_encryption_warning,
    time_id,
)
from storage.masking import mask_number, mask_row, mask_uri
from storage.migrations import LATEST_VERSION, MIGRATIONS, Migration, apply_migrations, schema_version

T0 = 1_714_557_600.0  # 2024-05-01T10:00:00Z
DAY = 86400.0


def metadata(rid: str, *, caller: str = "+4930123456789", callee: str = "+4989987654321",
             started: float = T0, duration: float = 60.0, agent: str | None = "A17",
             call_id: str | None = None, **extra: Any) -> dict[str, Any]:
    """A recording's metadata shaped like capture.recording.recording_metadata()."""
    return {
        "metadata_version": 1, "call_id": call_id or f"{rid}-call@10.0.0.1", "recording_id": rid,
        "caller": caller, "callee": callee, "caller_uri": f"sip:{caller}@pbx.bank.example",
        "callee_uri": f"sip:{callee}@pbx.bank.example", "direction": "inbound",
        "invited_at": None, "answered_at": None, "ended_at": None, "end_reason": "bye",
        "final_status": 200, "sip_headers": {"X-Agent-ID": agent} if agent else {},
        "started_at_epoch": started, "duration_s": duration, "sample_rate": 8000, "channels": 2,
        "codecs": ["pcma"],
        "dtmf": [{"digit": "5", "channel": 0, "offset_s": 1.5, "duration_ms": 120}],
        "streams": [{"ssrc": "0x1", "channel": 0, "src": "10.0.0.2:4000", "dst": "10.0.0.3:4000",
                     "payload_types": {"8": 100}, "codecs": ["pcma"], "packets": 100, "expected": 100,
                     "lost": 0, "duplicates": 0, "out_of_order": 0, "max_jitter_ms": 1.0,
                     "first_arrival": started, "last_arrival": started + duration}],
        "completeness": {"legs": [{"channel": 0, "expected": 100, "received": 90},
                                  {"channel": 1, "expected": 100, "received": 100}]},
        "consent": {"played": True, "audible": False, "offset_s": 0.0},
        **extra,
    }


def store(catalog: Catalog, rid: str, **kwargs: Any) -> dict[str, Any]:
    meta = metadata(rid, **kwargs)
    catalog.finish_recording(rid, meta, {"path": f"vault/{rid}.rdv", "size": 1000, "sha256": "ab" * 32},
                             key_id="00" * 16, kek_id="kek-1", wrapped_key=os.urandom(61))
    return meta


@pytest.fixture
def catalog(tmp_path: Path) -> Any:
    with Catalog(tmp_path / "catalog.db") as cat:
        yield cat


def ids(result: Any) -> list[str]:
    return [row.recording_id for row in result.rows]


# -- migrations -----------------------------------------------------------------------------


def test_migrations_from_empty_set_user_version_and_wal(tmp_path: Path) -> None:
    with Catalog(tmp_path / "c.db") as cat:
        def settings(conn: apsw.Connection) -> tuple[Any, ...]:
            return (schema_version(conn), conn.execute("PRAGMA journal_mode").fetchall()[0][0],
                    conn.execute("PRAGMA foreign_keys").fetchall()[0][0],
                    conn.execute("PRAGMA synchronous").fetchall()[0][0])
        assert cat.writer.call(settings) == (LATEST_VERSION, "wal", 1, 2)  # 2 = FULL
    conn = apsw.Connection(str(tmp_path / "c.db"))
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type IN ('table', 'view')")}
    assert {"recordings", "streams", "dtmf", "tags", "notes", "not_recorded", "transcripts", "search_fts",
            "search_numbers", "search_docs", "audit", "audit_checkpoints"} <= tables


def test_migrations_upgrade_step_by_step_and_reopen(tmp_path: Path) -> None:
    conn = apsw.Connection(str(tmp_path / "c.db"))
    assert apply_migrations(conn, MIGRATIONS[:1]) == 1
    assert not conn.table_exists("main", "audit")
    assert apply_migrations(conn) == LATEST_VERSION
    assert conn.table_exists("main", "audit")
    assert apply_migrations(conn) == LATEST_VERSION  # nothing left to do
    conn.close()
    with Catalog(tmp_path / "c.db") as cat:
        assert cat.integrity_check() == "ok"


def test_a_failing_migration_leaves_the_previous_version(tmp_path: Path) -> None:
    conn = apsw.Connection(str(tmp_path / "c.db"))
    broken = (*MIGRATIONS, Migration(LATEST_VERSION + 1, "broken", "CREATE TABLE half (x); SELECT nope FROM nowhere"))
    with pytest.raises(apsw.SQLError):
        apply_migrations(conn, broken)
    assert schema_version(conn) == LATEST_VERSION
    assert not conn.table_exists("main", "half")


def test_a_newer_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    Catalog(path).close()
    conn = apsw.Connection(str(path))
    conn.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
    conn.close()
    with pytest.raises(SchemaTooNew, match=rf"schema version {LATEST_VERSION + 1}, newer .* upgrade recorderd"):
        Catalog(path)
    with pytest.raises(SchemaTooNew):
        CatalogReader(path)
    assert schema_version(apsw.Connection(str(path))) == LATEST_VERSION + 1


def test_migrations_must_be_numbered_without_gaps(tmp_path: Path) -> None:
    conn = apsw.Connection(str(tmp_path / "c.db"))
    with pytest.raises(CatalogError, match="numbered"):
        apply_migrations(conn, (MIGRATIONS[0], Migration(3, "gap", "SELECT 1")))


# -- writer and readers -----------------------------------------------------------------------


def test_concurrent_callers_every_write_lands_once(catalog: Catalog) -> None:
    store(catalog, "r1")
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(40):
                catalog.add_note("r1", f"user{n}", f"note {n}-{i}")
                catalog.add_tag("r1", f"tag-{n}-{i % 5}")
                catalog.add_not_recorded({"call_id": f"c{n}-{i}", "reason": "no_media"})
                with pytest.raises(UnknownRecording):  # fails alone, inside a shared batch
                    catalog.add_tag("nope", "x")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with catalog.reader() as reader:
        notes = reader.conn.execute("SELECT author, text FROM notes").fetchall()
        assert len(notes) == len(set(notes)) == 8 * 40
        assert reader.conn.execute("SELECT count(*) FROM tags").fetchall()[0][0] == 8 * 5
        assert reader.conn.execute("SELECT count(DISTINCT call_id), count(*) FROM not_recorded").fetchall() \
            == [(320, 320)]
        assert reader.integrity_check() == "ok"


def test_readers_see_committed_data_while_the_writer_holds_a_transaction(catalog: Catalog) -> None:
    store(catalog, "r1")
    inside, release = threading.Event(), threading.Event()

    def slow_job(conn: apsw.Connection) -> None:
        conn.execute("INSERT INTO tags (recording_id, tag) VALUES ('r1', 'uncommitted')")
        inside.set()
        assert release.wait(10)

    pending = catalog.writer.submit(slow_job)
    assert inside.wait(10)
    seen: list[Any] = []

    def read() -> None:  # another thread, its own read-only connection
        with catalog.reader() as reader:
            seen.append(reader.get("r1"))

    reader_thread = threading.Thread(target=read)
    started = time.monotonic()
    reader_thread.start()
    reader_thread.join(5)
    assert time.monotonic() - started < 2, "the reader waited for the writer (not WAL?)"
    assert seen[0] is not None and seen[0].recording.tags == []
    release.set()
    pending.result(10)
    assert catalog.get("r1").recording.tags == ["uncommitted"]


def test_a_write_lock_held_elsewhere_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    with Catalog(path, busy_timeout_ms=100) as cat:
        store(cat, "r1")
        other = apsw.Connection(str(path))
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(CatalogLocked, match=r"locked by another process \(waited 100 ms"):
            cat.add_tag("r1", "x")
        other.execute("ROLLBACK")
        assert cat.add_tag("r1", "x")


def test_the_writer_refuses_work_after_close(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.db")
    cat.close()
    with pytest.raises(CatalogError, match="closed"):
        cat.add_not_recorded({"call_id": "x", "reason": "no_media"})


# -- recordings ----------------------------------------------------------------------------------


def test_begin_then_finish_fills_every_column(catalog: Catalog) -> None:
    meta = metadata("r1", started=T0 + 0.25, agent="A9")
    identity = {k: meta[k] for k in ("call_id", "caller", "callee", "caller_uri", "callee_uri", "direction",
                                     "sip_headers")}
    catalog.begin_recording("r1", meta["call_id"], T0, identity)
    assert [r.recording_id for r in catalog.active_recordings()] == ["r1"]
    assert catalog.get("r1").recording.state == "active"
    catalog.finish_recording("r1", meta, {"path": "vault/r1.rdv", "size": 1234, "sha256": "cd" * 32},
                             key_id=b"\x01" * 16, kek_id="kek-1", wrapped_key=b"w" * 61)
    detail = catalog.get("r1")
    row = detail.recording
    assert (row.state, row.agent_id, row.started_at, row.duration_s, row.codecs) == ("complete", "A9", T0 + 0.25,
                                                                                     60.0, ["pcma"])
    assert (row.consent_played, row.consent_audible, row.completeness) == (True, False, 0.95)
    assert (row.vault_path, row.vault_size, row.key_id, row.kek_id, row.has_key) == (
        "vault/r1.rdv", 1234, "01" * 16, "kek-1", True)
    assert detail.streams[0]["payload_types"] == {"8": 100} and detail.dtmf[0]["digit"] == "5"
    assert detail.metadata == meta
    assert catalog.active_recordings() == []
    # the rowid follows the final start time, and the search index followed it
    assert catalog.writer.call(lambda c: c.execute("SELECT id FROM recordings").fetchall()) == [(time_id(T0 + 0.25),)]
    assert ids(catalog.search("0123456")) == ["r1"]
    assert ids(catalog.search("pbx.bank")) == ["r1"]


def test_the_key_stored_at_begin_survives_a_finish_without_one(catalog: Catalog) -> None:
    meta = metadata("r1")
    catalog.begin_recording("r1", meta["call_id"], T0, meta, kek_id="kek-1", wrapped_key=b"k" * 61, key_id="aa")
    catalog.finish_recording("r1", meta, {}, None, None, None, state="partial", partial_note="recorder crash")
    key = catalog.get_key("r1")
    assert (key.kek_id, key.key_id, key.wrapped_key) == ("kek-1", "aa", b"k" * 61)
    assert catalog.get("r1").recording.partial_note == "recorder crash"


def test_abandon_removes_an_active_recording_and_its_index_entries(catalog: Catalog) -> None:
    meta = metadata("r1")
    catalog.begin_recording("r1", meta["call_id"], T0, meta)
    assert ids(catalog.search("30123")) == ["r1"]
    catalog.abandon_recording("r1")
    assert catalog.get("r1") is None and ids(catalog.search("30123")) == []
    store(catalog, "r2")
    with pytest.raises(CatalogError, match="complete, not active"):
        catalog.abandon_recording("r2")
    assert catalog.integrity_check() == "ok"


def test_row_json_has_a_stable_key_order_and_iso_times(catalog: Catalog) -> None:
    store(catalog, "r1")
    data = catalog.search(None).rows[0].to_dict()
    assert list(data) == list(RecordingRow.__dataclass_fields__)
    assert data["started_at"] == "2024-05-01T10:00:00.000Z"
    assert "wrapped_key" not in data and data["has_key"] is True
    detail = catalog.get("r1").to_dict()
    assert list(detail)[-4:] == ["metadata", "streams", "dtmf", "notes"]


def test_agent_header_is_configurable_and_case_insensitive(tmp_path: Path) -> None:
    with Catalog(tmp_path / "c.db", agent_header="x-operator") as cat:
        meta = metadata("r1", agent=None, sip_headers={"X-Operator": "op-7"})
        cat.finish_recording("r1", meta, {}, None, None, None)
        assert cat.get("r1").recording.agent_id == "op-7"


def test_unknown_ids_are_named(catalog: Catalog) -> None:
    assert catalog.get("nope") is None
    for call in (lambda: catalog.add_tag("nope", "t"), lambda: catalog.add_note("nope", "a", "b"),
                 lambda: catalog.destroy_key("nope"), lambda: catalog.get_key("nope")):
        with pytest.raises(UnknownRecording, match="unknown recording id 'nope'"):
            call()


def test_same_start_time_gets_distinct_ids(catalog: Catalog) -> None:
    for rid in ("a", "b", "c"):
        store(catalog, rid, started=T0)
    got = catalog.writer.call(lambda c: c.execute("SELECT id FROM recordings ORDER BY id").fetchall())
    assert [r[0] for r in got] == [time_id(T0), time_id(T0) + 1, time_id(T0) + 2]
    assert catalog.search(None).total == 3


def test_a_burst_of_calls_starting_together_keeps_distinct_ids_through_begin_and_finish(catalog: Catalog) -> None:
    """Calls begun in the same millisecond, finished in another order: each keeps the id it
    got at begin (the walk over taken ids finds its own row), and the ids stay distinct."""
    rids = [f"burst-{i}" for i in range(40)]
    for rid in rids:
        catalog.begin_recording(rid, f"{rid}@h", T0, {"caller": "1", "callee": "2"})
    ids = dict(catalog.writer.call(lambda c: c.execute("SELECT recording_id, id FROM recordings").fetchall()))
    assert sorted(ids.values()) == list(range(time_id(T0), time_id(T0) + 40))
    for rid in reversed(rids):
        store(catalog, rid, started=T0)
    after = dict(catalog.writer.call(lambda c: c.execute("SELECT recording_id, id FROM recordings").fetchall()))
    assert after == ids


def test_not_recorded_rows(catalog: Catalog) -> None:
    catalog.add_not_recorded({"call_id": "x@h", "reason": "no_media", "invited_at": "2024-05-01T10:00:00.000Z"})
    with catalog.reader() as reader:
        [row] = reader.not_recorded()
    assert (row.call_id, row.reason, row.seen_at, row.metadata["invited_at"]) == (
        "x@h", "no_media", T0, "2024-05-01T10:00:00.000Z")


# -- search ------------------------------------------------------------------------------------


@pytest.fixture
def searchable(catalog: Catalog) -> Catalog:
    store(catalog, "r1", caller="+4930123456789", callee="+4989111222333", started=T0, agent="A1", duration=30)
    store(catalog, "r2", caller="2502", callee="+441632960001", started=T0 + DAY, agent="A2", duration=300,
          call_id="a84b4c76e66710@pc33.atlanta.example")
    store(catalog, "r3", caller="+33 1 44 55 66 77", callee="2504", started=T0 + 2 * DAY, agent="A1", duration=90)
    catalog.add_tag("r2", "complaint")
    catalog.add_note("r3", "qa1", "Customer disputes the mortgage interest")
    catalog.set_transcript("r1", "I would like to block my credit card please")
    return catalog


@pytest.mark.parametrize(("query", "expected"), [
    ("123", ["r1"]),                # 3 digits, caller
    ("6789", ["r1"]),               # 4 digits: the last digits
    ("30123", ["r1"]),              # 5 digits
    ("1222333", ["r1"]),            # 7 digits of the callee
    ("+4930123456789", ["r1"]),     # the whole number
    ("030 123-456", []),            # a 0 that is not in the number
    ("30 123-456", ["r1"]),         # separators people type
    ("96000", ["r2"]),              # callee of r2
    ("44556677", ["r3"]),           # the caller was stored with spaces
    ("250", ["r3", "r2"]),          # extensions, both parties, newest first
])
def test_search_by_part_of_either_number(searchable: Catalog, query: str, expected: list[str]) -> None:
    assert ids(searchable.search(query)) == expected
    assert ids(searchable.search(party=query)) == expected


def test_number_grams_must_be_contiguous(catalog: Catalog) -> None:
    store(catalog, "r1", caller="12345999", callee="34567000")  # both 5-grams of 1234567, apart
    assert number_grams_query("1234567") == "5x12345 AND 5x34567"
    assert ids(catalog.search("1234567")) == []
    assert ids(catalog.search("123459")) == ["r1"]


def test_search_by_call_id_tag_note_transcript_and_uri(searchable: Catalog) -> None:
    assert ids(searchable.search("a84b4c76e66710@pc33.atlanta.example")) == ["r2"]  # exact Call-ID
    assert ids(searchable.search("e66710@pc33")) == ["r2"]                          # part of it
    assert ids(searchable.search("complaint")) == ["r2"]
    assert ids(searchable.search(tag="COMPLAINT")) == ["r2"]
    assert ids(searchable.search(tag="compl")) == []                                 # tags are exact
    assert ids(searchable.search("mortgage")) == ["r3"]
    assert ids(searchable.search("mortgage interest")) == ["r3"]                     # words ANDed
    assert ids(searchable.search('"interest mortgage"')) == []                       # a phrase
    assert ids(searchable.search("credit card")) == ["r1"]
    assert ids(searchable.search("atlanta")) == ["r2"]
    assert ids(searchable.search("no such thing")) == []


def test_short_terms_fall_back_to_like_on_numbers(searchable: Catalog) -> None:
    assert ids(searchable.search("77")) == ["r3"]
    assert ids(searchable.search("77", date_to=T0 + DAY)) == []
    assert ids(searchable.search("%")) == []  # LIKE wildcards are escaped


def test_search_by_date_range_and_agent(searchable: Catalog) -> None:
    assert ids(searchable.search(date_from=T0, date_to=T0 + 1.5 * DAY)) == ["r2", "r1"]
    assert ids(searchable.search(agent_id="A1")) == ["r3", "r1"]
    assert ids(searchable.search(agent_id="A1", date_from="2024-05-02T00:00:00Z")) == ["r3"]
    assert ids(searchable.search("+4930", agent_id="A1")) == ["r1"]
    assert ids(searchable.search("mortgage", agent_id="A2")) == []


def test_filters_ordering_paging_and_capped_totals(searchable: Catalog) -> None:
    assert ids(searchable.search(min_duration=60)) == ["r3", "r2"]
    assert ids(searchable.search(max_duration=60)) == ["r1"]
    assert ids(searchable.search(direction="outbound")) == []
    assert ids(searchable.search(order_by="started_at")) == ["r1", "r2", "r3"]
    assert ids(searchable.search(order_by="-duration_s")) == ["r2", "r3", "r1"]
    page = searchable.search(limit=1, offset=1)
    assert (ids(page), page.total, page.total_exact) == (["r2"], 3, True)
    capped = searchable.search(limit=1, count_limit=2)
    assert (capped.total, capped.total_exact) == (2, False)
    assert searchable.search("pbx", limit=1, count_limit=2).total_exact is False
    with pytest.raises(ValueError, match="order_by"):
        searchable.search(order_by="caller")


def test_search_index_follows_tag_and_note_changes(searchable: Catalog) -> None:
    assert searchable.remove_tag("r2", "complaint")
    assert ids(searchable.search("complaint")) == []
    searchable.add_tag("r1", "escalated")
    assert ids(searchable.search("escalat")) == ["r1"]
    searchable.set_transcript("r1", "nothing about cards")
    assert ids(searchable.search("credit")) == []


def test_bulk_import_is_searchable_like_single_writes(catalog: Catalog) -> None:
    store(catalog, "old", started=T0)  # its id is taken: the import must move on by one
    columns = ("recording_id", "call_id", "caller", "callee", "caller_uri", "callee_uri", "agent_id",
               "started_at", "duration_s", "state", "created_at", "updated_at")
    assert set(columns) <= set(IMPORT_COLUMNS)
    rows = [(f"b{i}", f"call-{i}@x", f"+4940555{i:04d}", "2502", None, None, "A5", T0 + (i // 2) * 0.0005,
             10.0 * i, "complete", T0, T0) for i in range(6)]
    assert catalog.import_recordings(rows, columns=columns, tags=[("b1", "vip")],
                                     transcripts=[("b2", "overdraft fees question")]) == 6
    # ids collide within a millisecond (and b0's with "old"): each moves on to a free one
    assert sorted(ids(catalog.search("40555000"))) == ["b0", "b1", "b2", "b3", "b4", "b5"]
    assert catalog.writer.call(lambda c: c.execute("SELECT count(DISTINCT id) FROM recordings").fetchall()) == [(7,)]
    assert ids(catalog.search("49405550003")) == ["b3"]
    assert ids(catalog.search(tag="vip")) == ["b1"]
    assert ids(catalog.search("overdraft")) == ["b2"]
    assert ids(catalog.search("call-4@x")) == ["b4"]
    assert catalog.search(agent_id="A5").total == 6
    with pytest.raises(CatalogError, match="b0 is already in the catalog"):
        catalog.import_recordings([rows[0]], columns=columns)
    assert catalog.integrity_check() == "ok"


# -- keys ----------------------------------------------------------------------------------------


def test_destroy_key_shreds_the_wrapped_key(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    with Catalog(path) as cat:
        store(cat, "r1")
        blob = cat.get_key("r1").wrapped_key
        assert len(blob) == 61 and cat.key_counts() == {"kek-1": 1}
        cat.destroy_key("r1")
        assert cat.get_key("r1") is None
        row = cat.get("r1").recording
        assert (row.state, row.has_key) == ("purged", False)
        assert cat.key_counts() == {} and list(cat.iter_wrapped_keys("kek-1")) == []
        assert cat.set_wrapped_key("r1", "kek-2", b"new") is False  # a rotation never resurrects it
        with pytest.raises(CatalogError, match="purged"):
            store(cat, "r1")
        cat.checkpoint()
        for name in (path, Path(f"{path}-wal")):
            if name.exists():
                assert blob not in name.read_bytes(), f"the wrapped key is still in {name.name}"


def test_key_rotation_in_batches_is_resumable(catalog: Catalog) -> None:
    for i in range(7):
        store(catalog, f"r{i}", started=T0 + i)
    catalog.destroy_key("r3")
    first = list(catalog.iter_wrapped_keys("kek-1", batch=2))
    assert [k.recording_id for k in first] == ["r0", "r1", "r2", "r4", "r5", "r6"]
    # a rotation that dies after two rows...
    assert catalog.set_wrapped_keys([(k.recording_id, "kek-2", b"re" + k.wrapped_key) for k in first[:2]],
                                    expected_kek_id="kek-1") == 2
    # ...is run again: it sees only what is left
    rest = list(catalog.iter_wrapped_keys("kek-1", batch=2))
    assert [k.recording_id for k in rest] == ["r2", "r4", "r5", "r6"]
    for key in rest:
        assert catalog.set_wrapped_key(key.recording_id, "kek-2", b"re" + key.wrapped_key, expected_kek_id="kek-1")
    assert catalog.key_counts() == {"kek-2": 6}
    assert catalog.get_key("r0").wrapped_key == b"re" + first[0].wrapped_key
    assert catalog.set_wrapped_key("r0", "kek-3", b"x", expected_kek_id="kek-1") is False


# -- volume encryption warning ------------------------------------------------------------------


def fake_system(tmp_path: Path, mounts: list[str], devices: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """A mountinfo file and a /sys tree: devices maps MAJ:MIN to {"uuid": ..., "slaves": {name: MAJ:MIN}}."""
    mountinfo = tmp_path / "mountinfo"
    tmp_path.mkdir(parents=True, exist_ok=True)
    mountinfo.write_text("".join(line + "\n" for line in mounts))
    sys_root = tmp_path / "sys"
    for dev, info in devices.items():
        node = sys_root / "dev" / "block" / dev
        node.mkdir(parents=True)
        if "uuid" in info:
            (node / "dm").mkdir()
            (node / "dm" / "uuid").write_text(info["uuid"] + "\n")
        (node / "slaves").mkdir()
        for name, slave in info.get("slaves", {}).items():
            (node / "slaves" / name).mkdir()
            (sys_root / "class" / "block" / name).mkdir(parents=True, exist_ok=True)
            (sys_root / "class" / "block" / name / "dev").write_text(slave + "\n")
    return str(mountinfo), str(sys_root)


def mount_line(mount_point: str, dev: str, fstype: str = "ext4", source: str = "/dev/sda1") -> str:
    return f"29 1 {dev} / {mount_point} rw,relatime shared:1 - {fstype} {source} rw"


def test_warning_when_the_catalog_is_not_on_dm_crypt(tmp_path: Path) -> None:
    target = tmp_path / "data" / "catalog.db"
    target.parent.mkdir()
    mounts = [mount_line("/", "8:1"), mount_line(str(tmp_path / "data"), "253:1", source="/dev/mapper/vg-data")]
    # LVM on LUKS: the mounted dm device is LVM, its slave is the LUKS mapping
    mountinfo, sys_root = fake_system(tmp_path, mounts, {
        "8:1": {}, "253:1": {"uuid": "LVM-abc", "slaves": {"dm-0": "253:0"}},
        "253:0": {"uuid": "CRYPT-LUKS2-1234-luks", "slaves": {"sda2": "8:2"}}, "8:2": {}})
    assert storage_encryption_warning(target, mountinfo=mountinfo, sys_root=sys_root) is None
    warning = storage_encryption_warning(tmp_path / "elsewhere.db", mountinfo=mountinfo, sys_root=sys_root)
    assert warning is not None and "not dm-crypt/LUKS" in warning and "/dev/sda1" in warning
    tmpfs = fake_system(tmp_path / "t", [mount_line("/", "0:42", "tmpfs", "tmpfs")], {})
    assert "tmpfs" in storage_encryption_warning(target, mountinfo=tmpfs[0], sys_root=tmpfs[1])
    assert "cannot tell" in storage_encryption_warning(target, mountinfo=str(tmp_path / "missing"))


# -- masking -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("number", "masked"), [
    ("+4930123456789", "+4930*****6789"),
    ("+49 30 1234567", "+49 3* ****567"),
    ("0301234567", "030****567"),
    ("1234567", "12***67"),
    ("2502", "2**2"),
    ("123", "***"),
    ("", ""),
    ("alice", "alice"),
])
def test_mask_number(number: str, masked: str) -> None:
    assert mask_number(number) == masked


def test_mask_row_by_role() -> None:
    row = {"caller": "+4930123456789", "callee": "2502", "caller_uri": "sip:+4930123456789@10.1.2.3;user=phone",
           "callee_uri": "tel:2502", "call_id": "x@10.1.2.3", "metadata": {"caller": "+4930123456789"}}
    for role in ("agent", "qa", "somebody"):
        masked = mask_row(row, role)
        assert masked["caller"] == "+4930*****6789" and masked["callee"] == "2**2"
        assert masked["caller_uri"] == "sip:+4930*****6789@10.1.2.3;user=phone"
        assert masked["callee_uri"] == "tel:2**2" and masked["call_id"] == row["call_id"]
        assert masked["metadata"]["caller"] == "+4930*****6789"
    assert row["caller"] == "+4930123456789"  # the input is not changed
    assert mask_row(row, "auditor") == row and mask_row(row, "admin") == row
    assert mask_uri("sip:2502@pbx") == "sip:2**2@pbx"


def test_mask_row_on_catalog_rows(searchable: Catalog) -> None:
    detail = searchable.get("r1")
    masked = mask_row(detail, "agent")
    assert masked.recording.caller == "+4930*****6789" and masked.metadata["callee"] == "+4989*****2333"
    assert detail.recording.caller == "+4930123456789"
    row = mask_row(searchable.search("6789").rows[0], "qa")
    assert isinstance(row, RecordingRow) and row.caller == "+4930*****6789"
