"""Reading a folder of documents and cutting them into chunks.

Markdown, plain text, reStructuredText and HTML are read (HTML is reduced to its text, its
``<h1>``–``<h6>`` kept as headings). Files that are binary or not UTF-8 are skipped with a
warning. Chunking splits on headings first, then on blank-line paragraphs, then on sentences,
and only then on characters; consecutive chunks of one section overlap by ``overlap`` characters.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from tools.kb.markdown import code_shortcodes, front_matter, sections, sentence_spans, units
from vm.errors import BadInput

__all__ = ["DEFAULT_MAX_FILE_BYTES", "Chunk", "Document", "chunk_document", "embedding_text", "find_documents", "read_document"]

DEFAULT_INCLUDE = ("*.md", "*.markdown", "*.mdx", "*.txt", "*.rst", "*.html", "*.htm")
_MARKDOWN = (".md", ".markdown", ".mdx")


@dataclass(slots=True)
class Document:
    path: str  # relative to the indexed folder, with forward slashes
    text: str  # without its front matter
    sha256: str
    title: str = ""  # from the front matter
    metadata: dict = field(default_factory=dict)  # the front matter's other fields


@dataclass(slots=True)
class Chunk:
    content: str
    source_uri: str
    heading: str
    position: int  # character offset of the chunk in its document


class _HTMLText(HTMLParser):
    """HTML to text, headings turned into Markdown headings, scripts and styles dropped."""

    _BLOCKS = {"p", "div", "li", "br", "tr", "section", "article", "pre", "blockquote", "table", "ul", "ol"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self.parts.append("\n\n" + "#" * int(tag[1]) + " ")
        elif tag in self._BLOCKS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - 1)
        elif re.fullmatch(r"h[1-6]", tag) or tag in self._BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)

    def text(self) -> str:
        joined = "".join(self.parts)
        lines = [" ".join(line.split()) for line in joined.splitlines()]
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _matches(path: str, patterns: tuple[str, ...]) -> bool:
    name = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(name, p) for p in patterns)


#: Files larger than this are skipped with a warning (``--max-file-bytes``).
DEFAULT_MAX_FILE_BYTES = 20 * 1024 * 1024


def find_documents(
    folder: Path,
    include: tuple[str, ...] = DEFAULT_INCLUDE,
    exclude: tuple[str, ...] = (),
    *,
    follow_symlinks: bool = False,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    skipped: list[tuple[str, str]] | None = None,
) -> list[Path]:
    """Regular files under ``folder`` (at any depth) that match an include glob and no exclude glob.

    Symbolic links are not followed unless ``follow_symlinks`` (then never into a folder already
    visited, and only to regular files: never a device, pipe or socket). Files whose name is not
    valid UTF-8, and files over ``max_file_bytes``, are left out; with ``skipped``, each file left
    out is appended there as ``(name, reason)``. The walk is iterative: any depth of folders works.
    """
    folder = Path(folder)
    found: list[Path] = []
    notes = skipped if skipped is not None else []
    seen_dirs = {folder.resolve()}
    pending = [folder]
    while pending:
        current = pending.pop()
        try:
            with os.scandir(current) as entries:
                listing = sorted(entries, key=lambda e: e.name)
        except OSError as exc:
            notes.append((_display(current, folder), f"cannot list the folder ({exc.strerror or exc})"))
            continue
        for entry in listing:
            if entry.name.startswith("."):
                continue  # hidden files and folders (.git, .venv...)
            path = Path(entry.path)
            rel = _display(path, folder)
            try:
                entry.name.encode("utf-8")
            except UnicodeEncodeError:
                shown = os.fsencode(rel).decode("utf-8", "backslashreplace")
                notes.append((shown, "the file name is not valid UTF-8; rename it"))
                continue
            try:
                if entry.is_symlink():
                    if not follow_symlinks:
                        if entry.is_dir() or (entry.is_file() and _matches(rel, include or DEFAULT_INCLUDE)):
                            notes.append((rel, "a symbolic link (not followed; use --follow-symlinks)"))
                        continue
                    info = path.stat()
                    if stat.S_ISDIR(info.st_mode):
                        real = path.resolve()
                        if real in seen_dirs:
                            continue
                        seen_dirs.add(real)
                        pending.append(path)
                        continue
                else:
                    info = entry.stat(follow_symlinks=False)
                    if stat.S_ISDIR(info.st_mode):
                        pending.append(path)
                        continue
            except OSError as exc:
                notes.append((rel, f"cannot read it ({exc.strerror or exc})"))
                continue
            if not stat.S_ISREG(info.st_mode):
                continue  # devices, pipes, sockets
            if not _matches(rel, include or DEFAULT_INCLUDE) or _matches(rel, exclude):
                continue
            if info.st_size > max_file_bytes:
                notes.append((rel, f"{info.st_size:,} bytes is over the limit of {max_file_bytes:,} (--max-file-bytes)"))
                continue
            found.append(path)
    return sorted(found, key=lambda p: _display(p, folder))


def _display(path: Path, folder: Path) -> str:
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:
        return str(path)


def read_document(path: Path, rel: str) -> Document:
    """Read one file; raises ValueError (with the reason) for binary or non-UTF-8 content."""
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        raise ValueError("binary content")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text (byte {exc.start})") from None
    metadata: dict = {}
    if path.suffix.lower() in (".html", ".htm"):
        parser = _HTMLText()
        parser.feed(text)
        text = parser.text()
    elif path.suffix.lower() in _MARKDOWN:
        metadata, text, _removed = front_matter(text)  # metadata, never text to search
        text = code_shortcodes(text)
    title = str(metadata.pop("title", "") or "")
    return Document(rel, text, hashlib.sha256(data).hexdigest(), title, metadata)


def _pieces(text: str, start: int, end: int, fits: Callable[[int, int], bool]) -> list[tuple[int, int]]:
    """``text[start:end]`` cut into spans that fit: at blank lines outside code fences (a code
    block stays with the text before it), then at sentence ends, then at lines, then at spaces."""
    if fits(start, end):
        return [(start, end)]
    blocks: list[tuple[int, int]] = []
    fence: str | None = None
    current: int | None = None
    position = start
    for line in text[start:end].splitlines(keepends=True):
        stripped = line.strip().lstrip(">").strip()
        marker = re.match(r"(`{3,}|~{3,})", stripped)
        if fence is None and not stripped:
            if current is not None:
                blocks.append((current, position))
                current = None
        else:
            if current is None:
                # A code block joins the paragraph that introduces it.
                current = blocks.pop()[0] if marker and fence is None and blocks else position
            if marker and fence is None:
                fence = marker.group(1)[0] * 3
            elif marker and stripped.startswith(fence or "\0"):
                fence = None
        position += len(line)
    if current is not None:
        blocks.append((current, end))
    blocks = [(a, b) for a, b in ((a, _rstrip(text, a, b)) for a, b in blocks) if b > a]
    if len(blocks) > 1:
        return [p for a, b in blocks for p in _pieces(text, a, b, fits)]
    sentences = sentence_spans(text, start, end)
    if len(sentences) > 1:
        return [p for a, b in sentences for p in _pieces(text, a, b, fits)]
    lines = [(m.start() + start, m.end() + start) for m in re.finditer(r"[^\n]+", text[start:end])]
    if len(lines) > 1:
        return [p for a, b in lines for p in _pieces(text, a, b, fits)]
    out, a = [], start
    while a < end:  # one very long line: at spaces, or anywhere when it has none
        b = end
        while b > a + 1 and not fits(a, b):
            space = text.rfind(" ", a + 1, b - 1)
            b = space if space > a else a + max(1, (b - a) // 2)
        out.append((a, b))
        a = b
        while a < end and text[a] == " ":
            a += 1
    return out


def _rstrip(text: str, a: int, b: int) -> int:
    while b > a and text[b - 1] in " \t\r\n":
        b -= 1
    return b


def embedding_text(heading: str, content: str) -> str:
    """What is embedded for a chunk: its heading path (the page and section it belongs to), then its text."""
    return f"{heading}\n\n{content}" if heading else content


def chunk_document(
    doc: Document, size: int = 1000, overlap: int = 150, *, count_tokens: Callable[[str], int] | None = None,
    max_tokens: int | None = None,
) -> list[Chunk]:
    """Chunks of the document's own text, cut at its structure: sections (headings), then units
    (a paragraph, list item, note or table, a code block with the sentence that introduces it),
    then blocks, sentences and lines. A chunk holds at most ``size`` characters and, with
    ``count_tokens`` and ``max_tokens`` (the embedding model's tokenizer and window), at most
    that many tokens counting its heading path (what is embedded: :func:`embedding_text`). A
    chunk repeats up to ``overlap`` characters of whole units from the end of the previous
    chunk of its section."""
    if size < 50:
        raise BadInput("chunk size must be at least 50 characters")
    if not 0 <= overlap < size:
        raise BadInput("overlap must be at least 0 and smaller than the chunk size")
    text = doc.text
    found = units(text)
    chunks: list[Chunk] = []
    for heading, sec_start, sec_end in sections(text, doc.title):
        if count_tokens is not None and max_tokens is not None:
            budget = max(16, max_tokens - (count_tokens(heading) if heading else 0) - 1)
        else:
            budget = None
        tokens: dict[tuple[int, int], int] = {}

        def cost(a: int, b: int) -> int:
            if (a, b) not in tokens:
                tokens[(a, b)] = count_tokens(text[a:b]) - 2 if count_tokens else 0  # less [CLS] and [SEP]
            return tokens[(a, b)]

        def fits(a: int, b: int) -> bool:
            return b - a <= size and (budget is None or cost(a, b) + 2 <= budget)

        spans = [(max(u.start, sec_start), min(u.end, sec_end)) for u in found if u.end > sec_start and u.start < sec_end]
        if not spans:
            spans = [(sec_start, _rstrip(text, sec_start, sec_end))]
        pieces = [p for a, b in spans for p in _pieces(text, a, b, fits) if text[p[0] : p[1]].strip()]
        first = 0
        while first < len(pieces):
            last = first
            used = cost(*pieces[first])
            while last + 1 < len(pieces) and pieces[last + 1][1] - pieces[first][0] <= size and (
                budget is None or used + cost(*pieces[last + 1]) + 3 <= budget
            ):
                last += 1
                used += cost(*pieces[last])
            a, b = pieces[first][0], pieces[last][1]
            content = text[a:b]
            lead = len(content) - len(content.lstrip())
            chunks.append(Chunk(content.strip(), doc.path, heading, a + lead))
            if last + 1 >= len(pieces):
                break
            nxt = last + 1  # the next chunk starts with the trailing units that fit in the overlap
            while nxt - 1 > first and b - pieces[nxt - 1][0] <= overlap:
                nxt -= 1
            first = nxt
    return chunks
