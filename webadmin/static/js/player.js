// recorderd console: the recording page's player (CSP: script-src 'self'; no inline script).
// The audio element streams the decrypted WAV with HTTP Range requests (the server answers 206),
// so seeking fetches only the bytes it needs. The waveform's peaks come from the server as JSON
// (per channel, the lowest and highest sample of each slice of the call); they are drawn on the
// canvas, caller above, callee below, with the loss gaps listed on the page shaded, and a
// playhead. Clicking the canvas or a time on the page seeks there.
"use strict";

(() => {
  const CH_COLOURS = ["#1f5fae", "#a4462b"];
  const GAP_COLOUR = "rgba(180, 35, 24, 0.18)";
  const HEAD_COLOUR = "#111";

  function formatClock(seconds) {
    if (!Number.isFinite(seconds) || seconds < 0) { return "0:00.0"; }
    const minutes = Math.floor(seconds / 60);
    const rest = seconds - minutes * 60;
    return `${minutes}:${rest < 10 ? "0" : ""}${rest.toFixed(1)}`;
  }

  function setup(box) {
    const audio = document.getElementById("audio");
    const canvas = document.getElementById("waveform");
    const button = document.getElementById("play-button");
    const timeLabel = document.getElementById("time");
    const status = document.getElementById("waveform-status");
    const context = canvas.getContext("2d");
    const gaps = Array.from(document.querySelectorAll(".gap[data-offset]")).map((el) => ({
      channel: Number(el.dataset.channel), offset: Number(el.dataset.offset), duration: Number(el.dataset.duration),
    }));
    let peaks = null;

    const duration = () => (Number.isFinite(audio.duration) && audio.duration > 0
      ? audio.duration : Number(box.dataset.duration) || 0);

    function draw() {
      const width = canvas.width;
      const height = canvas.height;
      context.clearRect(0, 0, width, height);
      const total = duration();
      if (peaks) {
        const lanes = peaks.channels;
        const lane = height / lanes;
        for (let ch = 0; ch < lanes; ch += 1) {
          const middle = lane * ch + lane / 2;
          context.fillStyle = CH_COLOURS[ch % CH_COLOURS.length];
          const low = peaks.low[ch];
          const high = peaks.high[ch];
          const step = width / peaks.points;
          for (let i = 0; i < peaks.points; i += 1) {
            const top = middle - high[i] * (lane / 2);
            const bottom = middle - low[i] * (lane / 2);
            context.fillRect(i * step, top, Math.max(step, 1), Math.max(bottom - top, 1));
          }
        }
        if (total > 0) {
          context.fillStyle = GAP_COLOUR;
          for (const gap of gaps) {
            const x = (gap.offset / total) * width;
            context.fillRect(x, lane * gap.channel, Math.max((gap.duration / total) * width, 2), lane);
          }
        }
      }
      if (total > 0) {
        const x = (audio.currentTime / total) * width;
        context.fillStyle = HEAD_COLOUR;
        context.fillRect(Math.min(x, width - 2), 0, 2, height);
      }
    }

    function tick() {
      timeLabel.textContent = formatClock(audio.currentTime);
      draw();
      if (!audio.paused) { window.requestAnimationFrame(tick); }
    }

    function seek(seconds) {
      const total = duration();
      if (total <= 0) { return; }
      audio.currentTime = Math.min(Math.max(seconds, 0), total);
      tick();
    }

    fetch(box.dataset.waveformUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then((reply) => {
        if (!reply.ok) { throw new Error(`waveform: HTTP ${reply.status}`); }
        return reply.json();
      })
      .then((data) => {
        peaks = data;
        canvas.dataset.points = String(data.points);
        canvas.dataset.drawn = "1";
        status.textContent = `Waveform: ${data.points} points per channel.`;
        draw();
      })
      .catch((error) => { status.textContent = `The waveform could not be loaded (${error.message}).`; });

    button.disabled = false;
    button.addEventListener("click", () => {
      if (audio.paused) {
        audio.play().catch((error) => { status.textContent = `Playback failed: ${error.message}`; });
      } else {
        audio.pause();
      }
    });
    audio.addEventListener("play", () => { button.textContent = "Pause"; tick(); });
    audio.addEventListener("pause", () => { button.textContent = "Play"; tick(); });
    audio.addEventListener("ended", () => { button.textContent = "Play"; tick(); });
    audio.addEventListener("seeked", tick);
    audio.addEventListener("loadedmetadata", () => {
      document.getElementById("total-time").textContent = formatClock(audio.duration);
      tick();
    });
    canvas.addEventListener("click", (event) => {
      const rect = canvas.getBoundingClientRect();
      seek(((event.clientX - rect.left) / rect.width) * duration());
    });
    for (const target of document.querySelectorAll("[data-seek]")) {
      target.addEventListener("click", () => { seek(Number(target.dataset.seek)); });
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    const box = document.getElementById("player-box");
    if (box) { setup(box); }
  });
})();
