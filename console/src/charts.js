// Line charts on uPlot. Each series has its own dash pattern and marker as well as its colour, and the legend
// names it, so the charts read without colour (and in grey print).
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { h } from "./dom.js";

// Okabe-Ito: distinguishable with the common colour-vision deficiencies.
const COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"];
const DASHES = [[], [8, 4], [2, 3], [12, 4, 2, 4], [4, 4], [1, 5]];

// Series 0-5 differ by dash pattern (DASHES). A line series (no marker per point) past the sixth adds a
// few markers along its line, hollow or filled and of growing size, so that up to 30 lines (a backbone's
// parameter groups in the learning-rate preview) stay apart without colour.
const SPARSE_MARKERS = 6;

function sparse(u, seriesIdx) {
  const values = u.data[seriesIdx] ?? [];
  const every = Math.max(1, Math.ceil(values.length / SPARSE_MARKERS));
  const offset = (seriesIdx * 3) % every; // staggered: lines that overlap still show each one's markers
  const shown = [];
  for (let k = offset; k < values.length; k += every) if (values[k] !== null && values[k] !== undefined) shown.push(k);
  return shown;
}

export function seriesStyle(index, { marker = true } = {}) {
  const colour = COLOURS[index % COLOURS.length];
  const dash = DASHES[index % DASHES.length];
  if (marker) {
    const hollow = index % 2 === 1; // filled and hollow markers alternate
    const points = { show: true, size: 7 + (index % 3) * 2, stroke: colour, fill: hollow ? "#fff" : colour };
    return { stroke: colour, width: 2, dash, spanGaps: true, points };
  }
  const variant = Math.floor(index / DASHES.length); // 0: a plain line; 1, 2, ...: markers along it
  const points = variant
    ? {
        show: false,
        filter: sparse,
        size: 6 + 3 * Math.floor((variant - 1) / 2),
        stroke: colour,
        fill: variant % 2 === 1 ? "#fff" : colour,
      }
    : { show: false };
  return { stroke: colour, width: 2, dash, spanGaps: true, points };
}

// The legend's swatch of a series: a short stretch of its line, with its dash pattern and its marker (filled or
// hollow, and its size), so that a reader matches line to label without telling colours apart.
export function swatch(index, { marker = true } = {}) {
  const style = seriesStyle(index, { marker });
  const dash = style.dash.length ? ` stroke-dasharray="${style.dash.join(" ")}"` : "";
  const dotted = style.points.show || style.points.filter;
  const radius = dotted ? Math.min(6, style.points.size / 2) : 0;
  const dot = dotted
    ? `<circle cx="16" cy="7" r="${radius}" stroke="${style.stroke}" stroke-width="1.5" fill="${style.points.fill}"/>`
    : "";
  const svg =
    `<svg xmlns="http://www.w3.org/2000/svg" width="32" height="14">` +
    `<line x1="0" y1="7" x2="32" y2="7" stroke="${style.stroke}" stroke-width="2"${dash}/>${dot}</svg>`;
  return `url("data:image/svg+xml,${encodeURIComponent(svg)}") center / contain no-repeat`;
}

// A y-axis tick short enough for its 60 px: a diverging loss (3e8) or a tiny learning rate (5e-6) in exponent form.
export function tick(value) {
  if (value === null || value === undefined) return "";
  const size = Math.abs(value);
  if (size >= 1e4 || (size > 0 && size < 1e-3)) return value.toExponential(1).replace("e+", "e");
  return String(Number(value.toPrecision(4)));
}

export class LineChart {
  // series: [{label, marker}]; points are added as (x, y) pairs per series.
  constructor(container, { title, xLabel, yLabel, series, logY = false, height = 220 }) {
    this.series = series.map((s) => ({ ...s, points: new Map() }));
    this.figure = h(
      "figure.chart",
      { "aria-label": `${title}: ${series.map((s) => s.label).join(", ")}`, dataset: { points: "0", chart: title } },
      h("figcaption", {}, title),
    );
    container.append(this.figure);
    this.plot = new uPlot(
      {
        width: this._width(),
        height,
        scales: { x: { time: false }, y: logY ? { distr: 3 } : {} },
        axes: [{ label: xLabel }, { label: yLabel, size: 60, values: (u, splits) => splits.map(tick) }],
        legend: { live: true, markers: { width: 0, fill: (u, i) => swatch(i - 1, series[i - 1]) } },
        cursor: { drag: { x: true, y: false } },
        series: [{ label: xLabel }, ...series.map((s, i) => ({ label: s.label, ...seriesStyle(i, s) }))],
      },
      [[], ...series.map(() => [])],
      this.figure,
    );
    this.width = this._width();
    this.resize = new ResizeObserver(() => {
      const width = this._width();
      if (width !== this.width) {
        this.width = width;
        this.plot.setSize({ width, height });
      }
    });
    this.resize.observe(this.figure);
    this.pending = false;
  }

  // The figure's own width (its grid column decides it; the canvas never widens it: overflow is hidden).
  _width() {
    const style = getComputedStyle(this.figure);
    const inner = this.figure.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    return Math.max(200, Math.floor(inner || 600));
  }

  add(seriesIndex, x, y) {
    if (y === null || y === undefined || !Number.isFinite(y)) return;
    this.series[seriesIndex].points.set(x, y);
    this.schedule();
  }

  set(seriesIndex, pairs) {
    this.series[seriesIndex].points = new Map(pairs.filter(([, y]) => y !== null && Number.isFinite(y)));
    this.schedule();
  }

  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.redraw();
    });
  }

  redraw() {
    const xs = [...new Set(this.series.flatMap((s) => [...s.points.keys()]))].sort((a, b) => a - b);
    const columns = this.series.map((s) => xs.map((x) => (s.points.has(x) ? s.points.get(x) : null)));
    this.plot.setData([xs, ...columns]);
    const counts = this.series.map((s) => s.points.size);
    this.figure.dataset.points = String(counts.reduce((a, b) => a + b, 0));
    this.figure.dataset.series = counts.join(",");
  }

  destroy() {
    this.resize.disconnect();
    this.plot.destroy();
  }
}

// A horizontal bar chart in plain HTML: every bar carries its number, and the bars of a split share a pattern.
export function barChart(title, groups) {
  // groups: [{label, values: [{name, value}]}]
  const max = Math.max(1, ...groups.flatMap((g) => g.values.map((v) => v.value)));
  return h(
    "figure.bars",
    { "aria-label": title },
    h("figcaption", {}, title),
    groups.map((group, gi) =>
      h(
        "div.bar-group",
        {},
        h("h4", {}, group.label),
        group.values.map((v) =>
          h(
            "div.bar-row",
            {},
            h("span.bar-label", {}, v.name),
            h(
              "span.bar-track",
              {},
              h("span.bar", { class: `bar-pattern-${gi % 3}`, style: `width: ${(100 * v.value) / max}%` }),
            ),
            h("span.bar-value", {}, String(v.value)),
          ),
        ),
      ),
    ),
  );
}
