// Data sets: upload an archive with a progress bar; each set's validation status and reasons, its class counts
// as a bar chart, and a few thumbnails per class.
import { api, upload } from "../api.js";
import { barChart } from "../charts.js";
import { errorBox, fmt, h, replace, statusBadge, table } from "../dom.js";

const POLL_MS = 1000;

const wait = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export async function renderDatasets(main, query, { signal }) {
  const fileInput = h("input", { type: "file", id: "dataset-file", name: "file", accept: ".zip,.tar,.tar.gz,.tgz", required: true });
  const nameInput = h("input", { id: "dataset-name", name: "name", placeholder: "optional" });
  const progress = h("progress", { id: "upload-progress", max: 1, value: 0, hidden: true, "aria-label": "Upload progress" });
  const progressText = h("span", { id: "upload-status", "aria-live": "polite" });
  const listArea = h("div");
  const form = h(
    "form.upload",
    {
      onsubmit: async (event) => {
        event.preventDefault();
        const file = fileInput.files[0];
        if (!file) return;
        const data = new FormData();
        data.append("file", file);
        if (nameInput.value.trim()) data.append("name", nameInput.value.trim());
        progress.hidden = false;
        progress.value = 0;
        progressText.textContent = `uploading ${file.name}…`;
        try {
          const dataset = await upload("/v1/datasets", data, (fraction) => {
            progress.value = fraction;
            progressText.textContent = `uploading ${file.name}: ${Math.round(fraction * 100)}%`;
          });
          progress.value = 1;
          replace(progressText, "uploaded: ", h("a", { href: `#/datasets/${dataset.id}`, id: "uploaded" }, dataset.id), ` (${dataset.status})`);
          await refreshList();
        } catch (error) {
          progressText.textContent = "";
          replace(listArea, errorBox(error));
        }
      },
    },
    h("h2", {}, "Upload"),
    h("p.muted", {}, "A zip or tar archive in ImageFolder layout: train/<class>/<image>, with optional val/ and test/."),
    h("div.fields", {}, h("label", { for: "dataset-file" }, "Archive"), fileInput, h("label", { for: "dataset-name" }, "Name"), nameInput),
    h("div.actions", {}, h("button", { type: "submit", id: "upload" }, "Upload"), progress, progressText),
  );
  replace(main, h("h1", {}, "Data sets"), form, h("h2", {}, "Uploaded"), listArea);
  await refreshList();

  async function refreshList() {
  const page = await api(`/v1/datasets?limit=50${query.get("after") ? `&after=${encodeURIComponent(query.get("after"))}` : ""}`, {
    signal,
  });
  replace(
    listArea,
    table(
      [
        { label: "Data set", cell: (d) => h("a", { href: `#/datasets/${d.id}` }, d.name) },
        { label: "Id", cell: (d) => d.id },
        { label: "Status", cell: (d) => statusBadge(d.status) },
        { label: "Classes", cell: (d) => (d.class_names ? d.class_names.length : "–") },
        { label: "Images", cell: (d) => fmt.number(d.num_images) },
        { label: "Size", cell: (d) => fmt.bytes(d.bytes) },
        { label: "Uploaded", cell: (d) => fmt.time(d.created_at) },
      ],
      page.data,
      { empty: "No data set yet." },
    ),
    page.has_more ? h("a.button", { href: `#/datasets?after=${page.data.at(-1).id}` }, "Next page") : null,
  );
  }
}

export async function renderDataset(main, datasetId, { signal }) {
  let dataset = await api(`/v1/datasets/${datasetId}`, { signal });
  const body = h("div", { "aria-live": "polite" });
  replace(main, h("h1", {}, dataset.name), body);
  while (dataset.status === "validating" && !signal.aborted) {
    replace(body, h("p", {}, statusBadge(dataset.status), " checking every image…"));
    await wait(POLL_MS);
    if (signal.aborted) return;
    dataset = await api(`/v1/datasets/${datasetId}`, { signal });
  }
  const facts = h(
    "dl",
    {},
    [
      ["Id", dataset.id],
      ["Status", statusBadge(dataset.status)],
      ["Archive", `${dataset.filename}, ${fmt.bytes(dataset.bytes)}`],
      ["sha256", h("code.sha", {}, dataset.sha256)],
      ["Images", fmt.number(dataset.num_images)],
      ["Classes", dataset.class_names ? dataset.class_names.join(", ") : "–"],
    ].map(([t, v]) => [h("dt", {}, t), h("dd", {}, v)]),
  );
  if (dataset.status === "failed") {
    replace(
      body,
      facts,
      h(
        "section.problems",
        { role: "alert" },
        h("h2", {}, "Why it failed"),
        h("p", {}, `${dataset.error.code}: ${dataset.error.message}`),
        h("ul", {}, dataset.error.reasons.map((reason) => h("li", {}, reason))),
      ),
    );
    return;
  }
  const groups = Object.entries(dataset.counts ?? {}).map(([split, perClass]) => ({
    label: split,
    values: Object.entries(perClass).map(([name, value]) => ({ name, value })),
  }));
  const thumbs = h("section", { id: "thumbnails" }, h("h2", {}, "Thumbnails"));
  replace(
    body,
    facts,
    h("div.actions", {}, h("a.button", { href: `#/new?dataset=${dataset.id}` }, "New job on this data set")),
    h("section", {}, h("h2", {}, "Images per class"), barChart("Images per class and split", groups)),
    thumbs,
    dataset.skipped_files?.length ? h("details", {}, h("summary", {}, `${dataset.skipped_files.length} files left out (not images)`), h("ul", {}, dataset.skipped_files.map((f) => h("li", {}, f)))) : null,
  );
  try {
    const sheet = await api(`/v1/datasets/${dataset.id}/thumbnails`, { signal });
    thumbs.append(
      h(
        "div.thumb-grid",
        {},
        sheet.classes.map((c) =>
          h(
            "figure.thumb-class",
            {},
            h("figcaption", {}, c.name),
            h("div.thumbs", {}, c.images.map((src, i) => h("img", { src, alt: `${c.name} ${i + 1}`, width: sheet.pixels, height: sheet.pixels }))),
          ),
        ),
      ),
    );
  } catch (error) {
    if (!signal.aborted) thumbs.append(h("p.muted", {}, error.message));
  }
}
