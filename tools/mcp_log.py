"""A stdio MCP server's stderr, kept in a file that cannot grow without bound.

The server writes into a pipe; a thread reads it line by line and writes each line (cut to
``MAX_LINE`` characters) through a :class:`logging.handlers.RotatingFileHandler`: at
``MAX_BYTES`` the file is rotated, and ``BACKUPS`` older files are kept (``NAME.log.1`` …). A
server that prints megabytes per call costs at most ``MAX_BYTES * (BACKUPS + 1)`` of disk.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import threading
from pathlib import Path
from typing import IO

__all__ = ["BACKUPS", "MAX_BYTES", "MAX_LINE", "CappedLog"]

MAX_BYTES = 5 * 1024 * 1024
BACKUPS = 2
MAX_LINE = 4000


class CappedLog:
    """``writer`` is the file a child process's stderr goes to; ``close()`` once the child ended."""

    def __init__(self, path: Path, header: str, *, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        self._write(header)
        read_fd, write_fd = os.pipe()
        self.writer: IO[str] = os.fdopen(write_fd, "w", encoding="utf-8", errors="replace")
        self._reader = os.fdopen(read_fd, "r", encoding="utf-8", errors="replace", newline="")
        self._thread = threading.Thread(target=self._pump, name=f"mcp-log {path.name}", daemon=True)
        self._thread.start()

    def _write(self, line: str) -> None:
        self._handler.emit(logging.LogRecord("mcp", logging.INFO, "", 0, line, None, None))

    def _pump(self) -> None:
        try:
            while True:
                # Bounded reads: a line without an end is written in pieces, never held whole.
                piece = self._reader.readline(MAX_LINE + 1)
                if not piece:
                    return
                if piece.endswith("\n") or len(piece) <= MAX_LINE:
                    self._write(piece.rstrip("\n"))
                    continue
                cut = 0  # the rest of an overlong line is counted, not kept
                while True:
                    more = self._reader.readline(65536)
                    cut += len(more.rstrip("\n"))
                    if not more or more.endswith("\n"):
                        break
                self._write(f"{piece} … [{cut} more characters cut]")
        except (OSError, ValueError):  # the pipe closed under us: the server is gone
            return
        finally:
            self._reader.close()

    def close(self) -> None:
        """Close this process's end of the pipe; the thread ends when the child's end closes too."""
        try:
            self.writer.close()
        except OSError:
            pass
        self._thread.join(2)
        self._handler.close()
