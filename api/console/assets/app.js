// The console shell: client-side routing between pages, the token prompt and the health strip.
// Pages are modules exporting `render(main, query, match)` that may return a cleanup function (timers).
import { api, AuthRequired, setToken } from "./api.js";
import { renderHealthStrip } from "./health.js";

const ROUTES = [
  [/^\/(console\/?)?$/, () => import("./overview.js"), "Overview"],
  [/^\/console\/compare$/, () => import("./compare.js"), "Compare"],
  [/^\/console\/traces$/, () => import("./traces.js"), "Traces"],
  [/^\/console\/traces\/([^/]+)$/, () => import("./trace.js"), "Traces"],
  [/^\/console\/alerts$/, () => import("./alerts.js"), "Alerts"],
  [/^\/console\/health$/, () => import("./health.js"), "Health"],
];

const main = document.getElementById("main");
let cleanup = null;
let healthTimer = null;

function markNav(label) {
  for (const link of document.querySelectorAll("nav a")) {
    if (link.textContent.trim() === label) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

async function route() {
  if (cleanup) cleanup();
  cleanup = null;
  const path = location.pathname;
  const found = ROUTES.find(([pattern]) => pattern.test(path));
  if (!found) {
    markNav("");
    main.innerHTML = `<h1>Page not found</h1><p><a href="/">Back to the overview</a></p>`;
    return;
  }
  const [pattern, load, label] = found;
  markNav(label);
  document.title = `${label} · tokentrace`;
  const page = await load();
  try {
    cleanup = (await page.render(main, new URLSearchParams(location.search), path.match(pattern))) || null;
  } catch (error) {
    showError(error);
  }
}

/** Show a failed load: the token prompt for a 401, else the message in the page. */
export function showError(error) {
  if (error instanceof AuthRequired) {
    askForToken(error.message === "wrong token" ? "The saved token was refused; type it again." : "");
    return;
  }
  const box = document.createElement("p");
  box.className = "message error";
  box.setAttribute("role", "alert");
  box.textContent = `Could not load: ${error.message}`;
  main.prepend(box);
}

function askForToken(message) {
  const section = document.getElementById("auth");
  section.hidden = false;
  main.hidden = true;
  document.getElementById("auth-error").textContent = message;
  document.getElementById("auth-token").focus();
}

document.getElementById("auth-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = document.getElementById("auth-token");
  setToken(input.value);
  try {
    await api("/health");
  } catch (error) {
    if (error instanceof AuthRequired) {
      setToken(null);
      document.getElementById("auth-error").textContent = "Wrong token: the server refused it.";
      input.select();
      return;
    }
  }
  input.value = "";
  document.getElementById("auth").hidden = true;
  main.hidden = false;
  startHealth();
  route();
});

/** Follow same-origin console links without reloading the page. */
export function navigate(href) {
  history.pushState(null, "", href);
  route();
  main.focus();
}

document.addEventListener("click", (event) => {
  const link = event.target.closest("a[href]");
  if (!link || event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return;
  const url = new URL(link.href, location.href);
  if (url.origin !== location.origin || !(url.pathname === "/" || url.pathname.startsWith("/console/"))) return;
  event.preventDefault();
  navigate(url.pathname + url.search);
});
window.addEventListener("popstate", route);

function startHealth() {
  clearInterval(healthTimer);
  const strip = document.getElementById("health-strip");
  const tick = () => renderHealthStrip(strip).catch(() => {});
  tick();
  // A second read a second after the first gives the ingest rate without waiting a whole period.
  setTimeout(tick, 1000);
  healthTimer = setInterval(tick, 15_000);
}

startHealth();
route();
