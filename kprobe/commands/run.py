"""``kprobe run -- CMD …``: record CMD and its descendants; exit with CMD's status.

The child is forked before the agent starts any thread, held on a pipe until its pid is in
the kernel's targets map, then released to exec: nothing it does is missed. It gets
``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing at the agent's receiver, so an OpenTelemetry-
instrumented CMD exports its spans to the same lake without configuration.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading

from kprobe.capture_agent import vdso_patch
from kprobe.capture_agent.agent import Agent
from kprobe.capture_agent.targets import Targets
from kprobe.commands._agent_options import add_agent_options, agent_config, require_root
from kprobe.commands._common import add_format_option
from kprobe.commands.record import print_summary
from kprobe.errors import CommandError


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "run", help="run a command and record it (and its children)",
        description="Start CMD held until its pid is a capture target, record it and its "
        "children (as root) with the agent's options below, point its OpenTelemetry SDK at "
        "the agent's receiver (OTEL_EXPORTER_OTLP_ENDPOINT), and exit with CMD's status.")
    add_agent_options(parser, otlp_default=0, metrics_default=None)
    add_format_option(parser)
    parser.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...",
                        help="the command to run and record, after --")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise CommandError("nothing to run: kprobe run [options] -- CMD ...")
    if shutil.which(cmd[0]) is None:
        raise CommandError(f"{cmd[0]}: command not found")
    require_root()
    config = agent_config(args, Targets())
    release_r, release_w = os.pipe()
    env = dict(os.environ)
    pid = os.fork()
    if pid == 0:  # child: wait to be targeted, then become CMD
        os.close(release_w)
        message = b""
        while not message.endswith(b"\n"):
            chunk = os.read(release_r, 64)
            if not chunk:  # the agent failed to start: never run CMD unrecorded
                os._exit(127)
            message += chunk
        os.close(release_r)
        otlp_port = int(message[1:].strip() or b"0")
        if otlp_port and "OTEL_EXPORTER_OTLP_ENDPOINT" not in env:
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{otlp_port}"
        try:
            os.execvpe(cmd[0], cmd, env)
        except OSError as err:
            os.write(2, f"kprobe run: {cmd[0]}: {err.strerror}\n".encode())
            os._exit(127)
    os.close(release_r)
    try:
        agent = Agent(config).start()
    except BaseException:
        os.close(release_w)  # the child sees EOF and exits 127 without running CMD
        os.waitpid(pid, 0)
        raise
    agent.add_target(pid)
    stop = threading.Event()
    status: list[int] = []

    watching = threading.Event()

    def reap() -> None:
        # with --vdso-patch this thread traces CMD's process for its execs (the kernel
        # stops it at each one, its fresh vDSO is rewritten before it runs): a tracer's
        # stops go to whichever thread of the tracer waits, so only this one waits
        watch = vdso_exec_watch(pid, agent) if agent.vdso_patching else None
        watching.set()
        raw = watch.wait() if watch is not None else os.waitpid(pid, 0)[1]
        status.append(os.waitstatus_to_exitcode(raw))
        stop.set()

    # Ctrl+C goes to CMD (same terminal process group); we keep recording until it exits.
    signal.signal(signal.SIGINT, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGTERM))
    waiter = threading.Thread(target=reap, daemon=True)
    waiter.start()
    watching.wait()
    os.write(release_w, f"1{agent.otlp_port or 0}\n".encode())
    os.close(release_w)
    try:
        agent.run(stop)
    finally:
        agent.stop()
    waiter.join()
    print_summary(agent, args.format)
    code = status[0] if status else 1
    return code if code >= 0 else 128 - code  # killed by signal N -> 128+N, as shells do


def vdso_exec_watch(pid: int, agent: Agent) -> vdso_patch.ExecWatch | None:
    """Trace the held child for its execs (--vdso-patch); None, said on stderr, if it
    cannot be (the agent's poll then rewrites its vDSO, after it started)."""
    try:
        return vdso_patch.ExecWatch(pid, lambda result: agent.vdso_rewritten_at_exec(pid,
                                                                                   result))
    except OSError as err:
        print(f"kprobe run: the command's vDSO is not rewritten at exec ({err.strerror});"
              " the agent's poll rewrites it", file=sys.stderr)
        return None


if sys.platform != "linux":  # pragma: no cover
    raise ImportError("kprobe run needs Linux")
