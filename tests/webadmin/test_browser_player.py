"""Must show 2 in headless Chromium against `recorderd web` (gunicorn, HTTPS) on an appliance of
its own with a 90-second call. The player: log in with TOTP, search the call by part of its
number, open it, give a reason, see the waveform drawn, play, seek by clicking the waveform —
currentTime moves and jumps, and the audio element's responses are all 206 Partial Content with
byte ranges. Then an agent sees only their own call with the number masked, and a QA reviewer
scores an assigned call through the form. Screenshots are kept as test artefacts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.webadmin.conftest import browser_login, make_user, screenshot, wait_for_js, web_server
from tests.webadmin.recordings_helpers import (
    SmallAppliance,
    audit_of,
    player_chromium,
    responses,
    small_appliance,
)

CALL_S = 90.0
NUMBER = "+493077788899"


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmallAppliance]:
    calls = [("+493011122233", "7002", 2.0), (NUMBER, "7001", CALL_S)]
    with small_appliance(tmp_path_factory.mktemp("browser"), calls) as made:
        yield made


@pytest.fixture(scope="module")
def server(box: SmallAppliance, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with web_server(box.config_path, tmp_path_factory.mktemp("web-log"), 30.0) as url:
        yield url


def test_search_open_reason_play_and_seek(box: SmallAppliance, server: str, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    username, _secret = make_user(box.ctx, "auditor", totp=True)
    with player_chromium(tmp_path / "profile") as driver:
        browser_login(driver, server, box.ctx, username)

        driver.get(f"{server}/recordings")
        driver.find_element(By.ID, "q").send_keys("7788")
        driver.find_element(By.ID, "search-button").click()
        wait_for_js(driver, "document.getElementById('results')")
        rows = driver.find_elements(By.CSS_SELECTOR, "tr.result")
        assert [r.get_attribute("data-recording-id") for r in rows] == [box.recording_ids[1]]
        assert NUMBER in rows[0].text
        screenshot(driver, "player-1-search")

        rows[0].find_element(By.CSS_SELECTOR, "a.open-recording").click()
        reason = wait_for_js(driver, "document.getElementById('reason')")
        reason.send_keys("dispute 815: customer says the rate was agreed on the phone")
        driver.find_element(By.ID, "reason-submit").click()
        wait_for_js(driver, "document.getElementById('audio') && document.getElementById('waveform')")
        points = wait_for_js(driver, "document.getElementById('waveform').dataset.drawn === '1' && "
                                     "document.getElementById('waveform').dataset.points")
        assert points == "1000"
        # the canvas really has ink in both lanes (caller above, callee below)
        ink = driver.execute_script("""
            const c = document.getElementById('waveform'), g = c.getContext('2d');
            const count = (y0, y1) => { const d = g.getImageData(0, y0, c.width, y1 - y0).data; let n = 0;
              for (let i = 3; i < d.length; i += 4) { if (d[i] > 0) { n += 1; } } return n; };
            return [count(0, c.height / 2), count(c.height / 2, c.height)];""")
        assert ink[0] > 5000 and ink[1] > 5000, ink

        driver.find_element(By.ID, "play-button").click()
        wait_for_js(driver, "document.getElementById('audio').currentTime > 0.5", 20.0)
        duration = driver.execute_script("return document.getElementById('audio').duration")
        assert abs(duration - CALL_S) < 0.5, duration          # the WAV header's length
        assert driver.execute_script("return document.getElementById('audio').currentTime") < 0.5 * CALL_S
        canvas = driver.find_element(By.ID, "waveform")
        width = canvas.size["width"]
        ActionChains(driver).move_to_element_with_offset(canvas, int(width * 0.75) - width // 2, 0).click().perform()
        jumped = wait_for_js(driver, f"document.getElementById('audio').currentTime > {CALL_S * 0.72} && "
                                     f"document.getElementById('audio').currentTime", 15.0)
        assert jumped < CALL_S * 0.8
        wait_for_js(driver, f"document.getElementById('audio').currentTime > {jumped + 0.3}", 15.0)   # still playing
        screenshot(driver, "player-2-playing-after-seek")

        audio = responses(driver, "/audio?grant=")
        assert audio, "the audio element made no request"
        assert {r["status"] for r in audio} == {206}, [(r["status"], r.get("headers")) for r in audio]
        size = round(duration * 8000) * 4 + 44                 # 8 kHz, 2 channels x 16 bits, WAV header
        for r in audio:
            first, rest = r["headers"]["Content-Range"].removeprefix("bytes ").split("-")
            last, total = rest.split("/")
            assert int(total) == size and int(last) == size - 1 and int(first) >= 0
            assert int(r["headers"]["Content-Length"]) == size - int(first)

    played = audit_of(box.ctx, actor=username, action="recording.play")
    assert [(e.object, e.outcome) for e in played] == [(box.recording_ids[1], "ok")]
    assert played[0].reason == "dispute 815: customer says the rate was agreed on the phone"
    assert audit_of(box.ctx, actor=username, action="recording.search")
    assert audit_of(box.ctx, actor=username, action="recording.view")


def test_agent_sees_own_calls_masked_and_qa_scores(box: SmallAppliance, server: str, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    from storage.masking import mask_number
    from storage.review import ReviewStore

    agent, _ = make_user(box.ctx, "agent", "agent-7001")
    reviewer, _ = make_user(box.ctx, "qa")
    assignment = ReviewStore(box.ctx.catalog).assign(box.recording_ids[0], reviewer, "browser-test")
    with player_chromium(tmp_path / "profile") as driver:
        browser_login(driver, server, box.ctx, agent)
        driver.get(f"{server}/recordings")
        rows = driver.find_elements(By.CSS_SELECTOR, "tr.result")
        assert [r.get_attribute("data-recording-id") for r in rows] == [box.recording_ids[1]]
        caller = rows[0].find_element(By.CSS_SELECTOR, "td.caller").text
        assert caller == mask_number(NUMBER) and "*" in caller
        screenshot(driver, "player-3-agent-masked")

        browser_login(driver, server, box.ctx, reviewer)
        driver.get(f"{server}/review")
        driver.find_element(By.CSS_SELECTOR, f'tr[data-assignment-id="{assignment.id}"] a.open-assignment').click()
        wait_for_js(driver, "document.getElementById('score-form')")
        for name, points in (("compliance", 28), ("communication", 25), ("resolution", 18), ("experience", 17)):
            driver.find_element(By.NAME, f"points.{name}").send_keys(str(points))
        driver.find_element(By.ID, "comment").send_keys("clear and polite")
        driver.find_element(By.ID, "score-submit").click()
        wait_for_js(driver, "document.getElementById('given-score')")
        assert driver.find_element(By.ID, "assignment-state").text == "scored"
        assert driver.find_element(By.CSS_SELECTOR, "#given-score .total").text == "88"
        screenshot(driver, "player-4-qa-scored")
    assert audit_of(box.ctx, actor=reviewer, action="review.score")[-1].object == box.recording_ids[0]
