"""systemd integration: sd_notify through a real AF_UNIX datagram socket, as systemd's NOTIFY_SOCKET
would receive it, and logging (journald fields under systemd, key=value text on stderr)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from systemd.journal import JournalHandler

from recorderd.logsetup import configure_logging, log_call, stderr_is_journal
from recorderd.sdnotify import Heartbeats, Notifier, WatchdogThread, watchdog_interval_from_env

WATCHDOG_USEC = 100_000  # 0.1 s timeout -> a ping every 0.05 s
INTERVAL = WATCHDOG_USEC / 1_000_000 / 2


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class NotifySocket:
    """The manager's end: a bound SOCK_DGRAM socket collecting sd_notify datagrams."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(0.05)

    def receive_for(self, seconds: float) -> list[str]:
        deadline = time.monotonic() + seconds
        got: list[str] = []
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                got.append(self.sock.recv(4096).decode())
        return got

    def wait_for(self, wanted: str, timeout: float = 3.0) -> list[str]:
        """Datagrams up to and including the first one containing the line `wanted`."""
        deadline = time.monotonic() + timeout
        got: list[str] = []
        while time.monotonic() < deadline:
            try:
                got.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
            if wanted in got[-1].split("\n"):
                return got
        raise AssertionError(f"no {wanted!r} within {timeout} s; got {got}")


def _bind(monkeypatch: pytest.MonkeyPatch, address: str, notify_socket: str) -> Iterator[NotifySocket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket)
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    try:
        yield NotifySocket(sock)
    finally:
        sock.close()


@pytest.fixture
def manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    path = str(tmp_path / "notify.sock")
    yield from _bind(monkeypatch, path, path)


@pytest.fixture
def abstract_manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    name = f"recorderd-test-{uuid.uuid4().hex}"
    # "@name" in NOTIFY_SOCKET is the Linux abstract namespace: a leading NUL in the address.
    yield from _bind(monkeypatch, "\0" + name, "@" + name)


def test_ready_status_watchdog_stopping_reach_the_socket(manager: NotifySocket) -> None:
    notifier = Notifier()
    assert notifier.enabled
    notifier.ready("capturing on eth1")
    notifier.status("3 active calls\nsecond line")
    notifier.watchdog()
    notifier.stopping("finalising 3 calls")
    assert manager.receive_for(0.2) == [
        "READY=1\nSTATUS=capturing on eth1",
        "STATUS=3 active calls second line",  # a newline cannot break the message format
        "WATCHDOG=1",
        "STOPPING=1\nSTATUS=finalising 3 calls",
    ]


def test_abstract_namespace_socket(abstract_manager: NotifySocket) -> None:
    notifier = Notifier()
    notifier.ready("up")
    notifier.stopping()
    assert abstract_manager.receive_for(0.2) == ["READY=1\nSTATUS=up", "STOPPING=1"]


def test_watchdog_interval_is_half_the_timeout(manager: NotifySocket) -> None:
    assert Notifier().watchdog_interval_s == pytest.approx(INTERVAL)
    assert watchdog_interval_from_env({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval_from_env({}) is None
    assert watchdog_interval_from_env({"WATCHDOG_USEC": "junk"}) is None
    assert watchdog_interval_from_env({"WATCHDOG_USEC": "0"}) is None
    # sd_watchdog_enabled(3): WATCHDOG_PID names the one process the watchdog is for
    mine = {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval_from_env(mine) == 0.5
    assert watchdog_interval_from_env({**mine, "WATCHDOG_PID": str(os.getpid() + 1)}) is None


def test_without_notify_socket_everything_is_a_no_op(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    notifier = Notifier()
    assert not notifier.enabled and notifier.watchdog_interval_s is None
    notifier.ready("x")
    notifier.watchdog()
    notifier.stopping()


def test_heartbeats_report_stale_stages_in_order() -> None:
    clock = ManualClock()
    beats = Heartbeats(["capture", "decode", "writer"], max_age_s=2.0, clock=clock)
    assert beats.stale() == []  # fresh at construction: start-up grace
    clock.now += 1.5
    beats.beat("decode")
    clock.now += 1.0  # capture and writer 2.5 s old, decode 1.0 s
    assert beats.stale() == ["capture", "writer"]
    beats.beat("writer")
    assert beats.stale() == ["capture"]
    with pytest.raises(KeyError, match="unknown pipeline stage 'captur'"):
        beats.beat("captur")


def test_watchdog_pings_only_while_every_stage_beats(manager: NotifySocket,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()
    beats = Heartbeats(["capture", "writer"], max_age_s=5.0, clock=clock)
    notifier = Notifier()
    assert notifier.watchdog_interval_s is not None
    calls = {"n": 0}

    def status() -> str:
        calls["n"] += 1
        return f"active=2 packets/s=100 drops=0 round={calls['n']}"

    watchdog = WatchdogThread(notifier, beats, notifier.watchdog_interval_s, status)
    notifier.ready("capture open")
    watchdog.start()
    try:
        first = manager.wait_for("READY=1")
        assert first == ["READY=1\nSTATUS=capture open"]
        healthy = manager.receive_for(10 * INTERVAL)
        pings = [d for d in healthy if d == "WATCHDOG=1"]
        assert len(pings) >= 3, healthy  # periodic: about one per interval, 10 expected
        assert any(d.startswith("STATUS=active=2 packets/s=100") for d in healthy)

        # The writer stalls: capture keeps beating, the writer's heartbeat ages past max_age_s.
        with caplog.at_level(logging.ERROR, logger="recorderd.sdnotify"):
            clock.now += 6.0
            beats.beat("capture")
            manager.wait_for("STATUS=stalled: writer")
            stalled = manager.receive_for(10 * INTERVAL)
        assert "WATCHDOG=1" not in stalled, stalled
        assert any("writer" in r.getMessage() and "stalled" in r.getMessage() for r in caplog.records)

        beats.beat("writer")  # it recovers: pings resume
        resumed = manager.wait_for("WATCHDOG=1")
        assert len(resumed) <= 3
        notifier.stopping("finalising")
    finally:
        watchdog.stop()
    assert manager.wait_for("STOPPING=1")[-1] == "STOPPING=1\nSTATUS=finalising"


def test_a_failing_status_function_does_not_stop_the_pings(manager: NotifySocket) -> None:
    def broken() -> str:
        raise RuntimeError("boom")

    watchdog = WatchdogThread(Notifier(), Heartbeats(["capture"], 60.0), INTERVAL, broken)
    watchdog.start()
    try:
        assert manager.receive_for(6 * INTERVAL).count("WATCHDOG=1") >= 3
    finally:
        watchdog.stop()


# --- logging: journald fields under systemd, key=value text on stderr -------------------------

@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, with its handlers and level restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def _installed(root: logging.Logger) -> logging.Handler:
    ours = [h for h in root.handlers if getattr(h, "recorderd_installed", False)]
    assert len(ours) == 1, root.handlers
    return ours[0]


def test_stderr_line_carries_call_fields(root_logger: logging.Logger,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", journald=False)
    logger = logging.getLogger("recorderd.test")
    log_call(logger, "call finalised", call_id="a84b4c76e66710@pc33", recording_id=42,
             duration_s=12.5, reason="bye received")
    logger.debug("not shown at info")
    err = capsys.readouterr().err
    assert err.endswith(' INFO recorderd.test: call finalised call_id=a84b4c76e66710@pc33 recording_id=42'
                        ' duration_s=12.5 reason="bye received"\n'), err
    assert "not shown" not in err
    assert len(err.splitlines()) == 1


def test_journald_handler_receives_structured_fields(root_logger: logging.Logger) -> None:
    configure_logging("debug", journald=True)
    handler = _installed(root_logger)
    assert isinstance(handler, JournalHandler)
    records: list[logging.LogRecord] = []
    sent: list[tuple[str, dict[str, object]]] = []

    def keep(record: logging.LogRecord) -> bool:
        records.append(record)
        return True

    handler.addFilter(keep)
    # journal.send's signature: send(MESSAGE, **fields); JournalHandler passes the record's
    # attributes too (lower-case ones such as "message" are not valid fields: journald drops them)
    handler.send = lambda MESSAGE, **fields: sent.append((MESSAGE, fields))

    log_call(logging.getLogger("recorderd.writer"), "recording started", call_id="c1@host",
             recording_id="r-7", level=logging.WARNING, codec="PCMU")

    (record,) = records
    assert [getattr(record, name) for name in ("CALL_ID", "RECORDING_ID", "CODEC")] == ["c1@host", "r-7", "PCMU"]
    ((message, fields),) = sent
    assert message == "recording started"  # journald keeps time and level itself
    assert fields["CALL_ID"] == "c1@host" and fields["RECORDING_ID"] == "r-7" and fields["CODEC"] == "PCMU"
    assert fields["PRIORITY"] == "4"  # warning
    assert fields["SYSLOG_IDENTIFIER"] == "recorderd" and fields["LOGGER"] == "recorderd.writer"
    assert fields["CODE_FUNC"] == "test_journald_handler_receives_structured_fields"  # the caller


def test_a_call_without_recording_has_no_recording_id(root_logger: logging.Logger,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", journald=False)
    log_call(logging.getLogger("recorderd.test"), "not recorded", call_id="c2", recording_id=None,
             reason="disk_full")
    err = capsys.readouterr().err
    assert err.endswith("not recorded call_id=c2 reason=disk_full\n"), err


def test_journal_stream_selects_journald_only_when_it_is_our_stderr(
        root_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch) -> None:
    st = os.fstat(2)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    assert stderr_is_journal()
    configure_logging("info")
    assert isinstance(_installed(root_logger), JournalHandler)
    # inherited by a child whose stderr went elsewhere: not the journal
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
    configure_logging("info")  # also: replaces, does not stack, its own handler
    assert isinstance(_installed(root_logger), logging.StreamHandler)
    monkeypatch.delenv("JOURNAL_STREAM")
    assert not stderr_is_journal()


def test_bad_level_and_field_names_are_refused(root_logger: logging.Logger) -> None:
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        configure_logging("loud")
    logger = logging.getLogger("recorderd.test")
    with pytest.raises(ValueError, match="journald field name"):
        log_call(logger, "x", call_id="c", recording_id=None, **{"bad-name": 1})
    with pytest.raises(ValueError, match="sets itself"):
        log_call(logger, "x", call_id="c", recording_id=None, priority=1)
