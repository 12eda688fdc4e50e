"""Catalog benchmark: build N synthetic recordings, then time typical searches.

    .venv/bin/python bench/catalog.py                      # 10 M recordings (about 20 minutes)
    .venv/bin/python bench/catalog.py --count 1000000      # quicker
    .venv/bin/python bench/catalog.py --reuse              # search an existing catalog again

The catalog is storage.catalog's (the real migrations: tables, indexes, the trigram FTS5 index).
Rows go in through ``Catalog.import_recordings`` (the writer thread; executemany, one
transaction per chunk of 50,000, the FTS documents built by one INSERT ... SELECT per chunk) with
``synchronous=OFF`` and a 2 GB page cache for the build. A second process generates the rows so
that both cores work.

Synthetic rows: calls spread evenly over five years in time order; 70 % inbound (a customer's
E.164 number calls one of 20 service numbers), 25 % outbound, 5 % internal; 2,000 agents with
4-digit extensions; a Call-ID of 16 hex digits @ a PBX address; log-normal durations; 3 % of the
calls tagged; every call a short transcript of 8-20 words (a 3,000-word vocabulary with Zipf
weights plus banking words). The metadata JSON is a compact stand-in (~300 bytes), not the full
contract document.

Searches go through storage.catalog.CatalogReader.search (newest first, page of 50, total
counted up to the catalog's default count_limit) on a read-only connection, after a few warm-up queries:
number substring (4-8 digits cut from a random customer's number), keyword (a word of the
transcripts, drawn uniformly from the vocabulary), date range (30 days) + agent, paged listing
(pages 1-20 of everything), Call-ID (whole), keyword + agent (what an agent's own search looks
like), tag + date range (90 days). Each set runs twice: the first pass meets the OS page cache as
it is (a 10 M catalog is larger than this machine's RAM), the second repeats the same queries
warm. Figures are printed, not judged; the target is p95 <= 50 ms at 10 M.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing as mp
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from storage.catalog import DEFAULT_COUNT_LIMIT, Catalog, CatalogReader  # noqa: E402

FIVE_YEARS = 5 * 365 * 86400.0
END_OF_DATA = 1_735_689_600.0  # 2025-01-01T00:00:00Z: fixed so that runs are comparable
AGENTS = 2000
SERVICE_NUMBERS = [f"+4930123456{i:02d}" for i in range(20)]
COUNTRIES = [("+49", ["30", "40", "89", "69", "221", "151", "160", "170", "171", "176"], 70),
             ("+43", ["1", "316", "664", "676"], 10), ("+41", ["44", "31", "79"], 8),
             ("+33", ["1", "6", "7"], 6), ("+44", ["20", "7700"], 6)]
TAGS = ["complaint", "fraud-check", "vip", "escalated", "callback", "mortgage", "card-block",
        "review", "training", "legal"]
BANK_WORDS = ["account", "balance", "transfer", "mortgage", "card", "blocked", "overdraft", "loan",
              "interest", "statement", "fraud", "payment", "direct-debit", "savings", "branch"]
RECORDING_COLUMNS = ("recording_id", "call_id", "caller", "callee", "caller_uri", "callee_uri",
                     "direction", "agent_id", "started_at", "answered_at", "ended_at", "duration_s",
                     "sample_rate", "channels", "codecs", "end_reason", "state", "completeness",
                     "metadata", "vault_path", "vault_size", "vault_sha256", "key_id", "kek_id",
                     "wrapped_key", "created_at", "updated_at")


def vocabulary(rng: random.Random) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = sorted({"".join(rng.choice(letters) for _ in range(rng.randint(4, 10))) for _ in range(3000)})
    words += BANK_WORDS
    rng.shuffle(words)  # the Zipf weights go by position
    return words


def customer_number(rng: random.Random) -> str:
    (prefix, areas, _), = rng.choices(COUNTRIES, weights=[c[2] for c in COUNTRIES])
    return prefix + rng.choice(areas) + "".join(rng.choices("0123456789", k=rng.randint(6, 8)))


class RowMaker:
    """Deterministic synthetic rows: row i depends only on (seed, i)."""

    def __init__(self, seed: int, count: int) -> None:
        self.seed, self.count = seed, count
        self.words = vocabulary(random.Random(seed))
        self.cum_weights = list(itertools.accumulate(1.0 / (rank + 10) for rank in range(len(self.words))))
        self.step = FIVE_YEARS / count

    def chunk(self, start: int, stop: int) -> tuple[list[tuple[Any, ...]], list[tuple[str, str]],
                                                    list[tuple[str, str]]]:
        rng = random.Random(self.seed * 1_000_003 + start)
        recordings, tags, transcripts = [], [], []
        for i in range(start, stop):
            row = self.recording(rng, i)
            recordings.append(row)
            rid = row[0]
            transcripts.append((rid, " ".join(rng.choices(self.words, cum_weights=self.cum_weights,
                                                           k=rng.randint(8, 20)))))
            if rng.random() < 0.03:
                tags.append((rid, rng.choice(TAGS)))
        return recordings, tags, transcripts

    def recording(self, rng: random.Random, i: int) -> tuple[Any, ...]:
        started = END_OF_DATA - FIVE_YEARS + i * self.step + rng.random() * self.step
        agent = rng.randrange(AGENTS)
        extension = f"2{agent:03d}" if agent < 1000 else f"3{agent - 1000:03d}"
        kind = rng.random()
        if kind < 0.70:
            direction, caller, callee = "inbound", customer_number(rng), rng.choice(SERVICE_NUMBERS)
        elif kind < 0.95:
            direction, caller, callee = "outbound", extension, customer_number(rng)
        else:
            direction, caller, callee = "internal", extension, f"2{rng.randrange(1000):03d}"
        duration = round(min(7200.0, rng.lognormvariate(math.log(150), 0.9)), 3)
        call_id = f"{rng.getrandbits(64):016x}@10.20.{rng.randrange(4)}.{rng.randrange(1, 9)}"
        stamp = datetime.fromtimestamp(started, UTC).strftime("%Y%m%dT%H%M%SZ")
        rid = f"{stamp}-{rng.getrandbits(48):012x}"
        metadata = json.dumps({"metadata_version": 1, "recording_id": rid, "call_id": call_id,
                               "caller": caller, "callee": callee, "direction": direction,
                               "duration_s": duration, "codecs": ["pcma"],
                               "sip_headers": {"X-Agent-ID": f"A{agent:04d}"}}, separators=(",", ":"))
        return (rid, call_id, caller, callee, f"sip:{caller}@pbx.bank.example", f"sip:{callee}@pbx.bank.example",
                direction, f"A{agent:04d}", started, started + 4.0, started + duration, duration, 8000, 2,
                '["pcma"]', "bye", "complete", 1.0, metadata, f"vault/{stamp[:8]}/{rid}.rec",
                int(duration * 32000) + 4096, f"{rng.getrandbits(256):064x}", f"{rng.getrandbits(128):032x}",
                "20240101T000000Z-00000001", rng.randbytes(61), started + duration, started + duration)


def produce(maker: RowMaker, start: int, count: int, chunk: int, out: Any) -> None:
    """Child process: generate chunks into the queue; None at the end."""
    for first in range(start, count, chunk):
        out.put(maker.chunk(first, min(count, first + chunk)))
    out.put(None)


def generated_chunks(maker: RowMaker, start: int, count: int, chunk: int) -> Iterator[Any]:
    ctx = mp.get_context("fork")
    out = ctx.Queue(maxsize=4)
    child = ctx.Process(target=produce, args=(maker, start, count, chunk, out), daemon=True)
    child.start()
    try:
        while (item := out.get()) is not None:
            yield item
    finally:
        child.terminate()
        child.join()


TWENTY_MINUTES = 1200.0


def build(path: str, count: int, chunk: int, seed: int, budget_s: float) -> tuple[int, float]:
    """Import rows until ``count`` or the time budget; returns (rows imported, seconds)."""
    with Catalog(path, synchronous="OFF", cache_mb=2000) as catalog:
        have = catalog.writer.call(lambda conn: conn.execute("SELECT count(*) FROM recordings").fetchall()[0][0])
        maker, started, done = RowMaker(seed, count), time.perf_counter(), have
        within_20_min = have
        report_every = max(chunk, count // 20)
        next_report = have + report_every
        for recordings, tags, transcripts in generated_chunks(maker, have, count, chunk):
            done += catalog.import_recordings(recordings, columns=RECORDING_COLUMNS, tags=tags,
                                              transcripts=transcripts)
            elapsed = time.perf_counter() - started
            if elapsed <= TWENTY_MINUTES:
                within_20_min = done
            if done >= next_report:
                next_report += report_every
                print(f"  {done:>11,} rows  {elapsed:7.0f} s  {(done - have) / elapsed:8,.0f} rows/s",
                      file=sys.stderr, flush=True)
            if elapsed > budget_s:
                print(f"  time budget of {budget_s:.0f} s used up at {done:,} rows", file=sys.stderr)
                break
        seconds = time.perf_counter() - started
        catalog.writer.call(lambda conn: conn.execute("PRAGMA optimize"))
    if seconds > TWENTY_MINUTES:
        print(f"NOTE: after 20 minutes the catalog held {within_20_min:,} recordings")
    return done - have, seconds


def percentile(sorted_ms: list[float], p: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, max(0, math.ceil(p / 100 * len(sorted_ms)) - 1))]


def timed(reader: CatalogReader, runs: list[dict[str, Any]]) -> tuple[list[float], list[int]]:
    latencies, totals = [], []
    for kwargs in runs:
        begin = time.perf_counter()
        result = reader.search(**kwargs)
        latencies.append((time.perf_counter() - begin) * 1000)
        totals.append(result.total)
    return sorted(latencies), totals


def sample_rows(reader: CatalogReader, rng: random.Random, n: int) -> list[tuple[Any, ...]]:
    """n random recordings (ids are start times: pick a random instant, take the next one)."""
    low, high = reader.conn.execute("SELECT min(id), max(id) FROM recordings").fetchall()[0]
    return [reader.conn.execute("SELECT caller, callee, direction, call_id, agent_id, started_at "
                                "FROM recordings WHERE id >= ? ORDER BY id LIMIT 1",
                                (rng.randint(low, high),)).fetchall()[0] for _ in range(n)]


def query_sets(reader: CatalogReader, seed: int, n: int) -> dict[str, list[dict[str, Any]]]:
    rng = random.Random(seed + 7)
    samples = sample_rows(reader, rng, n)
    words = vocabulary(random.Random(seed))
    span = (END_OF_DATA - FIVE_YEARS, END_OF_DATA)

    def number_part(row: tuple[Any, ...]) -> str:
        number = row[0] if row[2] == "inbound" else row[1]
        digits = number.lstrip("+")
        length = rng.randint(4, min(8, len(digits)))
        first = rng.randint(0, len(digits) - length)
        return digits[first:first + length]

    def window(days: int) -> tuple[float, float]:
        start = rng.uniform(span[0], span[1] - days * 86400)
        return start, start + days * 86400

    sets: dict[str, list[dict[str, Any]]] = {
        "number substring": [{"query": number_part(r)} for r in samples],
        "keyword": [{"query": rng.choice(words)} for _ in range(n)],
        "date range + agent": [dict(zip(("date_from", "date_to"), window(30), strict=True),
                                    agent_id=f"A{rng.randrange(AGENTS):04d}") for _ in range(n)],
        "paged listing": [{"offset": 50 * rng.randrange(20)} for _ in range(n)],
        "Call-ID": [{"query": r[3]} for r in samples],
        "keyword + agent": [{"query": rng.choice(words), "agent_id": f"A{rng.randrange(AGENTS):04d}"}
                            for _ in range(n)],
        "tag + date range": [dict(zip(("date_from", "date_to"), window(90), strict=True), tag=rng.choice(TAGS))
                             for _ in range(n)],
    }
    return sets


def report_searches(path: str, seed: int, n: int) -> None:
    with CatalogReader(path) as reader:
        if not reader.conn.execute("SELECT 1 FROM recordings LIMIT 1").fetchall():
            print("empty catalog: nothing to search")
            return
        sets = query_sets(reader, seed, n)
        for kwargs in [s[0] for s in sets.values()] * 3:  # warm-up: schema, first pages
            reader.search(**kwargs)
        print(f"\nsearches ({n} of each; newest first, page of 50, total counted up to {DEFAULT_COUNT_LIMIT:,}).")
        print("first pass: each query once, pages as the OS cache has them (the catalog may not fit")
        print("in RAM); second pass: the same queries again, warm.")
        print(f"  {'search':<22}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}{'max ms':>8}  |{'warm p50':>9}"
              f"{'p95':>7}{'p99':>7}  {'median total':>13}")
        for name, runs in sets.items():
            cold, totals = timed(reader, runs)
            warm, _ = timed(reader, runs)
            print(f"  {name:<22}{percentile(cold, 50):8.1f}{percentile(cold, 95):8.1f}{percentile(cold, 99):8.1f}"
                  f"{cold[-1]:8.1f}  |{percentile(warm, 50):9.1f}{percentile(warm, 95):7.1f}"
                  f"{percentile(warm, 99):7.1f}  {statistics.median(totals):13,.0f}", flush=True)


def file_size(path: str) -> int:
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000_000, help="recordings to build (10 M)")
    parser.add_argument("--path", default=os.path.join(tempfile.gettempdir(), "recorderd-bench", "catalog.db"))
    parser.add_argument("--chunk", type=int, default=50_000, help="rows per transaction")
    parser.add_argument("--budget", type=float, default=1200.0, help="build time budget, seconds")
    parser.add_argument("--queries", type=int, default=200, help="searches of each kind")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--reuse", action="store_true", help="keep an existing catalog, build only what is missing")
    parser.add_argument("--keep", action="store_true", help="keep the catalog afterwards")
    args = parser.parse_args(argv)

    Path(args.path).parent.mkdir(parents=True, exist_ok=True)
    if not args.reuse:
        for suffix in ("", "-wal", "-shm"):
            Path(args.path + suffix).unlink(missing_ok=True)
    print(f"catalog {args.path}: {'completing to' if args.reuse else 'building'} {args.count:,} recordings "
          f"(chunks of {args.chunk:,}, budget {args.budget:.0f} s)", flush=True)
    inserted, seconds = build(args.path, args.count, args.chunk, args.seed, args.budget)
    with CatalogReader(args.path) as reader:
        rows = reader.conn.execute("SELECT count(*) FROM recordings").fetchall()[0][0]
    if inserted:
        print(f"inserted {inserted:,} rows in {seconds:.0f} s: {inserted / seconds:,.0f} recordings/s "
              f"(recording + transcript + tags + FTS document)")
    if rows < args.count:
        print(f"NOTE: the catalog holds {rows:,} recordings, fewer than the {args.count:,} asked for "
              f"(time budget); the figures below are for {rows:,}")
    size = file_size(args.path)
    print(f"catalog size {size / 1e9:.2f} GB for {rows:,} recordings ({size / max(rows, 1):,.0f} bytes each)")
    report_searches(args.path, args.seed, args.queries)
    if not args.keep and not args.reuse:
        for suffix in ("", "-wal", "-shm"):
            Path(args.path + suffix).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
