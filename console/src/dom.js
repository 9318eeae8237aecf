// A tiny element builder: h("a.button", {href: "#/jobs"}, "Jobs"). Text is always set as text, never as HTML.

export function h(tag, props = {}, ...children) {
  const [name, ...classes] = tag.split(".");
  const element = document.createElement(name || "div");
  if (classes.length) element.className = classes.join(" ");
  for (const [key, value] of Object.entries(props ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") element.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(element.dataset, value);
    else if (key === "class") element.className = [element.className, value].filter(Boolean).join(" ");
    else if (key in element && typeof value !== "string") element[key] = value;
    else element.setAttribute(key, value === true ? "" : String(value));
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function replace(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

export function table(columns, rows, { caption, empty = "Nothing yet." } = {}) {
  const head = h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c.label))));
  const body = h(
    "tbody",
    {},
    rows.length
      ? rows.map((row) => h("tr", {}, columns.map((c) => h("td", { "data-label": c.label }, c.cell(row)))))
      : h("tr", {}, h("td", { colspan: columns.length, class: "muted" }, empty)),
  );
  return h("div.scroll", {}, h("table", {}, caption ? h("caption", {}, caption) : null, head, body));
}

export function errorBox(error) {
  return h("p.error", { role: "alert" }, error?.message ?? String(error));
}

export function statusBadge(status) {
  // The status is written out: readable without its colour.
  return h("span.badge", { class: `status-${status}` }, status);
}

export const fmt = {
  number(value, digits = 4) {
    if (value === null || value === undefined || Number.isNaN(value)) return "–";
    if (typeof value !== "number") return String(value);
    if (Number.isInteger(value)) return value.toLocaleString("en");
    return Math.abs(value) >= 1e-3 || value === 0 ? value.toFixed(digits) : value.toExponential(2);
  },
  percent(value) {
    return value === null || value === undefined ? "–" : `${(value * 100).toFixed(1)}%`;
  },
  bytes(value) {
    if (value === null || value === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB"];
    let size = value;
    let unit = 0;
    while (size >= 1024 && unit < units.length - 1) {
      size /= 1024;
      unit += 1;
    }
    return `${size.toFixed(unit ? 1 : 0)} ${units[unit]}`;
  },
  time(unixSeconds) {
    return unixSeconds ? new Date(unixSeconds * 1000).toLocaleString("en-GB") : "–";
  },
  duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    const s = Math.round(seconds);
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  },
};
