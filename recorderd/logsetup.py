"""Logging: journald with structured fields under systemd, plain text on stderr otherwise.

Per-call log lines carry CALL_ID and RECORDING_ID as journald fields, so an operator can run
`journalctl -u recorderd CALL_ID=...`; on stderr the same fields follow the message as
key=value pairs.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping
from typing import Any

from systemd.journal import JournalHandler

# The record attribute holding a log_call's fields (lower-case names) for the text formatter.
# journald ignores it: field names sent to it must be upper case (see _JOURNAL_FIELD).
FIELDS_ATTR = "recorderd_fields"
# systemd.journal-fields(7): upper-case letters, digits and underscores, not starting with an
# underscore (those are trusted fields set by journald itself), at most 64 characters.
_JOURNAL_FIELD = re.compile(r"[A-Z0-9][A-Z0-9_]{0,63}")
# Fields JournalHandler fills in itself; a log_call keyword with one of these names would clash.
_RESERVED_FIELDS = frozenset({"MESSAGE", "MESSAGE_ID", "PRIORITY", "LOGGER", "THREAD_NAME", "PROCESS_NAME",
                              "CODE_FILE", "CODE_LINE", "CODE_FUNC", "CODE_ARGS", "SYSLOG_IDENTIFIER"})
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def journal_field_name(key: str) -> str:
    """The journald field name for a log_call keyword (upper-cased, checked)."""
    name = key.upper()
    if not _JOURNAL_FIELD.fullmatch(name):
        raise ValueError(f"{key!r} cannot be a journald field name")
    if name in _RESERVED_FIELDS:
        raise ValueError(f"{key!r} is a field the journal handler sets itself")
    return name


def stderr_is_journal(environ: Mapping[str, str] = os.environ, fd: int = 2) -> bool:
    """True when `fd` is the journal stream systemd connected us to.

    systemd.exec(5): JOURNAL_STREAM is "device:inode" of that stream; a child that inherited the
    variable but whose stderr was redirected elsewhere must compare, not just test it is set.
    """
    value = environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in value.split(":"))
        st = os.fstat(fd)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


def _logfmt_value(value: object) -> str:
    text = str(value)
    if not text or any(c in text for c in ' ="\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class TextFormatter(logging.Formatter):
    """The stderr line: time, level, logger, message, then any log_call fields as key=value."""

    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields: dict[str, object] = getattr(record, FIELDS_ATTR, {})
        if not fields:
            return line
        pairs = " ".join(f"{key}={_logfmt_value(value)}" for key, value in fields.items())
        head, sep, tail = line.partition("\n")  # keep a traceback below the fields
        return f"{head} {pairs}{sep}{tail}"


def _journal_handler() -> logging.Handler:
    handler = JournalHandler(SYSLOG_IDENTIFIER="recorderd")
    # journald stores time, priority and logger itself (PRIORITY=, LOGGER=): message only.
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


def _stderr_handler() -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TextFormatter())
    return handler


def _parse_level(level: str) -> int:
    number = logging.getLevelName(level.upper())
    if not isinstance(number, int):
        raise ValueError(f"unknown log level {level!r} (use debug, info, warning, error, critical)")
    return number


def configure_logging(level: str, *, journald: bool | None = None) -> None:
    """Send the root logger's records to journald (journald=True, or None and stderr is the
    journal stream) or to stderr. Calling it again replaces the handler it installed."""
    root = logging.getLogger()
    root.setLevel(_parse_level(level))
    for old in [h for h in root.handlers if getattr(h, "recorderd_installed", False)]:
        root.removeHandler(old)
        old.close()
    use_journal = stderr_is_journal() if journald is None else journald
    handler = _journal_handler() if use_journal else _stderr_handler()
    handler.recorderd_installed = True  # type: ignore[attr-defined]
    root.addHandler(handler)


def log_call(logger: logging.Logger, message: str, *, call_id: str, recording_id: str | int | None,
             level: int = logging.INFO, **fields: Any) -> None:
    """Log `message` about one call with CALL_ID, RECORDING_ID (omitted when None) and every
    extra keyword as a journald field (name upper-cased) and as key=value on stderr."""
    named: dict[str, object] = {"call_id": call_id}
    if recording_id is not None:
        named["recording_id"] = recording_id
    named.update(fields)
    extra: dict[str, object] = {journal_field_name(key): str(value) for key, value in named.items()}
    extra[FIELDS_ATTR] = named
    logger.log(level, message, extra=extra, stacklevel=2)
