"""Writes an OCI image archive (an OCI image layout in a tar, as `podman save --format
oci-archive` writes one) from a root filesystem tarball: one uncompressed layer, its config,
manifest and index. `skopeo copy oci-archive:FILE ...`, `podman load -i FILE` and
`ctr images import FILE` read it.

    python infra/image/oci.py ROOTFS.tar OUT.oci.tar --ref kprobe:0.1.0 \
        --entrypoint /opt/kprobe/bin/kprobe --cmd=--help --env PATH=... --workdir /var/lib/kprobe
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tarfile
import time
from pathlib import Path

LAYER = "application/vnd.oci.image.layer.v1.tar"
CONFIG = "application/vnd.oci.image.config.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _blob(data: bytes) -> tuple[str, bytes]:
    return hashlib.sha256(data).hexdigest(), data


def _json(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def write_archive(rootfs: Path, out: Path, ref: str, entrypoint: list[str], cmd: list[str],
                  env: list[str], workdir: str, labels: dict[str, str], created: int) -> str:
    """The archive's manifest digest."""
    layer_hex = sha256_file(rootfs)
    layer_size = rootfs.stat().st_size
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))
    config_hex, config = _blob(_json({
        "architecture": "amd64", "os": "linux", "created": stamp,
        "config": {"Entrypoint": entrypoint, "Cmd": cmd, "Env": env, "WorkingDir": workdir,
                   "Labels": labels},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_hex}"]},
        "history": [{"created": stamp, "created_by": "infra/image/build.sh (mmdebstrap)"}],
    }))
    manifest_hex, manifest = _blob(_json({
        "schemaVersion": 2, "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": f"sha256:{config_hex}", "size": len(config)},
        "layers": [{"mediaType": LAYER, "digest": f"sha256:{layer_hex}", "size": layer_size}],
        "annotations": {"org.opencontainers.image.created": stamp},
    }))
    index = _json({"schemaVersion": 2, "mediaType": INDEX, "manifests": [{
        "mediaType": MANIFEST, "digest": f"sha256:{manifest_hex}", "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": ref}}]})
    tmp = out.with_suffix(".partial")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), created, 0o644
            tar.addfile(info, io.BytesIO(data))

        add("oci-layout", _json({"imageLayoutVersion": "1.0.0"}))
        add("index.json", index)
        add(f"blobs/sha256/{config_hex}", config)
        add(f"blobs/sha256/{manifest_hex}", manifest)
        info = tarfile.TarInfo(f"blobs/sha256/{layer_hex}")
        info.size, info.mtime, info.mode = layer_size, created, 0o644
        with rootfs.open("rb") as f:
            tar.addfile(info, f)
    os.replace(tmp, out)
    return f"sha256:{manifest_hex}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("rootfs", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--ref", required=True)
    parser.add_argument("--entrypoint", action="append", default=[])
    parser.add_argument("--cmd", action="append", default=[])
    parser.add_argument("--env", action="append", default=[])
    parser.add_argument("--workdir", default="/")
    parser.add_argument("--label", action="append", default=[])
    args = parser.parse_args(argv)
    labels = dict(label.split("=", 1) for label in args.label)
    created = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    digest = write_archive(args.rootfs, args.out, args.ref, args.entrypoint, args.cmd,
                           args.env, args.workdir, labels, created)
    print(digest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
