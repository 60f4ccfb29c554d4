// Building the page's DOM from data without ever parsing data as HTML: elements are made with
// createElement and filled with text nodes (no innerHTML anywhere in the page).

export const $ = (id) => document.getElementById(id);

// h("li", {class: "run", dataset: {runId: id}, onclick: f}, "text", child, ...)
export function h(tag, attributes, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value == null || value === false) continue;
    if (name === "class") element.className = value;
    else if (name === "dataset") Object.assign(element.dataset, value);
    else if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "text") element.textContent = value;
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  // A block of code or data may scroll: it can take the focus, so the keyboard can scroll it too.
  if (tag === "pre" && !element.hasAttribute("tabindex")) element.tabIndex = 0;
  append(element, children);
  return element;
}

export function svg(tag, attributes, ...children) {
  const element = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value == null || value === false) continue;
    if (name === "dataset") Object.assign(element.dataset, value);
    else if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, String(value));
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat()) {
    if (child == null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function fill(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

export function asText(value) {
  return value == null ? "" : typeof value === "string" ? value : JSON.stringify(value, null, 2);
}

export function plural(count, one, many) { return `${count} ${count === 1 ? one : many || one + "s"}`; }

export function when(seconds) {
  if (seconds == null) return "";
  const date = new Date(seconds * 1000);
  const today = new Date();
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  return date.toDateString() === today.toDateString() ? time : `${date.toLocaleDateString()} ${time}`;
}

export function duration(seconds) {
  if (seconds == null || !isFinite(seconds)) return "";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
}

// One line of feedback, inline (never a blocking alert): an error, or a note.
export function notify(message, kind = "error") {
  const notice = $("notice");
  fill(notice, h("span", {}, message), h("button", { type: "button", class: "link", "aria-label": "dismiss", onclick: () => { notice.hidden = true; } }, "×"));
  notice.className = `notice ${kind}`;
  notice.hidden = false;
}
export function clearNotice() { $("notice").hidden = true; }

// A link inside the page: followed without reloading it (see main.js).
export function link(href, ...children) {
  return h("a", { href, dataset: { link: "" } }, ...children);
}
