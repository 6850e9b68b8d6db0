"""The replay worker: one typed request in, one report out, both JSON.

    echo '{"lake": "s3://bucket/lake", "request": {"process": "4721@node-a"}}' \\
        | python -P -m kprobe.replay_sandbox.worker

Input (stdin, one JSON object of at most 16 MiB):
``{"lake": URI, "request": ReplayRequest.to_json(), "hide": [PATH, ...],
"named_files": "any" | "public"}``. ``hide`` and ``named_files`` are the launcher's
policy, not the requester's: host paths the sandbox covers besides the lake (a local
lake's directory is always covered), and whether files under /tmp that a changed command
line names may be shown when only root can read them ("any", the CLI's default: its user
is root) or only when anyone may ("public": requests from the API, so the tracer never
lends root's rights to a request). Storage credentials come from the environment
(``KPROBE_S3_*``), never from stdin.

Output (stdout, one JSON object): ``{"kind": "replay" | "fuzz", "passed": bool,
"report": {...}}`` (the report as ``kprobe replay --format json`` prints it), or
``{"kind": "error", "error": "one line"}``. Exit code: 0 the expectation held, 1 it did
not, 2 the replay could not run (bad request, no recording, no sandbox).

``kprobe replay`` runs the same ``execute`` in its own process; ``kprobe serve`` starts
this module (or runs ``run_worker`` as a Ray task), so both take one path from a request
to a replay.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from typing import IO, Any, Literal

from kprobe.lake.errors import LakeError, one_line
from kprobe.lake.storage import LakeLocation, LakeSettings, resolve
from kprobe.replay_sandbox.engine import ReplayOptions, replay
from kprobe.replay_sandbox.errors import ReplaySandboxError, SandboxError, SpecError
from kprobe.replay_sandbox.fuzz import Expectation, FuzzConfig, FuzzReport, fuzz
from kprobe.replay_sandbox.injection import parse_all
from kprobe.replay_sandbox.lake_source import load
from kprobe.replay_sandbox.recording import Recording
from kprobe.replay_sandbox.report import ReplayReport, expectation_held
from kprobe.replay_sandbox.request import ReplayRequest

MAX_INPUT = 16 << 20
NamedFiles = Literal["any", "public"]


@dataclass
class Outcome:
    kind: Literal["replay", "fuzz"]
    passed: bool  # the expectation held (fuzz: no perturbation flips the outcome)
    report: ReplayReport | FuzzReport

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "passed": self.passed, "report": self.report.to_dict()}


def options_for(request: ReplayRequest, recording: Recording, hidden: tuple[str, ...] = (),
                named_files: NamedFiles = "any") -> ReplayOptions:
    """The engine's options for ``request`` on ``recording`` (its argv, its PATH)."""
    options = ReplayOptions(mode=request.mode, injections=parse_all(list(request.injections)),
                            sandbox=request.sandbox, timeout_s=request.timeout_s,
                            env_set=dict(request.env), limits=request.limits,
                            hidden_paths=hidden, named_files=named_files)
    argv = list(recording.process.argv)
    if request.cmd is not None:
        argv = list(request.cmd)
        options.exe = _which(argv[0], recording.process.env)
    for index, value in request.set_args:
        if index >= len(argv):
            raise SpecError(f"set_args {index}={value[:40]!r}: the command line has "
                            f"{len(argv)} arguments")
        argv[index] = value
    if request.cmd is not None or request.set_args:
        options.argv = argv
    return options


def execute(request: ReplayRequest, location: LakeLocation, hidden: tuple[str, ...] = (),
            named_files: NamedFiles = "any") -> Outcome:
    """Load the recording, replay it (or run the fuzz campaign), judge the expectation."""
    if os.geteuid() != 0:
        raise SandboxError("replay needs root (ptrace, seccomp and namespaces)")
    if location.root.startswith("file://"):  # the lake holds every recorded payload
        hidden = (location.root.removeprefix("file://"), *hidden)
    recording = load(location, request.pid, request.node, request.from_ns, request.to_ns,
                     tree=request.tree)
    options = options_for(request, recording, hidden, named_files)
    if request.fuzz is not None:
        spec = request.fuzz
        config = FuzzConfig(
            runs=spec.runs, seed=spec.seed, max_delay_ns=spec.max_delay_ns, swaps=spec.swaps,
            workers=spec.workers, executor=spec.executor, ray_address=spec.ray_address,
            expectation=Expectation(request.expect_exit, request.expect_output_match))
        campaign = fuzz(recording, options, config)
        return Outcome("fuzz", campaign.passed, campaign)
    report = replay(recording, options)
    return Outcome("replay", expectation_held(report, request.expect_exit,
                                              request.expect_output_match), report)


def run(data: Any) -> tuple[int, dict[str, Any]]:
    """(exit code, output document) for one parsed input document."""
    try:
        if not isinstance(data, dict):
            raise SpecError("worker input: expected a JSON object")
        unknown = sorted(set(data) - {"lake", "request", "hide", "named_files"})
        if unknown:
            raise SpecError(f"worker input: unknown field {unknown[0]!r}")
        lake = data.get("lake")
        hide = data.get("hide", [])
        named = data.get("named_files", "public")
        if not isinstance(lake, str) or not lake:
            raise SpecError("worker input: lake must be a URI")
        if not isinstance(hide, list) or not all(isinstance(p, str) and p.startswith("/")
                                                 for p in hide):
            raise SpecError("worker input: hide must be a list of absolute paths")
        if named not in ("any", "public"):
            raise SpecError("worker input: named_files must be 'any' or 'public'")
        request = ReplayRequest.from_json(data.get("request"))
        location = resolve(LakeSettings(lake=lake))
        outcome = execute(request, location, tuple(hide), named)
    except (ReplaySandboxError, LakeError) as err:
        return 2, {"kind": "error", "error": one_line(err, 1000)}
    return (0 if outcome.passed else 1), outcome.to_json()


def main(stdin: IO[str] | None = None, stdout: IO[str] | None = None) -> int:
    source = stdin or sys.stdin
    sink = stdout or sys.stdout
    text = source.read(MAX_INPUT + 1)
    if len(text) > MAX_INPUT:
        code, doc = 2, {"kind": "error", "error": f"worker input over {MAX_INPUT >> 20} MiB"}
    else:
        try:
            parsed = json.loads(text)
        except ValueError as err:
            code, doc = 2, {"kind": "error", "error": f"worker input is not JSON: {err}"}
        else:
            try:
                code, doc = run(parsed)
            except Exception as err:  # noqa: BLE001 - one line out, never a traceback
                code, doc = 2, {"kind": "error",
                                "error": one_line(f"internal error: {type(err).__name__}: "
                                                  f"{err}", 1000)}
    sink.write(json.dumps(doc) + "\n")
    sink.flush()
    return code


def run_worker(document: dict[str, Any], env: dict[str, str],
               timeout_s: float) -> tuple[int, str, str]:
    """Start ``python -P -m kprobe.replay_sandbox.worker`` with ``document`` on stdin; (exit code,
    stdout, stderr). Kills the whole process group at the deadline (exit code -9). Used by
    the API as is, or as a Ray task."""
    import signal
    import subprocess

    proc = subprocess.Popen([sys.executable, "-P", "-m", "kprobe.replay_sandbox.worker"], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(json.dumps(document), timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return -9, out, err + f"\nreplay worker: killed after {timeout_s:g} s"
    return proc.returncode, out, err


def _which(program: str, env: list[str]) -> str:
    if "/" in program:
        return program
    path = next((e[5:] for e in env if e.startswith("PATH=")), os.defpath)
    found = shutil.which(program, path=path)
    if found is None:
        raise SpecError(f"cmd: {program} not found on the recorded PATH")
    return found


__all__ = ["Outcome", "execute", "main", "options_for", "run", "run_worker"]


if __name__ == "__main__":
    sys.exit(main())
