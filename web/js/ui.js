// ui.js: small DOM helpers. Every piece of data reaches the page as text
// (textContent, attribute values), never as HTML: a prompt, a command or a
// file name cannot inject markup or script. No inline style either (the
// gateway's Content-Security-Policy forbids it): classes only.

// h("div.card#x", {dataset: {id: 1}, onclick: f}, child, "text", [more])
export function h(spec, attrs, ...children) {
  const m = /^([a-z0-9]+)?((?:[.#][\w-]+)*)$/i.exec(spec);
  const el = document.createElement((m && m[1]) || "div");
  if (m && m[2]) {
    for (const part of m[2].match(/[.#][\w-]+/g)) {
      if (part[0] === ".") el.classList.add(part.slice(1));
      else el.id = part.slice(1);
    }
  }
  if (attrs && (typeof attrs !== "object" || attrs instanceof Node || Array.isArray(attrs))) {
    children.unshift(attrs);
    attrs = null;
  }
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key in el && key !== "list" && key !== "form") el[key] = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function short(id) {
  return id ? String(id).slice(0, 8) : "";
}

// "12 s ago", "3 min ago", or the date.
export function ago(iso) {
  if (!iso) return "";
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return iso;
  const s = Math.round((Date.now() - t) / 1000);
  if (s < 0) return "in " + Math.abs(s) + " s";
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.floor(s / 60) + " min ago";
  if (s < 86400) return Math.floor(s / 3600) + " h ago";
  return new Date(t).toLocaleString();
}

export function clock(iso) {
  const t = Date.parse(iso);
  return Number.isNaN(t) ? "" : new Date(t).toLocaleTimeString();
}

export function badge(text, kind) {
  return h("span.badge", { class: `badge s-${kind || text}`, text });
}

export function firstLine(text, max = 120) {
  const line = String(text || "").split("\n")[0];
  return line.length > max ? line.slice(0, max - 1) + "…" : line;
}

let toastTimer = null;
export function toast(message, kind = "info") {
  let el = document.getElementById("toast");
  if (!el) {
    el = h("div#toast", { role: "status", "aria-live": "polite" });
    document.body.append(el);
  }
  el.className = `toast-${kind} show`;
  el.textContent = message;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => el.classList.remove("show"), kind === "error" ? 8000 : 4000);
}

// ANSI text (tmux capture-pane -e) to spans with classes: SGR colours
// (30-37, 90-97, 40-47, 100-107), bold, dim, underline, reverse; every
// other escape is dropped.
export function ansi(text) {
  const frag = document.createDocumentFragment();
  const re = /\x1b\[([0-9;?]*)([A-Za-z])|\x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][A-Z0-9]|\x1b./g;
  let state = {};
  let last = 0;
  const flush = (chunk) => {
    if (!chunk) return;
    const classes = [];
    if (state.fg !== undefined) classes.push("fg" + state.fg);
    if (state.bg !== undefined) classes.push("bg" + state.bg);
    if (state.bold) classes.push("b");
    if (state.dim) classes.push("dim");
    if (state.ul) classes.push("ul");
    if (state.rev) classes.push("rev");
    if (classes.length) frag.append(h("span", { class: classes.join(" "), text: chunk }));
    else frag.append(document.createTextNode(chunk));
  };
  let m;
  while ((m = re.exec(text))) {
    flush(text.slice(last, m.index));
    last = re.lastIndex;
    if (m[2] !== "m") continue;
    const codes = (m[1] || "0").split(";").map((c) => parseInt(c || "0", 10));
    for (let i = 0; i < codes.length; i++) {
      const c = codes[i];
      if (c === 0) state = {};
      else if (c === 1) state.bold = true;
      else if (c === 2) state.dim = true;
      else if (c === 4) state.ul = true;
      else if (c === 7) state.rev = true;
      else if (c === 22) state.bold = state.dim = false;
      else if (c === 24) state.ul = false;
      else if (c === 27) state.rev = false;
      else if (c >= 30 && c <= 37) state.fg = c - 30;
      else if (c >= 90 && c <= 97) state.fg = c - 90 + 8;
      else if (c === 39) delete state.fg;
      else if (c >= 40 && c <= 47) state.bg = c - 40;
      else if (c >= 100 && c <= 107) state.bg = c - 100 + 8;
      else if (c === 49) delete state.bg;
      else if ((c === 38 || c === 48) && codes[i + 1] === 5) {
        const n = codes[i + 2];
        if (n < 16) state[c === 38 ? "fg" : "bg"] = n;
        i += 2;
      } else if ((c === 38 || c === 48) && codes[i + 1] === 2) i += 4;
    }
  }
  flush(text.slice(last));
  return frag;
}

// A unified diff, one line per element, classed by its first character.
export function diffView(text) {
  const pre = h("pre.diff");
  for (const line of String(text || "").split("\n")) {
    let cls = "";
    if (line.startsWith("+++") || line.startsWith("---") || line.startsWith("diff ")) cls = "d-file";
    else if (line.startsWith("@@")) cls = "d-hunk";
    else if (line.startsWith("+")) cls = "d-add";
    else if (line.startsWith("-")) cls = "d-del";
    pre.append(cls ? h("span", { class: cls, text: line + "\n" }) : line + "\n");
  }
  return pre;
}

// Coalesces calls: fn runs once, ms after the first call of a burst, so a
// flood of events costs one refresh per ms and never starves it.
export function coalesce(fn, ms) {
  let timer = null;
  return () => {
    if (timer) return;
    timer = setTimeout(() => {
      timer = null;
      fn();
    }, ms);
  };
}
