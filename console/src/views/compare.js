// Two to six jobs: their epoch curves overlaid (one dash pattern and marker per job), and their resolved specs
// side by side with the fields that differ marked.
import { api } from "../api.js";
import { LineChart } from "../charts.js";
import { errorBox, h, replace, statusBadge } from "../dom.js";

export function flatten(value, prefix = "", out = {}) {
  if (value && typeof value === "object" && !Array.isArray(value)) {
    for (const [key, inner] of Object.entries(value)) flatten(inner, prefix ? `${prefix}.${key}` : key, out);
  } else {
    out[prefix] = value;
  }
  return out;
}

const show = (value) => (value === undefined ? "—" : JSON.stringify(value));

async function picker(main, { navigate, signal }) {
  const page = await api("/v1/jobs?limit=50", { signal });
  const chosen = new Set();
  const go = h("button", { type: "submit", disabled: true }, "Compare");
  replace(
    main,
    h("h1", {}, "Compare jobs"),
    h(
      "form",
      {
        onsubmit: (event) => {
          event.preventDefault();
          navigate(`#/compare?ids=${[...chosen].join(",")}`);
        },
      },
      h("p", {}, "Pick two to six jobs."),
      h(
        "ul.plain",
        {},
        page.data.map((job) =>
          h(
            "li",
            {},
            h(
              "label",
              {},
              h("input", {
                type: "checkbox",
                value: job.id,
                onchange: (event) => {
                  if (event.target.checked) chosen.add(job.id);
                  else chosen.delete(job.id);
                  go.disabled = chosen.size < 2 || chosen.size > 6;
                },
              }),
              ` ${job.name ?? job.id} `,
              statusBadge(job.status),
            ),
          ),
        ),
      ),
      go,
    ),
  );
}

export async function renderCompare(main, query, ctx) {
  const ids = (query.get("ids") ?? "").split(",").filter(Boolean);
  if (ids.length === 0) return picker(main, ctx);
  if (ids.length < 2 || ids.length > 6) {
    replace(main, h("h1", {}, "Compare jobs"), errorBox(new Error("Compare two to six jobs.")));
    return;
  }
  const { signal } = ctx;
  const jobs = await Promise.all(ids.map((id) => api(`/v1/jobs/${id}`, { signal })));
  const tables = await Promise.all(ids.map((id) => api(`/v1/jobs/${id}/metrics`, { signal })));
  const names = jobs.map((job) => job.name ?? job.id);
  const onlyDiff = h("input", { type: "checkbox", id: "only-differences" });
  const specArea = h("div");
  const chartGrid = h("div.charts");
  replace(
    main,
    h("h1", {}, "Compare jobs"),
    h(
      "ul.plain.legend-jobs",
      {},
      jobs.map((job) => h("li", {}, h("a", { href: `#/jobs/${job.id}` }, job.name ?? job.id), " ", statusBadge(job.status))),
    ),
    h("section", {}, h("h2", {}, "Curves"), chartGrid),
    h(
      "section",
      {},
      h("h2", {}, "Specs"),
      h("label.inline", { for: "only-differences" }, onlyDiff, " only the fields that differ"),
      specArea,
    ),
  );
  const charts = [
    ["Validation loss", "val_loss"],
    ["Validation accuracy", "val_acc"],
    ["Train loss", "train_loss"],
    ["Learning rate (end of epoch)", "lr"],
  ].map(([title, key]) => {
    const chart = new LineChart(chartGrid, { title, xLabel: "epoch", yLabel: key, series: names.map((label) => ({ label })) });
    tables.forEach((t, i) => chart.set(i, t.data.map((row) => [row.epoch, row.metrics[key]])));
    return chart;
  });
  signal.addEventListener("abort", () => charts.forEach((c) => c.destroy()));

  const flat = jobs.map((job) => flatten(job.spec));
  const keys = [...new Set(flat.flatMap((f) => Object.keys(f)))].sort();
  function renderSpecs() {
    const rows = keys
      .map((key) => ({ key, values: flat.map((f) => show(f[key])) }))
      .map((row) => ({ ...row, differs: new Set(row.values).size > 1 }))
      .filter((row) => row.differs || !onlyDiff.checked);
    replace(
      specArea,
      h(
        "div.scroll",
        {},
        h(
          "table.spec-diff",
          {},
          h("caption", {}, `${rows.filter((r) => r.differs).length} fields differ (marked ≠)`),
          h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "field"), names.map((n) => h("th", { scope: "col" }, n)))),
          h(
            "tbody",
            {},
            rows.map((row) =>
              h(
                "tr",
                { class: row.differs ? "differs" : "", dataset: { field: row.key, differs: String(row.differs) } },
                h("th", { scope: "row" }, row.differs ? h("span.diff-mark", { "aria-label": "differs" }, "≠ ") : null, row.key),
                row.values.map((v) => h("td", {}, v)),
              ),
            ),
          ),
        ),
      ),
    );
  }
  onlyDiff.addEventListener("change", renderSpecs);
  renderSpecs();
}
