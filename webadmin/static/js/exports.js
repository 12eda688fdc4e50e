// recorderd console, an export's page: while the bundle is being built, poll its status and
// move the progress bar; when the state changes (ready, failed), reload the page.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const bar = document.getElementById("export-progress");
  const facts = document.getElementById("export-facts");
  if (!bar || !facts) {
    return;
  }
  const shown = facts.dataset.state;
  const percent = document.getElementById("export-percent");
  const done = document.getElementById("export-done");
  const poll = async () => {
    try {
      const reply = await fetch(bar.dataset.statusUrl, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (reply.ok) {
        const status = await reply.json();
        bar.value = status.percent;
        percent.textContent = `${status.percent} %`;
        done.textContent = String(status.recordings_done);
        if (status.state !== shown) {
          window.location.reload();
          return;
        }
      }
    } catch (err) {
      // a network hiccup: the next poll tries again
    }
    window.setTimeout(poll, 1000);
  };
  window.setTimeout(poll, 500);
});
