// A new job: a YAML or JSON spec editor prefilled from the project's examples; "Validate" runs the dry run and
// shows each error beside the line of its field, the parameter counts and the per-group learning rate preview;
// "Submit" queues it.
import yaml from "js-yaml";
import cifar10 from "../../../examples/cifar10-resnet18.yaml";
import gradual from "../../../examples/gradual-unfreezing.yaml";
import probe from "../../../examples/linear-probe.yaml";
import mobilenet from "../../../examples/mobilenet-plateau.yaml";
import resnet50 from "../../../examples/resnet50-cosine-weight-decay.yaml";
import vgg16 from "../../../examples/vgg16-step-decay-value-clipping.yaml";
import vit from "../../../examples/vit-warmup-agc.yaml";
import { api, ApiError } from "../api.js";
import { LineChart } from "../charts.js";
import { fmt, h, replace } from "../dom.js";

export const EXAMPLES = {
  "cifar10-resnet18.yaml": cifar10,
  "gradual-unfreezing.yaml": gradual,
  "linear-probe.yaml": probe,
  "mobilenet-plateau.yaml": mobilenet,
  "resnet50-cosine-weight-decay.yaml": resnet50,
  "vgg16-step-decay-value-clipping.yaml": vgg16,
  "vit-warmup-agc.yaml": vit,
};

// The example as a spec for the service: it names an uploaded data set instead of a local path.
function fromExample(name, datasetId, format) {
  const spec = yaml.load(EXAMPLES[name]);
  spec.data = { ...(spec.data ?? {}) };
  delete spec.data.path;
  spec.data.dataset = datasetId ?? "ds_...";
  return format === "json" ? JSON.stringify(spec, null, 2) : `# from examples/${name}\n${yaml.dump(spec)}`;
}

// The line (0-based) of a field such as "spec.optimizer.lr" in YAML or JSON text: each key is looked for after
// the previous one; a key the text does not have (a default) points at its parent.
export function lineOf(text, param) {
  const lines = text.split("\n");
  const keys = (param ?? "").split(".").filter((k, i) => !(i === 0 && k === "spec") && k !== "" && !/^\d+$/.test(k));
  let line = null;
  let from = 0;
  for (const key of keys) {
    const escaped = key.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    const pattern = new RegExp(`(^|[\\s{,])"?${escaped}"?\\s*:`);
    const found = lines.findIndex((l, i) => i >= from && pattern.test(l.replace(/#.*$/, "")));
    if (found < 0) continue;
    line = found;
    from = found;
  }
  return line;
}

function parseSpec(text) {
  try {
    const spec = yaml.load(text); // YAML is a superset of JSON: both parse here
    if (!spec || typeof spec !== "object" || Array.isArray(spec)) {
      return { error: { param: null, message: "the spec must be a mapping (backbone:, data:, optimizer:, ...)" } };
    }
    return { spec };
  } catch (error) {
    return { error: { param: null, line: error.mark?.line ?? null, message: `not YAML or JSON: ${error.reason ?? error.message}` } };
  }
}

export async function renderNewJob(main, query, { signal, navigate }) {
  const ready = await api("/v1/datasets?status=ready&limit=100", { signal });
  let validated = null; // the text that last validated cleanly
  const exampleSelect = h(
    "select",
    { id: "example" },
    Object.keys(EXAMPLES).map((name) => h("option", { value: name, selected: name === "cifar10-resnet18.yaml" }, name)),
  );
  const datasetSelect = h(
    "select",
    { id: "dataset" },
    ready.data.length ? null : h("option", { value: "" }, "no ready data set: upload one first"),
    ready.data.map((d) => h("option", { value: d.id, selected: d.id === query.get("dataset") }, `${d.name} (${d.id})`)),
  );
  const formatSelect = h("select", { id: "format" }, h("option", { value: "yaml" }, "YAML"), h("option", { value: "json" }, "JSON"));
  const editor = h("textarea", {
    id: "spec-editor",
    spellcheck: false,
    rows: 22,
    "aria-describedby": "spec-errors",
    "aria-label": "Spec",
  });
  const gutter = h("pre.gutter", { "aria-hidden": "true" });
  const nameInput = h("input", { id: "job-name", name: "name", maxlength: 200, placeholder: "optional" });
  const metadataInput = h("input", { id: "job-metadata", name: "metadata", placeholder: "team=vision,run=7" });
  const errors = h("div", { id: "spec-errors", "aria-live": "polite" });
  const plan = h("section", { id: "plan", "aria-live": "polite" });
  const validateButton = h("button", { type: "button", id: "validate" }, "Validate");
  const submitButton = h("button", { type: "submit", id: "submit", disabled: true }, "Submit");
  let errorLines = new Map();
  let previewChart = null;
  signal.addEventListener("abort", () => previewChart?.destroy());

  function drawGutter() {
    const count = editor.value.split("\n").length;
    gutter.textContent = Array.from({ length: count }, (_, i) => (errorLines.has(i) ? `● ${i + 1}` : String(i + 1))).join("\n");
    gutter.scrollTop = editor.scrollTop;
  }

  function load() {
    editor.value = fromExample(exampleSelect.value, datasetSelect.value || null, formatSelect.value);
    changed();
  }

  function changed() {
    submitButton.disabled = validated === null || validated !== editor.value;
    drawGutter();
  }

  function goToLine(line) {
    const lines = editor.value.split("\n");
    const start = lines.slice(0, line).reduce((n, l) => n + l.length + 1, 0);
    editor.focus();
    editor.setSelectionRange(start, start + lines[line].length);
  }

  function showErrors(problems) {
    errorLines = new Map();
    for (const problem of problems) {
      const line = problem.line ?? lineOf(editor.value, problem.param);
      problem.line = line;
      if (line !== null) errorLines.set(line, problem);
    }
    replace(
      errors,
      problems.length
        ? h(
            "ul.errors",
            { role: "alert" },
            problems.map((p) =>
              h(
                "li",
                { dataset: { param: p.param ?? "", line: p.line ?? "" } },
                p.line !== null ? h("button.link", { type: "button", onclick: () => goToLine(p.line) }, `line ${p.line + 1}`) : null,
                p.param ? h("code", {}, p.param) : null,
                ` ${p.message}`,
              ),
            ),
          )
        : null,
    );
    drawGutter();
  }

  function showPlan(dry) {
    previewChart?.destroy();
    replace(
      plan,
      h("h2", {}, "Plan"),
      h(
        "dl",
        {},
        [
          ["Classes", dry.num_classes],
          ["Training images", dry.train_images],
          ["Steps per epoch", dry.steps_per_epoch],
          ["Total steps", dry.total_steps],
          ["Parameters", fmt.number(dry.params_total)],
          ["Trainable (first epoch)", fmt.number(dry.params_trainable)],
        ].map(([t, v]) => [h("dt", {}, t), h("dd", { dataset: { field: t } }, String(v))]),
      ),
    );
    const preview = dry.lr_preview;
    previewChart = new LineChart(plan, {
      title: "Learning rate per parameter group",
      xLabel: "step",
      yLabel: "lr",
      series: preview.groups.map((label) => ({ label, marker: false })),
    });
    preview.groups.forEach((_, g) => previewChart.set(g, preview.steps.map((step, row) => [step, preview.lr[row][g]])));
  }

  function problemsOf(error) {
    if (error instanceof ApiError && error.details.length) {
      return error.details.map((d) => ({ param: d.param ?? null, message: d.message ?? String(d) }));
    }
    return [{ param: error.param ?? null, message: error.message }];
  }

  async function validate() {
    const text = editor.value;
    const parsed = parseSpec(text);
    validated = null;
    replace(plan);
    if (parsed.error) {
      showErrors([parsed.error]);
      changed();
      return null;
    }
    validateButton.disabled = true;
    try {
      const dry = await api("/v1/jobs/validate", { method: "POST", body: { spec: parsed.spec }, signal });
      showErrors([]);
      replace(errors, h("p.ok", { role: "status" }, "The spec is valid."));
      showPlan(dry);
      validated = text;
      return parsed.spec;
    } catch (error) {
      if (signal.aborted) return null;
      showErrors(problemsOf(error));
      return null;
    } finally {
      validateButton.disabled = false;
      changed();
    }
  }

  async function submit(event) {
    event.preventDefault();
    const parsed = parseSpec(editor.value);
    if (parsed.error) return showErrors([parsed.error]);
    const metadata = {};
    for (const pair of metadataInput.value.split(",")) {
      const [key, ...rest] = pair.split("=");
      if (key.trim() && rest.length) metadata[key.trim()] = rest.join("=").trim();
    }
    const body = { spec: parsed.spec };
    if (nameInput.value.trim()) body.name = nameInput.value.trim();
    if (Object.keys(metadata).length) body.metadata = metadata;
    submitButton.disabled = true;
    try {
      const job = await api("/v1/jobs", { method: "POST", body, signal });
      navigate(`#/jobs/${job.id}`);
    } catch (error) {
      if (!signal.aborted) showErrors(problemsOf(error));
      changed();
    }
  }

  exampleSelect.addEventListener("change", load);
  datasetSelect.addEventListener("change", load);
  formatSelect.addEventListener("change", () => {
    const parsed = parseSpec(editor.value);
    if (parsed.error) return showErrors([parsed.error]);
    editor.value = formatSelect.value === "json" ? JSON.stringify(parsed.spec, null, 2) : yaml.dump(parsed.spec);
    changed();
  });
  editor.addEventListener("input", changed);
  editor.addEventListener("scroll", () => {
    gutter.scrollTop = editor.scrollTop;
  });
  validateButton.addEventListener("click", validate);

  replace(
    main,
    h("h1", {}, "New job"),
    h(
      "form.newjob",
      { onsubmit: submit },
      h(
        "div.fields",
        {},
        h("label", { for: "example" }, "Start from"),
        exampleSelect,
        h("label", { for: "dataset" }, "Data set"),
        datasetSelect,
        h("label", { for: "format" }, "Format"),
        formatSelect,
      ),
      h("div.editor", {}, gutter, editor),
      errors,
      h(
        "div.fields",
        {},
        h("label", { for: "job-name" }, "Name"),
        nameInput,
        h("label", { for: "job-metadata" }, "Metadata"),
        metadataInput,
      ),
      h("div.actions", {}, validateButton, submitButton, h("span.muted", {}, "Submit is enabled once the spec validates.")),
    ),
    plan,
  );
  load();
}
