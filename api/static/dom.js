// Small DOM and formatting helpers. Text always goes in as text nodes, never as HTML, so a prompt
// (or anything else a caller or the upstream wrote) can never become markup or script.

export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") el.className = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

export function $(id) {
  const el = document.getElementById(id);
  if (!el) throw new Error(`the page has no #${id}`);
  return el;
}

export function show(el, visible) {
  el.hidden = !visible;
}

// Only http(s) URLs reach src and href: a URL from the upstream must never run script.
export function safeUrl(url) {
  return typeof url === "string" && /^https?:\/\//i.test(url) ? url : null;
}

export function plural(n, one, many = `${one}s`) {
  return `${n.toLocaleString()} ${n === 1 ? one : many}`;
}

export function duration(seconds) {
  if (seconds < 1) return "any moment now";
  if (seconds < 60) return `about ${Math.ceil(seconds)} s`;
  const minutes = Math.round(seconds / 60);
  if (minutes < 60) return `about ${minutes} min`;
  const hours = Math.floor(minutes / 60);
  const rest = minutes % 60;
  return rest ? `about ${hours} h ${rest} min` : `about ${hours} h`;
}

const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });

export function ago(when) {
  const ms = when instanceof Date ? when.getTime() : when;
  if (!Number.isFinite(ms)) return "";
  const seconds = Math.round((ms - Date.now()) / 1000);
  const abs = Math.abs(seconds);
  if (abs < 45) return "just now";
  if (abs < 3600) return relative.format(Math.round(seconds / 60), "minute");
  if (abs < 86400) return relative.format(Math.round(seconds / 3600), "hour");
  return relative.format(Math.round(seconds / 86400), "day");
}

export function parseTime(text) {
  const ms = Date.parse(text);
  return Number.isFinite(ms) ? ms : NaN;
}

// Calls `fn` once, `wait` ms after the last of a burst of calls.
export function debounce(fn, wait) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), wait);
  };
}

// Toasts: short messages in a live region (screen readers read them), closed by a click or by time.
const MAX_TOASTS = 3;

export function toast(message, { kind = "info", seconds = 5 } = {}) {
  const box = $("toasts");
  while (box.children.length >= MAX_TOASTS) box.firstElementChild.remove();
  const item = h(
    "div",
    { class: `toast ${kind}`, role: kind === "error" ? "alert" : "status" },
    h("p", null, message),
    h("button", { type: "button", "aria-label": "Dismiss", onclick: () => item.remove() }, "×"),
  );
  box.append(item);
  setTimeout(() => item.remove(), seconds * 1000);
  return item;
}
