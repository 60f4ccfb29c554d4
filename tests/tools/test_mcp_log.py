"""A stdio MCP server's stderr log is bounded: rotated at its size cap, overlong lines cut, and
what a server writes still reaches the file. A real child process writes into it; no fakes."""

from __future__ import annotations

import subprocess
import sys

from tools.mcp_log import MAX_LINE, CappedLog

FLOOD = (
    "import sys\n"
    "for i in range(40000): sys.stderr.write(f'line {i} ' + 'x' * 100 + '\\n')\n"
    "sys.stderr.write('y' * 1_000_000 + '\\n')\n"
    "sys.stderr.write('the last words\\n')\n"
)


def test_a_flooding_server_cannot_fill_the_disk(tmp_path):
    path = tmp_path / "mcp-logs" / "server.log"
    log = CappedLog(path, "--- starting server", max_bytes=200_000, backups=2)
    subprocess.run([sys.executable, "-c", FLOOD], stderr=log.writer, check=True, timeout=60)
    log.close()
    files = sorted(path.parent.glob("server.log*"))
    assert [f.name for f in files] == ["server.log", "server.log.1", "server.log.2"]
    assert sum(f.stat().st_size for f in files) < 3 * 200_000 + 2 * MAX_LINE  # 5 MB written, ~600 KB kept
    text = path.read_text()
    assert text.rstrip().endswith("the last words")  # the newest lines are kept
    cut = next(line for line in text.splitlines() if line.startswith("yyy"))
    assert len(cut) < MAX_LINE + 100 and cut.endswith(f"[{1_000_000 - MAX_LINE - 1} more characters cut]")


def test_a_quiet_server_keeps_its_whole_log_across_starts(tmp_path):
    path = tmp_path / "server.log"
    for start in range(2):
        log = CappedLog(path, f"--- start {start}")
        subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('hello\\n')"], stderr=log.writer, check=True, timeout=60)
        log.close()
    assert path.read_text().splitlines() == ["--- start 0", "hello", "--- start 1", "hello"]
