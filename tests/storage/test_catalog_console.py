"""What the console needs from the catalog (issue 5): the search filters for completeness,
consent, several tags and a reviewer's assignments; note edits; and the configurable mapping
from a call to its agent (storage/agents.py) applied when recordings are catalogued."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from recorderd.appliance import ApplianceError, open_appliance
from recorderd.config import load
from storage.agents import AgentMapping, parse_extension_map
from storage.catalog import Catalog, CatalogError
from storage.keys import KeyStore
from storage.review import ReviewStore
from tests.storage.test_catalog import T0, ids, metadata, store


@pytest.fixture
def catalog(tmp_path: Path) -> Any:
    with Catalog(tmp_path / "catalog.db") as cat:
        yield cat


def with_legs(received: tuple[int, int], expected: tuple[int, int] = (100, 100)) -> dict[str, Any]:
    return {"legs": [{"channel": c, "expected": e, "received": r}
                     for c, (e, r) in enumerate(zip(expected, received, strict=True))]}


@pytest.fixture
def varied(catalog: Catalog) -> Catalog:
    """r1 full, r2 lossy, r3 no packets expected; consent played / not / unknown; tags."""
    store(catalog, "r1", started=T0, completeness=with_legs((100, 100)),
          consent={"played": True, "audible": True, "offset_s": 0.0})
    store(catalog, "r2", started=T0 + 60, completeness=with_legs((80, 100)),
          consent={"played": False, "audible": False, "offset_s": None})
    store(catalog, "r3", started=T0 + 120, completeness={"legs": []},
          consent={"played": None, "audible": None, "offset_s": None})
    for rid, tag in (("r1", "vip"), ("r1", "complaint"), ("r2", "complaint"), ("r3", "vip")):
        catalog.add_tag(rid, tag)
    return catalog


def test_completeness_bounds(varied: Catalog) -> None:
    assert ids(varied.search(None, min_completeness=1.0)) == ["r1"]
    assert ids(varied.search(None, completeness_below=1.0)) == ["r2"]
    assert ids(varied.search(None, min_completeness=0.5, completeness_below=0.95)) == ["r2"]
    assert ids(varied.search(None, min_completeness=0.0)) == ["r2", "r1"]  # r3 has no ratio


@pytest.mark.parametrize(("consent", "expected"), [
    ("played", ["r1"]), ("not_played", ["r2"]), ("audible", ["r1"]), ("not_audible", ["r2"]), ("unknown", ["r3"]),
])
def test_consent_filter(varied: Catalog, consent: str, expected: list[str]) -> None:
    assert ids(varied.search(None, consent=consent)) == expected


def test_consent_filter_rejects_unknown_values(varied: Catalog) -> None:
    with pytest.raises(ValueError, match="consent must be one of played, not_played"):
        varied.search(None, consent="maybe")


def test_every_tag_must_be_present(varied: Catalog) -> None:
    assert ids(varied.search(None, tags=["vip"])) == ["r3", "r1"]
    assert ids(varied.search(None, tags=["VIP", "complaint"])) == ["r1"]
    assert ids(varied.search(None, tag="complaint", tags=["vip"])) == ["r1"]
    assert ids(varied.search("pbx.bank", tags=["complaint"], completeness_below=1.0)) == ["r2"]


def test_assigned_to_keeps_a_reviewers_open_and_scored_assignments(varied: Catalog) -> None:
    reviews = ReviewStore(varied)
    first = reviews.assign("r1", "quinn", "ada")
    reviews.assign("r2", "quinn", "ada")
    reviews.assign("r3", "rita", "ada")
    assert ids(varied.search(None, assigned_to="quinn")) == ["r2", "r1"]
    assert ids(varied.search("0123456", assigned_to="quinn", tags=["vip"])) == ["r1"]
    withdrawn = reviews.assign("r3", "quinn", "ada")
    reviews.withdraw(withdrawn.id)
    assert ids(varied.search(None, assigned_to="quinn")) == ["r2", "r1"]
    assert ids(varied.search(None, assigned_to="nobody")) == []
    assert first.state == "open"


def test_update_note_reindexes_and_checks_the_author(catalog: Catalog) -> None:
    store(catalog, "r1")
    note = catalog.add_note("r1", "quinn", "customer asked about mortgage")
    assert ids(catalog.search("mortgage")) == ["r1"]
    with pytest.raises(CatalogError, match="written by quinn, not rita"):
        catalog.update_note(note.id, "hijacked", author="rita")
    before, after = catalog.update_note(note.id, "customer asked about savings", author="quinn")
    assert (before.text, after.text, after.ts) == ("customer asked about mortgage", "customer asked about savings",
                                                   note.ts)
    assert ids(catalog.search("mortgage")) == [] and ids(catalog.search("savings")) == ["r1"]
    assert [n.text for n in catalog.get("r1").notes] == ["customer asked about savings"]
    with pytest.raises(CatalogError, match="unknown note 999"):
        catalog.update_note(999, "x")


# -- the agent of a call ---------------------------------------------------------------------


def test_extension_map_parsing() -> None:
    assert parse_extension_map(["2001=alice", " +49 (30) 2002 = bob ", "2001=alice"]) == {
        "2001": "alice", "49302002": "bob"}
    for bad, message in (("2001", "not EXTENSION=AGENT_ID"), ("=alice", "not EXTENSION=AGENT_ID"),
                         ("2001=", "not EXTENSION=AGENT_ID")):
        with pytest.raises(ValueError, match=message):
            parse_extension_map([bad])
    with pytest.raises(ValueError, match="mapped to both 'alice' and 'bob'"):
        parse_extension_map(["2001=alice", "2001=bob"])
    with pytest.raises(ValueError, match="agent source must be one of header, extension"):
        AgentMapping("pbx")


@pytest.mark.parametrize(("direction", "caller", "callee", "agent"), [
    ("inbound", "+4930555", "2001", "alice"),       # the bank's side of an inbound call: the callee
    ("outbound", "2002", "+4930555", "bob"),        # ... of an outbound call: the caller
    ("outbound", "+4930555", "2001", None),         # an outbound call's callee is the customer
    ("unknown", "2002", "2001", "alice"),           # unknown: the callee first ...
    ("unknown", "2002", "+4930555", "bob"),         # ... then the caller
    ("internal", "+4930555", "+4930666", None),
])
def test_agent_by_extension(direction: str, caller: str, callee: str, agent: str | None) -> None:
    mapping = AgentMapping.from_settings("extension", "X-Agent-ID", ["2001=alice", "2002=bob"])
    assert mapping.agent_of({"direction": direction, "caller": caller, "callee": callee,
                             "sip_headers": {"X-Agent-ID": "from-header"}}) == agent


def test_extension_mapping_applies_when_recordings_are_catalogued(tmp_path: Path) -> None:
    mapping = AgentMapping.from_settings("extension", "X-Agent-ID", ["7001=alice", "7002=bob"])
    with Catalog(tmp_path / "c.db", agents=mapping) as cat:
        # begin (identity only) already knows the agent: an agent may see a live call's row
        meta = metadata("r1", caller="+4930123456789", callee="7001", agent="header-agent")
        identity = {k: meta[k] for k in ("call_id", "caller", "callee", "direction", "sip_headers")}
        cat.begin_recording("r1", meta["call_id"], T0, identity)
        assert cat.get("r1").recording.agent_id == "alice"
        cat.finish_recording("r1", meta, {}, None, None, None)
        store(cat, "r2", callee="7002", started=T0 + 1)
        store(cat, "r3", callee="7999", started=T0 + 2)
        assert [(r.recording_id, r.agent_id) for r in cat.search(None, order_by="started_at").rows] == [
            ("r1", "alice"), ("r2", "bob"), ("r3", None)]
        assert ids(cat.search(None, agent_id="bob")) == ["r2"]


def test_header_mapping_stays_the_default(catalog: Catalog) -> None:
    store(catalog, "r1", agent="A17", callee="7001")
    assert catalog.get("r1").recording.agent_id == "A17"


def make_config(tmp_path: Path, storage_lines: str) -> Path:
    root = tmp_path / "box"
    (root / "vault").mkdir(parents=True)
    KeyStore.create(root / "keys")
    config = root / "recorderd.toml"
    config.write_text(f'[storage]\nvault_dir = "vault"\ncatalog = "catalog.db"\nkey_dir = "keys"\n{storage_lines}\n')
    return config


def test_appliance_reads_the_mapping_settings(tmp_path: Path) -> None:
    config = make_config(tmp_path, 'agent_source = "extension"\nagent_extensions = ["7001=alice"]')
    with open_appliance(load(config), recover=False, warnings=None) as app:
        store(app.catalog, "r1", callee="7001")
        assert app.catalog.get("r1").recording.agent_id == "alice"


@pytest.mark.parametrize(("lines", "message"), [
    ('agent_source = "pbx"', "storage.agent_source: agent source must be one of header, extension"),
    ('agent_extensions = ["7001"]', "storage.agent_extensions: '7001' is not EXTENSION=AGENT_ID"),
])
def test_bad_mapping_settings_are_named(tmp_path: Path, lines: str, message: str) -> None:
    config = make_config(tmp_path, lines)
    with pytest.raises(ApplianceError, match=message):
        open_appliance(load(config), recover=False, warnings=None)
