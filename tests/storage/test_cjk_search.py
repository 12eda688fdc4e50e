"""Two-character Chinese words (保本, 稳赚: the sensitive phrases of issue 9) are found in
transcripts, though the trigram index cannot hold anything shorter than three characters."""

from __future__ import annotations

from pathlib import Path

from storage.catalog import Catalog
from tests.storage.test_catalog import T0, ids, store


def test_two_character_chinese_words_are_found_in_transcripts(tmp_path: Path) -> None:
    with Catalog(tmp_path / "c.db") as catalog:
        store(catalog, "zh1", started=T0)
        store(catalog, "zh2", started=T0 + 60)
        store(catalog, "en1", started=T0 + 120)
        catalog.set_transcript("zh1", "我们保证保本，稳赚不赔")
        catalog.set_transcript("zh2", "理财有风险，投资需谨慎")
        catalog.set_transcript("en1", "ok so we guarantee it")
        assert ids(catalog.search("保本")) == ["zh1"]
        assert ids(catalog.search("稳赚")) == ["zh1"]
        assert ids(catalog.search("风险")) == ["zh2"]
        assert ids(catalog.search("保赚")) == []                 # not adjacent in any transcript
        assert ids(catalog.search("本，")) == []                 # punctuation is not an ideograph
        assert ids(catalog.search("理财有风险")) == ["zh2"]     # longer words: the trigrams, as before
        assert ids(catalog.search("保本", agent_id="A17")) == ["zh1"]
        catalog.set_transcript("zh1", "没有问题")                 # the index follows the transcript
        assert ids(catalog.search("保本")) == []
        assert ids(catalog.search("问题")) == ["zh1"]
