"""Console benchmark: playback time-to-first-byte of a 1-hour recording over HTTPS, and the search
page's latency on a large catalog (DESIGN.md "Targets": playback first byte <= 100 ms).

    .venv/bin/python bench/web.py                         # 1-hour call, 200,000 catalogued calls
    .venv/bin/python bench/web.py --catalog-count 20000 --runs 10     # quick run
    .venv/bin/python bench/web.py --catalog /big/catalog.db           # a catalog bench/catalog.py built
                                                                      # (gets the hour and a user added)

What it does, in one run:

1. `recorderd init` in a temporary directory (or --catalog: that catalog instead of a new one).
2. A 1-hour recording (8 kHz stereo, 115 MB of WAV: a tone per channel with noise) is encrypted
   into the vault with a fresh data key (VaultWriter, 64 KiB segments, as `replay --store`
   does) and catalogued; then --catalog-count synthetic recordings are bulk-imported beside
   it (bench/catalog.py's generator: numbers, agents, tags, transcripts over five years).
3. `recorderd web` (gunicorn, TLS, one worker with threads) starts on a free loopback port; an
   admin logs in through the pages (password + TOTP, CSRF), answers the reason-for-access prompt
   once (the playback grant), and then, --runs times each, measures (http.client, TLS):

   * first byte, open connection: a GET with ``Range: bytes=X-(X+64 KiB)`` on a kept-alive
     connection; time from sending the request to the first byte of the body, X = 0 (press
     play), the middle and 95 % in (seeks). Each request decrypts from scratch: unwrap the data
     key, open the vault (authenticate header and last segment), decrypt the segments wanted.
   * first byte, new connection: the same for ``bytes=X-`` (open-ended, as a browser asks)
     including the TCP connect and TLS handshake; the connection is dropped after the first
     64 KiB.
   * waveform: the peaks JSON of the hour (computed from the whole decrypted audio the first
     time, then from the console's cache).
   * search page: the whole HTML page of /recordings for: the newest page, part of a number,
     a transcript word, 30 days + an agent, a tag + 90 days.

It prints median, p95 and max per measurement. Figures, not pass/fail; exit status non-zero
only when a step fails.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import math
import random
import re
import secrets
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import catalog as catalog_bench  # noqa: E402  (bench/catalog.py: the synthetic rows)
import pyotp  # noqa: E402

from recorderd.appliance import open_appliance  # noqa: E402
from recorderd.config import load  # noqa: E402
from storage.keys import new_data_key  # noqa: E402
from storage.vault import VaultWriter  # noqa: E402
from webadmin.users_store import UserStore  # noqa: E402

RATE = 8000
CHANNELS = 2
PIECE_S = 60                      # audio generated and sealed one minute at a time
READ = 64 * 1024
PASSWORD = "benchmark password 1"
START_EPOCH = 1_735_689_600.0     # 2025-01-01T00:00:00Z: after bench/catalog.py's five years
SERVER_START_S = 60.0


# ---------------------------------------------------------------------------------------------
# the appliance


def init_appliance(root: Path, catalog: Path | None) -> Path:
    subprocess.run([sys.executable, "-m", "recorderd", "init", str(root)], check=True, capture_output=True)
    config = root / "recorderd.toml"
    if catalog is not None:
        text = re.sub(r'^catalog = ".*"$', f'catalog = "{catalog.resolve()}"', config.read_text(), count=1,
                      flags=re.M)
        config.write_text(text)
    return config


def hour_of_audio(seconds: float) -> Any:
    """Stereo int16 PCM, a minute at a time: 440 Hz (caller) and 1 kHz (callee) plus noise."""
    rng = np.random.default_rng(7)
    total = int(seconds * RATE)
    for first in range(0, total, PIECE_S * RATE):
        n = min(PIECE_S * RATE, total - first)
        t = (first + np.arange(n)) / RATE
        left = 6000 * np.sin(2 * np.pi * 440 * t) + rng.normal(0, 300, n)
        right = 6000 * np.sin(2 * np.pi * 1000 * t) + rng.normal(0, 300, n)
        yield np.stack([left, right], axis=1).astype("<i2").tobytes()


def store_long_recording(app: Any, seconds: float) -> str:
    """Encrypt and catalogue one recording of ``seconds``; its id."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(START_EPOCH))
    rid = f"{stamp}-{secrets.token_hex(6)}"
    relative = f"{stamp[:4]}/{stamp[4:6]}/{stamp[6:8]}/{rid}.rdv"
    path = app.vault_dir / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    data_key, key_id = new_data_key()
    kek_id, wrapped = app.keys.wrap(data_key, rid)
    writer = VaultWriter(path, data_key, key_id, rid, rate=RATE, channels=CHANNELS)
    for piece in hour_of_audio(seconds):
        writer.append(piece)
    info = writer.close()
    frames = int(seconds * RATE)
    metadata = {"metadata_version": 1, "recording_id": rid, "call_id": f"{rid}@bench", "caller": "+4930123456789",
                "callee": "2001", "direction": "inbound", "started_at_epoch": START_EPOCH,
                "duration_s": frames / RATE, "sample_rate": RATE, "channels": CHANNELS, "codecs": ["pcma"],
                "sip_headers": {"X-Agent-ID": "A0001"}, "dtmf": [], "streams": [],
                "completeness": {"legs": [{"channel": c, "expected": frames // 160, "received": frames // 160,
                                           "gaps": []} for c in range(CHANNELS)]},
                "consent": {"played": None, "audible": None, "offset_s": None}}
    app.catalog.finish_recording(rid, metadata, {"path": relative, "size": info.size, "sha256": info.digest},
                                 key_id=key_id, kek_id=kek_id, wrapped_key=wrapped)
    return rid


def import_synthetic(app: Any, count: int) -> float:
    """bench/catalog.py's rows (five years before the long recording); seconds taken."""
    if count <= 0:
        return 0.0
    maker = catalog_bench.RowMaker(11, count)
    started = time.perf_counter()
    chunk = 20_000
    for first in range(0, count, chunk):
        recordings, tags, transcripts = maker.chunk(first, min(count, first + chunk))
        app.catalog.import_recordings(recordings, columns=catalog_bench.RECORDING_COLUMNS, tags=tags,
                                      transcripts=transcripts)
        print(f"  imported {min(count, first + chunk):,} / {count:,}", file=sys.stderr, flush=True)
    return time.perf_counter() - started


# ---------------------------------------------------------------------------------------------
# HTTP


class Browser:
    """Just enough of a browser: one kept-alive HTTPS connection, cookies, redirects by hand."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.tls = ssl.create_default_context()
        self.tls.check_hostname = False
        self.tls.verify_mode = ssl.CERT_NONE      # the console's self-signed certificate
        self.cookies: dict[str, str] = {}
        self.conn = self.connect()

    def connect(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.tls, timeout=60)

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        cookie = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        return {**({"Cookie": cookie} if cookie else {}), "Accept": "text/html", **(extra or {})}

    def keep_cookies(self, response: http.client.HTTPResponse) -> None:
        for header in response.headers.get_all("Set-Cookie") or []:
            name, _, rest = header.partition("=")
            value = rest.split(";", 1)[0]
            if "Max-Age=0" in header or "expires=Thu, 01 Jan 1970" in header:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value

    def request(self, method: str, path: str, form: dict[str, str] | None = None,
                extra: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        body = urllib.parse.urlencode(form).encode() if form is not None else None
        headers = self.headers(extra)
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        self.conn.request(method, path, body=body, headers=headers)
        response = self.conn.getresponse()
        data = response.read()
        self.keep_cookies(response)
        return response.status, dict(response.headers.items()), data

    def first_byte(self, path: str, range_header: str, *, new_connection: bool) -> float:
        """Seconds from sending the request to the first byte of the body."""
        conn = self.connect() if new_connection else self.conn
        started = time.perf_counter()
        if new_connection:
            conn.connect()
        conn.request("GET", path, headers=self.headers({"Range": range_header, "Accept": "*/*"}))
        response = conn.getresponse()
        first = response.read(1)
        elapsed = time.perf_counter() - started
        if response.status != 206 or not first:
            raise RuntimeError(f"{path} {range_header}: HTTP {response.status}")
        if new_connection:
            response.read(READ)
            conn.close()
        else:
            response.read()
        return elapsed


def csrf_of(html: bytes) -> str:
    found = re.search(rb'name="csrf_token" value="([^"]+)"', html)
    if not found:
        raise RuntimeError("no CSRF token on the page")
    return found.group(1).decode()


def log_in(browser: Browser, username: str, secret: str) -> None:
    _, _, page = browser.request("GET", "/login")
    status, headers, _ = browser.request("POST", "/login", {"username": username, "password": PASSWORD,
                                                            "csrf_token": csrf_of(page)})
    if status != 302 or "/login/code" not in headers.get("Location", ""):
        raise RuntimeError(f"login: HTTP {status} {headers.get('Location')}")
    _, _, page = browser.request("GET", urllib.parse.urlsplit(headers["Location"]).path)
    status, headers, _ = browser.request("POST", "/login/code", {"code": pyotp.TOTP(secret).now(),
                                                                 "csrf_token": csrf_of(page)})
    if status != 302 or "/login" in headers.get("Location", ""):
        raise RuntimeError(f"second factor: HTTP {status} {headers.get('Location')}")


def grant(browser: Browser, rid: str) -> str:
    _, _, page = browser.request("GET", f"/recordings/{rid}")
    status, headers, _ = browser.request("POST", f"/recordings/{rid}/access",
                                         {"reason": "benchmark: playback latency", "csrf_token": csrf_of(page)})
    found = re.search(r"grant=(\d+)", headers.get("Location", ""))
    if status != 302 or not found:
        raise RuntimeError(f"reason for access: HTTP {status}")
    return found.group(1)


def start_server(config: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "recorderd", "--config", str(config), "web",
                                    "--listen", f"127.0.0.1:{port}"], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"recorderd web exited: {log.read_text()[-2000:]}")
        try:
            probe = Browser("127.0.0.1", port)
            if probe.request("GET", "/login")[0] == 200:
                return process
        except OSError:
            time.sleep(0.2)
    process.terminate()
    raise RuntimeError(f"recorderd web did not answer within {SERVER_START_S} s")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------------------------
# figures


def summary(name: str, seconds: list[float], target_ms: float | None = None) -> None:
    ms = sorted(s * 1000 for s in seconds)
    p95 = ms[min(len(ms) - 1, math.ceil(0.95 * len(ms)) - 1)]
    verdict = "" if target_ms is None else f"   target <= {target_ms:.0f} ms: {'met' if p95 <= target_ms else 'MISSED'} (p95)"
    print(f"{name:<44} median {statistics.median(ms):7.1f} ms   p95 {p95:7.1f} ms   max {ms[-1]:7.1f} ms{verdict}")


def repeat(runs: int, action: Callable[[], float]) -> list[float]:
    return [action() for _ in range(runs)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=float, default=1.0, help="length of the played recording (1.0)")
    parser.add_argument("--catalog-count", type=int, default=200_000, help="synthetic recordings beside it")
    parser.add_argument("--catalog", type=Path, help="use this catalog (e.g. bench/catalog.py's) instead")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--keep", action="store_true", help="keep the appliance directory")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="recorderd-bench-web-"))
    process = None
    try:
        config = init_appliance(root / "box", args.catalog)
        with open_appliance(load(config), recover=False, warnings=None) as app:
            started = time.perf_counter()
            rid = store_long_recording(app, args.hours * 3600)
            print(f"recording {rid}: {args.hours:g} h encrypted in {time.perf_counter() - started:.1f} s")
            imported = 0 if args.catalog else args.catalog_count
            seconds = import_synthetic(app, imported)
            total = app.catalog.search(None, limit=1, count_limit=None).total
            print(f"catalog: {total:,} recordings ({imported:,} imported in {seconds:.0f} s)")
            username = f"bench-admin-{secrets.token_hex(4)}"
            _user, secret = UserStore(app.catalog).create(username, "admin", PASSWORD, totp=True)
            assert secret is not None
        port = free_port()
        process = start_server(config, port, root / "web.log")
        browser = Browser("127.0.0.1", port)
        log_in(browser, username, secret)
        seq = grant(browser, rid)
        audio = f"/recordings/{rid}/audio?grant={seq}"
        size = int(browser.request("GET", audio, extra={"Range": "bytes=0-0"})[1]["Content-Range"].split("/")[1])
        print(f"WAV of {size / 1e6:.1f} MB served by recorderd web on 127.0.0.1:{port}; {args.runs} runs each\n")

        for label, offset in (("start", 0), ("middle", size // 2), ("95 %", int(size * 0.95))):
            summary(f"first byte, open connection, {label}", repeat(args.runs, functools.partial(
                browser.first_byte, audio, f"bytes={offset}-{offset + READ - 1}", new_connection=False)), target_ms=100)
            summary(f"first byte, new TLS connection, {label}", repeat(args.runs, functools.partial(
                browser.first_byte, audio, f"bytes={offset}-", new_connection=True)), target_ms=100)

        wave = f"/recordings/{rid}/waveform.json?grant={seq}"
        started = time.perf_counter()
        status, _, body = browser.request("GET", wave)
        first = time.perf_counter() - started
        if status != 200:
            raise RuntimeError(f"waveform: HTTP {status}")
        print(f"{'waveform, first (computed from all the audio)':<44} {first * 1000:7.1f} ms "
              f"(server: {json.loads(body)['compute_ms']} ms, {len(body) / 1e3:.0f} kB JSON)")
        summary("waveform, cached", repeat(args.runs, lambda: _timed(browser, wave)))

        rng = random.Random(3)
        numbers = [row.caller for row in app_rows(config, 50) if row.caller and row.caller.startswith("+")]
        words = catalog_bench.vocabulary(random.Random(11))[:200]
        end = START_EPOCH
        day = 86400
        queries = {
            "search page: newest first": lambda: "/recordings",
            "search page: part of a number": lambda: "/recordings?q=" + _cut(rng.choice(numbers), rng),
            "search page: transcript word": lambda: "/recordings?q=" + rng.choice(words),
            "search page: 30 days + agent": lambda: _day_range(end - rng.random() * 1000 * day, 30)
            + f"&agent=A{rng.randrange(2000):04d}",
            "search page: tag + 90 days": lambda: _day_range(end - rng.random() * 1000 * day, 90) + "&tags="
            + rng.choice(catalog_bench.TAGS),
        }
        print()
        for name, make in queries.items():
            summary(name, repeat(args.runs, functools.partial(_timed_made, browser, make)))
        return 0
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _timed_made(browser: Browser, make: Callable[[], str]) -> float:
    return _timed(browser, make())


def _timed(browser: Browser, path: str) -> float:
    started = time.perf_counter()
    status, _, _ = browser.request("GET", path)
    if status != 200:
        raise RuntimeError(f"{path}: HTTP {status}")
    return time.perf_counter() - started


def _cut(number: str, rng: random.Random) -> str:
    digits = number.lstrip("+")
    length = rng.randint(4, min(8, len(digits)))
    start = rng.randrange(len(digits) - length + 1)
    return digits[start:start + length]


def _day_range(first: float, days: int) -> str:
    begin = time.strftime("%Y-%m-%d", time.gmtime(first))
    last = time.strftime("%Y-%m-%d", time.gmtime(first + (days - 1) * 86400))
    return f"/recordings?from={begin}&to={last}"


def app_rows(config: Path, n: int) -> list[Any]:
    """Some catalogued recordings to cut search terms from (read-only, while the server runs)."""
    from storage.catalog import CatalogReader

    with CatalogReader(load(config)["storage"]["catalog"]) as reader:
        return reader.search(None, limit=n, offset=n).rows


if __name__ == "__main__":
    sys.exit(main())
