// One trace: totals, and a waterfall of its spans on a time axis, children nested under their parents,
// bars coloured by status, the slowest and the most expensive step marked; a row opens the span's details.
import { api } from "./api.js";
import { count, esc, ms, time, usd } from "./format.js";

function startMs(span) {
  return span.started_at ? Date.parse(span.started_at) : null;
}

/** Spans in tree order (each followed by its children, by start), with their depth. */
export function treeOrder(spans) {
  const ids = new Set(spans.map((s) => s.span_id));
  const children = new Map();
  const roots = [];
  for (const span of spans) {
    const parent = span.parent_span_id;
    if (parent && ids.has(parent) && parent !== span.span_id) {
      if (!children.has(parent)) children.set(parent, []);
      children.get(parent).push(span);
    } else roots.push(span);
  }
  const byStart = (a, b) => (startMs(a) ?? 0) - (startMs(b) ?? 0);
  const out = [];
  const seen = new Set();
  const walk = (span, depth) => {
    if (seen.has(span)) return;
    seen.add(span);
    out.push({ span, depth });
    for (const child of (children.get(span.span_id) || []).sort(byStart)) walk(child, depth + 1);
  };
  for (const root of roots.sort(byStart)) walk(root, 0);
  for (const span of spans) walk(span, 0); // a parent cycle: show the rest flat rather than drop them
  return out;
}

function endMs(span) {
  if (span.ended_at) return Date.parse(span.ended_at);
  const start = startMs(span);
  return start === null ? null : start + (span.latency_ms || 0);
}

/** Where a bar's label goes: after the bar, inside a wide bar that reaches the right edge, or before it. */
function textPlace(left, width) {
  if (left + width <= 75) return ["", `left:${left + width}%`];
  if (width >= 25) return [" inside", `left:${left}%`];
  return ["", `right:${100 - left}%;padding-right:.3rem`];
}

function detail(span) {
  const attrs = Object.entries(span.attributes || {});
  const rows = [
    ["Span id", esc(span.span_id)],
    ["Parent", esc(span.parent_span_id || "—")],
    ["Model", `${esc(span.model)} <span class="muted">${esc(span.provider || "")}</span>`],
    ["Caller", esc(span.caller || "—")],
    ["Started", time(span.started_at)],
    ["Latency", `<span class="num">${ms(span.latency_ms)}</span>`],
    ["Tokens", `<span class="num">${count(span.prompt_tokens)} in · ${count(span.comp_tokens)} out · ${count(span.total_tokens)} total</span>`],
    ["Cost", `<span class="num">${usd(span.cost_usd)}</span>`],
    ["Status", `<span class="status status-${esc(span.status)}">${esc(span.status)}</span>`],
    ["Error", span.error ? `<pre>${esc(span.error)}</pre>` : "—"],
  ];
  const attrRows = attrs.length
    ? attrs.map(([k, v]) => `<tr><th scope="row">${esc(k)}</th><td>${esc(typeof v === "string" ? v : JSON.stringify(v))}</td></tr>`).join("")
    : `<tr><td colspan="2" class="muted">No attributes</td></tr>`;
  return `<table class="kv"><tbody>${rows.map(([k, v]) => `<tr><th scope="row">${k}</th><td>${v}</td></tr>`).join("")}</tbody></table>
    <h3 style="font-size:.95rem;margin:.6rem 0 .2rem">Attributes</h3><table class="kv"><tbody>${attrRows}</tbody></table>`;
}

export async function render(main, query, match) {
  const id = decodeURIComponent(match[1]);
  main.innerHTML = `<p><a href="/console/traces">← Traces</a></p><h1>Trace <code>${esc(id)}</code></h1><div id="trace-body">Loading…</div>`;
  let trace;
  try {
    trace = await api(`/traces/${encodeURIComponent(id)}`);
  } catch (error) {
    if (error.status === 404) {
      main.querySelector("#trace-body").innerHTML = `<p class="message error" role="alert">${esc(error.message)}</p>`;
      return;
    }
    throw error;
  }
  const spans = trace.spans;
  const starts = spans.map(startMs).filter((v) => v !== null);
  const ends = spans.map(endMs).filter((v) => v !== null);
  const t0 = starts.length ? Math.min(...starts) : 0;
  const span = ends.length ? Math.max(1, Math.max(...ends) - t0) : 1;
  // A root spans its whole trace, so the steps ranked are the spans under it (the lone span of a flat trace).
  const steps = spans.length > 1 ? spans.filter((s) => s.parent_span_id) : spans;
  const ranked = steps.length ? steps : spans;
  const slowest = ranked.reduce((a, s) => ((s.latency_ms ?? -1) > (a.latency_ms ?? -1) ? s : a), ranked[0]);
  const priciest = ranked.reduce((a, s) => ((s.cost_usd ?? -1) > (a.cost_usd ?? -1) ? s : a), ranked[0]);
  const ticks = [0, 0.25, 0.5, 0.75, 1].map((f) => `<span style="left:${f * 100}%">${ms(f * span)}</span>`).join("");
  const rows = treeOrder(spans)
    .map(({ span: s, depth }, i) => {
      const left = startMs(s) === null ? 0 : ((startMs(s) - t0) / span) * 100;
      const width = Math.max(0.2, (((endMs(s) ?? t0) - (startMs(s) ?? t0)) / span) * 100);
      const tags = (s === slowest && s.latency_ms ? `<span class="tag">slowest</span>` : "") + (s === priciest && s.cost_usd ? `<span class="tag">most expensive</span>` : "");
      return `<button type="button" class="wf-row" aria-expanded="false" aria-controls="span-${i}" data-span-id="${esc(s.span_id)}" data-depth="${depth}" data-parent="${esc(s.parent_span_id || "")}">
          <span class="wf-label" style="padding-left:${depth * 1.1}rem">${depth ? "└ " : ""}${esc(s.name || s.span_id)} <span class="model">${esc(s.model)}</span>${tags}</span>
          <span class="wf-track"><span class="wf-bar status-${esc(s.status)}" style="left:${left}%;width:${width}%" title="${esc(s.status)}"></span>
          <span class="wf-bar-text${textPlace(left, width)[0]}" style="${textPlace(left, width)[1]}">${ms(s.latency_ms)} · ${usd(s.cost_usd)}</span></span>
        </button><div class="span-detail" id="span-${i}" hidden>${detail(s)}</div>`;
    })
    .join("");
  main.querySelector("#trace-body").innerHTML = `
    <dl class="totals">
      <div><dt class="muted">Name</dt><dd>${esc(trace.name)}</dd></div>
      <div><dt class="muted">Start</dt><dd>${time(trace.started_at)}</dd></div>
      <div><dt class="muted">Duration</dt><dd class="num">${ms(span)}</dd></div>
      <div><dt class="muted">Spans</dt><dd class="num">${count(trace.span_count)}</dd></div>
      <div><dt class="muted">Tokens</dt><dd class="num">${count(trace.total_tokens)} tok</dd></div>
      <div><dt class="muted">Cost</dt><dd class="num">${usd(trace.total_cost_usd)}</dd></div>
      <div><dt class="muted">Status</dt><dd class="status status-${esc(trace.status)}">${esc(trace.status)}</dd></div>
    </dl>
    <p class="muted">Bars: green ok, red error, amber timeout. Select a row for the span's tokens, cost, latency, error and attributes.</p>
    <div class="waterfall" role="group" aria-label="Span waterfall">
      <div class="wf-axis"><span>Span · model</span><span class="ticks">${ticks}</span></div>
      ${rows}
    </div>`;
  for (const row of main.querySelectorAll(".wf-row")) {
    row.addEventListener("click", () => {
      const panel = document.getElementById(row.getAttribute("aria-controls"));
      const open = row.getAttribute("aria-expanded") !== "true";
      row.setAttribute("aria-expanded", String(open));
      panel.hidden = !open;
    });
  }
}
