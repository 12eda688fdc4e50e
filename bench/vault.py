"""Vault encrypt / decrypt throughput beside a plain copy of the same bytes (DESIGN.md "Targets").

Target: vault encrypt and decrypt >= 50 % of a plain file copy's MB/s. This prints figures,
not pass/fail. Every measurement is repeated (--repeat, interleaved so that a busy machine
hurts all of them alike) and the best run is kept.

    .venv/bin/python bench/vault.py                  # 256 MiB in a temporary directory
    .venv/bin/python bench/vault.py --size-mib 64 --dir /var/lib/recorderd/vault

Measured, all on the same filesystem, page cache warm, source = random bytes:
  cp              `cp SRC DST` (coreutils; in-kernel copy_file_range), no fsync
  cp + fsync      the same, then `sync DST` (the data reaches the disk)
  python copy     read 1 MiB / write 1 MiB in Python, no fsync
  encrypt         VaultWriter.append (1 MiB pieces) of the source file: read, seal, write,
                  SHA-256 of the output; without close (no fsync) -> compared with cp
  encrypt + close the same plus close() (final segment, fsync, rename, fsync dir)
                  -> compared with cp + fsync
  decrypt         VaultReader.iter_pcm of the vault written to a plain file, no fsync
  verify          VaultReader.verify (authenticate every segment, SHA-256 of the file)
  seal in memory  AES-256-GCM of 64 KiB segments, no I/O: the ceiling of this machine
  first byte      open the vault (header + final segment authenticated) and read 64 KiB of
                  its WAV view at the start and in the middle: HTTP Range playback latency
                  (target <= 100 ms for a 1-hour recording; this one is longer)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from storage.keys import new_data_key  # noqa: E402
from storage.vault import DEFAULT_SEGMENT_SIZE, VaultReader, VaultWriter, seal_segment  # noqa: E402

CHUNK = 1 << 20
MB = 1e6


def make_source(path: Path, size: int) -> None:
    with open(path, "wb") as out:
        for _ in range(size // CHUNK):
            out.write(os.urandom(CHUNK))


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def cp(src: Path, dst: Path, fsync: bool) -> None:
    subprocess.run(["cp", str(src), str(dst)], check=True)
    if fsync:
        subprocess.run(["sync", str(dst)], check=True)


def python_copy(src: Path, dst: Path) -> None:
    with open(src, "rb", buffering=0) as inp, open(dst, "wb", buffering=0) as out:
        while block := inp.read(CHUNK):
            out.write(block)


def encrypt(src: Path, dst: Path, key: tuple[bytes, bytes], times: dict[str, float]) -> None:
    """Fills times["append"] (read + seal + write) and times["close"]."""
    start = time.perf_counter()
    writer = VaultWriter(dst, key[0], key[1], "rec-bench", 8000, 2, fsync_every_segments=0)
    with open(src, "rb", buffering=0) as inp:
        while block := inp.read(CHUNK):
            writer.append(block)
    times["append"] = time.perf_counter() - start
    writer.close()
    times["close"] = time.perf_counter() - start


def decrypt(vault: Path, dst: Path, key: bytes) -> None:
    with VaultReader(vault, key, "rec-bench") as reader, open(dst, "wb", buffering=0) as out:
        for block in reader.iter_pcm(CHUNK):
            out.write(block)


def verify(vault: Path, key: bytes) -> None:
    with VaultReader(vault, key, "rec-bench") as reader:
        reader.verify()


def first_bytes(vault: Path, key: bytes, offset: int) -> None:
    with VaultReader(vault, key, "rec-bench") as reader:
        reader.read_wav(offset, 1 << 16)


def seal_in_memory(size: int, key: bytes) -> None:
    segment = os.urandom(DEFAULT_SEGMENT_SIZE)
    prefix = os.urandom(7)
    for counter in range(size // DEFAULT_SEGMENT_SIZE):
        seal_segment(key, prefix, counter, False, b"rec-bench", segment)


def remove(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def run(work: Path, size: int, repeat: int) -> dict[str, float]:
    src, dst, vault, plain = work / "src.bin", work / "dst.bin", work / "v.vault", work / "plain.bin"
    make_source(src, size)
    key = new_data_key()
    best: dict[str, float] = {}

    def keep(name: str, seconds: float) -> None:
        best[name] = min(best.get(name, float("inf")), seconds)

    for _ in range(repeat):
        remove(dst)
        keep("cp", timed(lambda: cp(src, dst, fsync=False)))
        remove(dst)
        keep("cp + fsync", timed(lambda: cp(src, dst, fsync=True)))
        remove(dst)
        keep("python copy", timed(lambda: python_copy(src, dst)))
        remove(dst, vault)
        times: dict[str, float] = {}
        encrypt(src, vault, key, times)
        keep("encrypt", times["append"])
        keep("encrypt + close", times["close"])
        remove(plain)
        keep("decrypt", timed(lambda: decrypt(vault, plain, key[0])))
        keep("verify", timed(lambda: verify(vault, key[0])))
        keep("seal in memory", timed(lambda: seal_in_memory(size, key[0])))
        keep("first byte, start", timed(lambda: first_bytes(vault, key[0], 0)))
        keep("first byte, middle", timed(lambda: first_bytes(vault, key[0], size // 2)))
    if plain.read_bytes() != src.read_bytes():
        raise SystemExit("decrypted bytes differ from the source")
    return best


def report(best: dict[str, float], size: int) -> None:
    latency = {name: best.pop(name) for name in list(best) if name.startswith("first byte")}
    rate = {name: size / seconds / MB for name, seconds in best.items()}
    reference = {"encrypt": "cp", "encrypt + close": "cp + fsync", "decrypt": "cp", "verify": "cp"}
    print(f"{size / (1 << 20):.0f} MiB, best of the runs, MB/s (1 MB = 10^6 bytes)")
    for name, value in rate.items():
        line = f"  {name:16s} {value:8.0f} MB/s  {best[name]:7.3f} s"
        if name in reference:
            ratio = value / rate[reference[name]]
            line += f"   {ratio:6.1%} of {reference[name]}  ({value / rate['python copy']:.1%} of python copy)"
        print(line)
    for name, seconds in latency.items():
        print(f"  {name:19s} {seconds * 1000:8.2f} ms  (open + read_wav of 64 KiB)")
    print("  targets: encrypt and decrypt >= 50 % of the plain copy; first byte <= 100 ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, help="where to write (default: a temporary directory)")
    args = parser.parse_args()
    size = args.size_mib << 20
    work = Path(tempfile.mkdtemp(prefix="vault-bench-", dir=args.dir))
    try:
        report(run(work, size, args.repeat), size)
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
