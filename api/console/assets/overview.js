// Overview: the window's headline figures (GET /metrics, the same numbers) and its time series
// (GET /metrics/series), grouped by a dimension or an attribute, refreshed every 30 s unless paused.
import { api, AuthRequired } from "./api.js";
import { showError } from "./app.js";
import { lineChart, PALETTE } from "./charts.js";
import { count, esc, ms, pct, score, tokens, usd } from "./format.js";

export const WINDOWS = ["15m", "1h", "6h", "24h", "7d", "30d"];
/** Chart step per window: 15 to 120 intervals, each a whole number of one-minute buckets. */
export const STEPS = { "15m": "1m", "1h": "1m", "6h": "5m", "24h": "15m", "7d": "2h", "30d": "6h" };
const REFRESH_MS = 30_000;
const MAX_GROUPS = 8;
/** The quality threshold of the example alert rules (TokentraceQualityDrop in dashboards/prometheus-rules.yml), drawn as a reference line. */
const QUALITY_THRESHOLD = 0.75;

/** The server's bucket in seconds once a step was refused for not being whole buckets (null: 1m works). */
let bucketS = null;

function seconds(duration) {
  const units = { s: 1, m: 60, h: 3600, d: 86400 };
  return Number.parseInt(duration, 10) * units[duration.slice(-1)];
}

/** The chart step for a window: STEPS, rounded up to whole buckets once the server's bucket is known. */
function stepFor(window_) {
  const wanted = seconds(STEPS[window_]);
  return bucketS === null ? STEPS[window_] : `${Math.ceil(wanted / bucketS) * bucketS}s`;
}

/**
 * Learn the bucket from the API's 400 for a step that is not whole buckets (a server whose
 * `aggregation.bucket` is longer than a minute); true when the step can now be chosen right.
 */
function learnBucket(error) {
  const match = /whole number of buckets \((\d+)s each\)/.exec(error.message || "");
  if (!match || bucketS !== null) return false;
  bucketS = Number(match[1]);
  return true;
}

const BUILT_IN = ["model", "provider", "caller"];

/**
 * Group-by choices over a window: the built-in dimensions and every attribute key the window's aggregates
 * are grouped by (GET /metrics/dimensions), so a key seen only early in the window is offered too.
 */
export async function groupChoices(window_) {
  try {
    const body = await api("/metrics/dimensions", { params: { window: window_ } });
    return body.dimensions;
  } catch (error) {
    if (error instanceof AuthRequired) throw error;
    return [...BUILT_IN];
  }
}

function options(values, selected, label = (v) => v) {
  return values.map((v) => `<option value="${esc(v)}"${v === selected ? " selected" : ""}>${esc(label(v))}</option>`).join("");
}

function cards(m) {
  const items = [
    ["Spans", count(m.span_count)],
    ["Total cost", usd(m.cost.total_usd)],
    ["Tokens in", tokens(m.tokens.prompt_total)],
    ["Tokens out", tokens(m.tokens.completion_total)],
    ["Latency p50", ms(m.latency.p50_ms)],
    ["Latency p95", ms(m.latency.p95_ms)],
    ["Latency p99", ms(m.latency.p99_ms)],
    ["Error rate", pct(m.errors.rate)],
    ["Quality avg", score(m.quality.score_avg)],
  ];
  return items.map(([k, v]) => `<div class="card"><dt>${k}</dt><dd data-figure="${esc(k)}">${v}</dd></div>`).join("");
}

/** Keep the groups with the most cost (then calls); fold the rest into "other". */
function topGroups(series) {
  const totals = Object.entries(series).map(([name, points]) => [
    name,
    points.reduce((a, p) => a + p.cost_usd, 0),
    points.reduce((a, p) => a + p.span_count, 0),
  ]);
  totals.sort((a, b) => b[1] - a[1] || b[2] - a[2] || a[0].localeCompare(b[0]));
  const kept = totals.slice(0, MAX_GROUPS).map(([name]) => [name, series[name]]);
  const rest = totals.slice(MAX_GROUPS).map(([name]) => series[name]);
  if (rest.length) {
    const other = rest[0].map((_, i) => ({
      cost_usd: rest.reduce((a, points) => a + points[i].cost_usd, 0),
      span_count: rest.reduce((a, points) => a + points[i].span_count, 0),
    }));
    kept.push([`other (${rest.length})`, other]);
  }
  return kept;
}

export async function render(main, query) {
  const state = {
    window: WINDOWS.includes(query.get("window")) ? query.get("window") : "1h",
    groupby: query.get("groupby") || "model",
    paused: query.get("refresh") === "off",
  };
  main.innerHTML = `<h1>Overview</h1>
    <form class="controls" id="overview-controls">
      <label>Window <select name="window">${options(WINDOWS, state.window)}</select></label>
      <label>Group by <select name="groupby">${options([state.groupby], state.groupby)}</select></label>
      <label class="inline"><input type="checkbox" name="auto"${state.paused ? "" : " checked"}> Auto-refresh every 30 s</label>
      <button type="button" id="refresh-now">Refresh now</button>
      <span class="muted" id="updated" aria-live="polite"></span>
    </form>
    <dl class="cards" id="headline" aria-label="Headline figures">Loading…</dl>
    <div class="charts">
      <section class="chart"><h2>Cost per interval, stacked by <span class="by"></span></h2><div id="chart-cost"></div></section>
      <section class="chart"><h2>Latency</h2><div id="chart-latency"></div></section>
      <section class="chart"><h2>Calls by <span class="by"></span></h2><div id="chart-calls"></div></section>
      <section class="chart"><h2>Error rate</h2><div id="chart-errors"></div></section>
      <section class="chart"><h2>Quality (average, p10; ${QUALITY_THRESHOLD} threshold)</h2><div id="chart-quality"></div></section>
    </div>`;
  const form = main.querySelector("#overview-controls");
  let charts = [];
  let timer = null;
  let generation = 0;

  const syncUrl = () => {
    const params = new URLSearchParams({ window: state.window, groupby: state.groupby });
    if (state.paused) params.set("refresh", "off");
    history.replaceState(null, "", `/?${params}`);
  };

  const load = async () => {
    const mine = ++generation;
    const fetchAll = (step) =>
      Promise.all([
        api("/metrics", { params: { window: state.window } }),
        api("/metrics/series", { params: { window: state.window, step } }),
        api("/metrics/series", { params: { window: state.window, step, groupby: state.groupby } }),
      ]);
    let answers;
    try {
      answers = await fetchAll(stepFor(state.window));
    } catch (error) {
      if (!learnBucket(error)) throw error;
      answers = await fetchAll(stepFor(state.window));
    }
    const [metrics, overall, grouped] = answers;
    if (mine !== generation || !main.isConnected) return;
    main.querySelector("#headline").innerHTML = cards(metrics);
    for (const el of main.querySelectorAll(".by")) el.textContent = state.groupby;
    for (const chart of charts) chart && chart.cleanup();
    const times = overall.points.map((p) => Date.parse(p.start) / 1000);
    const groups = topGroups(grouped.series);
    const colored = groups.map(([name, points], i) => ({ name, points, color: PALETTE[i % PALETTE.length] }));
    const pick = (key) => (p) => p[key];
    charts = [
      lineChart(main.querySelector("#chart-cost"), {
        times,
        stacked: true,
        format: usd,
        series: colored.map((g) => ({ label: g.name, color: g.color, values: g.points.map(pick("cost_usd")) })),
      }),
      lineChart(main.querySelector("#chart-latency"), {
        times,
        format: ms,
        series: [
          { label: "p50", values: overall.points.map((p) => p.latency.p50_ms), color: PALETTE[0] },
          { label: "p95", values: overall.points.map((p) => p.latency.p95_ms), color: PALETTE[3] },
          // Dashed: where p99 equals p95 (few calls in an interval) both lines stay visible.
          { label: "p99", values: overall.points.map((p) => p.latency.p99_ms), color: PALETTE[1], dash: [5, 3] },
        ],
      }),
      lineChart(main.querySelector("#chart-calls"), {
        times,
        format: (v) => count(v === null ? null : Math.round(v * 100) / 100),
        series: colored.map((g) => ({ label: g.name, color: g.color, values: g.points.map(pick("span_count")) })),
      }),
      lineChart(main.querySelector("#chart-errors"), {
        times,
        format: pct,
        // An interval without calls has no error rate: a gap, not 0 %.
        series: [{ label: "error rate", color: PALETTE[1], values: overall.points.map((p) => (p.span_count ? p.errors.rate : null)) }],
      }),
      lineChart(main.querySelector("#chart-quality"), {
        times,
        format: score,
        yRange: [0, 1],
        series: [
          { label: "average", color: PALETTE[2], values: overall.points.map((p) => p.quality.score_avg) },
          { label: "p10", color: PALETTE[3], values: overall.points.map((p) => p.quality.score_p10) },
          { label: "threshold", color: PALETTE[7], dash: [6, 4], width: 1, values: overall.points.map(() => QUALITY_THRESHOLD) },
        ],
      }),
    ];
    main.querySelector("#updated").textContent = `Updated ${new Date().toLocaleTimeString("en-GB")}`;
    // For bench/console.py: when the figures and charts of this load are on screen.
    performance.mark("tokentrace:overview-rendered");
  };

  const reload = () => load().catch(showError);
  const schedule = () => {
    clearInterval(timer);
    timer = state.paused ? null : setInterval(reload, REFRESH_MS);
  };

  form.addEventListener("change", (event) => {
    const data = new FormData(form);
    state.window = data.get("window");
    state.groupby = data.get("groupby");
    state.paused = !data.get("auto");
    syncUrl();
    schedule();
    if (event.target.name !== "auto") reload();
  });
  main.querySelector("#refresh-now").addEventListener("click", reload);

  let asked = 0;
  const fillChoices = () => {
    const mine = ++asked;
    return groupChoices(state.window)
      .then((choices) => {
        if (mine !== asked) return; // a later window's answer is (or will be) shown
        if (!choices.includes(state.groupby)) choices.push(state.groupby);
        form.elements.groupby.innerHTML = options(choices, state.groupby);
      })
      .catch(() => {});
  };
  form.addEventListener("change", (event) => {
    if (event.target.name === "window") fillChoices();
  });
  fillChoices();
  await load();
  schedule();
  return () => {
    clearInterval(timer);
    generation++;
    for (const chart of charts) chart && chart.cleanup();
  };
}
