// Compare: groups side by side over a window (GET /metrics?groupby=), the best value of each row marked.
// Group by a dimension or an attribute (e.g. `variant` for an A/B test), optionally only some of its values.
import { api } from "./api.js";
import { navigate } from "./app.js";
import { count, esc, ms, pct, score, usd } from "./format.js";
import { groupChoices, WINDOWS } from "./overview.js";

/** Rows: label, value of a group body, format, which end is best (null: not ranked). */
const ROWS = [
  ["Calls", (g) => g.span_count, count, null],
  ["Cost per call", (g) => g.cost.per_call_usd, usd, "min"],
  ["Tokens per call", (g) => (g.span_count ? g.tokens.total / g.span_count : null), (v) => (v === null ? "—" : `${v.toFixed(1)} tok`), "min"],
  ["Latency p50", (g) => g.latency.p50_ms, ms, "min"],
  ["Latency p95", (g) => g.latency.p95_ms, ms, "min"],
  ["Error rate", (g) => (g.span_count ? g.errors.rate : null), pct, "min"],
  ["Quality avg", (g) => g.quality.score_avg, score, "max"],
  ["Quality p10", (g) => g.quality.score_p10, score, "max"],
];

export async function render(main, query) {
  const window_ = WINDOWS.includes(query.get("window")) ? query.get("window") : "24h";
  const groupby = query.get("groupby") || "model";
  const only = (query.get("only") || "").split(",").filter(Boolean);
  main.innerHTML = `<h1>Compare</h1>
    <form class="controls" id="compare-controls">
      <label>Window <select name="window">${WINDOWS.map((w) => `<option${w === window_ ? " selected" : ""}>${w}</option>`).join("")}</select></label>
      <label>Compare by <select name="groupby"><option selected>${esc(groupby)}</option></select></label>
      <fieldset id="only" style="border:0;padding:0;margin:0"><legend class="muted" style="font-size:.85rem">Groups</legend></fieldset>
    </form>
    <div id="compare-table" aria-live="polite">Loading…</div>`;
  const form = main.querySelector("#compare-controls");
  const go = (changes) => {
    const params = new URLSearchParams({ window: window_, groupby, ...changes });
    if (!params.get("only")) params.delete("only");
    navigate(`/console/compare?${params}`);
  };
  form.addEventListener("change", (event) => {
    if (event.target.name === "only") {
      const picked = [...form.querySelectorAll("input[name=only]:checked")].map((i) => i.value);
      go({ only: picked.join(",") });
    } else go({ window: form.elements.window.value, groupby: form.elements.groupby.value, only: "" });
  });
  groupChoices(window_)
    .then((choices) => {
      if (!choices.includes(groupby)) choices.push(groupby);
      form.elements.groupby.innerHTML = choices.map((c) => `<option value="${esc(c)}"${c === groupby ? " selected" : ""}>${esc(c)}</option>`).join("");
    })
    .catch(() => {});

  const body = await api("/metrics", { params: { window: window_, groupby } });
  const all = body[`by_${groupby}`] || {};
  const names = Object.keys(all);
  main.querySelector("#only").insertAdjacentHTML(
    "beforeend",
    names.map((n) => `<label class="inline"><input type="checkbox" name="only" value="${esc(n)}"${!only.length || only.includes(n) ? " checked" : ""}> ${esc(n)}</label>`).join(" "),
  );
  const shown = names.filter((n) => !only.length || only.includes(n));
  if (!shown.length) {
    main.querySelector("#compare-table").innerHTML = `<p class="message">No spans with a <code>${esc(groupby)}</code> in the last ${window_}.</p>`;
    return;
  }
  const rows = ROWS.map(([label, get, format, best]) => {
    const values = shown.map((n) => get(all[n]));
    const present = values.filter((v) => v !== null && v !== undefined);
    const target = best && present.length > 1 ? (best === "min" ? Math.min(...present) : Math.max(...present)) : null;
    const cells = values
      .map((v) => {
        const isBest = target !== null && v === target;
        return `<td class="num${isBest ? " best" : ""}">${format(v)}${isBest ? '<span class="sr"> (best)</span>' : ""}</td>`;
      })
      .join("");
    return `<tr><th scope="row">${label}${best ? ` <span class="muted">(${best === "min" ? "lower" : "higher"} is better)</span>` : ""}</th>${cells}</tr>`;
  }).join("");
  main.querySelector("#compare-table").innerHTML = `<table><caption class="muted" style="text-align:left">Last ${window_}, by ${esc(groupby)}; ★ best of the row</caption>
    <thead><tr><th scope="col">Metric</th>${shown.map((n) => `<th scope="col" class="num">${esc(n)}</th>`).join("")}</tr></thead><tbody>${rows}</tbody></table>`;
}
