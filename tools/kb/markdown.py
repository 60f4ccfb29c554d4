"""Reading a document's structure: front matter, sections, blocks and sentences.

Markdown is parsed with markdown-it-py (CommonMark with tables). A document becomes a list of
*units*, each a span of its text that reads on its own: a paragraph, a list item, a note (block
quote), a table or a code block. A code block or a table is attached to the paragraph that
introduces it ("run the following command:" and the command are one unit), and a heading line
to the unit that follows it. Long units are cut at their blocks, then at sentence ends; sentence
ends are found outside inline code (`` `spec.` ``), and not after an abbreviation ("e.g.") or
inside an identifier ("values.yaml", "v1.30").
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["Unit", "code_shortcodes", "front_matter", "plain_inline", "sections", "sentence_spans", "units"]

_FRONT = re.compile(r"\A(?:\ufeff)?---[ \t]*\r?\n(.*?)\r?\n(?:---|\.\.\.)[ \t]*(?:\r?\n|\Z)", re.DOTALL)
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.+?)\s*#*\s*$")
_ABBREVIATIONS = {"e.g", "i.e", "etc", "vs", "cf", "approx", "fig", "no", "mr", "mrs", "dr", "st", "inc", "ltd", "jr", "sr", "al"}
_MDX_LINE = re.compile(r"^(?:import\s.+\sfrom\s.+|export\s.+);?\s*$")


def front_matter(text: str) -> tuple[dict[str, Any], str, int]:
    """(metadata, rest of the text, characters removed) of a text that may start with YAML front matter."""
    found = _FRONT.match(text)
    if not found:
        return {}, text, 0
    raw = found.group(1)
    meta: Any = None
    try:
        import yaml

        meta = yaml.safe_load(raw)
    except ImportError:
        meta = None
    except Exception:  # noqa: BLE001 - front matter that is not YAML: read it as key: value lines
        meta = None
    if not isinstance(meta, dict):
        meta = {}
        for line in raw.splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() and not line.startswith((" ", "\t", "-")):
                meta[key.strip()] = value.strip().strip("\"'")
    clean = {str(k): v for k, v in meta.items() if isinstance(v, (str, int, float, bool)) or v is None}
    return clean, text[found.end() :], found.end()


_SHORTCODE_OPEN = re.compile(
    r"^(?P<indent>[ \t]*)(?:\{\{[<%]-?\s*(?P<name>highlight|code[\w-]*)\b(?P<args>[^}\n]*?)\s*-?[>%]\}\}"
    r"|\{%-?\s*(?P<liquid>highlight)\b(?P<largs>[^%\n]*?)\s*-?%\})[ \t]*$", re.M | re.I)
_LANG = re.compile(r"""\blang(?:uage)?\s*=\s*["']?([\w+#.-]+)|^\s*["']?([\w+#.-]+)["']?(?:\s|$)""")


def code_shortcodes(text: str) -> str:
    """The text with the code blocks of static-site generators written as Markdown fences:
    Hugo's ``{{< highlight go >}}`` and ``{{< codeFromInline lang="yaml" >}}`` pairs (any shortcode
    named ``highlight`` or ``code...``, ``<`` or ``%`` form) and Jekyll's ``{% highlight go %}``.
    Without this, their lines are read as prose and a ``# comment`` in them as a heading. A
    block whose closing tag is missing is left as it is."""
    out: list[str] = []
    at = 0
    for opened in _SHORTCODE_OPEN.finditer(text):
        if opened.start() < at:
            continue
        name = opened.group("name") or opened.group("liquid")
        if opened.group("liquid"):
            close = re.compile(r"^[ \t]*\{%-?\s*endhighlight\s*-?%\}[ \t]*$", re.M)
        else:
            close = re.compile(r"^[ \t]*\{\{[<%]-?\s*/" + re.escape(name) + r"\s*-?[>%]\}\}[ \t]*$", re.M | re.I)
        closed = close.search(text, opened.end())
        if closed is None:
            continue
        lang = _LANG.search(opened.group("args") or opened.group("largs") or "")
        fence = opened.group("indent") + "```" + ((lang.group(1) or lang.group(2)) if lang else "")
        out += [text[at : opened.start()], fence, text[opened.end() : closed.start()], opened.group("indent") + "```"]
        at = closed.end()
    return "".join(out) + text[at:] if out else text


@dataclass(slots=True)
class Unit:
    start: int  # character offsets in the document's text
    end: int
    kind: str  # paragraph, list, item, note, table, code, heading, html


@functools.lru_cache(maxsize=1)
def _parser() -> Any:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": True}).enable("table")


_KINDS = {"paragraph_open": "paragraph", "bullet_list_open": "list", "ordered_list_open": "list", "blockquote_open": "note",
          "table_open": "table", "fence": "code", "code_block": "code", "heading_open": "heading", "html_block": "html",
          "list_item_open": "item"}


def _line_starts(text: str) -> list[int]:
    starts = [0]
    for match in re.finditer("\n", text):
        starts.append(match.end())
    starts.append(len(text) + 1)
    return starts


def _blocks(text: str, tokens: list[Any], level: int, starts: list[int]) -> list[Unit]:
    out = []
    for token in tokens:
        if token.level != level or token.map is None or token.nesting < 0 or token.type not in _KINDS:
            continue
        first, last = token.map
        a = starts[first]
        b = min(len(text), starts[min(last, len(starts) - 1)] - 1)
        while b > a and text[b - 1] in " \t\r\n":
            b -= 1
        kind = _KINDS[token.type]
        if kind == "html" and re.fullmatch(r"\s*(?:<!--.*?-->\s*)+", text[a:b], re.DOTALL):
            continue  # comments say nothing to a reader
        if kind == "paragraph" and all(_MDX_LINE.match(line) for line in text[a:b].splitlines()):
            continue  # MDX imports and exports
        if b > a:
            out.append(Unit(a, b, kind))
    return out


def units(text: str) -> list[Unit]:
    """The document's units in order (see the module's description). Lists are cut into their
    items; a code block or table joins the unit before it; a heading joins the unit after it."""
    starts = _line_starts(text)
    tokens = _parser().parse(text)
    raw = _blocks(text, tokens, 0, starts)
    # Cut lists into items: an item (with its own code blocks) is the unit a step reads as.
    expanded: list[Unit] = []
    for unit in raw:
        if unit.kind == "list":
            inner = [t for t in tokens if t.map and starts[t.map[0]] >= unit.start and starts[t.map[0]] < unit.end]
            levels = [t.level for t in inner if t.type == "list_item_open"]
            items = _blocks(text, inner, min(levels), starts) if levels else []
            expanded.extend(items or [unit])
        else:
            expanded.append(unit)
    merged: list[Unit] = []
    pending_heading: Unit | None = None
    for unit in expanded:
        if unit.kind == "heading":
            if pending_heading is not None:
                merged.append(pending_heading)  # a heading with nothing under it stays a unit of its own
            pending_heading = unit
            continue
        if unit.kind in ("code", "table") and merged and pending_heading is None:
            prev = merged[-1]  # the paragraph that introduces it
            kind = prev.kind if "+" in prev.kind or prev.kind in ("code", "table") else f"{prev.kind}+{unit.kind}"
            merged[-1] = Unit(prev.start, unit.end, kind)
            continue
        if pending_heading is not None:
            unit = Unit(pending_heading.start, unit.end, unit.kind)
            pending_heading = None
        merged.append(unit)
    if pending_heading is not None:
        merged.append(pending_heading)
    return merged


def sections(text: str, title: str = "") -> list[tuple[str, int, int]]:
    """(heading path, start, end) per section; nested headings joined with ' > ', led by the
    document's ``title`` when its first heading does not repeat it. Headings inside code blocks
    are not headings."""
    starts = _line_starts(text)
    heads: list[tuple[int, int, str]] = []  # (offset, level, title)
    for token_index, token in enumerate(tokens := _parser().parse(text)):
        if token.type == "heading_open" and token.map is not None:
            inline = tokens[token_index + 1]
            heads.append((starts[token.map[0]], int(token.tag[1]), plain_inline(inline.content)))
    found: list[tuple[str, int, int]] = []
    stack: list[tuple[int, str]] = []
    lead = [title] if title and not (heads and heads[0][2].lower() == title.lower()) else []  # names are plain already
    heading, start = " > ".join(lead), 0
    for offset, level, name in heads:
        if offset > start:
            found.append((heading, start, offset))
        stack = [(lvl, t) for lvl, t in stack if lvl < level] + [(level, name)]
        heading = " > ".join(lead + [t for _, t in stack])
        start = offset
    found.append((heading, start, len(text)))
    return [(h, a, b) for h, a, b in found if text[a:b].strip()]


def plain_inline(text: str) -> str:
    """Inline Markdown to plain words: links to their text, emphasis and code marks dropped."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"\{#[^}]*\}\s*$", "", text)  # "{#anchor}" heading ids
    return " ".join(text.replace("`", "").replace("**", "").replace("__", "").split())


def sentence_spans(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """Sentence spans of ``text[start:end]``. A sentence ends at ``.``, ``!`` or ``?`` followed by
    space and a capital, digit, quote, bracket or Markdown mark — never inside inline code, a
    link target or a URL, after an abbreviation or a single initial, or inside an identifier."""
    end = len(text) if end is None else end
    piece = text[start:end]
    masked = list(piece)
    for match in re.finditer(r"`[^`\n]*`|\]\([^)]*\)|https?://\S+", piece):
        for i in range(match.start(), match.end()):
            masked[i] = "x"
    flat = "".join(masked)
    cuts = [0]
    for match in re.finditer(r"[.!?]+[\"')\]*_]*\s+(?=[A-Z0-9\"'(\[*_`>-])", flat):
        before = flat[: match.start()]
        word = re.search(r"([\w.]+)$", before)
        last = (word.group(1) if word else "").lower()
        if match.group(0).startswith(".") and (last in _ABBREVIATIONS or len(last) == 1 or last.endswith(("e.g", "i.e"))):
            continue
        cuts.append(match.end())
    cuts.append(len(piece))
    spans = []
    for a, b in zip(cuts, cuts[1:], strict=False):
        while b > a and piece[b - 1] in " \t\r\n":
            b -= 1
        if b > a:
            spans.append((start + a, start + b))
    return spans
