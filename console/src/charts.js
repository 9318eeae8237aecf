// Line charts on uPlot. Each series has its own dash pattern and marker as well as its colour, and the legend
// names it, so the charts read without colour (and in grey print).
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { h } from "./dom.js";

// Okabe-Ito: distinguishable with the common colour-vision deficiencies.
const COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"];
const DASHES = [[], [8, 4], [2, 3], [12, 4, 2, 4], [4, 4], [1, 5]];

export function seriesStyle(index, { marker = true } = {}) {
  const colour = COLOURS[index % COLOURS.length];
  const hollow = index % 2 === 1; // filled and hollow markers alternate
  return {
    stroke: colour,
    width: 2,
    dash: DASHES[index % DASHES.length],
    spanGaps: true,
    points: marker ? { show: true, size: 7 + (index % 3) * 2, stroke: colour, fill: hollow ? "#fff" : colour } : { show: false },
  };
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
        axes: [{ label: xLabel }, { label: yLabel, size: 60 }],
        legend: { live: true },
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
