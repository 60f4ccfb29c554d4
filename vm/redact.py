"""Keeping credentials out of what planvm prints and stores.

Error text often quotes what a server said, and some servers echo the request's headers; URLs
may carry ``user:password@``. :func:`redact` replaces, in any text:

* every secret registered with :func:`register_secret` (the configured API keys and tokens);
* ``Bearer <token>`` and ``Basic <token>`` credentials, and ``Authorization: …`` header values;
* API-key shapes: ``sk-…`` keys, ``api_key=…`` / ``token=…`` / ``access_token=…`` parameters;
* the credentials part of a URL (``https://user:secret@host`` → ``https://***@host``).

Every error column of the run store and every line the command line prints goes through it.
"""

from __future__ import annotations

import re
import threading

__all__ = ["redact", "register_secret"]

MASK = "***"
_SECRETS: set[str] = set()
_LOCK = threading.Lock()
_PATTERNS = [
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}"), r"\1 " + MASK),
    (re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)(?!bearer|basic)[^\s'\",;]{6,}"), r"\1" + MASK),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), "sk-" + MASK),
    (re.compile(r"(?i)\b((?:api[_-]?key|access[_-]?token|token|password|secret)['\"]?\s*[=:]\s*['\"]?)[^\s'\"&,;}]{4,}"), r"\1" + MASK),
    (re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s:@]+(?::[^/\s@]*)?@"), r"\1" + MASK + "@"),
]


def register_secret(value: str | None) -> None:
    """Redact ``value`` wherever it appears from now on (values under 6 characters are ignored)."""
    if value and len(value) >= 6:
        with _LOCK:
            _SECRETS.add(value)


def redact(text: str) -> str:
    """``text`` with credentials replaced by ``***``."""
    if not text:
        return text
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text
