// Switchboard dashboard: durations tick in the browser between server
// pushes. Each element with data-duration-ms holds the duration when it
// was rendered; the time it has been on the page is added.
(function () {
  "use strict";
  function format(ms) {
    var total = Math.max(0, Math.floor(ms / 1000));
    var h = Math.floor(total / 3600);
    var m = Math.floor(total / 60) % 60;
    var s = total % 60;
    var mm = (h > 0 && m < 10 ? "0" : "") + m;
    return (h > 0 ? h + ":" : "") + mm + ":" + (s < 10 ? "0" : "") + s;
  }
  function tick() {
    var now = Date.now();
    var cells = document.querySelectorAll("[data-duration-ms]");
    for (var i = 0; i < cells.length; i++) {
      var cell = cells[i];
      if (!cell.dataset.shownAt) {
        cell.dataset.shownAt = String(now);
      }
      var base = Number(cell.dataset.durationMs);
      cell.textContent = format(base + now - Number(cell.dataset.shownAt));
    }
  }
  setInterval(tick, 500);
  document.addEventListener("htmx:afterSettle", tick);
  document.addEventListener("htmx:sseMessage", tick);
  document.addEventListener("DOMContentLoaded", tick);
})();
