// recorderd console, every page (CSP: script-src 'self'; no inline script anywhere).
// 1. Buttons marked data-confirm ask before their form is sent.
// 2. After the idle timeout without activity the page goes to the login page, so a screen left
//    open does not keep showing recordings' data (the server has ended the session by then).
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("button[data-confirm]")) {
    button.addEventListener("click", (event) => {
      if (!window.confirm(button.dataset.confirm)) {
        event.preventDefault();
      }
    });
  }
  const note = document.getElementById("idle-note");
  if (note) {
    const idleMs = Number(note.dataset.idleS) * 1000;
    if (idleMs > 0) {
      window.setTimeout(() => { window.location.assign("/login?expired=1"); }, idleMs + 2000);
    }
  }
  document.documentElement.dataset.js = "ready";
});
