// recorderd console, backup page: while a run is in progress, poll /backup/status.json every
// 2 s and update that target's state and progress in place (CSP: no inline script).
"use strict";
(() => {
  const POLL_MS = 2000;
  const mb = (n) => `${((n || 0) / 1e6).toFixed(1)} MB`;

  function update(status) {
    const row = document.querySelector(`tr[data-target="${CSS.escape(status.target.name)}"]`);
    const run = status.last_run;
    if (!row || !run) {
      return;
    }
    row.dataset.state = run.state;
    row.querySelector(".run-state").textContent = `${run.state} · ${run.started_at}` + (run.error ? ` — ${run.error}` : "");
    const cell = row.querySelector(".run-progress");
    let bar = cell.querySelector("progress");
    let text = cell.querySelector(".progress-text");
    if (!bar) {
      bar = cell.appendChild(document.createElement("progress"));
      text = cell.appendChild(document.createElement("span"));
      text.className = "progress-text";
    }
    bar.max = run.bytes_planned || 1;
    bar.value = run.bytes_planned ? run.bytes_done : (run.state === "ok" ? 1 : 0);
    text.textContent = ` ${run.files_done}/${run.files_planned} files, ${mb(run.bytes_done)} of ${mb(run.bytes_planned)}; ` +
      `${run.files_present} already there; ${run.files_failed} failed`;
    if (status.last_success) {
      row.querySelector(".last-success").textContent = status.last_success.finished_at;
    }
  }

  function running() {
    return document.querySelector('tr[data-target][data-state="running"]') !== null ||
      document.getElementById("backup-notice") !== null;
  }

  async function poll(rounds) {
    try {
      const reply = await fetch("/backup/status.json", { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (reply.ok) {
        for (const status of await reply.json()) {
          update(status);
        }
      }
    } catch (err) {
      // the next round tries again
    }
    if (rounds > 0 && document.querySelector('tr[data-target][data-state="running"]') !== null) {
      window.setTimeout(() => poll(rounds - 1), POLL_MS);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    if (running()) {
      window.setTimeout(() => poll(1800), POLL_MS / 4);   // at most an hour of polling per page view
    }
  });
})();
