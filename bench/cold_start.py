"""Cold start: wall time and peak memory of fresh `planvm` processes on `examples/kb`.

    python bench/cold_start.py            # 5 runs of each command, after one index
    python bench/cold_start.py --runs 10
    python bench/cold_start.py --code /tmp/previous   # this checkout and another, measured in turns

Each command runs in a new process, as a user types it: `planvm search QUERY` and an offline
`planvm run GOAL` (template planner, extractive answer, run store on). Printed per command: the
median and worst wall time, and the largest peak resident memory (from wait4, per child).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(args: list[str], env: dict[str, str], code: Path = ROOT) -> tuple[float, float]:
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "planvm", *args], cwd=code, env={**env, "PYTHONPATH": str(code)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )
    _pid, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"planvm {' '.join(args)} exited with {proc.returncode}")
    return seconds, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--code", type=Path, action="append", default=[],
                        help="Another checkout to measure in turns with this one (each run alternates between them).")
    args = parser.parse_args()
    codes = [ROOT, *args.code]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PLANVM_HOME": tmp, "HF_HUB_OFFLINE": "1"}
        env = {k: v for k, v in env.items() if not k.startswith("PLANVM_LLM") and k != "OPENAI_API_KEY"}
        kb = str(Path(tmp) / "kb")
        subprocess.run([sys.executable, "-m", "planvm", "index", str(ROOT / "examples" / "kb"), "--kb", kb],
                       cwd=ROOT, env=env, check=True, capture_output=True)
        commands = {
            "planvm search": ["search", "How do I resume a killed run?", "--kb", kb],
            "planvm run (offline)": ["run", "How do I resume a killed run?", "--kb", kb],
        }
        for name, command in commands.items():
            measure(command, env)  # the first run of a command makes the run store; not counted
            results: dict[Path, list[tuple[float, float]]] = {code: [] for code in codes}
            for _ in range(args.runs):
                for code in codes:
                    results[code].append(measure(command, env, code))
            for code, runs in results.items():
                walls = sorted(r[0] for r in runs)
                label = name if len(codes) == 1 else f"{name} [{code}]"
                print(f"{label:<22} median {walls[len(walls) // 2]:.2f} s, worst {walls[-1]:.2f} s, "
                      f"peak memory {max(r[1] for r in runs):.0f} MB ({args.runs} fresh processes)", flush=True)


if __name__ == "__main__":
    main()
