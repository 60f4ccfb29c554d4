"""Keeping credentials out of what planvm prints and stores.

Error text often quotes what a server said, and some servers echo the request's headers; URLs
may carry ``user:password@``. :func:`redact` replaces, in any text:

* every secret registered with :func:`register_secret` (the configured API keys and tokens);
* ``Bearer <token>`` and ``Basic <token>`` credentials, and ``Authorization: …`` header values;
* API-key shapes: ``sk-…`` keys, ``api_key=…`` / ``token=…`` / ``access_token=…`` parameters;
* the credentials part of a URL (``https://user:secret@host`` → ``https://***@host``).

Every planvm error's message is masked when the error is made (``PlanVMError``), before anything
can shorten, print, store, log or send it; ``--json`` output, HTTP error bodies, recorded LLM
exchanges and log records are masked too, and every value the run store writes has the
registered secrets (:func:`mask_secrets`) replaced.
"""

from __future__ import annotations

import re
import threading
from typing import Any

__all__ = ["mask_log_records", "mask_secrets", "redact", "redact_all", "register_secret"]

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


def mask_secrets(text: str) -> str:
    """``text`` with the registered secrets (only) replaced: cheap enough for every stored value."""
    if not text or not _SECRETS:
        return text
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


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
