// Time-series charts on the vendored uPlot (window.uPlot, loaded by index.html). Empty intervals are
// plotted as they are: 0 for counts and costs, a gap (null) for quantiles and averages; never interpolated.
export const PALETTE = ["#0b57d0", "#c5221f", "#137333", "#b06000", "#8430ce", "#007b83", "#a50e74", "#5f6368", "#3c4043"];

function width(container) {
  return Math.max(320, container.clientWidth - 16);
}

function isolated(u, seriesIdx) {
  const values = u.data[seriesIdx];
  const out = [];
  for (let i = 0; i < values.length; i++) {
    if (values[i] !== null && values[i] !== undefined && (values[i - 1] ?? null) === null && (values[i + 1] ?? null) === null) out.push(i);
  }
  return out;
}

/**
 * Draw a chart into `container`. `series` is [{label, values, color?, stack?, dash?, unit}]; with `stacked`,
 * values are drawn cumulatively (the legend still shows each group's own value).
 */
export function lineChart(container, { times, series, format, stacked = false, height = 220, yRange }) {
  container.innerHTML = "";
  if (!times.length) return null;
  let drawn = series.map((s) => s.values);
  if (stacked) {
    const sums = new Array(times.length).fill(0);
    drawn = series.map((s) => s.values.map((v, i) => (sums[i] += v ?? 0)));
  }
  // Stacked areas are drawn from the top down, so each lower one paints over the one above it.
  const order = stacked ? series.map((_, i) => series.length - 1 - i) : series.map((_, i) => i);
  const opts = {
    width: width(container),
    height,
    scales: { x: { time: true }, y: yRange ? { range: yRange } : { range: (u, min, max) => [Math.min(0, min ?? 0), max > 0 ? max * 1.08 : 1] } },
    axes: [{}, { values: (u, ticks) => ticks.map((t) => format(t)), size: 70 }],
    legend: { live: true },
    cursor: { drag: { x: false, y: false } },
    series: [
      {},
      ...order.map((i) => {
        const s = series[i];
        const color = s.color || PALETTE[i % PALETTE.length];
        return {
          label: s.label,
          stroke: color,
          width: s.width ?? 1.5,
          dash: s.dash,
          fill: stacked ? `${color}55` : undefined,
          spanGaps: false,
          // Lines join neighbours only; a value between two gaps is drawn as a dot so it is not lost.
          points: { show: true, size: 5, fill: color, filter: isolated },
          value: (u, v, si, idx) => (idx === null || idx === undefined ? "—" : format(s.values[idx])),
        };
      }),
    ],
  };
  const data = [times, ...order.map((i) => drawn[i])];
  const chart = new window.uPlot(opts, data, container);
  const resize = () => chart.setSize({ width: width(container), height });
  window.addEventListener("resize", resize);
  chart.cleanup = () => {
    window.removeEventListener("resize", resize);
    chart.destroy();
  };
  return chart;
}
