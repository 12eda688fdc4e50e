"""The container of an export bundle: a ZIP file in one canonical, fully checkable layout.

Why not just ``zipfile``: a verifier must reject *every* change to the bundle file, and much of
a ZIP is not covered by the bag's checksums (timestamps, attributes, the directory, padding
bits of compressed data). So the bundle is written in one canonical form (APPNOTE.TXT 6.3.10)
and the verifier rebuilds every header from the central directory and compares bytes:

* members are *stored* (method 0, no compression: nothing to decode, no ignored padding bits;
  WAV audio barely compresses anyway), in the order written, back to back from byte 0, no
  data descriptors, no gaps, the central directory right after the last member, the end
  record right after it, no archive or file comments;
* every local header equals the one rebuilt from its central directory entry (name, CRC-32,
  size, time); every central entry has the fixed version, flags, attributes of this format;
* names are ASCII (flag bit 11 unset), relative, made of ``[A-Za-z0-9._-]`` path segments;
* ZIP64 (APPNOTE 4.5.3) exactly when a value does not fit: a member of 4 GiB or more carries
  both sizes in its local ZIP64 extra field and in the central one; a local header at or beyond
  4 GiB puts its offset in the central ZIP64 extra; the ZIP64 end record and locator (4.3.14,
  4.3.15) are written when the directory's count, size or offset does not fit the end record.

Any ZIP reader extracts such a file (it is an ordinary stored ZIP). A bundle re-zipped by
another tool no longer has the canonical form: verify the unpacked bag instead.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import BinaryIO

ZIP64_LIMIT = 0xFFFFFFFF      # a size or offset at or above this goes to a ZIP64 field
COUNT_LIMIT = 0xFFFF          # an entry count at or above this needs the ZIP64 end record
SENTINEL_32 = 0xFFFFFFFF      # "see the ZIP64 field" in a 4-byte field (APPNOTE 4.4.8, 4.4.9)
SENTINEL_16 = 0xFFFF          # ... in a 2-byte count (4.4.21)
LOCAL_SIG = b"PK\x03\x04"
CENTRAL_SIG = b"PK\x01\x02"
END_SIG = b"PK\x05\x06"
ZIP64_END_SIG = b"PK\x06\x06"
ZIP64_LOCATOR_SIG = b"PK\x06\x07"
LOCAL_FMT = "<4sHHHHHIIIHH"             # 30 bytes (APPNOTE 4.3.7)
CENTRAL_FMT = "<4sHHHHHHIIIHHHHHII"     # 46 bytes (4.3.12)
END_FMT = "<4sHHHHIIH"                  # 22 bytes (4.3.16)
ZIP64_END_FMT = "<4sQHHIIQQQQ"          # 56 bytes (4.3.14)
ZIP64_LOCATOR_FMT = "<4sIQI"            # 20 bytes (4.3.15)
LOCAL_LEN = struct.calcsize(LOCAL_FMT)
CENTRAL_LEN = struct.calcsize(CENTRAL_FMT)
END_LEN = struct.calcsize(END_FMT)
ZIP64_END_LEN = struct.calcsize(ZIP64_END_FMT)
ZIP64_LOCATOR_LEN = struct.calcsize(ZIP64_LOCATOR_FMT)
ZIP64_EXTRA_ID = 0x0001
VERSION_NEEDED = 20                     # 2.0: stored members, directories of the 2.0 kind
VERSION_NEEDED_ZIP64 = 45               # 4.5: ZIP64
VERSION_MADE_BY = (3 << 8) | 45         # host 3 = Unix, spec 4.5
EXTERNAL_ATTR = 0o100644 << 16          # a regular file, rw-r--r--
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*")
MAX_NAME_BYTES = 255
CRC_OFFSET = 14                         # of the CRC-32 field in a local header

LOCAL_FIELDS = ("signature", "version needed", "flags", "method", "time", "date", "CRC-32",
                "compressed size", "size", "name length", "extra length")
CENTRAL_FIELDS = ("signature", "version made by", "version needed", "flags", "method", "time", "date",
                  "CRC-32", "compressed size", "size", "name length", "extra length", "comment length",
                  "disk", "internal attributes", "external attributes", "local header offset")

DIRECTORY = "zip central directory"
END_RECORD = "zip end of central directory"


class ContainerError(Exception):
    """The writer was asked for something the canonical form does not allow."""


def dos_datetime(when: datetime) -> tuple[int, int]:
    """(time, date) in MS-DOS format (2-second resolution, years 1980-2107), as ZIP stores them."""
    year = min(max(when.year, 1980), 2107)
    date = (year - 1980) << 9 | when.month << 5 | when.day
    time = when.hour << 11 | when.minute << 5 | when.second // 2
    return time, date


def check_name(name: str) -> None:
    """Refuse a member name outside the canonical form (see the module docstring)."""
    if not NAME_PATTERN.fullmatch(name) or len(name) > MAX_NAME_BYTES or ".." in name.split("/"):
        raise ContainerError(f"member name {name!r} is not a plain relative ASCII path")


def _zip64_extra(*values: int) -> bytes:
    return struct.pack(f"<HH{len(values)}Q", ZIP64_EXTRA_ID, 8 * len(values), *values)


@dataclass(frozen=True, slots=True)
class Member:
    """One stored member: where its local header is, what its data must hash to (CRC-32)."""

    name: str
    size: int
    crc32: int
    offset: int
    dos_time: int
    dos_date: int

    @property
    def big(self) -> bool:
        return self.size >= ZIP64_LIMIT

    @property
    def far(self) -> bool:
        return self.offset >= ZIP64_LIMIT

    @property
    def version_needed(self) -> int:
        return VERSION_NEEDED_ZIP64 if self.big or self.far else VERSION_NEEDED

    def local_header(self) -> bytes:
        name = self.name.encode("latin-1")   # ASCII for every valid name; latin-1 rebuilds a damaged one
        extra = _zip64_extra(self.size, self.size) if self.big else b""
        size = SENTINEL_32 if self.big else self.size
        return struct.pack(LOCAL_FMT, LOCAL_SIG, self.version_needed, 0, 0, self.dos_time, self.dos_date,
                           self.crc32, size, size, len(name), len(extra)) + name + extra

    def central_header(self) -> bytes:
        name = self.name.encode("latin-1")
        values = ([self.size, self.size] if self.big else []) + ([self.offset] if self.far else [])
        extra = _zip64_extra(*values) if values else b""
        size = SENTINEL_32 if self.big else self.size
        offset = SENTINEL_32 if self.far else self.offset
        return struct.pack(CENTRAL_FMT, CENTRAL_SIG, VERSION_MADE_BY, self.version_needed, 0, 0, self.dos_time,
                           self.dos_date, self.crc32, size, size, len(name), len(extra), 0, 0, 0, EXTERNAL_ATTR,
                           offset) + name + extra

    @property
    def data_offset(self) -> int:
        return self.offset + len(self.local_header())

    @property
    def end(self) -> int:
        return self.data_offset + self.size


def end_records(count: int, directory_offset: int, directory_size: int) -> bytes:
    """The end record; before it, when a value does not fit, the ZIP64 end record and locator,
    and then the end record's count, size and offset are all "see ZIP64" (APPNOTE 4.4.1.4)."""
    if count < COUNT_LIMIT and directory_offset < ZIP64_LIMIT and directory_size < ZIP64_LIMIT:
        return struct.pack(END_FMT, END_SIG, 0, 0, count, count, directory_size, directory_offset, 0)
    zip64_end = directory_offset + directory_size
    return (struct.pack(ZIP64_END_FMT, ZIP64_END_SIG, ZIP64_END_LEN - 12, VERSION_MADE_BY, VERSION_NEEDED_ZIP64,
                        0, 0, count, count, directory_size, directory_offset)
            + struct.pack(ZIP64_LOCATOR_FMT, ZIP64_LOCATOR_SIG, 0, zip64_end, 1)
            + struct.pack(END_FMT, END_SIG, 0, 0, SENTINEL_16, SENTINEL_16, SENTINEL_32, SENTINEL_32, 0))


# ---------------------------------------------------------------------------------------------
# writing


class BundleZipWriter:
    """Writes members one after the other into a seekable binary file positioned at 0.

    A member's data is streamed (``chunks``), its size announced first; the CRC-32 is patched
    into the local header afterwards (the file is seekable, so no data descriptor).
    """

    def __init__(self, out: BinaryIO, when: datetime) -> None:
        if out.tell() != 0:
            raise ContainerError("the bundle must start at byte 0 of its file")
        self._out = out
        self._pos = 0
        self._dos_time, self._dos_date = dos_datetime(when)
        self.members: list[Member] = []
        self._names: set[str] = set()
        self._closed = False

    def add(self, name: str, chunks: Iterable[bytes], size: int) -> Member:
        check_name(name)
        if name in self._names:
            raise ContainerError(f"member {name} written twice")
        if self._closed:
            raise ContainerError("the bundle is closed")
        member = Member(name, size, 0, self._pos, self._dos_time, self._dos_date)
        self._out.write(member.local_header())
        crc, written = 0, 0
        for chunk in chunks:
            crc = zlib.crc32(chunk, crc)
            written += len(chunk)
            self._out.write(chunk)
        if written != size:
            raise ContainerError(f"member {name}: {written} bytes written, {size} announced")
        member = replace(member, crc32=crc)
        self._out.seek(member.offset + CRC_OFFSET)
        self._out.write(struct.pack("<I", crc))
        self._out.seek(member.end)
        self._pos = member.end
        self._names.add(name)
        self.members.append(member)
        return member

    def add_bytes(self, name: str, data: bytes) -> Member:
        return self.add(name, [data], len(data))

    def close(self) -> int:
        """Write the central directory and the end records; returns the file's size."""
        if self._closed:
            return self._pos
        directory = b"".join(m.central_header() for m in self.members)
        self._out.write(directory + end_records(len(self.members), self._pos, len(directory)))
        self._pos = self._out.tell()
        self._closed = True
        return self._pos


# ---------------------------------------------------------------------------------------------
# reading, strictly


@dataclass(frozen=True, slots=True)
class ContainerProblem:
    subject: str   # the member's name, or DIRECTORY / END_RECORD
    what: str

    def __str__(self) -> str:
        return f"{self.subject}: {self.what}"


class _Malformed(Exception):
    pass


def _read_at(f: BinaryIO, offset: int, length: int) -> bytes:
    f.seek(offset)
    data = f.read(length)
    if len(data) != length:
        raise _Malformed(f"{length} bytes at offset {offset} run past the end of the file")
    return data


def _differences(names: tuple[str, ...], actual: tuple[object, ...], expected: tuple[object, ...]) -> str:
    diffs = [f"{name} {a!r} (expected {e!r})" for name, a, e in zip(names, actual, expected, strict=True)
             if a != e]
    return ", ".join(diffs)


def _zip64_values(extra: bytes) -> list[int]:
    """The values of a ZIP64 extra field; _Malformed when the extra holds anything else."""
    if not extra:
        return []
    if len(extra) < 4:
        raise _Malformed("extra field too short")
    tag, length = struct.unpack_from("<HH", extra)
    if tag != ZIP64_EXTRA_ID or length != len(extra) - 4 or length % 8:
        raise _Malformed(f"unexpected extra field (id {tag:#06x}, {length} bytes)")
    return list(struct.unpack_from(f"<{length // 8}Q", extra, 4))


def _display(raw: bytes) -> str:
    return raw.decode("latin-1")   # one character per byte: a damaged name is shown and rebuilt as it is


@dataclass
class _CentralEntry:
    fields: tuple[int, ...]
    name: str
    raw: bytes
    member: Member
    problem: str


def _parse_central(directory: bytes, pos: int) -> tuple[_CentralEntry, int]:
    if len(directory) - pos < CENTRAL_LEN:
        raise _Malformed(f"entry at directory byte {pos} is cut short")
    fields = struct.unpack_from(CENTRAL_FMT, directory, pos)
    name_len, extra_len, comment_len = fields[10], fields[11], fields[12]
    end = pos + CENTRAL_LEN + name_len + extra_len + comment_len
    if fields[0] != CENTRAL_SIG or end > len(directory):
        raise _Malformed(f"no valid entry at directory byte {pos}")
    raw = directory[pos:end]
    name_raw = raw[CENTRAL_LEN:CENTRAL_LEN + name_len]
    extra = raw[CENTRAL_LEN + name_len:CENTRAL_LEN + name_len + extra_len]
    name = _display(name_raw)
    values = _zip64_values(extra) if extra else []
    size, offset = fields[9], fields[16]
    try:
        if size == SENTINEL_32:
            size = values.pop(0)
            values.pop(0)   # the compressed size; checked by the canonical comparison
        if offset == SENTINEL_32:
            offset = values.pop(0)
    except IndexError:
        raise _Malformed(f"{name}: ZIP64 field announced but missing") from None
    member = Member(name, size, fields[7], offset, fields[5], fields[6])
    try:
        check_name(name)
    except ContainerError as err:
        return _CentralEntry(fields, name, raw, member, str(err)), end
    return _CentralEntry(fields, name, raw, member, ""), end


def _end_of_directory(f: BinaryIO, size: int) -> tuple[int, int, int, int]:
    """(entries, directory offset, directory size, where the end records start)."""
    if size < END_LEN:
        raise _Malformed("too short to be a zip file")
    end = struct.unpack(END_FMT, _read_at(f, size - END_LEN, END_LEN))
    if end[0] != END_SIG:
        raise _Malformed("no end record at the end of the file (trailing bytes, a comment, or not a zip)")
    count, directory_size, directory_offset, tail = end[4], end[5], end[6], size - END_LEN
    if count == SENTINEL_16 or directory_size == SENTINEL_32 or directory_offset == SENTINEL_32:
        start = size - END_LEN - ZIP64_LOCATOR_LEN - ZIP64_END_LEN
        if start < 0:
            raise _Malformed("ZIP64 end record announced but missing")
        zip64 = struct.unpack(ZIP64_END_FMT, _read_at(f, start, ZIP64_END_LEN))
        if zip64[0] != ZIP64_END_SIG:
            raise _Malformed("ZIP64 end record announced but missing")
        count, directory_size, directory_offset, tail = zip64[7], zip64[8], zip64[9], start
    return count, directory_offset, directory_size, tail


def read_container(f: BinaryIO) -> tuple[list[Member], list[ContainerProblem]]:
    """The members of a bundle file and every way the file departs from the canonical form.

    Members after a directory entry that cannot be parsed are left out (a problem says so); the
    data offsets of the members returned are the canonical ones, so a damaged local header does
    not move where their data is read from.
    """
    f.seek(0, 2)
    size = f.tell()
    problems: list[ContainerProblem] = []
    try:
        count, directory_offset, directory_size, tail = _end_of_directory(f, size)
        if directory_offset + directory_size != tail:
            raise _Malformed(f"the directory ({directory_size} bytes at offset {directory_offset}) does not end "
                             f"where the end records start (offset {tail})")
        directory = _read_at(f, directory_offset, directory_size)
    except _Malformed as err:
        return [], [ContainerProblem(END_RECORD, str(err))]
    entries: list[_CentralEntry] = []
    pos = 0
    try:
        while pos < len(directory):
            entry, pos = _parse_central(directory, pos)
            entries.append(entry)
    except _Malformed as err:
        after = entries[-1].member.end if entries else 0
        problems.append(ContainerProblem(_local_name_at(f, after) or DIRECTORY,
                                         f"its zip directory entry (number {len(entries) + 1}) is unreadable: {err}"))
    if len(entries) != count and not problems:
        problems.append(ContainerProblem(END_RECORD, f"says {count} entries, the directory holds {len(entries)}"))
    expected_end = end_records(count, directory_offset, directory_size)
    actual_end = _read_at(f, tail, size - tail)
    if actual_end != expected_end:
        problems.append(ContainerProblem(END_RECORD, "differs from the canonical end records "
                                                     "(entry count, directory size or offset, disk numbers or comment)"))
    members = _check_members(f, entries, directory_offset, problems)
    return members, problems


def _local_name_at(f: BinaryIO, offset: int) -> str | None:
    """The name in the local header at ``offset``, if one is there (to name a member whose
    directory entry is damaged)."""
    try:
        fields = struct.unpack(LOCAL_FMT, _read_at(f, offset, LOCAL_LEN))
        return _display(_read_at(f, offset + LOCAL_LEN, fields[9])) if fields[0] == LOCAL_SIG else None
    except _Malformed:
        return None


def _check_members(f: BinaryIO, entries: list[_CentralEntry], directory_offset: int,
                   problems: list[ContainerProblem]) -> list[Member]:
    members: list[Member] = []
    seen: set[str] = set()
    pos = 0
    for entry in entries:
        if entry.problem:
            problems.append(ContainerProblem(entry.name, entry.problem))
        member = entry.member
        if member.name in seen:
            problems.append(ContainerProblem(member.name, "appears twice in the zip directory"))
        seen.add(member.name)
        expected_central = member.central_header()
        if entry.raw != expected_central:
            found = entry.fields
            wanted = struct.unpack_from(CENTRAL_FMT, expected_central)
            detail = _differences(CENTRAL_FIELDS, found, wanted) or "its extra field or name differs"
            problems.append(ContainerProblem(member.name, f"zip directory entry is not canonical: {detail}"))
        if member.offset != pos:
            problems.append(ContainerProblem(member.name, f"local header at offset {member.offset}, expected "
                                                          f"{pos} (bytes added, removed or reordered)"))
        _check_local(f, member, problems)
        members.append(member)
        pos = member.end
    if pos != directory_offset:
        problems.append(ContainerProblem(DIRECTORY, f"starts at offset {directory_offset}, but the members end "
                                                    f"at {pos} (bytes added or removed)"))
    return members


def _check_local(f: BinaryIO, member: Member, problems: list[ContainerProblem]) -> None:
    expected = member.local_header()
    try:
        actual = _read_at(f, member.offset, len(expected))
    except _Malformed as err:
        problems.append(ContainerProblem(member.name, f"local header unreadable: {err}"))
        return
    if actual == expected:
        return
    found = struct.unpack_from(LOCAL_FMT, actual)
    wanted = struct.unpack_from(LOCAL_FMT, expected)
    detail = _differences(LOCAL_FIELDS, found, wanted)
    if not detail:
        name_at = actual[LOCAL_LEN:LOCAL_LEN + len(member.name)]
        detail = (f"names {_display(name_at)!r}" if name_at != member.name.encode("latin-1")
                  else "its extra field differs")
    problems.append(ContainerProblem(member.name, f"local header differs from the zip directory: {detail}"))
