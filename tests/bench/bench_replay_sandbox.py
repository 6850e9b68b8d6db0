"""What the unprivileged sandbox costs a replay (run as root from the repository root;
figures only, no assertions):

    sudo .venv/bin/python -m tests.bench.bench_replay_sandbox [--repeats N]

Programs recorded by the real agent (``kprobe run --payloads``), each replayed
``--repeats`` times with the sandbox (``replay_sandbox.sandbox``: a user namespace of its
own, bwrap in setuid mode, the deny filter, rlimits, a cgroup made and removed) and
without it (``--no-sandbox``): the difference of the walls is the sandbox's start-up.
``/bin/true`` and ``/usr/bin/python3`` are readable by anyone; this venv's python may live
where the sandbox's uid cannot reach it (pyenv under /root): then its executable and the
libraries it maps are copied into the sandbox on every replay, and the figure shows what
that costs.

The machine has 2 vCPUs shared with other work: figures vary between runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from kprobe.lake import LakeSettings, resolve
from kprobe.replay_sandbox.engine import ReplayOptions, replay
from kprobe.replay_sandbox.lake_source import load
from kprobe.replay_sandbox.sandbox import public
from tests.bench.bench_replay import _node, record


def walls(lake: Path, pid: int, sandbox: bool, repeats: int) -> list[float]:
    recording = load(resolve(LakeSettings(lake=str(lake))), pid, _node(lake))
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        report = replay(recording, ReplayOptions(sandbox=sandbox))
        out.append(time.perf_counter() - started)
        assert report.status == "completed", report.render_text()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    repeats = parser.parse_args().repeats
    if os.geteuid() != 0:
        sys.exit("bench_replay_sandbox: needs root")
    venv_python = os.path.realpath(sys.executable)
    cases = [("/bin/true", ["/bin/true"]),
             ("/usr/bin/python3 -c pass", ["/usr/bin/python3", "-c", "pass"]),
             (f"{sys.executable} -c pass"
              f"{'' if public(venv_python, True) else ' (copied in: not public)'}",
              [sys.executable, "-c", "pass"])]
    print(f"replay wall, best / median of {repeats}, with and without the sandbox")
    with tempfile.TemporaryDirectory() as tmp_text:
        tmp = Path(tmp_text)
        for i, (label, command) in enumerate(cases):
            lake = tmp / str(i) / "lake"
            pid, _ = record(lake, *command)
            inside = walls(lake, pid, True, repeats)
            outside = walls(lake, pid, False, repeats)
            print(f"  {label}")
            print(f"    sandbox    {min(inside) * 1e3:7.1f} / "
                  f"{statistics.median(inside) * 1e3:7.1f} ms")
            print(f"    no sandbox {min(outside) * 1e3:7.1f} / "
                  f"{statistics.median(outside) * 1e3:7.1f} ms")
            print(f"    sandbox start-up ~{(min(inside) - min(outside)) * 1e3:.1f} ms (best) / "
                  f"{(statistics.median(inside) - statistics.median(outside)) * 1e3:.1f} ms "
                  f"(median)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
