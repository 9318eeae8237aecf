// The console: a hash router over five views. Each view renders into <main> and stops its timers and streams
// when the route changes (its AbortSignal fires).
import "./style.css";
import { api, ApiError, session } from "./api.js";
import { errorBox, h, replace } from "./dom.js";
import { renderCompare } from "./views/compare.js";
import { renderDataset, renderDatasets } from "./views/datasets.js";
import { renderJob } from "./views/job.js";
import { renderJobs } from "./views/jobs.js";
import { renderNewJob } from "./views/newjob.js";

const main = document.getElementById("main");
let current = null;
let routed = false;

const ROUTES = [
  [/^\/jobs\/(ftjob_[A-Za-z0-9]+)$/, "jobs", (m, q, ctx) => renderJob(main, m[1], ctx)],
  [/^\/(jobs)?$/, "jobs", (m, q, ctx) => renderJobs(main, q, ctx)],
  [/^\/new$/, "new", (m, q, ctx) => renderNewJob(main, q, ctx)],
  [/^\/datasets\/(ds_[A-Za-z0-9]+)$/, "datasets", (m, q, ctx) => renderDataset(main, m[1], ctx)],
  [/^\/datasets$/, "datasets", (m, q, ctx) => renderDatasets(main, q, ctx)],
  [/^\/compare$/, "compare", (m, q, ctx) => renderCompare(main, q, ctx)],
];

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/jobs";
  const [path, query = ""] = raw.split("?");
  return { path, query: new URLSearchParams(query) };
}

async function route() {
  // Decided as the route starts: a person can leave the first page before it has finished loading.
  const first = !routed;
  routed = true;
  current?.abort();
  const controller = new AbortController();
  current = controller;
  const { path, query } = parseHash();
  const match = ROUTES.map(([pattern, nav, view]) => [path.match(pattern), nav, view]).find(([m]) => m);
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (match && link.dataset.nav === match[1]) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (!match) {
    replace(main, h("h1", {}, "Not found"), h("p", {}, "No such page. ", h("a", { href: "#/jobs" }, "Back to jobs")));
    return;
  }
  replace(main, h("p.muted", {}, "Loading…"));
  try {
    await match[2](match[0], query, { signal: controller.signal, navigate });
  } catch (error) {
    if (controller.signal.aborted) return;
    if (error instanceof ApiError && error.status === 401) return; // the sign-in form is showing
    console.error(error); // a page that could not render is a bug: the browser tests fail on it
    replace(main, h("h1", {}, "Something went wrong"), errorBox(error));
  }
  // After a navigation, focus moves to the new page (as a page load would put it at the top); the first page
  // leaves it where the browser starts, before the skip link.
  if (!controller.signal.aborted && !first) main.focus({ preventScroll: true });
}

function navigate(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function showSignIn(message) {
  current?.abort();
  const input = h("input", {
    id: "api-key",
    type: "password",
    name: "api-key",
    autocomplete: "off",
    required: true,
    spellcheck: false,
  });
  const form = h(
    "form.signin",
    {
      onsubmit: async (event) => {
        event.preventDefault();
        session.signIn(input.value.trim());
        await start();
      },
    },
    h("h1", {}, "Sign in"),
    h("p", {}, "This service asks for an API key (", h("code", {}, "finetune keys create --project NAME"), "). ",
      "It is kept for this tab only."),
    message ? h("p.error", { role: "alert" }, message) : null,
    h("label", { for: "api-key" }, "API key"),
    input,
    h("button", { type: "submit" }, "Sign in"),
  );
  replace(main, form);
  input.focus();
}

let probing = false; // while start() asks whether a key is needed, a 401 is its answer, not an expiry

async function start() {
  const signout = document.getElementById("signout");
  const hadKey = Boolean(session.key);
  probing = true;
  try {
    await api("/v1/jobs?limit=1");
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      session.signOut();
      signout.hidden = true;
      showSignIn(hadKey ? "That key was not accepted." : null);
      return;
    }
    throw error;
  } finally {
    probing = false;
  }
  signout.hidden = !session.key; // the embedded mode has no keys: nothing to sign out of
  await route();
}

window.addEventListener("hashchange", route);
window.addEventListener("finetune:unauthorized", () => {
  if (probing) return;
  session.signOut();
  showSignIn("Your key was not accepted; sign in again.");
});
document.getElementById("signout").addEventListener("click", () => {
  session.signOut();
  document.getElementById("signout").hidden = true;
  showSignIn(null);
});
start().catch((error) => replace(main, h("h1", {}, "The service does not answer"), errorBox(error)));
