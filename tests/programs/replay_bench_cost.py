"""Cost per served syscall of the replay engine (run as root from the repository root).

    .venv/bin/python -m tests.programs.replay_bench_cost [N]

Records ``replay_loop`` doing 0 and N iterations of one syscall with the reference
recorder, replays each a few times, and divides the difference of the best wall times by N
(so sandbox start-up and process start cancel out). Goal: <= 20 us per served syscall.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from replay_sandbox.engine import replay
from tests.integration.test_replay_recorder import record

ENV = ["PATH=/usr/bin:/bin"]


def best_wall(program: str, n: int, what: str, repeats: int = 5) -> float:
    run = record([program, str(n), what], cwd=tempfile.gettempdir(), env=ENV)
    recording = run.recording()
    best = float("inf")
    for _ in range(repeats):
        report = replay(recording)
        assert report.status == "completed" and report.outputs_match, report.render_text()
        best = min(best, report.stats["wall_s"])
    return best


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    with tempfile.TemporaryDirectory() as tmp:
        program = str(Path(tmp) / "replay_loop")
        source = Path(__file__).with_name("replay_loop.c")
        subprocess.run(["gcc", "-O2", "-o", program, str(source)], check=True)
        for what, label in (("getppid", "getppid (result only)"),
                            ("read", "read 64 bytes (result + memory write)"),
                            ("clock", "clock_gettime via patched vDSO")):
            base = best_wall(program, 0, what)
            loaded = best_wall(program, n, what)
            print(f"{label:40s} {(loaded - base) / n * 1e6:6.2f} us per served syscall "
                  f"(start-up {base * 1e3:.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
