"""A ``replay`` token is not root on the host (issue 14, item 1), over real HTTP.

Module fixture (root): the agent's recording of ``python3 -c`` (``test_replay_sandbox``),
served by a real ``kprobe serve`` with a tokens file. Each test posts the issue's attack to
``POST /v1/replays`` as a client with the ``replay`` scope, waits for the job, and checks
the host: the file the attack writes never exists, the host secret it reads never comes
back in the report. Each attack also prints what it saw, so it is known to have run.
"""

from __future__ import annotations

import os
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from kprobe.query_api.auth import add_token
from tests.security.test_replay_sandbox import (  # noqa: F401 - fixtures
    KPROBE,
    PROBE_FILE,
    Recorded,
    assert_cleaned_up,
    no_probe_file_fixture,
    recorded_fixture,
)
from tests.support import REPO, free_port, wait_healthy

pytestmark = pytest.mark.timeout(600)


@dataclass
class Server:
    base: str
    token: str
    recorded: Recorded

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=60,
                            headers={"Authorization": f"Bearer {self.token}"})


@pytest.fixture(scope="module")
def server(recorded: Recorded, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("replay-api")
    tokens_file = tmp / "tokens.json"
    # payloads: the report's output text (the evidence checked here) needs it
    token = add_token(tokens_file, "operator", ["read", "replay", "payloads"])
    port = free_port()
    log = open(tmp / "serve.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen([*KPROBE, "serve", "--lake", str(recorded.lake), "--tokens-file",
                             str(tokens_file), "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    base = f"http://127.0.0.1:{port}"
    wait_healthy(proc, base, tmp / "serve.log")
    try:
        yield Server(base, token, recorded)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def launch(server: Server, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """POST the replay, wait for its end; (job, report)."""
    with server.client() as client:
        posted = client.post("/v1/replays", json={"process": server.recorded.process, **body})
        assert posted.status_code == 202, posted.text
        job_id = posted.json()["id"]
        deadline = time.monotonic() + 180
        while True:
            job: dict[str, Any] = client.get(f"/v1/replays/{job_id}").json()
            if job["status"] != "running":
                break
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
        assert job["status"] in ("succeeded", "failed"), job  # it ran
        report = client.get(f"/v1/replays/{job_id}/report")
        assert report.status_code == 200, report.text
        return job, report.json()


def stdout_of(report: dict[str, Any]) -> str:
    return str(report["replayed_text"].get("1", ""))


def test_the_issues_cmd_attack_through_the_api_writes_nothing(server: Server,
                                                              no_probe_file: None) -> None:
    # GIVEN the issue's request, verbatim
    cmd = '/bin/sh -c "mount -o remount,rw,bind / && cp /etc/hostname /var/tmp/probe"'
    # WHEN a replay token posts it THEN the replay ran and the host file was not written
    _, report = launch(server, {"cmd": cmd, "timeout_s": 20})
    assert report["mode"] == "whatif" and report["process"]["argv"][0] == "/bin/sh", report
    # mount failed, so cp never ran (126/127: the shell itself did not run, a test that
    # proved nothing: an mmap placement bug once made every what-if cmd exit 127)
    assert report["exit_code"] not in (0, 126, 127), report  # util-linux mount: 32
    assert_cleaned_up(report)


def test_the_cmd_attack_runs_contained(server: Server, no_probe_file: None) -> None:
    # GIVEN the same attack with ';' (every step runs) and a report of what the shell saw
    cmd = ("/bin/sh -c 'mount -o remount,rw,bind / ; cp /etc/hostname /var/tmp/probe ; "
           "echo cp status $? ; while read -r a b c; do echo map $a $b $c; done "
           "< /proc/self/uid_map ; while read -r k v; do case $k in CapEff:) "
           "echo caps $v;; esac; done < /proc/self/status'")
    _, report = launch(server, {"cmd": cmd, "timeout_s": 20})
    seen = stdout_of(report)
    # THEN cp failed, the shell is uid 65534 mapped to the unprivileged host uid 65533,
    # without capabilities
    assert "cp status 1" in seen, seen
    assert "map 65534 65533 1" in seen and "caps 0000000000000000" in seen, seen
    assert_cleaned_up(report)


def test_the_issues_set_args_attack_through_the_api_writes_nothing(
        server: Server, no_probe_file: None) -> None:
    set_args = [{"index": 1, "value": "-c"},
                {"index": 2, "value": "import os; os.system('mount -o remount,rw,bind / ; "
                                      "touch /var/tmp/probe'); print('set_args ran')"}]
    _, report = launch(server, {"set_args": set_args, "timeout_s": 20})
    assert stdout_of(report).strip() == "set_args ran", report
    assert_cleaned_up(report)


def test_host_secrets_do_not_come_back_in_the_report(server: Server, tmp_path: Path) -> None:
    # GIVEN a root-only secret under /tmp and one in /etc (the shadow file), and a file
    # anyone may read under /tmp (the control: named files others may read are shown)
    secret_dir = tmp_path / "private"
    secret_dir.mkdir(mode=0o700)
    (secret_dir / "key").write_text("SECRET-KEY-MATERIAL\n")
    (secret_dir / "key").chmod(0o600)
    public_dir = Path("/tmp") / f"kprobe-public-{os.getpid()}"
    public_dir.mkdir(mode=0o755, exist_ok=True)
    public_dir.chmod(0o755)
    (public_dir / "note").write_text("PUBLIC-NOTE\n")
    (public_dir / "note").chmod(0o644)
    shadow_head = Path("/etc/shadow").read_text().split(":", 1)[0]
    assert stat.S_IMODE(Path("/etc/shadow").stat().st_mode) & 0o004 == 0
    try:
        for path, expected in ((secret_dir / "key", None), (Path("/etc/shadow"), None),
                               (public_dir / "note", "PUBLIC-NOTE")):
            # WHEN a replay token asks the sandbox to print the file
            _, report = launch(server, {"cmd": f"/bin/cat {path}", "timeout_s": 20})
            seen = stdout_of(report)
            # THEN only what anyone may read comes back
            if expected is None:
                assert "SECRET-KEY-MATERIAL" not in seen and f"{shadow_head}:" not in seen, seen
                assert report["exit_code"] != 0, report
            else:
                assert seen.strip() == expected, report
            assert_cleaned_up(report)
    finally:
        (public_dir / "note").unlink()
        public_dir.rmdir()


def test_a_cmd_the_worker_would_refuse_is_refused_at_the_door(server: Server) -> None:
    with server.client() as client:
        for body in ({"cmd": "/bin/sh -c 'unclosed"}, {"cmd": "   "},
                     {"from": "notatime"}):
            answer = client.post("/v1/replays", json={"process": server.recorded.process,
                                                      **body})
            assert answer.status_code == 400, answer.text
            assert answer.headers["content-type"].startswith("application/problem+json")
            assert "\n" not in answer.json()["detail"]


def test_the_probe_file_was_never_written(server: Server) -> None:
    """After every attack of this module: the exact path is still absent."""
    assert not PROBE_FILE.exists()
