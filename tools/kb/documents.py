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
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from vm.errors import BadInput

__all__ = ["DEFAULT_MAX_FILE_BYTES", "Chunk", "Document", "chunk_document", "find_documents", "read_document"]

DEFAULT_INCLUDE = ("*.md", "*.markdown", "*.txt", "*.rst", "*.html", "*.htm")
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(slots=True)
class Document:
    path: str  # relative to the indexed folder, with forward slashes
    text: str
    sha256: str


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
    if path.suffix.lower() in (".html", ".htm"):
        parser = _HTMLText()
        parser.feed(text)
        text = parser.text()
    return Document(rel, text, hashlib.sha256(data).hexdigest())


def _sections(text: str) -> list[tuple[str, int, int]]:
    """(heading path, start, end) per section; nested headings are joined with ' > '."""
    sections: list[tuple[str, int, int]] = []
    stack: list[tuple[int, str]] = []
    heading, start = "", 0
    for match in re.finditer(r"^.*$", text, re.MULTILINE):
        found = _HEADING.match(match.group())
        if not found:
            continue
        if match.start() > start:
            sections.append((heading, start, match.start()))
        level = len(found.group(1))
        stack = [(lvl, title) for lvl, title in stack if lvl < level] + [(level, found.group(2))]
        heading = " > ".join(title for _, title in stack)
        start = match.start()
    sections.append((heading, start, len(text)))
    return [(h, a, b) for h, a, b in sections if text[a:b].strip()]


def _units(text: str, start: int, end: int, size: int) -> list[tuple[int, int]]:
    """Spans of ``text[start:end]``: paragraphs; a paragraph longer than ``size`` is cut at
    sentence ends, and a sentence longer than ``size`` at ``size`` characters."""
    units: list[tuple[int, int]] = []
    for para in re.finditer(r"\S(?:(?!\n[ \t]*\n).)*", text[start:end], re.DOTALL):
        a, b = start + para.start(), start + para.start() + len(para.group().rstrip())
        if b - a <= size:
            units.append((a, b))
            continue
        cuts = [a] + [a + m.end() for m in _SENTENCE_END.finditer(text[a:b])] + [b]
        for s0, s1 in zip(cuts, cuts[1:], strict=False):
            while s1 - s0 > size:
                units.append((s0, s0 + size))
                s0 += size
            if s1 > s0:
                units.append((s0, s1))
    return units


def chunk_document(doc: Document, size: int = 1000, overlap: int = 150) -> list[Chunk]:
    """Chunks of at most ``size`` characters of the document's own text, cut at headings first,
    then paragraphs, sentences and characters; a chunk repeats up to ``overlap`` characters of
    whole paragraphs or sentences from the end of the previous chunk of its section."""
    if size < 50:
        raise BadInput("chunk size must be at least 50 characters")
    if not 0 <= overlap < size:
        raise BadInput("overlap must be at least 0 and smaller than the chunk size")
    text = doc.text
    chunks: list[Chunk] = []
    for heading, sec_start, sec_end in _sections(text):
        units = _units(text, sec_start, sec_end, size)
        first = 0
        while first < len(units):
            last = first
            while last + 1 < len(units) and units[last + 1][1] - units[first][0] <= size:
                last += 1
            a, b = units[first][0], units[last][1]
            chunks.append(Chunk(text[a:b].strip(), doc.path, heading, a))
            if last + 1 >= len(units):
                break
            # Start the next chunk with the trailing units that fit in the overlap.
            nxt = last + 1
            while nxt - 1 > first and b - units[nxt - 1][0] <= overlap:
                nxt -= 1
            first = nxt
    return chunks
