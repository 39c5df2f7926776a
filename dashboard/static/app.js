// distmon: live updates. Pages work without this file; it only adds new runs as they arrive.
// Rows are built with DOM APIs and textContent (never innerHTML), so no value can become markup.
"use strict";

(function () {
  const POLL_MS = 3000;
  const MAX_ROWS = 200;

  function cell(tr, build) {
    const td = document.createElement("td");
    build(td);
    tr.appendChild(td);
    return td;
  }

  function link(href, text) {
    const a = document.createElement("a");
    a.setAttribute("href", href);
    a.textContent = text;
    return a;
  }

  function badge(kind, value) {
    const span = document.createElement("span");
    span.className = "badge " + kind + "-" + String(value).toLowerCase().replace(/[^a-z_]/g, "");
    span.textContent = value;
    return span;
  }

  function fmtDuration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds < 1) return Math.round(seconds * 1000) + " ms";
    if (seconds < 120) return seconds.toFixed(2) + " s";
    const minutes = Math.floor(seconds / 60);
    return minutes + " min " + Math.floor(seconds % 60) + " s";
  }

  function countsNode(counts) {
    const span = document.createElement("span");
    span.className = "counts";
    const order = ["passed", "failed", "errors", "skipped", "xfailed", "xpassed"];
    for (const key of order) {
      if (key !== "passed" && !counts[key]) continue;
      const part = document.createElement("span");
      part.className = "c-" + key;
      part.textContent = counts[key] + " " + key;
      span.appendChild(part);
    }
    return span;
  }

  function runRow(run) {
    const tr = document.createElement("tr");
    tr.className = "fresh";
    cell(tr, (td) => td.appendChild(link("/runs/" + encodeURIComponent(run.id), "#" + run.id)));
    cell(tr, (td) => td.appendChild(link("/minions/" + encodeURIComponent(run.minion), run.minion)));
    cell(tr, (td) => td.appendChild(link("/jobs/" + encodeURIComponent(run.jid), run.jid)));
    cell(tr, (td) => td.appendChild(badge("s", run.status)));
    cell(tr, (td) => td.appendChild(countsNode(run.counts)));
    cell(tr, (td) => { td.textContent = String(run.started_at).replace(/\.\d+Z$/, "Z").replace("T", " ").replace("Z", " UTC"); });
    cell(tr, (td) => { td.className = "num"; td.textContent = fmtDuration(run.duration); });
    return tr;
  }

  function startLive(tbody) {
    let after = parseInt(tbody.dataset.liveAfter, 10) || 0;
    async function poll() {
      try {
        const response = await fetch("/api/live?after=" + after, {
          credentials: "same-origin",
          headers: { "Accept": "application/json" },
        });
        if (response.ok) {
          const data = await response.json();
          for (const run of data.runs) {
            tbody.insertBefore(runRow(run), tbody.firstChild);
            after = Math.max(after, run.id);
          }
          while (tbody.rows.length > MAX_ROWS) tbody.deleteRow(tbody.rows.length - 1);
          tbody.dataset.liveAfter = String(after);
        }
      } catch (err) {
        // Network hiccup or server restart: try again on the next tick.
      }
      setTimeout(poll, POLL_MS);
    }
    setTimeout(poll, POLL_MS);
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("tbody[data-live-after]").forEach(startLive);
  });
})();
