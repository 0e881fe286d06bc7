// Traces: newest first, filtered by status, model, caller, attributes and time, a page at a time.
import { api } from "./api.js";
import { navigate } from "./app.js";
import { count, esc, ms, time, usd } from "./format.js";

const PAGE = 50;

function durationMs(trace) {
  if (!trace.started_at || !trace.ended_at) return null;
  return Date.parse(trace.ended_at) - Date.parse(trace.started_at);
}

/** `datetime-local` value (browser time) to RFC 3339 UTC, and back. */
function toRfc3339(local) {
  return local ? new Date(local).toISOString() : "";
}
function toLocal(rfc) {
  if (!rfc) return "";
  const d = new Date(rfc);
  if (Number.isNaN(d.getTime())) return "";
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

export function parseAttributes(text) {
  const out = {};
  for (const part of text.split(/[\s,]+/).filter(Boolean)) {
    const at = part.indexOf("=");
    if (at > 0) out[`attr.${part.slice(0, at).replace(/^attr\./, "")}`] = part.slice(at + 1);
  }
  return out;
}

export async function render(main, query) {
  const offset = Math.max(0, Number.parseInt(query.get("offset") || "0", 10) || 0);
  const attrs = [...query].filter(([k]) => k.startsWith("attr.")).map(([k, v]) => `${k.slice(5)}=${v}`).join(" ");
  const status = query.get("status") || "";
  main.innerHTML = `<h1>Traces</h1>
    <form class="controls" id="trace-filters" role="search">
      <label>Status <select name="status">
        ${["", "ok", "error", "timeout"].map((s) => `<option value="${s}"${s === status ? " selected" : ""}>${s || "any"}</option>`).join("")}
      </select></label>
      <label>Model <input name="model" value="${esc(query.get("model") || "")}" size="14"></label>
      <label>Caller <input name="caller" value="${esc(query.get("caller") || "")}" size="12"></label>
      <label>Attributes (key=value …) <input name="attrs" value="${esc(attrs)}" placeholder="variant=b" size="18"></label>
      <label>Since <input type="datetime-local" name="since" value="${toLocal(query.get("since"))}"></label>
      <label>Until <input type="datetime-local" name="until" value="${toLocal(query.get("until"))}"></label>
      <button type="submit" class="primary">Apply</button>
      <a href="/console/traces">Clear</a>
    </form>
    <div id="trace-list" aria-live="polite">Loading…</div>`;
  const form = main.querySelector("#trace-filters");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const params = new URLSearchParams();
    for (const key of ["status", "model", "caller"]) if (data.get(key)) params.set(key, data.get(key).trim());
    for (const [k, v] of Object.entries(parseAttributes(data.get("attrs")))) params.set(k, v);
    if (data.get("since")) params.set("since", toRfc3339(data.get("since")));
    if (data.get("until")) params.set("until", toRfc3339(data.get("until")));
    navigate(`/console/traces${[...params].length ? `?${params}` : ""}`);
  });

  const params = Object.fromEntries([...query].filter(([k]) => k !== "offset"));
  const body = await api("/traces", { params: { ...params, limit: PAGE, offset } });
  const rows = body.traces
    .map(
      (t) => `<tr>
        <td><a href="/console/traces/${encodeURIComponent(t.trace_id)}">${esc(t.name || t.trace_id)}</a></td>
        <td class="num">${time(t.started_at)}</td>
        <td class="num">${count(t.span_count)}</td>
        <td class="num">${count(t.total_tokens)} tok</td>
        <td class="num">${usd(t.total_cost_usd)}</td>
        <td class="num">${ms(durationMs(t))}</td>
        <td class="status status-${esc(t.status)}">${esc(t.status)}</td></tr>`,
    )
    .join("");
  const page = (at) => {
    const next = new URLSearchParams(query);
    if (at) next.set("offset", at);
    else next.delete("offset");
    return `/console/traces${[...next].length ? `?${next}` : ""}`;
  };
  const last = Math.min(offset + body.traces.length, body.total);
  main.querySelector("#trace-list").innerHTML = body.traces.length
    ? `<table><caption class="muted" style="text-align:left">Newest first</caption><thead><tr>
        <th scope="col">Name</th><th scope="col" class="num">Start</th><th scope="col" class="num">Spans</th>
        <th scope="col" class="num">Tokens</th><th scope="col" class="num">Cost</th><th scope="col" class="num">Duration</th>
        <th scope="col">Status</th></tr></thead><tbody>${rows}</tbody></table>
      <nav class="pager" aria-label="Pages of traces">
        ${offset > 0 ? `<a href="${page(Math.max(0, offset - PAGE))}" rel="prev">← Newer</a>` : ""}
        <span>${count(offset + 1)}–${count(last)} of ${count(body.total)}</span>
        ${last < body.total ? `<a href="${page(offset + PAGE)}" rel="next">Older →</a>` : ""}
      </nav>`
    : `<p class="message">No trace matches${body.total ? " on this page" : ""}.</p>`;
}
