// The jobs list: status, backbone, data set, progress and ETA, best metric; filters by status and metadata;
// cursor pagination; refreshed every few seconds while any job on the page is still going.
import { api, TERMINAL } from "../api.js";
import { errorBox, fmt, h, replace, statusBadge, table } from "../dom.js";

const STATUSES = ["queued", "running", "pausing", "paused", "cancelling", "succeeded", "failed", "cancelled", "pruned"];
const REFRESH_MS = 2000;

export function bestMetric(job) {
  const monitor = job.spec.training?.monitor ?? "val_loss";
  const value = job.metrics.best?.[monitor];
  return value === undefined ? "–" : `${monitor} ${fmt.number(value)}`;
}

export function progressCell(job) {
  const p = job.progress;
  const label = `${p.epoch}/${p.total_epochs} epochs`;
  return h(
    "span.progress-cell",
    {},
    h("progress", { max: 1, value: p.fraction, "aria-label": `${job.id}: ${label}` }),
    h("span", {}, ` ${label}`),
    p.eta_seconds !== null && p.eta_seconds !== undefined && !TERMINAL.has(job.status)
      ? h("span.muted", {}, ` · ETA ${fmt.duration(p.eta_seconds)}`)
      : null,
  );
}

function queryString(query) {
  const params = new URLSearchParams();
  for (const status of query.getAll("status")) params.append("status", status);
  for (const pair of (query.get("metadata") ?? "").split(",")) {
    const [key, ...rest] = pair.split("=");
    if (key.trim() && rest.length) params.append(`metadata[${key.trim()}]`, rest.join("=").trim());
  }
  if (query.get("after")) params.set("after", query.get("after"));
  params.set("limit", query.get("limit") ?? "20");
  return params.toString();
}

export async function renderJobs(main, query, { signal, navigate }) {
  const selected = new Set();
  const statusSelect = h(
    "select",
    { id: "filter-status", name: "status" },
    h("option", { value: "" }, "any status"),
    STATUSES.map((s) => h("option", { value: s, selected: query.getAll("status").includes(s) }, s)),
  );
  const metadataInput = h("input", {
    id: "filter-metadata",
    name: "metadata",
    placeholder: "team=vision,run=7",
    value: query.get("metadata") ?? "",
  });
  const filters = h(
    "form.filters",
    {
      role: "search",
      onsubmit: (event) => {
        event.preventDefault();
        const next = new URLSearchParams();
        if (statusSelect.value) next.append("status", statusSelect.value);
        if (metadataInput.value.trim()) next.set("metadata", metadataInput.value.trim());
        navigate(`#/jobs?${next}`);
      },
    },
    h("label", { for: "filter-status" }, "Status"),
    statusSelect,
    h("label", { for: "filter-metadata" }, "Metadata"),
    metadataInput,
    h("button", { type: "submit" }, "Filter"),
  );
  const compareButton = h(
    "button",
    {
      type: "button",
      id: "compare-selected",
      disabled: true,
      onclick: () => navigate(`#/compare?ids=${[...selected].join(",")}`),
    },
    "Compare selected",
  );
  const listArea = h("div", { id: "job-list", "aria-live": "polite" });
  const pager = h("nav.pager", { "aria-label": "Pages" });
  replace(
    main,
    h("div.title-row", {}, h("h1", {}, "Jobs"), h("a.button", { href: "#/new" }, "New job")),
    filters,
    h("div.actions", {}, compareButton, h("span.muted", {}, "Pick 2 to 6 jobs to compare.")),
    listArea,
    pager,
  );

  const columns = [
    {
      label: "Compare",
      cell: (job) =>
        h("input", {
          type: "checkbox",
          "aria-label": `compare ${job.id}`,
          checked: selected.has(job.id),
          onchange: (event) => {
            if (event.target.checked) selected.add(job.id);
            else selected.delete(job.id);
            compareButton.disabled = selected.size < 2 || selected.size > 6;
          },
        }),
    },
    { label: "Job", cell: (job) => h("a", { href: `#/jobs/${job.id}` }, job.name ?? job.id) },
    { label: "Status", cell: (job) => statusBadge(job.status) },
    { label: "Backbone", cell: (job) => job.spec.backbone.name },
    { label: "Data set", cell: (job) => (job.dataset ? h("a", { href: `#/datasets/${job.dataset}` }, job.dataset) : "–") },
    { label: "Progress", cell: progressCell },
    { label: "Best", cell: bestMetric },
    { label: "Created", cell: (job) => fmt.time(job.created_at) },
  ];

  async function refresh() {
    let page;
    try {
      page = await api(`/v1/jobs?${queryString(query)}`, { signal });
    } catch (error) {
      if (!signal.aborted) replace(listArea, errorBox(error));
      return true;
    }
    replace(listArea, table(columns, page.data, { caption: "Newest first", empty: "No jobs match." }));
    listArea.dataset.jobs = String(page.data.length);
    const next = new URLSearchParams(query);
    replace(
      pager,
      query.get("after") ? h("a.button", { href: `#/jobs?${withoutAfter(query)}` }, "First page") : null,
      page.has_more ? (next.set("after", page.data.at(-1).id), h("a.button", { href: `#/jobs?${next}` }, "Next page")) : null,
    );
    return page.data.every((job) => TERMINAL.has(job.status));
  }

  let settled = await refresh();
  (async () => {
    while (!signal.aborted) {
      await new Promise((resolve) => setTimeout(resolve, settled ? REFRESH_MS * 3 : REFRESH_MS));
      if (signal.aborted) return;
      settled = await refresh();
    }
  })();
}

function withoutAfter(query) {
  const copy = new URLSearchParams(query);
  copy.delete("after");
  return copy.toString();
}
