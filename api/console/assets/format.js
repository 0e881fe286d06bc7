// Number and time formatting: every figure with its unit, "—" where there is no data (never a fake 0).
const DASH = "—";
const int = new Intl.NumberFormat("en-US");

export function count(value) {
  return value === null || value === undefined ? DASH : int.format(value);
}

export function usd(value) {
  if (value === null || value === undefined) return DASH;
  const abs = Math.abs(value);
  const digits = abs === 0 ? 2 : abs < 0.01 ? 6 : abs < 1 ? 4 : 2;
  return `$${value.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits })}`;
}

export function ms(value) {
  if (value === null || value === undefined) return DASH;
  if (value >= 10_000) return `${(value / 1000).toFixed(1)} s`;
  if (value >= 1000) return `${(value / 1000).toFixed(2)} s`;
  return `${value.toFixed(value < 10 ? 1 : 0)} ms`;
}

export function pct(rate) {
  if (rate === null || rate === undefined) return DASH;
  return `${(rate * 100).toFixed(rate > 0 && rate < 0.001 ? 3 : 2)} %`;
}

export function score(value) {
  return value === null || value === undefined ? DASH : value.toFixed(3);
}

export function tokens(value) {
  return value === null || value === undefined ? DASH : `${int.format(value)} tok`;
}

export function time(text) {
  if (!text) return DASH;
  const date = new Date(text);
  return date.toLocaleString("en-GB", { dateStyle: "short", timeStyle: "medium" });
}

export function ago(text) {
  if (!text) return "never";
  const seconds = Math.round((Date.now() - Date.parse(text)) / 1000);
  if (seconds < 60) return `${Math.max(seconds, 0)} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${(seconds / 3600).toFixed(1)} h ago`;
  return `${(seconds / 86400).toFixed(1)} d ago`;
}

/** Escape text for HTML. */
export function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
