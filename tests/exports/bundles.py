"""Taking a bundle apart and putting it back together (canonically) for tampering tests."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from storage.bundle_zip import BundleZipWriter, read_container


def members_of(data: bytes) -> dict[str, bytes]:
    """name -> content, in zip order, of a well-formed bundle."""
    members, problems = read_container(io.BytesIO(data))
    assert problems == []
    return {m.name: data[m.data_offset:m.end] for m in members}


def rezip(contents: dict[str, bytes]) -> bytes:
    """The members in the canonical container, so only what was changed in them differs."""
    out = io.BytesIO()
    writer = BundleZipWriter(out, datetime(2026, 1, 1, tzinfo=UTC))
    for name, data in contents.items():
        writer.add_bytes(name, data)
    writer.close()
    return out.getvalue()
