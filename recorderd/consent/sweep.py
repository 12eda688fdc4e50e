"""The consent sweep: every finished recording is searched for the prompt's audio and linked
to its announcement; new announcements are linked to recordings checked before they came.

It reads the first ``consent.detect_window_s`` of each recording back from the vault (the
engine streams audio to disk and keeps no call in memory, and the detection, ~10 ms of FFT per
recording, stays off the capture thread), runs capture/consent.py's detector against every
prompt file of the recording's rate, and stores the result with storage/consent.py. Run by
the daemon as a background stage (:class:`ConsentStage`) and by ``recorderd consent sweep``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from capture.consent import PromptCorrelator, detect_consent
from recorderd.appliance import Appliance
from recorderd.consent.prompts import PromptError, load_prompt_library
from recorderd.consent.settings import ConsentSettings, consent_settings
from storage.catalog import CatalogError, CatalogReader
from storage.consent import (
    CheckResult,
    PendingRecording,
    link_new_announcements,
    pending_checks,
    record_check,
)
from storage.keys import KeyDirError, UnwrapError
from storage.recordingsink import resolve_path
from storage.vault import VaultError, VaultReader

log = logging.getLogger("recorderd.consent")
BATCH = 50
FINAL_SWEEP_S = 5.0


@dataclass
class SweepStats:
    checked: int = 0
    audible: int = 0
    played: int = 0
    linked_later: int = 0
    unreadable: int = 0
    results: list[CheckResult] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"checked": self.checked, "audible": self.audible, "played": self.played,
                "linked_later": self.linked_later, "unreadable": self.unreadable}


class ConsentSweeper:
    def __init__(self, appliance: Appliance, settings: ConsentSettings, *, actor: str = "recorderd") -> None:
        self.appliance = appliance
        self.settings = settings
        self.actor = actor
        self.correlators: dict[int, PromptCorrelator] = {}
        try:
            library = load_prompt_library(settings.prompt_dir)
        except PromptError as err:
            log.error("consent prompts unusable, recordings are checked without them: %s", err)
            library = {}
        for rate, prompts in library.items():
            if prompts:
                self.correlators[rate] = PromptCorrelator(prompts, rate)
        if not self.correlators:
            log.warning("no prompt files in %s: consent.audible cannot be decided", settings.prompt_dir)
        self._reader: CatalogReader | None = None

    def _conn_reader(self) -> CatalogReader:
        if self._reader is None:
            self._reader = self.appliance.catalog.reader()
        return self._reader

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    # -- one recording

    def read_start(self, pending: PendingRecording) -> tuple[np.ndarray, int]:
        """(frames × channels int16, rate) of the first detect_window_s of a recording."""
        if not pending.vault_path:
            raise VaultError("the recording has no vault file")
        wrapped = self.appliance.catalog.get_key(pending.recording_id)
        if wrapped is None:
            raise VaultError("the recording's key is destroyed")
        key = self.appliance.keys.unwrap(wrapped.kek_id, wrapped.wrapped_key, pending.recording_id)
        path = resolve_path(self.appliance.vault_dir, pending.vault_path)
        with VaultReader(path, key, pending.recording_id) as vault:
            rate, channels = vault.header.rate, vault.header.channels
            frames = min(vault.frames, int(self.settings.detect_window_s * rate))
            pcm = vault.read_pcm(0, frames * channels * 2) if frames else b""
        return np.frombuffer(pcm, "<i2").reshape(-1, channels), rate

    def detect(self, pending: PendingRecording) -> dict[str, Any]:
        try:
            audio, rate = self.read_start(pending)
        except (VaultError, UnwrapError, KeyDirError, OSError) as err:
            return {"audible": None, "note": f"audio not readable: {err}"}
        correlator = self.correlators.get(rate)
        if correlator is None:
            return {"audible": None, "note": f"no prompt files at {rate} Hz in {self.settings.prompt_dir}"}
        try:
            result = detect_consent(audio, correlator, threshold=self.settings.audible_threshold).to_dict()
        except (ValueError, FloatingPointError, MemoryError) as err:   # noted, not retried forever
            return {"audible": None, "note": f"detection failed: {err}"}
        result["note"] = ""
        return result

    def check(self, pending: PendingRecording) -> CheckResult | None:
        detection = self.detect(pending)
        return record_check(self.appliance.catalog, pending.recording_id, detection, self.settings.link,
                            trunk_header=self.settings.trunk_header, audit=self.appliance.audit, actor=self.actor)

    # -- a pass

    def sweep(self, *, limit: int | None = None, deadline: float | None = None) -> SweepStats:
        """Check pending recordings (up to ``limit``, or until the monotonic ``deadline``),
        then link announcements that arrived meanwhile."""
        stats = SweepStats()
        reader = self._conn_reader()
        while limit is None or stats.checked < limit:
            if deadline is not None and time.monotonic() >= deadline:
                break
            batch = BATCH if limit is None else min(BATCH, limit - stats.checked)
            pending = pending_checks(reader.conn, batch)
            if not pending:
                break
            for item in pending:
                result = self.check(item)
                if result is None:
                    continue
                stats.checked += 1
                stats.results.append(result)
                stats.audible += bool(result.audible)
                stats.played += bool(result.played)
                stats.unreadable += result.audible is None
                if deadline is not None and time.monotonic() >= deadline:
                    break
        linked = link_new_announcements(self.appliance.catalog, self.settings.link, audit=self.appliance.audit,
                                        actor=self.actor)
        stats.linked_later = len(linked)
        return stats


class ConsentStage:
    """The daemon's background consent stage: a sweep every ``consent.sweep_interval_s``."""

    def __init__(self, appliance: Appliance, settings: ConsentSettings) -> None:
        self.sweeper = ConsentSweeper(appliance, settings)
        self.interval_s = settings.sweep_interval_s
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="consent-sweep", daemon=True)

    def start(self) -> ConsentStage:
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stop_event.wait(self.interval_s):
            self._pass(None)

    def _pass(self, deadline: float | None) -> None:
        try:
            stats = self.sweeper.sweep(deadline=deadline)
            if stats.checked or stats.linked_later:
                log.info("consent sweep: %s", stats.to_dict())
        except CatalogError as err:   # e.g. locked past the busy timeout: the next pass retries
            log.error("consent sweep failed: %s", err)
        except Exception:  # noqa: BLE001 - the stage must outlive one bad recording; the recorder goes on
            log.exception("consent sweep failed")

    def stop(self) -> None:
        """Stop the thread, then one last pass (bounded: what is left waits for the next start)."""
        self.stop_event.set()
        self.thread.join()
        self._pass(time.monotonic() + FINAL_SWEEP_S)
        self.sweeper.close()


def start_consent_stage(appliance: Appliance, config: dict[str, dict[str, Any]]) -> ConsentStage | None:
    """The daemon's hook: the [consent] settings are checked (a bad one stops start-up, named),
    and the stage runs when consent.enabled."""
    settings = consent_settings(config)
    if not settings.enabled:
        return None
    log.info("consent stage: recordings checked every %g s against the prompts in %s",
             settings.sweep_interval_s, settings.prompt_dir)
    return ConsentStage(appliance, settings).start()
