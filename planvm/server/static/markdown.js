// Answers as Markdown, safely: marked renders, DOMPurify sanitises, and the result comes back as a
// DOM fragment (never assigned as HTML). Links survive only when they are http(s).
import { marked } from "./vendor/marked.esm.js";
import DOMPurify from "./vendor/purify.es.js";

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    const href = node.getAttribute("href") || "";
    if (!/^https?:\/\//i.test(href)) node.removeAttribute("href");
    else { node.setAttribute("rel", "noopener noreferrer"); node.setAttribute("target", "_blank"); }
  }
});

const OPTIONS = {
  RETURN_DOM_FRAGMENT: true,
  ALLOWED_TAGS: ["p", "br", "strong", "em", "code", "pre", "ul", "ol", "li", "blockquote", "a", "h3", "h4", "h5", "h6", "table",
                 "thead", "tbody", "tr", "th", "td", "hr", "del"],
  ALLOWED_ATTR: ["href", "title", "rel", "target"],
  ALLOWED_URI_REGEXP: /^https?:\/\//i,
};

export function renderMarkdown(text) {
  const html = marked.parse(String(text ?? ""), { async: false, gfm: true, breaks: false });
  return DOMPurify.sanitize(html, OPTIONS);
}
