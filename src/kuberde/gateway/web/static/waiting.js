// The waiting page of a waking workspace: live phase, elapsed time and output, then the app.
"use strict";
(function () {
  const box = document.getElementById("waiting");
  const deadline = Number(box.dataset.deadline) || 120;
  const source = new EventSource("/__kuberde/wake");
  source.onmessage = function (event) {
    const status = JSON.parse(event.data);
    document.getElementById("phase").textContent = status.phase;
    document.getElementById("elapsed").textContent = Math.round(status.elapsed_s) + " s";
    const share = Math.min(100, 3 + (97 * status.elapsed_s) / deadline);
    document.getElementById("progress-bar").style.width = share + "%";
    if (status.logs && status.logs.length) {
      document.getElementById("logs-box").hidden = false;
      document.getElementById("logs").textContent = status.logs.join("\n");
    }
    if (status.error) {
      source.close();
      const error = document.getElementById("error");
      error.textContent = status.error;
      error.hidden = false;
    } else if (status.ready) {
      source.close();
      document.getElementById("phase").textContent = "Ready: opening the app…";
      window.location.reload();
    }
  };
})();
