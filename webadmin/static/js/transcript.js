// recorderd console: the transcript under the player (CSP: script-src 'self'; no inline script).
// Fetches the recording's transcript JSON (webadmin/reports.py), lists the segments per speaker
// with their times and the phrase hits; clicking a time seeks the player's <audio id="audio">,
// and the segment being played is highlighted.
"use strict";

(() => {
  function clock(seconds) {
    const minutes = Math.floor(seconds / 60);
    const rest = seconds - minutes * 60;
    return `${minutes}:${rest < 10 ? "0" : ""}${rest.toFixed(1)}`;
  }

  function seekButton(seconds) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "link seek transcript-seek";
    button.dataset.seek = String(seconds);
    button.textContent = clock(seconds);
    button.addEventListener("click", () => {
      const audio = document.getElementById("audio");
      if (audio) {
        audio.currentTime = seconds;
      }
    });
    return button;
  }

  function render(section, data) {
    const status = document.getElementById("transcript-status");
    const list = document.getElementById("transcript-segments");
    const hits = document.getElementById("transcript-hits");
    const metrics = document.getElementById("transcript-metrics");
    if (!data.segments.length) {
      status.textContent = data.state === "done" ? "No speech was transcribed."
        : `Not transcribed yet (analysis ${data.state || "not queued"}).`;
    } else {
      status.textContent = `${data.segments.length} segment(s); click a time to listen from there.`;
    }
    for (const segment of data.segments) {
      const item = document.createElement("li");
      item.className = `segment ${segment.role || ""}`;
      item.dataset.start = String(segment.start_s);
      item.dataset.end = String(segment.end_s);
      item.appendChild(seekButton(segment.start_s));
      const who = document.createElement("span");
      who.className = "who";
      who.textContent = ` ${segment.role || `channel ${segment.channel}`}:`;
      item.appendChild(who);
      item.appendChild(document.createTextNode(segment.text));
      list.appendChild(item);
    }
    for (const hit of data.hits) {
      const item = document.createElement("li");
      item.className = `hit ${hit.kind}`;
      item.appendChild(seekButton(hit.offset_s));
      item.appendChild(document.createTextNode(` ${hit.kind} ${hit.rule_id} (${hit.role}): “${hit.matched}”`));
      hits.appendChild(item);
    }
    if (data.analysis) {
      const a = data.analysis;
      const line = document.createElement("p");
      line.textContent = `Risk ${a.risk_score} · line ${a.line} · talk agent ${a.talk_agent_s.toFixed(1)} s, `
        + `customer ${a.talk_customer_s.toFixed(1)} s · silence ${(100 * a.silence_ratio).toFixed(0)}% · `
        + `interruptions ${a.interruptions_agent} by the agent, ${a.interruptions_customer} by the customer`;
      metrics.appendChild(line);
      if (a.missing_required.length) {
        const missing = document.createElement("p");
        missing.className = "transcript-missing";
        missing.textContent = `Required phrase(s) missing: ${a.missing_required.join(", ")}`;
        metrics.appendChild(missing);
      }
    }
    const audio = document.getElementById("audio");
    if (audio) {
      audio.addEventListener("timeupdate", () => {
        for (const item of list.children) {
          const inside = audio.currentTime >= Number(item.dataset.start) && audio.currentTime < Number(item.dataset.end);
          item.classList.toggle("active", inside);
        }
      });
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    const section = document.getElementById("transcript");
    if (!section) {
      return;
    }
    fetch(section.dataset.transcriptUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then((reply) => {
        if (!reply.ok) {
          throw new Error(`HTTP ${reply.status}`);
        }
        return reply.json();
      })
      .then((data) => render(section, data))
      .catch((err) => {
        document.getElementById("transcript-status").textContent = `The transcript could not be loaded (${err.message}).`;
      });
  });
})();
