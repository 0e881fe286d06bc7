// Health: the strip in the header on every page, and the Health page. The ingest rate is the change of the
// server's accepted-span counter between two reads (this browser's reads, so it needs two of them).
import { api } from "./api.js";
import { count, esc } from "./format.js";

let previous = null;

async function read() {
  const body = await api("/health").catch((error) => {
    if (error.status === 503) return error.body || { status: "unhealthy", error: error.message };
    throw error;
  });
  const now = performance.now();
  let rate = null;
  if (previous && now > previous.at && body.span_count !== undefined) {
    rate = Math.max(0, ((body.span_count - previous.count) * 1000) / (now - previous.at));
  }
  if (body.span_count !== undefined) previous = { at: now, count: body.span_count };
  return { ...body, rate };
}

function describe(body) {
  const distributed = body.transport && body.transport !== "embedded";
  return {
    mode: body.transport ? (distributed ? "distributed" : "embedded") : "unknown",
    queueLabel: distributed ? "view lag" : "fsync queue",
    queueUnit: distributed ? "messages" : "batches",
    rate: body.rate === null ? "—" : `${body.rate.toFixed(1)} spans/s`,
    rateTitle: rateTitle(body),
  };
}

/** What the rate is, or why there is none yet: never a placeholder that looks stuck. */
function rateTitle(body) {
  if (body.span_count === undefined) return "Ingest rate: this server does not report its accepted-span count";
  if (body.rate === null) return "Ingest rate: needs two reads of /health by this page; the second follows within a second";
  return "Spans accepted per second between this page's last two reads of /health";
}

export async function renderHealthStrip(strip) {
  const body = await read();
  const d = describe(body);
  const status = body.status === "ok" ? "" : `<span class="bad">unhealthy: ${esc(body.error)}</span>`;
  strip.innerHTML = `${status}<span>v${esc(body.version)}</span><span>${d.mode}</span><span id="ingest-rate" title="${esc(d.rateTitle)}">ingest ${d.rate}</span>
    <span>${d.queueLabel} ${count(body.queue_depth)} ${d.queueUnit}</span>`;
}

export async function render(main) {
  main.innerHTML = `<h1>Health</h1><div id="health-body" aria-live="polite">Loading…</div>`;
  const draw = async () => {
    const body = await read();
    const d = describe(body);
    const rows = [
      ["Status", esc(body.status) + (body.error ? ` (${esc(body.error)})` : "")],
      ["Version", esc(body.version)],
      ["Mode", `${d.mode} (store: ${esc(body.transport)})`],
      ["Uptime", `<span class="num">${count(body.uptime_s)} s</span>`],
      ["Spans accepted", `<span class="num">${count(body.span_count)}</span>`],
      ["Ingest rate", `<span class="num" title="${esc(d.rateTitle)}">${d.rate}</span>`],
      [d.queueLabel[0].toUpperCase() + d.queueLabel.slice(1), `<span class="num">${count(body.queue_depth)} ${d.queueUnit}</span>`],
    ];
    main.querySelector("#health-body").innerHTML = `<table class="kv" style="width:auto"><tbody>${rows
      .map(([k, v]) => `<tr><th scope="row">${k}</th><td>${v}</td></tr>`)
      .join("")}</tbody></table>`;
  };
  await draw();
  const timer = setInterval(() => draw().catch(() => {}), 5000);
  return () => clearInterval(timer);
}
