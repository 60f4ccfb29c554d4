"""Keeping credentials out of what planvm prints and stores.

Error text often quotes what a server said, and some servers echo the request's headers; URLs
may carry ``user:password@``; a model may repeat a key it saw. :func:`redact` replaces, in any text:

* every secret registered with :func:`register_secret` (the configured API keys and tokens): any
  run of at least 12 of its characters (so a key missing its first or last characters too; a
  shorter secret only whole), its base64 (at each of the three alignments a secret can have
  inside encoded data; standard and URL-safe alphabets) and its percent-encoded forms;
* ``Bearer <token>`` and ``Basic <token>`` credentials, and ``Authorization: …`` header values;
* API-key shapes: ``sk-…`` keys, ``api_key=…`` / ``token=…`` / ``access_token=…`` parameters;
* the credentials part of a URL (``https://user:secret@host`` → ``https://***@host``).

Every planvm error's message is masked when the error is made (``PlanVMError``), before anything
can shorten, print, store, log or send it; ``--json`` output, HTTP error bodies, recorded LLM
exchanges and log records are masked too, and every value the run store writes has the
registered secrets (:func:`mask_secrets`) replaced. Text a model sends is masked where it enters
planvm (the LLM backends), streamed text through :class:`StreamMasker`, which holds back a tail
that could still be the start of a secret.

How the registered secrets are found: each secret's forms (the secret, and its base64 at each
alignment) are cut into anchors, blocks of half the shortest run to mask taken at multiples of
that length, so that any long-enough run of a form contains a whole anchor. The text is searched
for the anchors (``str.find``: a few dozen scans, nothing found in ordinary text), and each hit is
grown left and right along the form; a run of the minimum length or more is masked.
Percent-encoded words are decoded first, and searched the same way.
"""

from __future__ import annotations

import base64
import bisect
import itertools
import re
import threading
from typing import Any
from urllib.parse import unquote_to_bytes

__all__ = ["StreamMasker", "mask_log_records", "mask_secrets", "redact", "redact_all", "register_secret"]

MASK = "***"
#: The fewest characters of a registered secret that are masked (a shorter secret: only whole).
MIN_RUN = 12
_B64_MIN_RUN = 16  # base64 characters carrying 12 bytes
_SECRETS: set[str] = set()
_LOCK = threading.Lock()
_PATTERNS = [
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}"), r"\1 " + MASK),
    (re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)(?!bearer|basic)[^\s'\",;]{6,}"), r"\1" + MASK),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), "sk-" + MASK),
    (re.compile(r"(?i)\b((?:api[_-]?key|access[_-]?token|token|password|secret)['\"]?\s*[=:]\s*['\"]?)[^\s'\"&,;}]{4,}"), r"\1" + MASK),
    (re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s:@]+(?::[^/\s@]*)?@"), r"\1" + MASK + "@"),
]
_SPACES = (" ", "\n", "\t", "\r")
_SPACE = re.compile(r"\s")
_LONGEST_WORD = 8192  # how far a percent-encoded word is followed either side of an escape
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")


class _Finder:
    """The registered secrets' forms, cut into anchors (rebuilt when a secret is registered)."""

    def __init__(self, secrets: set[str]) -> None:
        #: anchor -> [(form, offset of the anchor in the form, shortest run to mask)]
        self.anchors: dict[str, list[tuple[str, int, int]]] = {}
        self.forms: list[str] = []  # every form, for what a stream holds back
        self.longest = 0
        self.shortest = MIN_RUN  # the shortest run any form masks
        for secret in secrets:
            for form, least in _forms(secret):
                self.forms.append(form)
                self.longest = max(self.longest, len(form) * 3)  # a percent-encoded form is 3 characters a byte
                self.shortest = min(self.shortest, least, len(form))
                size = len(form) if least >= len(form) else least // 2
                for offset in range(0, len(form) - size + 1, size):
                    self.anchors.setdefault(form[offset:offset + size], []).append((form, offset, min(least, len(form))))

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Where ``text`` holds a registered secret in any of its forms: sorted, merged spans."""
        found = self._raw_spans(text)
        words, done = [], 0
        for escape in _ESCAPE.finditer(text) if "%" in text else ():
            if escape.start() < done:
                continue  # inside a word already searched
            low = max(done, escape.start() - _LONGEST_WORD)
            start = max(text.rfind(space, low, escape.start()) for space in _SPACES)
            start = start + 1 if start != -1 else low
            space = _SPACE.search(text, escape.end(), escape.end() + _LONGEST_WORD)
            end = space.start() if space else min(len(text), escape.end() + _LONGEST_WORD)
            if end - start >= self.shortest:
                words.append((start, end))
            done = end
        if words:
            found.extend(self._decoded_spans(text, words))
        return _merged(found)

    def _raw_spans(self, text: str) -> list[tuple[int, int]]:
        found = []
        for anchor, places in self.anchors.items():
            at = text.find(anchor)
            while at != -1:
                for form, offset, least in places:
                    left = 0
                    while left < offset and left < at and text[at - left - 1] == form[offset - left - 1]:
                        left += 1
                    end, right = at + len(anchor), offset + len(anchor)
                    while right < len(form) and end < len(text) and text[end] == form[right]:
                        end, right = end + 1, right + 1
                    if end - (at - left) >= least:
                        found.append((at - left, end))
                at = text.find(anchor, at + 1)
        return found

    def _decoded_spans(self, text: str, words: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Spans in the percent-encoded ``words`` of ``text`` (start, end), found in their decoded
        bytes (read as Latin-1, one character a byte; the words apart, searched at once), each
        mapped back to the characters that encoded it."""
        decoded = [unquote_to_bytes(text[start:end]).decode("latin-1") for start, end in words]
        begins = list(itertools.accumulate((len(word) + 1 for word in decoded[:-1]), initial=0))
        found = []
        for a, b in self._raw_spans("\0".join(decoded)):  # no secret runs across a word's end
            word = bisect.bisect_right(begins, a) - 1
            origin = _origins(text, *words[word])
            found.append((origin[a - begins[word]][0], origin[b - 1 - begins[word]][1]))
        return found

    def pending(self, text: str) -> int:
        """How many characters at the end of ``text`` could still be the start of a secret: the
        longest end that is part of a form, or a word with percent escapes still being written."""
        held = 0
        for form in self.forms:
            for size in range(min(len(text), len(form)), held, -1):
                if text[-size:] in form:
                    held = size
                    break
        word = len(text) - max(text.rfind(" "), text.rfind("\n"), text.rfind("\t")) - 1
        if "%" in text[len(text) - word:]:
            held = max(held, min(word, self.longest))
        return held


def _origins(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """For each byte the percent-encoded word ``text[start:end]`` decodes to, the characters of
    ``text`` that gave it."""
    origins: list[tuple[int, int]] = []
    at = start
    for escape in _ESCAPE.finditer(text, start, end):
        origins += [(i, i + 1) for i, char in enumerate(text[at:escape.start()], at) for _ in char.encode()]
        origins.append((escape.start(), escape.end()))
        at = escape.end()
    return origins + [(i, i + 1) for i, char in enumerate(text[at:end], at) for _ in char.encode()]


def _forms(secret: str) -> list[tuple[str, int]]:
    """A secret's forms and the shortest run of each to mask: the secret (as text, and as the
    Latin-1 reading of its UTF-8 bytes, which a decoded percent escape gives), and its base64 at
    each alignment: the characters that only its own bits decide."""
    data = secret.encode()
    forms = [(secret, MIN_RUN)]
    if data.decode("latin-1") != secret:
        forms.append((data.decode("latin-1"), MIN_RUN))
    for align in range(3):
        encoded = base64.b64encode(b"\0" * align + data).decode()
        whole = encoded[-(-8 * align // 6):(8 * align + 8 * len(data)) // 6]
        if len(whole) >= 8:
            forms.append((whole, _B64_MIN_RUN))
            if "+" in whole or "/" in whole:
                forms.append((whole.replace("+", "-").replace("/", "_"), _B64_MIN_RUN))
    return forms


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _masked(text: str, spans: list[tuple[int, int]]) -> str:
    parts, at = [], 0
    for start, end in spans:
        parts += [text[at:start], MASK]
        at = end
    parts.append(text[at:])
    return "".join(parts)


_FINDER = _Finder(set())


def register_secret(value: str | None) -> None:
    """Redact ``value`` wherever it appears from now on (values under 6 characters are ignored)."""
    global _FINDER
    if value and len(value) >= 6:
        with _LOCK:
            if value not in _SECRETS:
                _SECRETS.add(value)
                _FINDER = _Finder(set(_SECRETS))


def mask_secrets(text: str) -> str:
    """``text`` with the registered secrets (only) replaced, in every form they take: cheap
    enough for every stored value."""
    if not text or not _SECRETS:
        return text
    spans = _FINDER.spans(text)
    return _masked(text, spans) if spans else text


class StreamMasker:
    """Masks the registered secrets in text that arrives in pieces (a streamed answer), a secret
    split across pieces included: :meth:`feed` gives what can be shown now, holding back a tail
    that could still be the start of a secret until the text after it says it is not (then
    shown masked); :meth:`flush` gives the rest once the stream has ended."""

    def __init__(self) -> None:
        self.text = ""  # what arrived and is not shown yet, after some already shown text for context
        self.shown = 0  # how much of self.text is already shown

    def feed(self, piece: str) -> str:
        if not _SECRETS:
            return self._show(self.text + piece, len(self.text) + len(piece), [])
        finder = _FINDER
        text = self.text + piece
        cut = len(text) - finder.pending(text)
        spans = finder.spans(text)
        for start, end in spans:
            if start < cut < end:  # never show part of a secret
                cut = start
        return self._show(text, max(cut, self.shown), spans, keep=finder.longest)

    def flush(self) -> str:
        text = self.text
        return self._show(text, len(text), _FINDER.spans(text) if _SECRETS else [])

    def _show(self, text: str, cut: int, spans: list[tuple[int, int]], keep: int = 0) -> str:
        inside = [(max(s, self.shown) - self.shown, min(e, cut) - self.shown) for s, e in spans if e > self.shown and s < cut]
        out = _masked(text[self.shown:cut], inside)
        drop = max(cut - keep, 0)  # keep some shown text: a secret's run may begin in it
        self.text, self.shown = text[drop:], cut - drop
        return out


def redact_all(value: Any) -> Any:
    """``value`` (JSON-like: dicts, lists, strings) with every string in it redacted, at any depth."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_all(k) if isinstance(k, str) else k: redact_all(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_all(v) for v in value]
    return value


def redact(text: str) -> str:
    """``text`` with credentials replaced by ``***``."""
    if not text:
        return text
    text = mask_secrets(text)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


_MASKING_LOGS = False


def mask_log_records() -> None:
    """From now on, mask credentials in every log record this process makes: its message with
    its arguments, and the traceback of an exception it carries (chained exceptions included)."""
    global _MASKING_LOGS
    import logging
    import traceback

    with _LOCK:
        if _MASKING_LOGS:
            return
        _MASKING_LOGS = True
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            record.msg, record.args = redact(record.getMessage()), None
        except Exception:  # noqa: BLE001 - a record whose arguments do not format is left as it is
            pass
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info))).rstrip("\n")
        return record

    logging.setLogRecordFactory(factory)
