// A job: live curves from its event stream, the event log, the resolved spec, checkpoints and artifacts with
// downloads, final and test metrics, confusion matrices, and the actions the server offers (cancel; pause and
// resume where the API has them).
import yaml from "js-yaml";
import { api, capabilities, download, followEvents, isTerminal, TERMINAL } from "../api.js";
import { LineChart } from "../charts.js";
import { errorBox, fmt, h, replace, statusBadge, table } from "../dom.js";
import { bestMetric, progressCell } from "./jobs.js";

// Actions by route: a button shows only when the server has the route and the status allows it.
const ACTIONS = [
  { label: "Cancel", route: "cancel", when: (s) => ["queued", "running", "paused"].includes(s), confirm: true },
  { label: "Pause", route: "pause", when: (s) => ["queued", "running"].includes(s) },
  { label: "Resume", route: "resume", when: (s) => s === "paused" },
];

function charts(container) {
  const grid = h("div.charts");
  container.append(grid);
  const make = (options) => new LineChart(grid, options);
  return {
    loss: make({
      title: "Loss",
      xLabel: "epoch",
      yLabel: "loss",
      series: [{ label: "step loss", marker: false }, { label: "train loss (epoch)" }, { label: "val loss (epoch)" }],
    }),
    accuracy: make({
      title: "Accuracy",
      xLabel: "epoch",
      yLabel: "accuracy",
      series: [{ label: "train accuracy" }, { label: "val accuracy" }],
    }),
    lr: make({ title: "Learning rate", xLabel: "epoch", yLabel: "lr (head)", series: [{ label: "lr", marker: false }] }),
    grad: make({
      title: "Gradient norm before clipping",
      xLabel: "epoch",
      yLabel: "norm",
      series: [{ label: "step norm", marker: false }, { label: "epoch mean" }, { label: "epoch max" }],
    }),
    clipped: make({
      title: "Clipped steps",
      xLabel: "epoch",
      yLabel: "fraction",
      series: [{ label: "fraction of steps clipped" }],
    }),
  };
}

function plot(chartSet, event) {
  const d = event.data ?? {};
  if (event.type === "step" && d.steps_per_epoch) {
    const x = d.step / d.steps_per_epoch;
    chartSet.loss.add(0, x, d.loss);
    chartSet.lr.add(0, x, d.lr);
    chartSet.grad.add(0, x, d.grad_norm);
  } else if (event.type === "epoch" && d.epoch) {
    chartSet.loss.add(1, d.epoch, d.train_loss);
    chartSet.loss.add(2, d.epoch, d.val_loss);
    chartSet.accuracy.add(0, d.epoch, d.train_acc);
    chartSet.accuracy.add(1, d.epoch, d.val_acc);
    chartSet.grad.add(1, d.epoch, d.grad_norm_mean);
    chartSet.grad.add(2, d.epoch, d.grad_norm_max);
    chartSet.clipped.add(0, d.epoch, d.clip_fraction);
  }
}

function metricsTable(job) {
  const rows = [];
  // The final record repeats the test metrics: each shows once, under its own set.
  const final = Object.entries(job.metrics.final ?? {}).filter(([name]) => !name.startsWith("test_"));
  for (const [source, values] of [["final (val)", final], ["test", Object.entries(job.metrics.test ?? {})]]) {
    for (const [name, value] of values) rows.push({ source, name, value });
  }
  return table(
    [
      { label: "Set", cell: (r) => r.source },
      { label: "Metric", cell: (r) => r.name },
      { label: "Value", cell: (r) => fmt.number(r.value) },
    ],
    rows,
    { empty: "Published when the job succeeds." },
  );
}

function confusionTable(title, classNames, split) {
  const max = Math.max(1, ...split.matrix.flat());
  const head = h(
    "tr",
    {},
    h("th", { scope: "col" }, "true \\ predicted"),
    classNames.map((name) => h("th", { scope: "col" }, name)),
    h("th", { scope: "col" }, "accuracy"),
  );
  const rows = split.matrix.map((row, i) =>
    h(
      "tr",
      {},
      h("th", { scope: "row" }, classNames[i]),
      row.map((count, j) =>
        h(
          "td.cell",
          {
            class: i === j ? "diagonal" : "",
            style: `--shade: ${(count / max).toFixed(3)}`,
            title: `${classNames[i]} predicted as ${classNames[j]}: ${count}`,
          },
          String(count),
        ),
      ),
      h("td", {}, fmt.percent(split.per_class_accuracy[i])),
    ),
  );
  return h(
    "div.scroll",
    {},
    h("table.confusion", { dataset: { split: title } }, h("caption", {}, `${title}: ${split.images} images`), h("thead", {}, head), h("tbody", {}, rows)),
  );
}

export async function renderJob(main, jobId, { signal }) {
  const caps = await capabilities();
  let job = await api(`/v1/jobs/${jobId}`, { signal });
  const header = h("div.title-row");
  const summary = h("div.summary");
  const actionMessage = h("div", { "aria-live": "polite" });
  const liveState = h("span.live-state", { role: "status" }, "connecting…");
  const liveToggle = h("button", { type: "button", id: "live-toggle" }, "Pause live updates");
  const chartArea = h("section", { "aria-labelledby": "curves-title" }, h("h2", { id: "curves-title" }, "Curves"));
  const metricsArea = h("section", { id: "metrics" }, h("h2", {}, "Final and test metrics"));
  const confusionArea = h("section", { id: "confusion" }, h("h2", {}, "Confusion matrices"));
  const filesArea = h("section", { id: "files" }, h("h2", {}, "Checkpoints and artifacts"));
  const logBody = h("tbody");
  const showSteps = h("input", { type: "checkbox", id: "show-steps" });
  const logArea = h(
    "section",
    { id: "events" },
    h("h2", {}, "Event log"),
    h("label.inline", { for: "show-steps" }, showSteps, " show step events"),
    h(
      "div.scroll.log",
      {},
      h(
        "table",
        { id: "event-log" },
        h("thead", {}, h("tr", {}, ["seq", "time", "type", "message"].map((c) => h("th", { scope: "col" }, c)))),
        logBody,
      ),
    ),
  );
  const specArea = h("section", {}, h("h2", {}, "Resolved spec"), h("pre.spec", { tabindex: 0 }, yaml.dump(job.spec)));
  replace(
    main,
    header,
    actionMessage,
    summary,
    h("div.actions", {}, liveState, liveToggle),
    chartArea,
    metricsArea,
    confusionArea,
    filesArea,
    logArea,
    specArea,
  );
  const chartSet = charts(chartArea);
  signal.addEventListener("abort", () => Object.values(chartSet).forEach((c) => c.destroy()));

  function renderHeader() {
    const buttons = ACTIONS.filter((a) => caps.has("post", `/v1/jobs/{job_id}/${a.route}`) && a.when(job.status)).map((a) =>
      h(
        "button",
        {
          type: "button",
          dataset: { action: a.route },
          onclick: async () => {
            if (a.confirm && !window.confirm(`${a.label} ${job.id}?`)) return;
            try {
              job = await api(`/v1/jobs/${job.id}/${a.route}`, { method: "POST", body: {} });
              replace(actionMessage);
              renderHeader();
            } catch (error) {
              replace(actionMessage, errorBox(error));
            }
          },
        },
        a.label,
      ),
    );
    // A live refresh redraws the buttons: the one that had the keyboard's focus keeps it.
    const focused = header.contains(document.activeElement) ? document.activeElement.dataset.action : null;
    replace(header, h("h1", {}, job.name ?? job.id, " ", statusBadge(job.status)), h("div.actions", {}, buttons));
    if (focused) header.querySelector(`[data-action="${focused}"]`)?.focus();
    replace(
      summary,
      h(
        "dl",
        {},
        [
          ["Id", job.id],
          ["Backbone", job.spec.backbone.name],
          ["Data set", job.dataset ? h("a", { href: `#/datasets/${job.dataset}` }, job.dataset) : "–"],
          ["Progress", progressCell(job)],
          ["Best", bestMetric(job)],
          ["Attempt", `${job.attempt} of ${job.max_attempts}`],
          ["Created", fmt.time(job.created_at)],
          ["Finished", fmt.time(job.finished_at)],
          ["Metadata", Object.entries(job.metadata).map(([k, v]) => `${k}=${v}`).join(", ") || "–"],
          ["Error", job.error ? `${job.error.code}: ${job.error.message}` : "–"],
        ].map(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]),
      ),
    );
    replace(metricsArea, h("h2", {}, "Final and test metrics"), metricsTable(job));
  }

  async function renderFiles() {
    const [checkpoints, artifacts] = await Promise.all([
      api(`/v1/jobs/${job.id}/checkpoints?limit=100`, { signal }),
      api(`/v1/jobs/${job.id}/artifacts`, { signal }),
    ]);
    const bySha = new Map(artifacts.data.map((a) => [a.sha256, a]));
    const button = (artifact, label) =>
      h(
        "button",
        {
          type: "button",
          dataset: { download: artifact.name },
          onclick: () =>
            download(
              artifact.name === "model.safetensors" ? `/v1/jobs/${job.id}/weights` : `/v1/jobs/${job.id}/artifacts/${encodeURIComponent(artifact.name)}`,
              artifact.name === "model.safetensors" ? `${job.id}.safetensors` : artifact.name,
            ).catch((error) => replace(actionMessage, errorBox(error))),
        },
        label ?? `Download ${artifact.name}`,
      );
    replace(
      filesArea,
      h("h2", {}, "Checkpoints and artifacts"),
      table(
        [
          { label: "Checkpoint", cell: (c) => c.id },
          { label: "Epoch", cell: (c) => `${c.epoch}${c.mid_epoch ? " (mid-epoch)" : ""}${c.is_best ? " · best" : ""}` },
          { label: "Step", cell: (c) => c.step },
          { label: "Size", cell: (c) => fmt.bytes(c.bytes) },
          {
            label: "Download",
            cell: (c) => (bySha.has(c.sha256) ? button(bySha.get(c.sha256), "Download") : c.available ? "after the job ends" : "deleted"),
          },
        ],
        checkpoints.data,
        { caption: "Checkpoints", empty: "No checkpoint yet." },
      ),
      table(
        [
          { label: "Artifact", cell: (a) => a.name },
          { label: "Size", cell: (a) => fmt.bytes(a.bytes) },
          { label: "sha256", cell: (a) => h("code.sha", { title: a.sha256 }, a.sha256.slice(0, 16) + "…") },
          { label: "Download", cell: (a) => button(a) },
        ],
        artifacts.data,
        { caption: "Artifacts", empty: "Published when the job succeeds." },
      ),
    );
  }

  async function renderConfusion() {
    if (job.status !== "succeeded") {
      replace(confusionArea, h("h2", {}, "Confusion matrices"), h("p.muted", {}, "Published when the job succeeds."));
      return;
    }
    try {
      const confusion = await api(`/v1/jobs/${job.id}/confusion`, { signal });
      replace(
        confusionArea,
        h("h2", {}, "Confusion matrices"),
        h("p.muted", {}, "Rows: the true class; columns: the predicted one. The last column is each class's accuracy."),
        confusion.val ? confusionTable("validation", confusion.class_names, confusion.val) : null,
        confusion.test ? confusionTable("test", confusion.class_names, confusion.test) : null,
      );
    } catch (error) {
      if (!signal.aborted) replace(confusionArea, h("h2", {}, "Confusion matrices"), errorBox(error));
    }
  }

  function logRow(event) {
    const row = h(
      "tr",
      { class: `level-${event.level}`, dataset: { seq: event.seq, type: event.type } },
      h("td", {}, String(event.seq)),
      h("td", {}, fmt.time(event.created_at)),
      h("td", {}, event.type),
      h("td", {}, event.message),
    );
    row.hidden = event.type === "step" && !showSteps.checked;
    return row;
  }
  showSteps.addEventListener("change", () => {
    for (const row of logBody.querySelectorAll('tr[data-type="step"]')) row.hidden = !showSteps.checked;
  });

  renderHeader();
  await Promise.all([renderFiles(), renderConfusion()]);

  // One refresh at a time; an event that arrives during one asks for another after it, since the one in flight
  // may have read the job before that event (a `cancelled` dropped that way left the page at `cancelling`).
  let refreshing = false;
  let refreshAgain = false;
  const refresh = async () => {
    if (refreshing) {
      refreshAgain = true;
      return;
    }
    refreshing = true;
    try {
      do {
        refreshAgain = false;
        job = await api(`/v1/jobs/${job.id}`, { signal });
        renderHeader();
        await renderFiles();
        if (TERMINAL.has(job.status)) await renderConfusion();
      } while (refreshAgain && !signal.aborted);
    } catch (error) {
      if (!signal.aborted) replace(actionMessage, errorBox(error));
    } finally {
      refreshing = false;
    }
  };

  // Live: the stream replays every event from the first, then follows. "Pause live updates" closes it;
  // resuming reconnects after the last event seen (Last-Event-ID), so the log and curves have no gap.
  let lastSeq = 0;
  let following = null;
  let ended = false;
  function follow() {
    const controller = new AbortController();
    signal.addEventListener("abort", () => controller.abort());
    following = controller;
    followEvents(job.id, {
      after: lastSeq,
      signal: controller.signal,
      onState: (state) => {
        liveState.textContent = { live: "live", reconnecting: "reconnecting…", ended: "finished" }[state];
        liveState.dataset.state = state;
        if (state === "ended") {
          ended = true;
          liveToggle.hidden = true;
          refresh(); // the job as it ended, whatever the refreshes in flight read before
        }
      },
      onEvent: (event) => {
        lastSeq = event.seq;
        logBody.append(logRow(event));
        logArea.dataset.lastSeq = String(event.seq);
        plot(chartSet, event);
        if (event.type === "status" || event.type === "checkpoint" || isTerminal(event)) refresh();
      },
    }).catch((error) => {
      if (!signal.aborted) replace(actionMessage, errorBox(error));
    });
  }
  liveToggle.addEventListener("click", () => {
    if (following && !following.signal.aborted) {
      following.abort();
      liveState.textContent = "paused";
      liveState.dataset.state = "paused";
      liveToggle.textContent = "Resume live updates";
    } else if (!ended) {
      liveToggle.textContent = "Pause live updates";
      follow();
    }
  });
  follow();
}
