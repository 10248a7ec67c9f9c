// The overview's filters: failed only, one release, one size. Cells and their sections
// carry data-status, data-release and data-size; nothing is fetched.
(function () {
  "use strict";
  var failedOnly = document.getElementById("failed-only");
  var release = document.getElementById("release");
  var size = document.getElementById("size");
  function shown(el) {
    var st = el.getAttribute("data-status");
    if (failedOnly.checked && st !== "failed") { return false; }
    if (release.value && el.getAttribute("data-release") !== release.value) { return false; }
    if (size.value && el.getAttribute("data-size") !== size.value) { return false; }
    return true;
  }
  function apply() {
    document.querySelectorAll("td.cell, section.cellpage").forEach(function (el) {
      el.classList.toggle("hidden", !shown(el));
    });
    document.querySelectorAll("table.grid tr[data-scenario]").forEach(function (row) {
      var any = row.querySelector("td.cell:not(.hidden)");
      row.classList.toggle("hidden", !any);
    });
    document.querySelectorAll("table.grid th.col, table.grid td.none").forEach(function (el) {
      var col = el.getAttribute("data-column");
      var any = document.querySelector('td.cell[data-column="' + col + '"]:not(.hidden)');
      el.classList.toggle("hidden", !any);
    });
  }
  [failedOnly, release, size].forEach(function (el) { el.addEventListener("change", apply); });
  apply();
})();
