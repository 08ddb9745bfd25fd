// A small Markdown renderer for SIRA reports: headings, paragraphs, lists, tables,
// **bold**, *emphasis*, `code` and links. It builds DOM nodes, never HTML strings,
// so nothing in a report can inject markup.

import { h } from "./dom.js";

const INLINE = /(`[^`]+`)|(\*\*[^*]+\*\*)|(\*[^*\s][^*]*\*)|(\[[^\]]+\]\([^)\s]+\))/g;

function safeHref(href) {
  return /^(https?:|\/|#)/i.test(href) ? href : null;
}

export function inline(text) {
  const nodes = [];
  let last = 0;
  for (const match of text.matchAll(INLINE)) {
    if (match.index > last) nodes.push(text.slice(last, match.index));
    const token = match[0];
    if (match[1]) nodes.push(h("code", {}, token.slice(1, -1)));
    else if (match[2]) nodes.push(h("strong", {}, inline(token.slice(2, -2))));
    else if (match[3]) nodes.push(h("em", {}, inline(token.slice(1, -1))));
    else {
      const [, label, href] = token.match(/^\[([^\]]+)\]\(([^)\s]+)\)$/);
      const target = safeHref(href);
      nodes.push(target ? h("a", { href: target, rel: "noopener noreferrer" }, inline(label)) : label);
    }
    last = match.index + token.length;
  }
  if (last < text.length) nodes.push(text.slice(last));
  return nodes;
}

function tableCells(line) {
  return line.trim().replace(/^\|/, "").replace(/\|$/, "").split("|").map((cell) => cell.trim());
}

export function renderMarkdown(source) {
  const root = h("div", { class: "markdown" });
  const lines = String(source).replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) {
      i += 1;
      continue;
    }
    const heading = line.match(/^(#{1,6})\s+(.*)$/);
    if (heading) {
      root.append(h(`h${Math.min(heading[1].length + 2, 6)}`, {}, inline(heading[2])));
      i += 1;
      continue;
    }
    if (line.trim().startsWith("|")) {
      const block = [];
      while (i < lines.length && lines[i].trim().startsWith("|")) block.push(lines[i++]);
      const hasHeader = block.length > 1 && /^\|?[\s:|-]+\|?$/.test(block[1].trim());
      const head = hasHeader ? tableCells(block[0]) : null;
      const body = (hasHeader ? block.slice(2) : block).map(tableCells);
      root.append(
        h("div", { class: "table-wrap" },
          h("table", { class: "table" },
            head ? h("thead", {}, h("tr", {}, head.map((cell) => h("th", {}, inline(cell))))) : null,
            h("tbody", {}, body.map((row) => h("tr", {}, row.map((cell) => h("td", {}, inline(cell)))))))),
      );
      continue;
    }
    if (/^\s*([-*]|\d+\.)\s+/.test(line)) {
      const ordered = /^\s*\d+\./.test(line);
      const list = h(ordered ? "ol" : "ul");
      while (i < lines.length && /^\s*([-*]|\d+\.)\s+/.test(lines[i])) {
        list.append(h("li", {}, inline(lines[i].replace(/^\s*([-*]|\d+\.)\s+/, ""))));
        i += 1;
      }
      root.append(list);
      continue;
    }
    const paragraph = [];
    while (i < lines.length && lines[i].trim() && !/^(#{1,6}\s|\s*\||\s*([-*]|\d+\.)\s)/.test(lines[i])) {
      paragraph.push(lines[i].trim());
      i += 1;
    }
    root.append(h("p", {}, inline(paragraph.join(" "))));
  }
  return root;
}
