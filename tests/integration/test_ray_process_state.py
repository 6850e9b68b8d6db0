"""Ray state that outlives ``ray.shutdown`` in one process (real Ray, in processes of their
own so that this suite's process is never left in another state).

Ray turns token authentication on for a whole process when that process starts a local
cluster with ``RAY_AUTH_MODE`` unset (kprobe's ``connect_ray(None)``, as
``test_compute_follow_ray`` does): it sets ``RAY_AUTH_MODE=token`` in ``os.environ`` and
reloads its C++ config, and ``ray.shutdown`` undoes neither. A cluster the same process
starts later with ``RAY_AUTH_MODE=disabled`` (the suite's Ray fixtures, whose clusters
``kprobe`` subprocesses join without a token) has a GCS without auth and a driver whose gRPC
server still wants a token. The GCS's calls to the driver about the actors it owns are
refused ("Missing authorization header" in the driver's log), the GCS takes the owner for
dead and destroys them: "The actor never ran - it was cancelled before it started running".
Tasks are not affected (the driver only calls out), which is why only the Ray fuzz test, whose
actors the suite's process owned, failed in full runs, and never after only the compute tests
that set the mode themselves.

``tests/conftest.py`` sets one mode for the suite's process; each scenario here runs in a
process with the suite's environment (or, as the control, without the mode).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO, deadline_s, require

# A cluster of our own through kprobe (started, then shut down), then a cluster started as
# the suite's Ray fixtures start theirs, in the mode argv[2] names, and two actors owned by
# this process.
SCENARIO = """
import json, os, sys
import ray
from kprobe.lake import connect_ray

temp = sys.argv[1]
assert connect_ray(None, num_cpus=1, object_store_bytes=80 << 20)
ray.shutdown()
mode_after = os.environ.get("RAY_AUTH_MODE")
os.environ["RAY_AUTH_MODE"] = sys.argv[2]
ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 << 20, _temp_dir=temp,
         log_to_driver=False, configure_logging=False, _node_ip_address="127.0.0.1")


@ray.remote(num_cpus=1, max_restarts=0)
class Pid:
    def pid(self):
        return os.getpid()


actors = [Pid.remote() for _ in range(2)]
try:
    pids = ray.get([a.pid.remote() for a in actors], timeout=120)
    error = None
except ray.exceptions.RayError as err:
    pids, error = [], " ".join(str(err).split())
ray.shutdown()
print(json.dumps({"mode_after_own_cluster": mode_after, "pids": pids, "error": error}))
"""


def _scenario(env: dict[str, str], temp: Path, later_mode: str) -> dict[str, Any]:
    # the first cluster's files, and the token Ray makes for it, under the test's directory
    env = {**env, "RAY_TMPDIR": str(temp), "HOME": str(temp)}
    proc = subprocess.run([sys.executable, "-P", "-c", SCENARIO, str(temp), later_mode],
                          env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=deadline_s(300), check=False)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and lines, f"exit {proc.returncode}: {proc.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


@pytest.mark.ray
def test_a_cluster_of_our_own_does_not_cost_a_later_cluster_its_actors(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    require(importlib.util.find_spec("ray") is not None, "ray (pip install ray)")
    # GIVEN the suite's environment (one Ray auth mode for its process: token, with the
    # suite's own token file)
    suite_env = dict(os.environ)
    assert suite_env.get("RAY_AUTH_MODE") == "token" and suite_env.get("RAY_AUTH_TOKEN_PATH")
    # WHEN a process with it starts a cluster of its own through kprobe, stops it, and starts
    # another as the Ray fixtures do
    fixed = _scenario(suite_env, tmp_path_factory.mktemp("ray"), "token")
    # THEN the mode is unchanged and both actors this process owns run
    assert fixed["mode_after_own_cluster"] == "token", fixed
    assert fixed["error"] is None and len(set(fixed["pids"])) == 2, fixed
    # AND the control: without the mode set, the first cluster turns token auth on for the
    # process and the later cluster's actors never run (if this fails, Ray no longer leaks
    # its auth mode across sessions and the conftest rule is only a precaution)
    # (the later cluster without auth, as this suite's fixtures once ran theirs)
    unset = {k: v for k, v in suite_env.items()
             if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
    leaked = _scenario(unset, tmp_path_factory.mktemp("ray"), "disabled")
    assert leaked["mode_after_own_cluster"] == "token", leaked
    assert leaked["pids"] == [] and "cancelled before it started running" in (
        leaked["error"] or ""), leaked
