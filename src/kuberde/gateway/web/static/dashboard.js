// Live updates (server-sent events) and copy buttons; the page works without this script.
"use strict";
(function () {
  const cards = document.getElementById("cards");
  if (cards && window.EventSource) {
    const names = cards.dataset.names;
    const source = new EventSource("/dashboard/events");
    source.onmessage = function (event) {
      const update = JSON.parse(event.data);
      if (update.names.join(",") !== names) {
        window.location.reload();
        return;
      }
      for (const [id, html] of Object.entries(update.cards)) {
        const live = document.getElementById(id);
        if (live && live.innerHTML !== html) live.innerHTML = html;
      }
    };
  }
  document.addEventListener("click", function (event) {
    const button = event.target.closest("button");
    if (!button) return;
    if (button.dataset.copy && navigator.clipboard) {
      navigator.clipboard.writeText(button.dataset.copy).then(function () {
        button.textContent = "Copied";
        setTimeout(function () { button.textContent = "Copy"; }, 1500);
      });
    }
    if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) {
      event.preventDefault();
    }
  });
})();
