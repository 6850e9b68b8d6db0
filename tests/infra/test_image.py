"""The image `make image` builds (build/image/kprobe-VERSION.oci.tar): its OCI layout checked
blob by blob, then its one layer unpacked and run in a chroot (no container runtime can run
here: podman's crun cannot set RLIMIT_NPROC without CAP_SYS_RESOURCE, which this machine's
root lacks): `kprobe --help`, `kprobe doctor` (the BPF objects built into the wheel load on
this kernel), the agent's and the API's imports, the console's files."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tarfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO, require, require_root

VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
ARCHIVE = REPO / "build" / "image" / f"kprobe-{VERSION}.oci.tar"


def _blob(archive: tarfile.TarFile, digest: str) -> Any:
    algorithm, hexdigest = digest.split(":")
    assert algorithm == "sha256"
    member = archive.extractfile(f"blobs/sha256/{hexdigest}")
    assert member is not None
    return member


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Any], Path]]:
    """(the image config, its root filesystem unpacked) with /proc and /sys mounted."""
    require_root()
    require(ARCHIVE.exists(), f"the image ({ARCHIVE}; make image builds it)")
    root = tmp_path_factory.mktemp("image-root")
    with tarfile.open(ARCHIVE) as archive:
        assert json.load(_blob_or_file(archive, "oci-layout")) == {"imageLayoutVersion": "1.0.0"}
        index = json.load(_blob_or_file(archive, "index.json"))
        (entry,) = index["manifests"]
        manifest_bytes = _blob(archive, entry["digest"]).read()
        assert "sha256:" + hashlib.sha256(manifest_bytes).hexdigest() == entry["digest"]
        manifest = json.loads(manifest_bytes)
        config_bytes = _blob(archive, manifest["config"]["digest"]).read()
        assert "sha256:" + hashlib.sha256(config_bytes).hexdigest() == manifest["config"][
            "digest"]
        config = json.loads(config_bytes)
        (layer,) = manifest["layers"]
        assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar"
        assert config["rootfs"]["diff_ids"] == [layer["digest"]]
        digest = hashlib.sha256()
        stream = _blob(archive, layer["digest"])
        with subprocess.Popen(["tar", "-x", "-C", str(root)], stdin=subprocess.PIPE) as tar:
            assert tar.stdin is not None
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
                tar.stdin.write(chunk)
            tar.stdin.close()
        assert tar.returncode == 0
        assert "sha256:" + digest.hexdigest() == layer["digest"]  # the layer is what it says
    mounts = [(["-t", "proc", "proc"], root / "proc"), (["--rbind", "/sys"], root / "sys"),
              (["--rbind", "/dev"], root / "dev")]
    done = []
    try:
        for options, target in mounts:
            subprocess.run(["mount", *options, str(target)], check=True)
            done.append(target)
        yield config, root
    finally:
        for target in reversed(done):
            subprocess.run(["umount", "-R", "-l", str(target)], check=False)


def _blob_or_file(archive: tarfile.TarFile, name: str) -> Any:
    member = archive.extractfile(name)
    assert member is not None
    return member


def in_image(root: Path, config: dict[str, Any], *args: str, user: str | None = None
             ) -> subprocess.CompletedProcess[str]:
    env = dict(item.split("=", 1) for item in config["config"]["Env"])
    chroot = ["chroot", *([f"--userspec={user}"] if user else []), str(root)]
    return subprocess.run([*chroot, *args], capture_output=True, text=True, env=env,
                          timeout=300, check=False)


def test_kprobe_help_and_entrypoint(image: tuple[dict[str, Any], Path]) -> None:
    config, root = image
    assert config["config"]["Entrypoint"] == ["/opt/kprobe/bin/kprobe"]
    result = in_image(root, config, *config["config"]["Entrypoint"], "--help")
    assert result.returncode == 0, result.stderr
    for command in ("record", "otlp", "serve", "analyze", "replay", "lake", "doctor"):
        assert command in result.stdout, command
    # the API and jobs run as the image's unprivileged user
    result = in_image(root, config, "/opt/kprobe/bin/kprobe", "--version", user="10001:10001")
    assert result.returncode == 0 and VERSION in result.stdout, result.stderr


def test_doctor_loads_the_bpf_objects_built_into_the_image(
        image: tuple[dict[str, Any], Path]) -> None:
    config, root = image
    result = in_image(root, config, "/opt/kprobe/bin/kprobe", "doctor", "--format", "json")
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    assert checks["kernel BTF"]["ok"], checks["kernel BTF"]
    objects = checks["BPF objects"]
    installed = "/opt/kprobe/lib/python3.11/site-packages/kprobe/capture_agent/bpf"
    assert objects["ok"] and installed in objects["detail"], objects
    failed = [c for c in checks.values() if c["required"] and not c["ok"]]
    assert failed == [] and result.returncode == 0, failed
    sources = list((root / "opt/kprobe/lib/python3.11/site-packages/kprobe/capture_agent/bpf"
                    ).glob("*.bpf.c"))
    assert len(sources) >= 6  # the sources travel with the objects


def test_agent_api_and_ray_import_and_the_console_is_in_the_image(
        image: tuple[dict[str, Any], Path]) -> None:
    config, root = image
    probe = "import kprobe.capture_agent.agent, kprobe.commands.record, kprobe.query_api.app, ray"
    result = in_image(root, config, "/opt/kprobe/bin/python", "-c", probe)
    assert result.returncode == 0, result.stderr
    # the chart's replay runner runs this (a Ray head the API hands replays to)
    assert (root / "opt/kprobe/bin/ray").is_file()
    env = dict(item.split("=", 1) for item in config["config"]["Env"])
    assert (root / env["KPROBE_API_CONSOLE_DIR"].lstrip("/") / "index.html").is_file()
    # nothing the image does not need: no apt, no compiler
    assert not (root / "usr/bin/apt-get").exists() and not (root / "usr/bin/gcc").exists()


def test_a_build_without_room_stops_before_writing_anything(tmp_path: Path) -> None:
    """A build that ran out of disk halfway (stop 26's CI: mmdebstrap's tarball) left a
    chroot with /proc mounted and no image; it now says how much room it has and needs,
    and stops first (a 64 MiB tmpfs as its temp directory here)."""
    require_root()
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(small)], check=True)
    try:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TMPDIR": str(small)}
        run = subprocess.run(["bash", "infra/image/build.sh"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 2, run
        assert run.stderr.strip().splitlines() == [
            f"image: 64 MiB free under {small}, the build needs 4096 MiB (it stops with a "
            f"half-written image otherwise)"], run.stderr
    finally:
        subprocess.run(["umount", str(small)], check=True)
