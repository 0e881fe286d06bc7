// Alerts: every rule with its state, value against threshold and delivery failures; create a rule (the API's
// validation message shown by the field it names), silence for a duration, delete. Rules from the config
// file are read-only here.
import { api } from "./api.js";
import { ago, count, esc } from "./format.js";

const METRICS = [
  "cost_per_call", "error_count", "error_rate", "latency_p50", "latency_p50_ms", "latency_p95", "latency_p99",
  "latency_p99_ms", "quality_avg", "quality_p10", "span_count", "total_cost", "total_cost_usd", "total_spans",
  "total_tokens", "total_tokens_in", "total_tokens_out",
];
const OPS = [["gt", ">"], ["gte", "≥"], ["lt", "<"], ["lte", "≤"], ["eq", "="]];
const SILENCES = ["15m", "1h", "4h", "24h"];
const FIELDS = ["name", "metric", "op", "threshold", "window", "min_spans", "filter", "level", "cooldown"];

function state(rule) {
  if (rule.silenced) return ["silenced", `silenced until ${new Date(rule.silenced_until).toLocaleString("en-GB")}`];
  return rule.firing ? ["firing", "firing"] : ["ok", rule.state === "firing" ? "firing" : "ok"];
}

function value(v) {
  if (v === null || v === undefined) return "—";
  return Number.isInteger(v) ? count(v) : v.toLocaleString("en-US", { maximumSignificantDigits: 6 });
}

function row(rule) {
  const [cls, label] = state(rule);
  const op = (OPS.find(([name]) => name === rule.op) || [null, rule.op])[1];
  const filter = Object.entries(rule.filter || {}).map(([k, v]) => `${k}=${v}`).join(", ");
  const readOnly = rule.source !== "api";
  const actions = readOnly
    ? `<span class="muted" title="Defined in the config file; change it there">config file (read-only)</span>`
    : `<form class="silence" data-name="${esc(rule.name)}">
         <label class="inline">Silence for <select name="duration" aria-label="Silence ${esc(rule.name)} for">${SILENCES.map((d) => `<option>${d}</option>`).join("")}</select></label>
         <button type="submit">Silence</button>
       </form>
       <button type="button" class="danger delete" data-name="${esc(rule.name)}">Delete</button>`;
  return `<tr data-rule="${esc(rule.name)}">
    <td><strong>${esc(rule.name)}</strong><br><span class="muted">${esc(rule.level)}${filter ? ` · ${esc(filter)}` : ""}</span></td>
    <td class="status status-${cls}" data-state="${cls}">${esc(label)}</td>
    <td class="num">${value(rule.current_value)} <span class="muted">${esc(rule.metric)}</span></td>
    <td class="num">${esc(op)} ${value(rule.threshold)}</td>
    <td class="num">${esc(rule.window)}</td>
    <td class="num">${ago(rule.last_evaluated)}</td>
    <td class="num">${ago(rule.last_fired)}</td>
    <td class="num">${count(rule.delivery_failures)}${rule.last_delivery_error ? `<br><span class="muted" title="${esc(rule.last_delivery_error)}">last: ${esc(rule.last_delivery_error.slice(0, 60))}</span>` : ""}</td>
    <td>${actions}</td></tr>`;
}

function field(name, label, control, hint = "") {
  return `<label>${label}${control}${hint ? `<span class="muted">${hint}</span>` : ""}
    <span class="field-error" id="error-${name}" role="alert"></span></label>`;
}

export async function render(main) {
  main.innerHTML = `<h1>Alerts</h1><div id="alert-list" aria-live="polite">Loading…</div>
    <h2>New rule</h2>
    <form class="form" id="alert-form" novalidate>
      ${field("name", "Name", `<input name="name" required aria-describedby="error-name">`)}
      ${field("metric", "Metric", `<select name="metric" aria-describedby="error-metric">${METRICS.map((m) => `<option>${m}</option>`).join("")}</select>`)}
      ${field("op", "Condition", `<select name="op" aria-describedby="error-op">${OPS.map(([v, l]) => `<option value="${v}">${l}</option>`).join("")}</select>`)}
      ${field("threshold", "Threshold", `<input name="threshold" inputmode="decimal" aria-describedby="error-threshold">`, "error_rate as a fraction: 0.05")}
      ${field("window", "Window", `<input name="window" value="1h" aria-describedby="error-window">`)}
      ${field("min_spans", "Minimum spans", `<input name="min_spans" inputmode="numeric" value="0" aria-describedby="error-min_spans">`)}
      ${field("filter", "Filter (key=value …)", `<input name="filter" placeholder="model=gpt-4o" aria-describedby="error-filter">`)}
      ${field("level", "Level", `<select name="level" aria-describedby="error-level"><option>warning</option><option>critical</option></select>`)}
      ${field("cooldown", "Cooldown", `<input name="cooldown" placeholder="5m" aria-describedby="error-cooldown">`)}
      <div class="actions"><button type="submit" class="primary">Create rule</button> <span id="form-status" role="status"></span></div>
    </form>`;
  const list = main.querySelector("#alert-list");
  const form = main.querySelector("#alert-form");

  const load = async () => {
    let rules;
    try {
      rules = await api("/alerts");
    } catch (error) {
      if (error.status === 404) {
        list.innerHTML = `<p class="message">${esc(error.message)}. Enable it in tokentrace.yml (see the README, "Alerts").</p>`;
        form.hidden = true;
        return;
      }
      throw error;
    }
    list.innerHTML = rules.length
      ? `<table><thead><tr><th scope="col">Rule</th><th scope="col">State</th><th scope="col" class="num">Current value</th>
          <th scope="col" class="num">Threshold</th><th scope="col" class="num">Window</th><th scope="col" class="num">Last evaluated</th>
          <th scope="col" class="num">Last fired</th><th scope="col" class="num">Delivery failures</th><th scope="col">Actions</th></tr></thead>
          <tbody>${rules.map(row).join("")}</tbody></table>`
      : `<p class="message">No alert rules yet. Create one below.</p>`;
  };

  list.addEventListener("submit", async (event) => {
    event.preventDefault();
    const target = event.target.closest("form.silence");
    const name = target.dataset.name;
    try {
      await api(`/alerts/${encodeURIComponent(name)}/silence`, { method: "POST", body: { duration: target.elements.duration.value } });
    } catch (error) {
      alert(`Could not silence ${name}: ${error.message}`);
    }
    await load();
  });
  list.addEventListener("click", async (event) => {
    const button = event.target.closest("button.delete");
    if (!button) return;
    const name = button.dataset.name;
    if (!confirm(`Delete the alert rule ${name}?`)) return;
    try {
      await api(`/alerts/${encodeURIComponent(name)}`, { method: "DELETE" });
    } catch (error) {
      alert(`Could not delete ${name}: ${error.message}`);
    }
    await load();
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    for (const name of FIELDS) main.querySelector(`#error-${name}`).textContent = "";
    const status = main.querySelector("#form-status");
    status.textContent = "";
    const data = new FormData(form);
    const rule = { name: data.get("name").trim(), metric: data.get("metric"), op: data.get("op"), level: data.get("level") };
    const threshold = data.get("threshold").trim();
    rule.threshold = threshold === "" || Number.isNaN(Number(threshold)) ? threshold : Number(threshold);
    if (data.get("window").trim()) rule.window = data.get("window").trim();
    if (data.get("cooldown").trim()) rule.cooldown = data.get("cooldown").trim();
    const minSpans = data.get("min_spans").trim();
    if (minSpans) rule.min_spans = /^\d+$/.test(minSpans) ? Number(minSpans) : minSpans;
    const filter = {};
    for (const part of data.get("filter").split(/[\s,]+/).filter(Boolean)) {
      const at = part.indexOf("=");
      if (at > 0) filter[part.slice(0, at)] = part.slice(at + 1);
    }
    if (Object.keys(filter).length) rule.filter = filter;
    try {
      await api("/alerts", { method: "POST", body: rule });
    } catch (error) {
      if (error.status === 400 || error.status === 409) {
        // The API names the field first ("threshold: ...", "delivery.url: ..."); show it there.
        const named = /^([a-z_]+)[.:\s]/.exec(error.message);
        const key = error.status === 409 ? "name" : named && FIELDS.includes(named[1]) ? named[1] : null;
        if (key) {
          main.querySelector(`#error-${key}`).textContent = error.message;
          form.elements[key].setAttribute("aria-invalid", "true");
          form.elements[key].focus();
        } else status.textContent = error.message;
        return;
      }
      throw error;
    }
    for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
    status.textContent = `Created ${rule.name}.`;
    form.elements.name.value = "";
    await load();
  });

  await load();
  const timer = setInterval(() => load().catch(() => {}), 15_000);
  return () => clearInterval(timer);
}
